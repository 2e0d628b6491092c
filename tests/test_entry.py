"""The console script's dispatcher keeps `report` off typer's import path."""

from __future__ import annotations

import re
import subprocess
import sys


def test_help_lists_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "--help"], capture_output=True, text=True, check=True
    )
    assert "cache-buster" in out.stdout
    for command in ("aggregate", "demo", "sim", "report"):
        assert re.search(rf"^\W*{command}\s", out.stdout, re.MULTILINE), command


def test_report_goes_to_the_stdlib_reporter_without_typer() -> None:
    """`report` is listed by typer's help, but the dispatcher never imports typer for it."""
    code = (
        "import sys; from sidecar.entry import main; "
        "rc = main(['report', '--help']); "
        "assert 'typer' not in sys.modules, 'typer on the reporter path'; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage" in (out.stdout + out.stderr).lower()


def test_report_through_the_typer_app_reaches_the_same_reporter() -> None:
    from sidecar.cli import run

    assert run(["report", "--help"]) == 0


def test_unknown_command_is_a_usage_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "no-such-command"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "no-such-command" in out.stderr
