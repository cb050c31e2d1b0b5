"""The results document: targets, Markdown tables, atomic JSON, settings and overrides."""

from __future__ import annotations

import json

import pytest

from cnnbench.bench.results import SectionResult, Target, format_cell, markdown_table, write_json
from cnnbench.bench.settings import QUICK, build_settings
from cnnbench.bench.stats import Stats, ratio
from cnnbench.errors import CnnbenchError


def test_target_met_and_unmeasured():
    assert Target("x", 20.0, 25.0).met is True
    assert Target("x", 20.0, 19.9).met is False
    assert Target("x", 20.0, None).met is None
    assert Target("mfu", 30.0, 12.5, unit="%").to_dict() == {
        "name": "mfu", "goal": 30.0, "measured": 12.5, "unit": "%", "met": False}


def test_cells_show_median_and_range():
    assert format_cell(Stats.of([1.0, 2.0, 3.0])) == "2.00 [1.00-3.00]"
    assert format_cell(ratio(Stats.of([300.0]), Stats.of([100.0]))) == "3.00 [3.00-3.00]"
    assert format_cell(1234.5) == "1,234"
    assert format_cell(None) == "-"


def test_markdown_table_and_json_round_trip(tmp_path):
    section = SectionResult(
        title="demo", rows=[{"path": "a", "t": Stats.of([1.0, 1.2])}, {"path": "b", "t": Stats.of([20.0])}],
        columns=[("path", "path"), ("t", "epoch s")], notes=["a note"], targets=[Target("b/a", 20.0, 18.2)])
    text = markdown_table(section)
    assert text.splitlines()[:4] == ["### demo", "", "| path | epoch s |", "|---|---|"]
    assert "| a | 1.10 [1.00-1.20] |" in text
    assert "- a note" in text and "measured 18.2x: NOT met" in text

    out = tmp_path / "sub" / "bench.json"
    write_json({"sections": {"demo": section.to_dict()}}, out)
    loaded = json.loads(out.read_text())["sections"]["demo"]
    assert loaded["rows"][0]["t"] == {"median": 1.1, "low": 1.0, "high": 1.2, "runs": [1.0, 1.2], "unit": "",
                                      "spread": pytest.approx(0.2 / 1.1)}
    assert loaded["targets"][0]["met"] is False
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # no temp file left behind
    assert markdown_table(SectionResult.from_dict(loaded)) == text


def test_settings_quick_preset_and_overrides():
    full = build_settings()
    quick = build_settings(quick=True)
    assert full.repeats == 5 and full.models[0] == "resnet18" and "bf16_cl_compile" in full.variants
    assert quick.repeats == QUICK["repeats"] and "bf16_cl_compile" not in quick.variants
    tuned = build_settings(quick=True, overrides=["repeats=2", "models=[vgg_like]", "tta_budgets=[5]"])
    assert (tuned.repeats, tuned.models, tuned.tta_budgets) == (2, ["vgg_like"], [5.0])
    with pytest.raises(CnnbenchError, match="unknown key 'repeat'.*did you mean 'repeats'"):
        build_settings(overrides=["repeat=2"])
    with pytest.raises(CnnbenchError, match="bench.variants"):
        build_settings(overrides=["variants=[fp16]"])
    with pytest.raises(CnnbenchError, match="bench.repeats: expected an integer"):
        build_settings(overrides=["repeats=two"])
