"""The human lines of `wait` (stdout, read in `kubectl logs`): the replica counts of a
Deployment and durations as people write them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def human_duration(seconds: float) -> str:
    """`30m`, `1m30s`, `1h2m5s`, `12s`, `0.5s`: Go's style, which `--timeout` accepts."""
    if seconds < 60 and seconds != int(seconds):
        return f"{seconds:g}s"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{v}{unit}" for v, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if v]
    return "".join(parts) or "0s"


def _int(status: Mapping[str, Any], key: str) -> int:
    try:
        return int(status.get(key) or 0)
    except (TypeError, ValueError):
        return 0


@dataclass(frozen=True)
class Counts:
    """What `kubectl get deployment` shows, from `spec.replicas` and `status`."""

    desired: int
    updated: int
    ready: int
    available: int
    # Pods of older ReplicaSets still counted (status.replicas - updatedReplicas).
    old: int

    @classmethod
    def of(cls, deployment: Mapping[str, Any]) -> Counts:
        spec = deployment.get("spec") or {}
        status = deployment.get("status") or {}
        updated = _int(status, "updatedReplicas")
        return cls(
            desired=_int(spec, "replicas") if spec.get("replicas") is not None else 1,
            updated=updated,
            ready=_int(status, "readyReplicas"),
            available=_int(status, "availableReplicas"),
            old=max(0, _int(status, "replicas") - updated),
        )

    def describe(self) -> str:
        d = self.desired
        text = f"updated {self.updated}/{d}, ready {self.ready}/{d}, available {self.available}/{d}"
        return f"{text}, old {self.old}" if self.old else text


def progress_line(label: str, counts: Counts, elapsed: float) -> str:
    """`rollout: updated 1/3, ready 1/3, available 0/3, old 2, elapsed 12s`."""
    return f"{label}: {counts.describe()}, elapsed {human_duration(round(elapsed))}"
