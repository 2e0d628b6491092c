"""The reporter's write path (`Reporter`) and its main loop (`ReporterLoop`).

One pod's record in the cluster's Redis: SET with a heartbeat TTL, an explicit PUBLISH when
what it says changes, DEL on SIGTERM; the format is `sidecar.core.wire`'s. The loop never
raises: Redis trouble is retried with the RECONNECT backoff of `sidecar.core.backoff`, and a
bug is logged once per kind (docs/architecture.md, guarantee 6). `Reporter.report_once()` is
the benchmarks' and the simulator's write path too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar import logs
from sidecar.core.backoff import RECONNECT, Backoff
from sidecar.core.wire import (
    Event,
    Message,
    ReportRecord,
    encode_message,
    encode_report,
    report_channel,
    report_key,
)
from sidecar.reporter.config import ReporterConfig
from sidecar.reporter.health import Liveness
from sidecar.reporter.probes import ProbeError, check_probe, read_version
from sidecar.reporter.resp import RespClient, RespConnectionError, RespError

__all__ = [
    "FIRST_ROUND_TIMEOUT",
    "PROBE_RETRY_INTERVAL",
    "Observation",
    "Reporter",
    "ReporterLoop",
]

log = logs.get_logger("reporter")

# The first round must land within 1 s of start, whatever a hanging probe does.
FIRST_ROUND_TIMEOUT = 0.3
# While the probe fails, it is re-checked this often (then every heartbeat once it passes).
PROBE_RETRY_INTERVAL = 0.25
SHUTDOWN_TIMEOUT = 1.0


@dataclass(frozen=True)
class Observation:
    probe_ok: bool
    probe_error: str | None = None
    version: str | None = None
    version_error: str | None = field(default=None, compare=False)


class Reporter:
    """Writes one pod's record. Not thread-safe; `client` may be shared by many Reporters in
    one thread (the load benchmarks simulate thousands of pods over one connection)."""

    def __init__(
        self,
        config: ReporterConfig,
        client: RespClient | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.client = client or RespClient(
            config.redis, timeout=config.redis_timeout, client_name="cache-buster-reporter"
        )
        self.clock = clock
        self.key = report_key(config.namespace, config.pod)
        self.channel = report_channel(config.namespace)
        self.started_at = clock()
        self.last_observation: Observation | None = None
        self._published: tuple[bool, str | None, bool] | None = None
        # True while we believe our record exists: steady-state heartbeats then use SET XX,
        # whose nil reply reveals a record lost to a wipe, restart or expiry at no extra cost.
        self._present = False

    def observe(self, timeout: float | None = None) -> Observation:
        """Run the probe and read the version (each bounded by the probe timeout)."""
        limit = self.config.probe_timeout if timeout is None else timeout
        probe_ok, probe_error = True, None
        if self.config.probe is not None:
            try:
                check_probe(self.config.probe, limit)
            except ProbeError as error:
                probe_ok, probe_error = False, str(error)
        version, version_error = None, None
        if self.config.version_url is not None:
            try:
                version = read_version(self.config.version_url, limit)
            except ProbeError as error:
                version_error = str(error)
        observation = Observation(probe_ok, probe_error, version, version_error)
        self.last_observation = observation
        return observation

    def record(self, observation: Observation, *, terminating: bool = False) -> ReportRecord:
        return ReportRecord(
            pod=self.config.pod,
            namespace=self.config.namespace,
            uid=self.config.uid,
            template_hash=self.config.template_hash,
            probe_ok=observation.probe_ok,
            probe_error=observation.probe_error,
            version=observation.version,
            terminating=terminating,
            started_at=self.started_at,
            updated_at=self.clock(),
        )

    def _message(self, event: Event) -> str:
        return encode_message(Message(self.config.pod, event))

    def write(self, observation: Observation, *, terminating: bool = False) -> bool:
        """SET the record with its TTL; PUBLISH when its content changed, on the first write,
        and whenever the record had gone missing. Returns whether it published.
        Raises RespConnectionError / RespError; the next call starts afresh."""
        value = encode_report(self.record(observation, terminating=terminating))
        content = (observation.probe_ok, observation.version, terminating)
        ttl = self.config.ttl
        try:
            if self._present and content == self._published:
                (reply,) = self.client.pipeline(
                    [RespClient.set_args(self.key, value, ex=ttl, xx=True)]
                )
                _raise_error(reply)
                if reply is not None:
                    return False
            replies = self.client.pipeline(
                [
                    RespClient.set_args(self.key, value, ex=ttl),
                    ["PUBLISH", self.channel, self._message(Event.UPDATE)],
                ]
            )
            for reply in replies:
                _raise_error(reply)
        except BaseException:
            self._present = False
            raise
        self._present = True
        self._published = content
        return True

    def report_once(self, timeout: float | None = None) -> bool:
        """Observe, then write: one heartbeat. Returns whether it published."""
        return self.write(self.observe(timeout))

    def withdraw(self) -> None:
        """On SIGTERM: the record marked terminating, published, then deleted and published,
        all in one round trip. Raises on Redis trouble (the TTL then removes the record)."""
        observation = self.last_observation or Observation(probe_ok=False)
        value = encode_report(self.record(observation, terminating=True))
        replies = self.client.pipeline(
            [
                RespClient.set_args(self.key, value, ex=self.config.ttl),
                ["PUBLISH", self.channel, self._message(Event.UPDATE)],
                ["DEL", self.key],
                ["PUBLISH", self.channel, self._message(Event.DELETE)],
            ]
        )
        for reply in replies:
            _raise_error(reply)
        self._present = False


def _raise_error(reply: object) -> None:
    if isinstance(reply, RespError):
        raise reply


def _redis_problem(error: BaseException) -> str:
    """A state name: one log line per change, not per attempt."""
    if isinstance(error, RespError):
        return f"redis_error:{error.code}"
    return "unreachable"


class ReporterLoop:
    """Heartbeats until `stop` is set, then withdraws the record. Never raises."""

    def __init__(self, reporter: Reporter, stop: threading.Event, liveness: Liveness) -> None:
        self.reporter = reporter
        self.stop = stop
        self.liveness = liveness
        self.backoff = Backoff(RECONNECT)
        self.redis_state: str | None = None
        self.probe_state: tuple[bool, str | None] | None = None
        self.version_state: tuple[str | None, str | None] | None = None
        self._unexpected: set[str] = set()

    def run(self) -> None:
        first = True
        while not self.stop.is_set():
            with self.liveness.busy():
                delay = self._heartbeat(FIRST_ROUND_TIMEOUT if first else None)
            first = False
            self.stop.wait(delay)
        self._shutdown()

    def _heartbeat(self, timeout: float | None) -> float:
        config = self.reporter.config
        try:
            observation = self.reporter.observe(
                None if timeout is None else min(timeout, config.probe_timeout)
            )
            self._log_observation(observation)
            published = self.reporter.write(observation)
        except (RespConnectionError, RespError, OSError) as error:
            self._set_redis_state(_redis_problem(error), error)
            return self.backoff.next()
        except Exception as error:
            # A bug must not kill the sidecar (docs/architecture.md, guarantee 6): log it once
            # per kind, retry.
            kind = type(error).__name__
            if kind not in self._unexpected:
                self._unexpected.add(kind)
                log.exception("report.unexpected_error", error_type=kind)
            return self.backoff.next()
        self.backoff.reset()
        self._set_redis_state("ok", None, published=published)
        if not observation.probe_ok or observation.version_error is not None:
            # Not serving yet: look again soon, so the purge follows readiness within a
            # fraction of a second instead of a whole heartbeat.
            return min(config.interval, PROBE_RETRY_INTERVAL)
        return config.interval

    def _set_redis_state(
        self, state: str, error: BaseException | None, *, published: bool = False
    ) -> None:
        previous, self.redis_state = self.redis_state, state
        if state == previous:
            return
        address = self.reporter.config.redis.describe()
        if state == "ok":
            event = "report.started" if previous is None else "redis.recovered"
            log.info(event, redis=address, key=self.reporter.key, published=published)
        else:
            log.warning(
                "redis.unavailable", redis=address, state=state, error=str(error)[:300],
                note="retrying with backoff; logged again only when this changes",
            )  # fmt: skip

    def _log_observation(self, observation: Observation) -> None:
        config = self.reporter.config
        probe_state = (observation.probe_ok, observation.probe_error)
        if config.probe is not None and probe_state != self.probe_state:
            # Log transitions between passing and failing, and between failure reasons only
            # when it was passing before: a flapping error text is not a new state.
            was_ok = self.probe_state is None or self.probe_state[0]
            if observation.probe_ok:
                log.info("probe.passing", probe=str(config.probe))
            elif was_ok:
                log.warning("probe.failing", probe=str(config.probe), error=observation.probe_error)
        self.probe_state = probe_state
        version_state = (observation.version, observation.version_error)
        if config.version_url is not None and version_state != self.version_state:
            previous = self.version_state
            if observation.version is not None:
                log.info("version.read", url=str(config.version_url), version=observation.version)
            elif previous is None or previous[0] is not None:
                log.warning(
                    "version.failing", url=str(config.version_url), error=observation.version_error
                )
        self.version_state = version_state

    def _shutdown(self) -> None:
        client = self.reporter.client
        client.timeout = min(client.timeout, SHUTDOWN_TIMEOUT)
        client.connect_timeout = min(client.connect_timeout, SHUTDOWN_TIMEOUT)
        try:
            self.reporter.withdraw()
        except Exception as error:
            log.warning(
                "report.withdraw_failed", key=self.reporter.key, error=str(error)[:300],
                note="the record expires with its TTL",
            )  # fmt: skip
        else:
            log.info("report.withdrawn", key=self.reporter.key)
        finally:
            client.close()
