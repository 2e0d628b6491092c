"""The Lease reads and writes under leader election, apart from its state machine (as client-go
separates `resourcelock.LeaseLock` from `LeaderElector`).

`LeaseRecord` is what election reads and writes of a `coordination.k8s.io/v1` Lease's spec
(client-go's LeaderElectionRecord); `LeaseLock` gets, creates and updates the Lease, the
update carrying the resourceVersion read, so a stale write fails with 409.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from sidecar.kube.reflector import read_json

HTTP_NOT_FOUND = 404


def micro_time(ts: float) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseRecord:
    """The election's fields of a Lease spec; None where the spec has none."""

    holder: str | None = None  # holderIdentity
    duration: int | None = None  # leaseDurationSeconds
    acquire_time: str | None = None  # acquireTime (MicroTime)
    renew_time: str | None = None  # renewTime (MicroTime)
    transitions: int | None = None  # leaseTransitions

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> LeaseRecord:
        duration, transitions = spec.get("leaseDurationSeconds"), spec.get("leaseTransitions")
        return cls(
            holder=spec.get("holderIdentity") or None,
            duration=None if duration is None else int(duration),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=None if transitions is None else int(transitions),
        )

    def to_spec(self, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The spec to write: `base` (fields election does not manage are kept) with ours.
        `holderIdentity` is always written, null when released."""
        spec = dict(base or {})
        spec["holderIdentity"] = self.holder
        for key, value in (
            ("leaseDurationSeconds", self.duration),
            ("acquireTime", self.acquire_time),
            ("renewTime", self.renew_time),
            ("leaseTransitions", self.transitions),
        ):
            if value is not None:
                spec[key] = value
        return spec


class LeaseLock:
    def __init__(self, coordination_api: Any, namespace: str, name: str, timeout: float) -> None:
        self._api = coordination_api
        self.namespace = namespace
        self.name = name
        self._timeout = timeout  # every call's deadline

    def get(self) -> dict[str, Any] | None:
        """The Lease as stored (None when there is none); `LeaseRecord.from_spec` of its spec
        is the record."""
        try:
            lease: dict[str, Any] = read_json(
                self._api.read_namespaced_lease(
                    self.name,
                    self.namespace,
                    _preload_content=False,
                    _request_timeout=self._timeout,
                )
            )
        except ApiException as exc:
            if exc.status == HTTP_NOT_FOUND:
                return None
            raise
        return lease

    def create(self, record: LeaseRecord) -> dict[str, Any]:
        """Create the Lease holding `record`; its spec as written. 409: somebody was first."""
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": record.to_spec(),
        }
        read_json(
            self._api.create_namespaced_lease(
                self.namespace, body, _preload_content=False, _request_timeout=self._timeout
            )
        )
        spec: dict[str, Any] = body["spec"]
        return spec

    def update(self, lease: dict[str, Any], record: LeaseRecord) -> dict[str, Any]:
        """Replace `lease` (as read: its resourceVersion makes a stale write fail with 409)
        with `record` in its spec; the spec as written."""
        lease["spec"] = record.to_spec(lease.get("spec") or {})
        read_json(
            self._api.replace_namespaced_lease(
                self.name,
                self.namespace,
                lease,
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        )
        spec: dict[str, Any] = lease["spec"]
        return spec
