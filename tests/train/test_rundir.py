"""The run folder: its small files are written atomically (temp file, fsync, os.replace), and a failed
write leaves the previous file and no temporary file behind; a bad --out is a one-line error."""

from __future__ import annotations

import os

import pytest

from cnnbench.errors import CnnbenchError
from cnnbench.train import rundir

ROW = {"epoch": 1, "train_loss": 1.5, "train_top1": 0.25}


def test_a_failed_write_leaves_the_previous_file_and_no_temp_file(tmp_path, monkeypatch):
    rundir.write_metrics(tmp_path, [ROW])
    before = (tmp_path / "metrics.csv").read_text()

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError):
        rundir.write_metrics(tmp_path, [ROW, dict(ROW, epoch=2)])
    with pytest.raises(OSError):
        rundir.write_summary(tmp_path, {"status": "finished"})
    assert (tmp_path / "metrics.csv").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_files_reach_the_disk_before_they_replace_the_old_ones(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append("replace"), replace(src, dst))[1])
    rundir.write_summary(tmp_path, {"status": "finished"})
    rundir.write_recipe(tmp_path, {"name": "tiny"})
    assert events == ["fsync", "replace"] * 2


@pytest.mark.parametrize("out", ["notes.txt", "notes.txt/run"])
def test_an_out_path_through_a_file_is_a_one_line_error(tmp_path, out):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(CnnbenchError, match=r"notes.txt(/run)?: (is a file, not a folder|cannot create the run folder)"):
        rundir.prepare_run_dir(tmp_path / out, resume=False, overwrite=False)
    with pytest.raises(CnnbenchError):
        rundir.prepare_run_dir(tmp_path / out, resume=False, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
