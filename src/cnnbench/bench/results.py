"""What a benchmark section returns, the targets it checks, and how results are saved.

A section returns rows (flat dicts, one per measured thing) plus notes and target checks; the
suite collects them into one JSON document (schema below) and one Markdown table per section.
Numbers inside rows are either plain values or ``Stats``/``Ratio`` dicts (median, low, high).

JSON schema ``cnnbench.bench/1``::

    {"schema": "cnnbench.bench/1", "created": ISO time, "command": str, "quick": bool,
     "settings": {...}, "machine": {...}, "load_before": [1, 5, 15 min], "load_after": [...],
     "sections": {NAME: {"title": str, "seconds": float, "rows": [ {...} ], "notes": [str],
                         "targets": [ {"name", "goal", "measured", "unit", "met"[, "lower_is_better"]} ]}},
     "targets": [ every section's targets ]}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnbench.files import write_text

SCHEMA = "cnnbench.bench/1"


@dataclass
class Target:
    """One goal from the issue, checked against a measured number."""

    name: str
    """What is compared (e.g. "data path (a) vs (b)")."""
    goal: float
    """The threshold the measurement must reach (at least, or at most with ``lower_is_better``)."""
    measured: float | None
    """The measured value (median); None when it could not be measured."""
    unit: str = "x"
    """Unit of goal and measured (x for ratios, % for utilisation, points for top-1)."""
    lower_is_better: bool = False
    """Met when measured <= goal (seconds, megabytes) instead of >= goal."""

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured <= self.goal if self.lower_is_better else self.measured >= self.goal

    def to_dict(self) -> dict:
        d = {**asdict(self), "met": self.met}
        if not self.lower_is_better:  # >= targets keep the shape documents had before the flag
            del d["lower_is_better"]
        return d


@dataclass
class SectionResult:
    """The outcome of one benchmark section."""

    title: str
    """A one-line heading for the table."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """One flat dict per measured thing."""
    columns: list[tuple[str, str]] = field(default_factory=list)
    """(row key, column heading) pairs for the Markdown table, in order."""
    notes: list[str] = field(default_factory=list)
    """Sentences printed under the table: what was timed, what was excluded, verdicts."""
    targets: list[Target] = field(default_factory=list)
    """Goals checked by this section."""
    seconds: float = 0.0
    """Wall time the section took."""
    details: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping in the JSON (fits, per-epoch curves)."""

    def to_dict(self) -> dict:
        return {"title": self.title, "seconds": self.seconds, "rows": self.rows,
                "columns": [list(c) for c in self.columns], "notes": self.notes,
                "targets": [t.to_dict() for t in self.targets], "details": self.details}

    @classmethod
    def from_dict(cls, d: dict) -> "SectionResult":
        """Rebuild a section from its JSON form (``met`` is derived, so it is dropped)."""
        targets = [Target(**{k: v for k, v in t.items() if k != "met"}) for t in d["targets"]]
        return cls(title=d["title"], rows=d["rows"], columns=[tuple(c) for c in d["columns"]],
                   notes=d["notes"], targets=targets, seconds=d["seconds"], details=d.get("details", {}))


def write_json(document: dict, path: Path) -> None:
    """Write ``document`` as indented JSON to ``path`` atomically."""
    write_text(Path(path), json.dumps(document, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def format_cell(value: Any) -> str:
    """One table cell: Stats/Ratio dicts as ``median [low-high]``, floats to 3 significant digits."""
    if value is None:
        return "-"
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict) and {"low", "high"} <= value.keys():
        middle = value.get("median", value.get("value"))
        return f"{_number(middle)} [{_number(value['low'])}-{_number(value['high'])}]"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _number(value)
    return str(value)


def _number(x: float) -> str:
    if x == 0 or abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"


def markdown_table(section: SectionResult) -> str:
    """The section as a Markdown table followed by its notes and target checks."""
    columns = section.columns or [(k, k) for k in (section.rows[0] if section.rows else {})]
    lines = [f"### {section.title}", ""]
    if section.rows:
        lines.append("| " + " | ".join(head for _, head in columns) + " |")
        lines.append("|" + "|".join("---" for _ in columns) + "|")
        for row in section.rows:
            lines.append("| " + " | ".join(format_cell(row.get(key)) for key, _ in columns) + " |")
        lines.append("")
    for note in section.notes:
        lines.append(f"- {note}")
    for target in section.targets:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[target.met]
        measured = "-" if target.measured is None else _number(target.measured)
        relation = "<=" if target.lower_is_better else ">="
        lines.append(f"- target {target.name}: {relation} {_number(target.goal)}{target.unit}, "
                     f"measured {measured}{target.unit}: {verdict}")
    return "\n".join(lines).rstrip() + "\n"
