"""The one atomic writer (cnnbench.files): all or nothing, no temp file left, normal permissions."""

import os
import stat

import pytest

from cnnbench.files import write_atomic, write_bytes, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = write_text(tmp_path / "summary.json", "old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_written_files_get_the_umask_permissions_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_bytes(tmp_path / "sub" / "stats.npz", b"\x00\x01")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp would have made it 0o600


def test_a_file_where_the_folder_should_be_is_a_one_line_error(tmp_path):
    from cnnbench.errors import CnnbenchError

    blocker = tmp_path / "reports"
    blocker.write_text("x")
    with pytest.raises(CnnbenchError) as info:
        write_text(blocker / "page" / "index.md", "# page")
    assert str(info.value) == f"{blocker / 'page'}: cannot create the folder for index.md (Not a directory)"
    assert blocker.read_text() == "x"
