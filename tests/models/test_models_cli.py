"""`cnnbench models list` and `cnnbench models show`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cnnbench.cli import main


def test_list_json_at_64px(capsys):
    assert main(["models", "list", "--input-size", "64", "--num-classes", "200", "--family", "ting", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"ting_m1", "ting_m4"}
    m1 = rows["ting_m1"]
    assert m1["params"] == 354_744 and m1["input_size"] == 64 and m1["native_input_size"] == 64
    # convs: 60*60*16*5*5*3 + 28*28*16*3*3*16 + 12*12*32*3*3*16 MACs; FCs 1152*256 + 256*200
    macs = 60 * 60 * 16 * 75 + 28 * 28 * 16 * 144 + 12 * 12 * 32 * 144 + 1152 * 256 + 256 * 200
    assert m1["mflops"] == round(2 * macs / 1e6, 2)
    assert "report 003" in m1["source"]


def test_list_table_caches_rows(capsys):
    assert main(["models", "list", "--family", "squeezenet"]) == 0
    first = capsys.readouterr().out
    # torchvision: 1,248,424 parameters, 0.819 GMACs at 224 px
    assert "squeezenet1_0" in first and "1,248,424" in first and "1,637.8" in first
    cache = Path(os.environ["CNNBENCH_HOME"]) / "models" / "describe-cache.json"
    assert cache.is_file()
    assert main(["models", "list", "--family", "squeezenet"]) == 0
    assert capsys.readouterr().out == first


def test_list_marks_sizes_a_model_cannot_take(capsys):
    assert main(["models", "list", "--family", "alexnet", "--input-size", "32", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(row["params"] is None and "smallest it accepts is 63 px" in row["note"] for row in rows)


def test_list_with_option_applies_to_models_that_take_it(capsys):
    assert main(["models", "list", "--family", "preact_resnet", "--input-size", "32", "--option", "stem=small",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == ["preact_resnet18", "preact_resnet34"]
    assert rows[0]["mflops"] > 1000  # 32x32 maps in layer1: ~0.56 GMACs


def test_show_prints_layers_and_l2(capsys):
    assert main(["models", "show", "deepl18_e"]) == 0
    out = capsys.readouterr().out
    assert "report 000" in out and "42,699,752" in out
    assert "L2 layers:   features.conv3, features.conv6, features.conv9, head.fc1, head.fc2, head.fc3" in out
    assert "features.pool3" in out and "80x5x5" in out  # 64 px -> 5x5x80 before the FC layers
    assert "head.fc1" in out and "8,196,096" in out     # 2000*4096 + 4096


def test_show_json_with_options(capsys):
    assert main(["models", "show", "resnet18", "--input-size", "64", "--option", "stem=small", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["options"] == {"stem": "small"} and data["input_size"] == 64
    layers = {row["name"]: row for row in data["layers"]}
    assert layers["conv1"]["output"] == [64, 64, 64] and layers["layer4.1"]["output"] == [512, 8, 8]


def test_errors_exit_2_with_one_line(capsys):
    assert main(["models", "show", "resnet19"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnbench: error: unknown model 'resnet19'") and err.count("\n") == 1
    assert main(["models", "list", "--family", "nosuch"]) == 2
    assert main(["models", "show", "alexnet", "--input-size", "28"]) == 2
    assert "smallest it accepts is 63 px" in capsys.readouterr().err
    assert main(["models", "show", "resnet18", "--option", "stem"]) == 2


def test_cached_rows_go_stale_when_torchvision_changes(monkeypatch):
    import torchvision

    from cnnbench.models import summary

    before = summary._code_fingerprint()
    monkeypatch.setattr(torchvision, "__version__", torchvision.__version__ + "+other")
    assert summary._code_fingerprint() != before  # torchvision's builders are half of every row
