"""Tables as data: columns with a header and a formatter, rendered to Markdown, HTML or CSV."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Callable


def percent(value: Any) -> str:
    """A fraction as a percentage with two decimals; empty for missing values."""
    return "" if _missing(value) else f"{100 * float(value):.2f}"


def number(digits: int) -> Callable[[Any], str]:
    """A formatter with a fixed number of decimals."""
    return lambda value: "" if _missing(value) else f"{float(value):.{digits}f}"


def integer(value: Any) -> str:
    """An integer with thousands separators."""
    return "" if _missing(value) else f"{int(round(float(value))):,}"


def text(value: Any) -> str:
    """Any value as text; empty for None."""
    return "" if value is None else str(value)


def _missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class Column:
    """One table column: the row key, its header and how to format a value."""

    key: str
    header: str
    format: Callable[[Any], str] = text


@dataclass
class Table:
    """Rows (dicts) with the columns to show."""

    columns: list[Column]
    rows: list[dict[str, Any]]

    def cells(self) -> list[list[str]]:
        return [[c.format(row.get(c.key)) for c in self.columns] for row in self.rows]

    def markdown(self) -> str:
        """A GitHub-flavoured Markdown table."""
        def line(cells: list[str]) -> str:
            return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
        head = [line([c.header for c in self.columns]), "| " + " | ".join("---" for _ in self.columns) + " |"]
        return "\n".join(head + [line(cells) for cells in self.cells()])

    def html(self) -> str:
        """An HTML table (values escaped)."""
        # Numbers right-aligned, text left-aligned.
        align = ['' if c.format is text else ' class="num"' for c in self.columns]
        head = "".join(f"<th{a}>{html.escape(c.header)}</th>" for c, a in zip(self.columns, align))
        body = "".join("<tr>" + "".join(f"<td{a}>{html.escape(cell)}</td>" for cell, a in zip(cells, align)) + "</tr>"
                       for cells in self.cells())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
