"""Leader election through a `coordination.k8s.io/v1` Lease, as client-go's `LeaderElector`
does it (the Lease I/O is `sidecar.kube.lease`, as client-go's resourcelock).

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
from dataclasses import replace
from typing import Any

from kubernetes.client.exceptions import ApiException

from sidecar.config import Settings
from sidecar.kube.lease import LeaseLock, LeaseRecord, micro_time
from sidecar.logs import get_logger

log = get_logger("leader")

_DEFAULTS = Settings()
HTTP_CONFLICT = 409

# Log event names (readers such as the demo's timeline key on them).
LEADER_ACQUIRED = "leader.acquired"
LEADER_LOST = "leader.lost"
LEADER_RELEASED = "leader.released"


class LeaderElector:
    def __init__(
        self,
        coordination_api: Any,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = _DEFAULTS.lease_duration,
        renew_deadline: float = _DEFAULTS.lease_renew_deadline,
        retry_period: float = _DEFAULTS.lease_retry_period,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        # Each call must end well inside the renew deadline, or renewal cannot be judged.
        self._lease = LeaseLock(coordination_api, namespace, name, max(0.5, renew_deadline / 3))
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
        self._observed: LeaseRecord | None = None  # the lease record we last saw
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
        return self._observed.holder if self._observed else None

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
        log.info(LEADER_ACQUIRED, lease=self.name, identity=self.identity)
        if self._on_started:
            self._on_started()

    def _step_down(self, why: str) -> None:
        with self._lock:
            self._leading = False
        log.warning(LEADER_LOST, lease=self.name, identity=self.identity, reason=why)
        if self._on_stopped:
            self._on_stopped()

    def release(self) -> None:
        """Give the lease up so a standby takes over at once instead of after it expires."""
        was_leading = self._leading
        with self._lock:
            self._leading = False
        try:
            lease = self._lease.get()
            if lease is None:
                raise LookupError(f"Lease {self.namespace}/{self.name} not found")
            record = LeaseRecord.from_spec(lease.get("spec") or {})
            if record.holder != self.identity:
                return
            now = micro_time(self._wall())
            self._lease.update(
                lease, replace(record, holder=None, duration=1, renew_time=now, acquire_time=now)
            )
            log.info(LEADER_RELEASED, lease=self.name, identity=self.identity)
        except Exception as exc:  # the lease then simply expires
            log.warning("leader.release_failed", lease=self.name, error=str(exc)[:200])
        finally:
            if was_leading and self._on_stopped:
                self._on_stopped()

    def _ours(self, previous: LeaseRecord | None) -> LeaseRecord:
        """The record we write to acquire or renew: a renewal keeps acquireTime and the
        transitions, an acquisition sets acquireTime and counts a transition when it takes the
        lease from another holder (a free lease taken is not one)."""
        now = micro_time(self._wall())
        # Rounded up: the others must never see a shorter lease than the one we keep acting
        # on (round(2.5) == 2 would let a standby take over while we still lead).
        record = replace(
            previous or LeaseRecord(),
            holder=self.identity,
            duration=max(1, math.ceil(self.lease_duration)),
            renew_time=now,
        )
        if previous is None or previous.holder != self.identity:
            taken = 1 if previous is not None and previous.holder else 0
            transitions = ((previous.transitions if previous else None) or 0) + taken
            record = replace(record, acquire_time=now, transitions=transitions)
        return record

    def _try_acquire_or_renew(self) -> bool:
        """One round of campaigning or renewing (client-go's tryAcquireOrRenew); True when we
        hold the lease afterwards."""
        try:
            # 1. obtain or create the ElectionRecord
            lease = self._lease.get()
            if lease is None:
                self._record(self._lease.create(self._ours(None)))
                return True

            # 2. Record obtained, check the Identity & Time. Expiry is judged on our clock,
            #    from when we saw the record change.
            record = LeaseRecord.from_spec(lease.get("spec") or {})
            if record != self._observed:
                with self._lock:
                    self._observed = record
                    self._observed_at = self._clock()
            duration = float(record.duration or self.lease_duration)
            others = record.holder is not None and record.holder != self.identity
            if others and self._clock() < self._observed_at + duration:
                return False  # somebody else holds an unexpired lease

            # 3. We're going to try to update: a renewal keeps acquireTime and transitions,
            #    an acquisition sets them (see _ours).
            ours = self._ours(record)

            # 4. Update the lock itself (409: somebody else wrote first, we lost this round).
            self._record(self._lease.update(lease, ours))
            if others:
                self.transitions += 1
            return True
        except ApiException as exc:
            if exc.status != HTTP_CONFLICT:  # a conflict just means somebody else wrote first
                log.warning("leader.api_error", lease=self.name, status=exc.status)
            return False
        except Exception as exc:
            log.warning("leader.error", lease=self.name, error=f"{type(exc).__name__}: {exc}"[:200])
            return False

    def _record(self, spec: dict[str, Any]) -> None:
        """We wrote `spec`: it is what we last saw, and our renewal time."""
        with self._lock:
            self._observed = LeaseRecord.from_spec(spec)
            self._observed_at = self._clock()
            self._renewed_at = self._clock()
