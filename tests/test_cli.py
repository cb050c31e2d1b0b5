import subprocess
import sys

from cnnbench.cli import main


def test_help_exits_zero(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    assert "usage: cnnbench" in out


def test_module_entry_point_reports_version():
    result = subprocess.run([sys.executable, "-m", "cnnbench", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("cnnbench ")
