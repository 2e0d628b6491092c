"""The aggregator's view of the pods' reports in the cluster's Redis (sidecar mode).

Pub/sub drops messages while disconnected, so every (re)subscription re-reads the state with
SCAN; while a rollout waits only on reports, `fresh()` re-reads that ReplicaSet's records
(MGET: a record exists only while its pod heartbeats, the TTL is the liveness check).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from sidecar.core.backoff import RECONNECT, Backoff
from sidecar.core.wire import (
    Event,
    Report,
    decode_message,
    decode_report,
    report_channel,
    report_key,
    report_pattern,
)
from sidecar.logs import get_logger

log = get_logger("reports")


class ReportCache:
    """Pod name -> latest report, kept current from Redis; `on_change(template_hash)` is
    called from the subscriber thread when a pod of that ReplicaSet changes."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        on_change: Callable[[str], None],
    ) -> None:
        self._redis = client
        self.namespace = namespace
        self._on_change = on_change
        self._lock = threading.Lock()
        self._reports: dict[str, Report] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        # Set when redis-py re-established the subscriber's connection by itself (its retry
        # policy reconnects and re-subscribes without raising): messages were lost, re-read.
        self._reconnected = threading.Event()

    def start(self) -> ReportCache:
        self._thread = threading.Thread(target=self._run, name="reports", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def for_hash(self, template_hash: str) -> list[Report]:
        with self._lock:
            return [r for r in self._reports.values() if r.template_hash == template_hash]

    def fresh(self, template_hash: str, stale_after: float | None = None) -> list[Report]:
        """Re-read the records of this ReplicaSet's pods from Redis (expired ones vanish).
        With `stale_after`, a record whose last heartbeat is older than that is left out: a
        reporter that stopped writing (hung, partitioned) no longer vouches for its pod, even
        before its key expires."""
        with self._lock:
            pods = [p for p, r in self._reports.items() if r.template_hash == template_hash]
        if not pods:
            return []
        values = self._redis.mget([report_key(self.namespace, p) for p in pods])
        reports: list[Report] = []
        with self._lock:
            for pod, raw in zip(pods, values, strict=True):
                report = decode_report(raw)
                if report is None:
                    self._reports.pop(pod, None)
                else:
                    self._reports[pod] = report
                    reports.append(report)
        if stale_after is not None:
            now = time.time()
            reports = [r for r in reports if now - r.updated_at <= stale_after]
        return reports

    # -- subscriber -------------------------------------------------------------------------
    def _resync(self) -> None:
        found: dict[str, Report] = {}
        keys = list(self._redis.scan_iter(match=report_pattern(self.namespace), count=1000))
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            for raw in self._redis.mget(chunk):
                report = decode_report(raw)
                if report is not None:
                    found[report.pod] = report
        with self._lock:
            before = self._reports
            self._reports = found
        changed = {r.template_hash for r in found.values() if before.get(r.pod) != r}
        changed |= {r.template_hash for p, r in before.items() if p not in found}
        for template_hash in changed:
            self._on_change(template_hash)

    def _apply(self, message: dict[str, Any]) -> None:
        parsed = decode_message(message.get("data"))
        if parsed is None:
            return
        pod = parsed.pod
        if parsed.event is Event.DELETE:
            with self._lock:
                old = self._reports.pop(pod, None)
            if old is not None:
                self._on_change(old.template_hash)
            return
        report = decode_report(self._redis.get(report_key(self.namespace, pod)))
        with self._lock:
            old = self._reports.pop(pod, None)
            if report is not None:
                self._reports[pod] = report
        for template_hash in {r.template_hash for r in (old, report) if r is not None}:
            self._on_change(template_hash)

    def _on_connect(self, connection: Any) -> None:
        # Called by redis-py after the subscriber's connection (re)connected and re-subscribed.
        self._reconnected.set()

    def _await_confirmation(self, pubsub: Any, timeout: float = 5.0) -> None:
        """Redis confirms SUBSCRIBE before it delivers anything on that connection; only from
        then on is every PUBLISH seen, so the re-read must not start earlier."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            message = pubsub.get_message(timeout=min(0.5, timeout))
            if message and message.get("type") == "subscribe":
                return
        if not self._stop.is_set():
            raise redis.ConnectionError("no SUBSCRIBE confirmation from Redis")

    def _run(self) -> None:
        backoff = Backoff(RECONNECT)
        while not self._stop.is_set():
            pubsub = self._redis.pubsub()  # type: ignore[no-untyped-call]
            connection: Any = None
            try:
                pubsub.subscribe(report_channel(self.namespace))
                self._await_confirmation(pubsub)
                connection = pubsub.connection
                if connection is not None:
                    connection.register_connect_callback(self._on_connect)
                self._reconnected.clear()
                self._resync()  # after subscribing: nothing published from now on is missed
                self.connected.set()
                log.info("reports.subscribed", namespace=self.namespace, pods=len(self._reports))
                backoff.reset()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if self._reconnected.is_set():
                        self._reconnected.clear()
                        log.info("reports.resubscribed", namespace=self.namespace)
                        self._resync()
                    if message and message.get("type") == "message":
                        self._apply(message)
            except redis.RedisError as exc:
                self.connected.clear()
                delay = backoff.next()
                log.warning("reports.redis_error", error=str(exc)[:200], retry_in=round(delay, 2))
                self._stop.wait(delay)
            except Exception as exc:
                # A failing on_change (or a surprise from the client) must not end the only
                # thread that keeps the reports current: log, re-subscribe, re-read.
                self.connected.clear()
                delay = backoff.next()
                log.error(
                    "reports.error",
                    error=f"{type(exc).__name__}: {exc}"[:200],
                    retry_in=round(delay, 2),
                )
                self._stop.wait(delay)
            finally:
                if connection is not None:
                    connection.deregister_connect_callback(self._on_connect)
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()
