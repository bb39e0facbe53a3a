"""The single ``tokfilter`` entry point: every subcommand is wired, errors exit non-zero."""

import subprocess
import sys

import pytest

from tokfilter.cli import COMMANDS, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokfilter.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_subcommand():
    out = run_cli("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


def test_unknown_subcommand_fails_with_usage():
    out = run_cli("no-such-job")
    assert out.returncode != 0
    assert "invalid choice" in out.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"tokfilter {name}" in capsys.readouterr().out
