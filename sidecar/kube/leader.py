"""Leader election through a `coordination.k8s.io/v1` Lease, as client-go does it.

Only the leader acts. Expiry is judged on our own clock from when we last saw the record
change (never by comparing our clock with the holder's timestamps), optimistic concurrency
(resourceVersion, 409 on a stale write) makes acquisition atomic, and a leader that cannot
renew within the renew deadline steps down before its lease can expire for the others.
`is_leader()` is the check made right before a purge.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from sidecar.kube.reflector import read_json
from sidecar.logs import get_logger

log = get_logger("leader")


def micro_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        coordination_api: Any,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        self._api = coordination_api
        # Each call must end well inside the renew deadline, or renewal cannot be judged.
        self._timeout = max(0.5, renew_deadline / 3)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._clock = clock
        self._wall = wall_clock
        self._observed: dict[str, Any] | None = None  # the lease spec we last saw
        self._observed_at = 0.0  # our clock when that spec last changed
        self._renewed_at: float | None = None  # our clock at our last successful renewal
        self._leading = False
        self._lock = threading.Lock()
        self.transitions = 0
        # False only to simulate a crash in tests: the lease is then left to expire.
        self.release_on_stop = True

    # -- state ------------------------------------------------------------------------------
    def is_leader(self) -> bool:
        """True only while our last renewal is fresher than the renew deadline: a leader that
        lost contact stops acting before any other candidate may take over."""
        with self._lock:
            return (
                self._leading
                and self._renewed_at is not None
                and self._clock() - self._renewed_at < self.renew_deadline
            )

    def leading_for(self) -> float:
        """Seconds our leadership stays valid without another renewal (0 when not leading)."""
        with self._lock:
            if not self._leading or self._renewed_at is None:
                return 0.0
            return max(0.0, self._renewed_at + self.renew_deadline - self._clock())

    def holder(self) -> str | None:
        spec = self._observed or {}
        value = spec.get("holderIdentity")
        return str(value) if value else None

    # -- loop -------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Campaign, lead, step down when renewal fails; release the lease when `stop` is set."""
        while not stop.is_set():
            acquired = self._try_acquire_or_renew()
            if acquired and not self._leading:
                self._become_leader()
            elif not acquired and self._leading and not self.is_leader():
                self._step_down("renewal failed past the renew deadline")
            wait = self.retry_period if self._leading else self.retry_period * (1 + random.random())
            stop.wait(wait)
        if self._leading and self.release_on_stop:
            self.release()
        elif self._leading:
            with self._lock:
                self._leading = False

    def _become_leader(self) -> None:
        with self._lock:
            self._leading = True
        log.info("leader.acquired", lease=self.name, identity=self.identity)
        if self._on_started:
            self._on_started()

    def _step_down(self, why: str) -> None:
        with self._lock:
            self._leading = False
        log.warning("leader.lost", lease=self.name, identity=self.identity, reason=why)
        if self._on_stopped:
            self._on_stopped()

    def release(self) -> None:
        """Give the lease up so a standby takes over at once instead of after it expires."""
        was_leading = self._leading
        with self._lock:
            self._leading = False
        try:
            lease = self._read_lease()
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            now = micro_time(self._wall())
            lease["spec"] = {
                **spec,
                "holderIdentity": None,
                "leaseDurationSeconds": 1,
                "renewTime": now,
                "acquireTime": now,
            }
            read_json(
                self._api.replace_namespaced_lease(
                    self.name,
                    self.namespace,
                    lease,
                    _preload_content=False,
                    _request_timeout=self._timeout,
                )
            )
            log.info("leader.released", lease=self.name, identity=self.identity)
        except Exception as exc:  # the lease then simply expires
            log.warning("leader.release_failed", lease=self.name, error=str(exc)[:200])
        finally:
            if was_leading and self._on_stopped:
                self._on_stopped()

    def _lease_body(self, spec: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
        now = micro_time(self._wall())
        body = dict(spec)
        body["holderIdentity"] = self.identity
        # Rounded up: the others must never see a shorter lease than the one we keep acting
        # on (round(2.5) == 2 would let a standby take over while we still lead).
        body["leaseDurationSeconds"] = max(1, math.ceil(self.lease_duration))
        body["renewTime"] = now
        if not previous or previous.get("holderIdentity") != self.identity:
            body["acquireTime"] = now
            body["leaseTransitions"] = int((previous or {}).get("leaseTransitions") or 0) + (
                1 if previous and previous.get("holderIdentity") else 0
            )
        return body

    def _read_lease(self) -> dict[str, Any]:
        lease: dict[str, Any] = read_json(
            self._api.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=self._timeout
            )
        )
        return lease

    def _try_acquire_or_renew(self) -> bool:
        try:
            try:
                lease = self._read_lease()
            except ApiException as exc:
                if exc.status != 404:
                    raise
                body: dict[str, Any] = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._lease_body({}, None),
                }
                read_json(
                    self._api.create_namespaced_lease(
                        self.namespace, body, _preload_content=False, _request_timeout=self._timeout
                    )
                )
                self._record(body["spec"], renewed=True)
                return True

            spec = lease.get("spec") or {}
            if spec != self._observed:
                with self._lock:
                    self._observed = spec
                    self._observed_at = self._clock()
            holder = spec.get("holderIdentity")
            duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
            if holder and holder != self.identity and self._clock() < self._observed_at + duration:
                return False  # somebody else holds an unexpired lease
            lease["spec"] = self._lease_body(spec, spec)
            read_json(
                self._api.replace_namespaced_lease(
                    self.name,
                    self.namespace,
                    lease,
                    _preload_content=False,
                    _request_timeout=self._timeout,
                )
            )
            self._record(lease["spec"], renewed=True)
            if holder and holder != self.identity:
                self.transitions += 1
            return True
        except ApiException as exc:
            if exc.status != 409:  # a conflict just means somebody else wrote first
                log.warning("leader.api_error", lease=self.name, status=exc.status)
            return False
        except Exception as exc:
            log.warning("leader.error", lease=self.name, error=f"{type(exc).__name__}: {exc}"[:200])
            return False

    def _record(self, spec: dict[str, Any], *, renewed: bool) -> None:
        with self._lock:
            self._observed = spec
            self._observed_at = self._clock()
            if renewed:
                self._renewed_at = self._clock()
