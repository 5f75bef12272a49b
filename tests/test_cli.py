"""The `brainkernels` command: help on every level, one-line errors, --debug tracebacks."""

import subprocess
import sys

import pytest

from brainkernels import cli


def run(*argv: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "brainkernels", *argv], capture_output=True, text=True, cwd=cwd)


def test_help_on_every_level(tmp_path):
    top = run("--help", cwd=tmp_path)
    assert top.returncode == 0 and "info" in top.stdout
    for name, _action in cli.build_parser()._subparsers._group_actions[0].choices.items():
        result = run(name, "--help", cwd=tmp_path)
        assert result.returncode == 0 and "usage: brainkernels " + name in result.stdout


def test_user_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    def fail(arguments):
        raise FileNotFoundError("/data/cq500: no such folder")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["info"].set_defaults(run=fail)
    assert cli.main(["info"]) == 2
    assert capsys.readouterr().err == "brainkernels info: error: /data/cq500: no such folder\n"
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "info"])


def test_unknown_command_is_refused(tmp_path):
    result = run("frobnicate", cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice: 'frobnicate'" in result.stderr
