"""`cache-buster report`: the per-pod reporter's command line (sidecar mode).

It runs as a native sidecar in every pod of an opted-in app and writes what only the pod can
see to the cluster's Redis: its identity and pod-template-hash, whether the app answers its
local probe, and optionally the version the app serves.

A broken cache-buster never hurts the app (docs/architecture.md, guarantee 6): the reporter
never exits on its own. A bad flag or setting is logged once and it idles, serving liveness;
Redis trouble is retried with backoff. Memory: stdlib only (no typer, no redis-py, which pulls
asyncio); see sidecar.reporter.resp.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from sidecar import logs
from sidecar.reporter.config import (
    DEFAULT_INTERVAL,
    DEFAULT_PROBE_TIMEOUT,
    DEFAULT_REDIS_TIMEOUT,
    SETTINGS,
    ConfigError,
    ReporterConfig,
    health_port,
    load_config,
)
from sidecar.reporter.health import HealthServer, Liveness
from sidecar.reporter.loop import Reporter, ReporterLoop
from sidecar.reporter.probes import describe_os_error

__all__ = ["main"]

log = logs.get_logger("reporter")


class _ArgumentParser(argparse.ArgumentParser):
    # A bad flag must not exit: a crash-looping native sidecar holds the pod in Init.
    def error(self, message: str) -> NoReturn:
        raise ConfigError({"arguments": message})


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="cache-buster report",
        description=(
            "Per-pod reporter (sidecar mode): writes this pod's probe state and served version "
            "to Redis key cache-buster:report:{namespace}:{pod} (TTL 3 x interval), publishes "
            "changes on cache-buster:reports:{namespace}, deletes the record on SIGTERM. "
            "It never exits on errors: bad configuration is logged and it idles."
        ),
        epilog="Every flag defaults to its environment variable; LOGLEVEL sets the log level.",
    )
    for flag, env_name, text in SETTINGS:
        parser.add_argument(flag, dest=env_name, metavar=env_name, help=f"{text} [${env_name}]")
    parser.add_argument(
        "--log-level",
        dest="LOGLEVEL",
        metavar="LEVEL",
        help="debug, info (default), warning [$LOGLEVEL]",
    )
    return parser


def _idle(stop: threading.Event) -> None:
    while not stop.wait(3600):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """`cache-buster report`: returns 0 after SIGTERM; otherwise runs forever."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    env = dict(os.environ)
    problem: ConfigError | None = None
    try:
        parsed = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        env.update({k: v for k, v in vars(parsed).items() if v is not None})
    except ConfigError as error:
        problem = error
    logs.setup(env.get("LOGLEVEL"))

    config: ReporterConfig | None = None
    if problem is None:
        try:
            config = load_config(env)
        except ConfigError as error:
            problem = error

    port = config.health_port if config else health_port(env, {})
    health_bind = config.health_bind if config else env.get("HEALTH_BIND", "").strip()
    interval = config.interval if config else DEFAULT_INTERVAL
    probe_timeout = config.probe_timeout if config else DEFAULT_PROBE_TIMEOUT
    redis_timeout = config.redis_timeout if config else DEFAULT_REDIS_TIMEOUT
    # One heartbeat is bounded by two probe requests and a Redis reconnect plus retry.
    liveness = Liveness(limit=max(30.0, 3 * (2 * probe_timeout + 4 * redis_timeout)) + interval)
    health: HealthServer | None = None
    if port:
        try:
            health = HealthServer(port, liveness, health_bind).start()
        except OSError as error:
            log.error("health.bind_failed", port=port, error=describe_os_error(error))

    if problem is not None or config is None:
        assert problem is not None
        log.error(
            "report.config_invalid",
            settings=sorted(problem.problems),
            error=str(problem),
            note="idling: fix the settings and restart the pod; the app is not affected",
        )
        _idle(stop)
        return 0

    log.info(
        "report.starting", pod=config.pod, namespace=config.namespace,
        template_hash=config.template_hash, probe=str(config.probe) if config.probe else None,
        version_url=str(config.version_url) if config.version_url else None,
        redis=config.redis.describe(), interval=config.interval, ttl=config.ttl,
    )  # fmt: skip
    if not config.template_hash:
        log.warning(
            "report.no_template_hash",
            note="POD_TEMPLATE_HASH is empty: the aggregator can match this pod to a "
            "ReplicaSet only through the pod-template-hash label (Deployment pods)",
        )
    try:
        ReporterLoop(Reporter(config), stop, liveness).run()
    finally:
        if health is not None:
            health.close()
    return 0
