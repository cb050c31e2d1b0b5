"""`cnnbench data info / show / prepare` on fixtures."""

from __future__ import annotations

import json

import matplotlib.image
import pytest

from cnnbench.cli import main


def test_info_json_reports_counts_grayscale_stats_and_cache(capsys, tiny_zip):
    assert main(["data", "info", "tiny-imagenet", "--data", str(tiny_zip), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["classes"] == 3 and facts["channels"] == 3
    assert facts["splits"] == {"train": {"images": 36, "labelled": 36}, "val": {"images": 12, "labelled": 12},
                               "test": {"images": 3, "labelled": 0}}
    assert facts["grayscale"] == {"train": 3, "val": 0, "test": 0}
    assert len(facts["channel_mean"]) == 3 and all(0 < v < 1 for v in facts["channel_std"])
    assert facts["cache_bytes"] > 51 * 64 * 64 * 3


def test_info_text_and_views(capsys, tiny_zip):
    assert main(["data", "info", "tiny-imagenet", "--data", str(tiny_zip), "--train-per-class", "2",
                 "--val-split", "half"]) == 0
    out = capsys.readouterr().out
    assert "tiny-imagenet: 3 classes, 64x64, 3 channel(s)" in out
    assert "train             6 images" in out and "val               6 images" in out
    assert "unlabelled        3 images (0 labelled)" in out


def test_prepare_then_reuse(capsys, tiny_zip, fresh_home):
    assert main(["data", "prepare", "tiny-imagenet", "--data", str(tiny_zip), "--grayscale", "drop"]) == 0
    first = capsys.readouterr().out
    assert "train 33, val 12, test 3; grayscale 3; skipped bad 0; decoded in" in first
    assert main(["data", "prepare", "tiny-imagenet", "--data", str(tiny_zip), "--grayscale", "drop"]) == 0
    assert "reused (source and options unchanged)" in capsys.readouterr().out


def test_show_writes_a_png_grid(capsys, tiny_zip, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["data", "show", "tiny-imagenet", "--data", str(tiny_zip), "--split", "val", "--n", "7",
                 "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 200 and image.shape[1] > 600  # 2 rows x 6 columns of titled tiles


@pytest.mark.parametrize("argv", [["data", "--help"], ["data", "info", "--help"], ["data", "download", "--help"]])
def test_help_on_every_level(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0 and "usage: cnnbench data" in capsys.readouterr().out


def test_show_refuses_a_negative_seed(capsys, tiny_zip, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["data", "show", "tiny-imagenet", "--data", str(tiny_zip), "--seed", "-1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "cnnbench: error: --seed: expected a non-negative integer, got -1" and not out.exists()


def test_show_out_that_cannot_be_written_is_a_one_line_error(capsys, tiny_zip, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out, expected in [(tmp_path, "is a folder; expected a file name"),
                          (blocker / "grid.png", "cannot write there")]:
        assert main(["data", "show", "tiny-imagenet", "--data", str(tiny_zip), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"cnnbench: error: --out {out}: {expected}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
