"""The typer app behind every command except `report` (see sidecar.entry)."""

from __future__ import annotations

import os
import signal
import sys
import threading

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


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


@app.command()
def aggregate(
    kubeconfig: str | None = typer.Option(
        None, help="kubeconfig file (default: in-cluster, then KUBECONFIG)"
    ),
) -> None:
    """Watch Deployments, purge the CDN once per completed rollout, call webhooks.

    Configured by environment variables (README: configuration reference). Exits with
    status 2 and one line naming the setting when the configuration is invalid.
    """
    from sidecar import logs
    from sidecar.config import ConfigError, Settings

    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as err:
        print(f"cache-buster aggregate: invalid configuration: {err}", file=sys.stderr)
        raise typer.Exit(2) from None
    logs.setup(settings.log_level)
    log = logs.get_logger("cli")
    log.info("aggregate.config", **settings.describe())

    from sidecar.runtime import build_aggregator, kubernetes_client

    stop = _stop_on_signals()
    aggregator = build_aggregator(settings, kubernetes_client(kubeconfig))
    aggregator.metrics.serve(settings.metrics_port)
    aggregator.start()
    stop.wait()
    aggregator.stop()


def run(args: list[str]) -> int:
    """Run the typer app and return its exit code (click exits through SystemExit)."""
    try:
        app(args=args, prog_name="cache-buster")
    except SystemExit as stop:
        code = stop.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
