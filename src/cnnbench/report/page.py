"""A report page as a list of blocks, rendered to self-contained HTML and to Markdown.

The same blocks (headings, paragraphs, bullet lists, tables, figures) give both versions, so
they cannot drift apart. The HTML embeds every figure as a base64 PNG (one file to mail or
archive); the Markdown links PNG files written beside it under ``figures/``.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from cnnbench.files import write_atomic, write_text
from cnnbench.report.figures import figure_png
from cnnbench.report.tables import Table

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f0f0f0; }
.num { text-align: right; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
figcaption { color: #555; font-size: 0.9em; }
.flag { color: #a00; }
"""
# Records, once the page has loaded, how many images decoded: tests read these attributes from
# the DOM that headless Chromium dumps, to check every embedded figure really renders.
IMAGE_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images-total", images.length);
  document.body.setAttribute("data-images-loaded", loaded.length);
});
"""


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]
    css_class: str = ""


@dataclass
class FigureBlock:
    name: str
    """File stem for the Markdown version (figures/<name>.png)."""
    png: bytes
    caption: str


@dataclass
class Page:
    """An ordered list of blocks with a title."""

    title: str
    blocks: list = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(Heading(text, level))

    def paragraph(self, text: str) -> None:
        self.blocks.append(Paragraph(text))

    def bullets(self, items: list[str], css_class: str = "") -> None:
        if items:
            self.blocks.append(Bullets(list(items), css_class))

    def table(self, table: Table) -> None:
        if table.rows:
            self.blocks.append(table)

    def figure(self, name: str, fig: Figure, caption: str) -> None:
        self.blocks.append(FigureBlock(_slug(name), figure_png(fig), caption))

    @property
    def figures(self) -> list[FigureBlock]:
        return [b for b in self.blocks if isinstance(b, FigureBlock)]

    def html(self) -> str:
        """One self-contained HTML document (figures as data: URIs)."""
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for block in self.blocks:
            if isinstance(block, Heading):
                body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
            elif isinstance(block, Paragraph):
                body.append(f"<p>{html.escape(block.text)}</p>")
            elif isinstance(block, Bullets):
                cls = f' class="{block.css_class}"' if block.css_class else ""
                body.append(f"<ul{cls}>" + "".join(f"<li>{html.escape(i)}</li>" for i in block.items) + "</ul>")
            elif isinstance(block, Table):
                body.append(block.html())
            elif isinstance(block, FigureBlock):
                data = base64.b64encode(block.png).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{STYLE}</style>"
                f"<script>{IMAGE_CHECK}</script></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")

    def markdown(self, figure_dir: str = "figures") -> str:
        """The Markdown version; figures are linked as ``<figure_dir>/<name>.png``."""
        out = [f"# {self.title}"]
        for block in self.blocks:
            if isinstance(block, Heading):
                out.append("#" * block.level + " " + block.text)
            elif isinstance(block, Paragraph):
                out.append(block.text)
            elif isinstance(block, Bullets):
                out.append("\n".join(f"- {item}" for item in block.items))
            elif isinstance(block, Table):
                out.append(block.markdown())
            elif isinstance(block, FigureBlock):
                out.append(f"![{block.caption}]({figure_dir}/{block.name}.png)\n\n*{block.caption}*")
        return "\n\n".join(out) + "\n"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "figure"


def write_page(page: Page, out: Path) -> dict[str, Path]:
    """Write report.html (self-contained), report.md and figures/*.png into ``out``."""
    out = Path(out)
    paths = {}
    for block in page.figures:
        paths[block.name] = write_atomic(out / "figures" / f"{block.name}.png", lambda t, b=block: t.write_bytes(b.png))
    paths["markdown"] = write_text(out / "report.md", page.markdown())
    paths["html"] = write_text(out / "report.html", page.html())
    # An earlier page's figures (another run's gallery, a section now gone) would read as this page's.
    names = {b.name for b in page.figures}
    for stale in (out / "figures").glob("*.png"):
        if stale.stem not in names:
            stale.unlink()
    return paths
