"""What a webhook receiver gets: the event, its idempotency id and the headers naming them.

The id is stable for every retry (and every replica) sending one attempt's event, so receivers
can drop repeats, and differs between attempts and events (docs/architecture.md, "Identifiers").
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Event(StrEnum):
    """What happened to a rollout's purge (a str: the JSON body and headers carry the value)."""

    COMPLETED = "completed"
    TIMEOUT = "timeout"
    FAILED = "failed"
    SKIPPED = "skipped"


EVENTS: tuple[str, ...] = tuple(e.value for e in Event)

SIGNATURE_HEADER = "X-Cache-Buster-Signature"
TIMESTAMP_HEADER = "X-Cache-Buster-Timestamp"
EVENT_HEADER = "X-Cache-Buster-Event"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Every header of cache-buster's own; a hook may not set these.
RESERVED_HEADER_PREFIX = "x-cache-buster-"


def idempotency_id(rollout_id: str, event: str, attempt: int = 1) -> str:
    """From (rollout id, attempt, event): stable for every retry and every sender of one
    attempt's event; a later `completed` after a reported `timeout` gets its own id, and so does
    the `failed` of a second attempt of the same image, so receivers drop neither. The first
    attempt's id is what earlier versions sent (the attempt was not part of it then)."""
    material = f"{rollout_id}\n{event}" if attempt == 1 else f"{rollout_id}\n{attempt}\n{event}"
    digest = hashlib.sha256(material.encode()).hexdigest()
    return f"cb-{digest[:32]}"


@dataclass(frozen=True)
class WebhookEvent:
    # An Event; a plain str naming one is accepted (and converted).
    event: str
    app: str
    rollout_id: str | None = None
    namespace: str | None = None
    deployment: str | None = None
    image: str | None = None
    previous_image: str | None = None
    cluster: str | None = None
    group: str | None = None
    provider: str | None = None
    distribution: str | None = None
    invalidation_id: str | None = None
    paths: tuple[str, ...] | None = None
    status: str | None = None
    reason: str | None = None
    timings: Mapping[str, float | None] = field(default_factory=dict)
    # Which attempt of the rollout (1 unless an earlier attempt of the same image failed).
    attempt: int = 1
    # The id of an earlier rollout whose purge this one made (folded into it).
    folded_rollout_id: str | None = None
    # Derived from rollout_id, attempt and event when empty.
    idempotency_id: str = ""

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"unknown webhook event {self.event!r}; expected one of {EVENTS}")
        object.__setattr__(self, "event", Event(self.event))
        if not self.idempotency_id:
            if not self.rollout_id:
                raise ValueError("a webhook event needs a rollout_id or an idempotency_id")
            object.__setattr__(
                self, "idempotency_id", idempotency_id(self.rollout_id, self.event, self.attempt)
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "app": self.app,
            "namespace": self.namespace,
            "deployment": self.deployment,
            "image": self.image,
            "previous_image": self.previous_image,
            "cluster": self.cluster,
            "group": self.group,
            "rollout_id": self.rollout_id,
            "provider": self.provider,
            "distribution": self.distribution,
            "invalidation_id": self.invalidation_id,
            "paths": list(self.paths) if self.paths is not None else None,
            "status": self.status,
            "reason": self.reason,
            "timings": dict(self.timings),
            "attempt": self.attempt,
            "folded_rollout_id": self.folded_rollout_id,
            "idempotency_id": self.idempotency_id,
        }
