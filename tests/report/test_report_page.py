"""report: self-contained HTML + Markdown for run and comparison folders.

Rendering in headless Chromium is checked on a really trained run in tests/evaluate/test_eval_end_to_end.py.
"""

import base64
import re


from cnnbench.cli import main
from cnnbench.report.compare import build_comparison, write_comparison
from cnnbench.report.reports import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_FIGURES = ["curves", "val-confusion-worst", "val-per-class", "val-mistakes", "val-top5"]


def _embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_run_report_embeds_every_figure_and_links_them_in_markdown(runs):
    paths = write_report(runs[0])
    page = paths["html"].read_text()
    pngs = _embedded_pngs(page)
    assert len(pngs) == len(RUN_FIGURES) and all(p.startswith(PNG_MAGIC) for p in pngs)
    assert "src=\"http" not in page and "<link" not in page  # nothing fetched from outside
    markdown = paths["markdown"].read_text()
    for name in RUN_FIGURES:
        assert f"(figures/{name}.png)" in markdown
        assert (runs[0] / "report" / "figures" / f"{name}.png").read_bytes() in pngs
    # the diagnostics sentence, the confused-pairs table and the evaluation row are in both versions
    for text in ("best top-1", "The 20 most-confused class pairs", "| val | val | none | best | 400 |"):
        assert text in markdown
    assert "most-confused class pairs" in page and "train-val top-1 gap" in page


def test_unevaluated_run_report_says_how_to_evaluate(runs):
    paths = write_report(runs[3], runs[3] / "page")
    markdown = paths["markdown"].read_text()
    assert "Not evaluated yet: run `cnnbench evaluate" in markdown
    assert markdown.count("](figures/") == 1  # only the curves


def test_compare_report_has_bubble_chart_tables_and_curves(runs, tmp_path):
    write_comparison(build_comparison(runs), tmp_path / "cmp")
    paths = write_report(tmp_path / "cmp")
    markdown = paths["markdown"].read_text()
    assert "(figures/accuracy-vs-cost.png)" in markdown and "(figures/val-curves.png)" in markdown
    assert "Mean ± std over seeds" in markdown and "Paired McNemar tests" in markdown
    assert len(_embedded_pngs(paths["html"].read_text())) == 2


def test_report_refuses_a_folder_that_is_neither(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["report", str(tmp_path / "x")]) == 2
    assert "expected a run folder (with classes.json) or a comparison folder" in capsys.readouterr().err


def test_report_into_a_used_folder_leaves_no_figures_of_the_earlier_page(runs, tmp_path):
    """figures/ holds this page's PNGs only: another run's gallery left there would read as this run's."""
    out = tmp_path / "page"
    write_report(runs[0], out)
    assert sorted(p.stem for p in (out / "figures").iterdir()) == sorted(RUN_FIGURES)
    paths = write_report(runs[3], out)  # not evaluated: the curves only
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["curves.png"]
    assert paths["curves"] == out / "figures" / "curves.png"
