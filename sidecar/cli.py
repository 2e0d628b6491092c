"""The typer app behind every command except `report` (see sidecar.entry)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="cache-buster",
    help="Purge a CDN exactly once after a Kubernetes rollout completes.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """cache-buster: one CDN purge per successful rollout, per cluster group."""


def run(args: list[str]) -> int:
    """Run the typer app and return its exit code (click exits through SystemExit)."""
    try:
        app(args=args, prog_name="cache-buster")
    except SystemExit as stop:
        code = stop.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
