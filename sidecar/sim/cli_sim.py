"""`cache-buster sim`: the emulated world in the foreground, for a person or a script.

Starts the Kubernetes API emulator (with its Deployment controller), the CloudFront emulator
and, with `--redis`, an in-process Redis (fakeredis over TCP); writes a kubeconfig; prints the
endpoints (one JSON line with `--json`); runs until SIGINT or SIGTERM, then stops everything
and exits 0.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sidecar.logs import get_logger
from sidecar.sim.cloudfront import TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY, CloudFrontEmulator
from sidecar.sim.kube import KubeEmulator

log = get_logger("sim.cli")

REGION = "us-east-1"  # CloudFront is global; botocore still wants a region to sign for


class SimUsageError(ValueError):
    """A bad option value: the command prints it and exits 2."""


@dataclass(frozen=True)
class SimOptions:
    kubeconfig: Path
    ready_after: float | None = 2.0  # wall-clock seconds; None: pods stay not ready
    time_scale: float = 1.0
    distributions: tuple[tuple[str, ...], ...] = ()
    redis: bool = False
    json: bool = False

    def __post_init__(self) -> None:
        if self.time_scale <= 0:
            raise SimUsageError("--time-scale must be positive")
        if self.ready_after is not None and self.ready_after < 0:
            raise SimUsageError("--ready-after must be zero or more seconds")


def parse_distributions(values: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """One distribution per `--distribution` value, its aliases separated by commas."""
    out: list[tuple[str, ...]] = []
    for value in values:
        aliases = tuple(a.strip().lower() for a in value.split(",") if a.strip())
        if not aliases:
            raise SimUsageError(f"--distribution needs at least one alias, got {value!r}")
        out.append(aliases)
    seen: set[str] = set()
    for aliases in out:
        for alias in aliases:
            # CloudFront refuses a CNAME that another distribution already has.
            if alias in seen:
                raise SimUsageError(f"alias {alias!r} is given to two distributions")
            seen.add(alias)
    return tuple(out)


@dataclass
class SimWorld:
    """The running emulators and what a client needs to reach them."""

    options: SimOptions
    kube: KubeEmulator
    cloudfront: CloudFrontEmulator
    redis_server: Any = None  # sidecar.sim.world.FakeRedisServer, imported only with --redis
    distribution_ids: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    @classmethod
    def start(cls, options: SimOptions) -> SimWorld:
        # The emulator multiplies ready_after by time_scale; the option means wall-clock.
        ready_after = None
        if options.ready_after is not None:
            ready_after = options.ready_after / options.time_scale
        kube = KubeEmulator(ready_after=ready_after, time_scale=options.time_scale)
        cloudfront = CloudFrontEmulator()
        world = cls(options, kube, cloudfront)
        try:
            kube.start()
            cloudfront.start()
            if options.redis:
                from sidecar.sim.world import FakeRedisServer

                world.redis_server = FakeRedisServer().start()
            for aliases in options.distributions:
                world.distribution_ids.append((cloudfront.add_distribution(aliases), aliases))
            try:
                kube.write_kubeconfig(options.kubeconfig)
            except OSError as err:
                raise SimUsageError(
                    f"cannot write the kubeconfig {options.kubeconfig}: {err.strerror or err}"
                ) from None
        except BaseException:
            world.stop()
            raise
        return world

    def stop(self) -> None:
        # Each stop is idempotent; one failing must not leave the others running.
        for stop in (
            self.kube.stop,
            self.cloudfront.stop,
            self.redis_server.stop if self.redis_server is not None else None,
        ):
            if stop is None:
                continue
            try:
                stop()
            except Exception as exc:
                log.warning("sim.stop_failed", error=repr(exc))

    @property
    def redis_url(self) -> str | None:
        return str(self.redis_server.url) if self.redis_server is not None else None

    def environment(self) -> dict[str, str]:
        """The variables that point kubectl, boto3 and cache-buster at the emulators."""
        env = {
            "KUBECONFIG": str(self.options.kubeconfig.resolve()),
            "AWS_ENDPOINT_URL_CLOUDFRONT": self.cloudfront.url,
            "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": TEST_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }
        if self.redis_url is not None:
            env["REDIS_URL"] = self.redis_url
        return env

    def endpoints(self) -> dict[str, Any]:
        return {
            "kubernetes": self.kube.url,
            "kubeconfig": str(self.options.kubeconfig.resolve()),
            "cloudfront": self.cloudfront.url,
            "redis": self.redis_url,
            "distributions": [
                {"id": dist_id, "aliases": list(aliases)}
                for dist_id, aliases in self.distribution_ids
            ],
            "env": self.environment(),
        }


def describe(endpoints: dict[str, Any]) -> str:
    """The human form of `endpoints()`: what runs where, and the lines to paste in a shell."""
    lines = [
        "cache-buster sim: the emulated world is up (Ctrl-C to stop)",
        f"  Kubernetes API  {endpoints['kubernetes']}  (kubeconfig {endpoints['kubeconfig']})",
        f"  CloudFront      {endpoints['cloudfront']}",
    ]
    for dist in endpoints["distributions"]:
        lines.append(f"    distribution  {dist['id']}  aliases {', '.join(dist['aliases'])}")
    if endpoints["redis"]:
        lines.append(f"  Redis           {endpoints['redis']}")
    lines.append("")
    lines.append("Use them from a shell:")
    lines.extend(f"  export {name}={value}" for name, value in endpoints["env"].items())
    return "\n".join(lines) + "\n"


def serve(options: SimOptions, stop: threading.Event, out: TextIO) -> int:
    """Run the world until `stop` is set (the CLI sets it on SIGINT/SIGTERM); returns 0."""
    world = SimWorld.start(options)
    try:
        endpoints = world.endpoints()
        if options.json:
            out.write(json.dumps(endpoints, separators=(",", ":")) + "\n")
        else:
            out.write(describe(endpoints))
        out.flush()
        log.info(
            "sim.started",
            kubernetes=world.kube.url,
            cloudfront=world.cloudfront.url,
            redis=world.redis_url,
            distributions=len(world.distribution_ids),
        )
        # A timeout keeps the main thread returning to the interpreter, so signal handlers
        # run promptly whatever the platform does with a blocked lock acquire.
        while not stop.wait(0.5):
            pass
    finally:
        world.stop()
    log.info("sim.stopped")
    return 0


def options_from_cli(
    *,
    kubeconfig: str | os.PathLike[str],
    ready_after: float | None,
    time_scale: float,
    distributions: Sequence[str],
    redis: bool,
    json_output: bool,
) -> SimOptions:
    return SimOptions(
        kubeconfig=Path(kubeconfig),
        ready_after=ready_after,
        time_scale=time_scale,
        distributions=parse_distributions(distributions),
        redis=redis,
        json=json_output,
    )
