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


def test_a_reader_closing_the_pipe_is_not_a_traceback():
    # `cnnbench models list | head -1`: once the reader has left, the command stops quietly, with
    # the shell's exit status for a closed pipe, instead of a BrokenPipeError traceback.
    proc = subprocess.Popen([sys.executable, "-m", "cnnbench", "models", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child has imported anything: its first write finds no reader
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and err == ""
