"""The aggregator's webhooks: every event is built here, delivered, and (after a settle) each
hook's outcome recorded in the ledger.

Deliver, then mark, per hook: a leader that dies in between leaves those hooks `pending` and
the next leader delivers to them again, and only to them; receivers drop repeats by the
idempotency id (docs/architecture.md, "Identifiers"). A hook whose retries are exhausted is
`failed`: reported once, never retried. Events of failed and slow rollouts are not owed by the
ledger: they are sent once, in a thread of their own, and never block the evaluator.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sidecar.aggregator.events import LogEvent
from sidecar.aggregator.metrics import Metrics
from sidecar.core.annotations import AppConfig
from sidecar.core.records import (
    Failure,
    Intent,
    Outcome,
    Settled,
    WebhookState,
    webhooks_summary,
)
from sidecar.kube.ledger import Ledger
from sidecar.logs import get_logger
from sidecar.webhooks.config import Scope
from sidecar.webhooks.events import Event, WebhookEvent
from sidecar.webhooks.sender import Delivery, DeliveryOutcome, WebhookSender

log = get_logger("aggregator")

# The status of a failed rollout's event, by why it failed; of a slow one; of a failed purge.
ROLLOUT_TIMEOUT = "rollout-timeout"
PURGE_FAILED = "purge-failed"


# Settled outcomes whose webhooks the ledger owes (a baseline has none; a failed purge's
# `failed` event is sent once at the time).
_OWED = (Outcome.PURGED, Outcome.SKIPPED)


def owes_webhooks(settled: Settled | None) -> bool:
    """A settled rollout with a hook still owed its delivery."""
    return (
        settled is not None
        and settled.outcome in _OWED
        and settled.detail.webhooks is WebhookState.PENDING
    )


def hook_state(delivery: Delivery) -> WebhookState:
    """Stopped before it was sent: still owed (a successor delivers). Otherwise the sender has
    made every attempt the hook allows: delivered, or failed for good."""
    if delivery.ok:
        return WebhookState.DELIVERED
    if delivery.outcome is DeliveryOutcome.STOPPED:
        return WebhookState.PENDING
    return WebhookState.FAILED


class Notifier:
    def __init__(
        self,
        sender: WebhookSender | None,
        *,
        namespace: str,
        cluster: str,
        group: str,
        ledger: Ledger,
        metrics: Metrics,
        stop: threading.Event,
    ) -> None:
        self._sender = sender
        self._namespace = namespace
        self._cluster = cluster
        self._group = group
        self._ledger = ledger
        self._metrics = metrics
        self._stop = stop

    @property
    def per_cluster(self) -> bool:
        """The webhooks file's `"scope": "cluster"`: every cluster of a group sends its own
        `completed` (the Go worker's behaviour), not only the claim winner."""
        return self._sender is not None and self._sender.config.scope is Scope.CLUSTER

    def unknown_hooks(self, names: Sequence[str]) -> list[str]:
        """Hook names an app asks for that the webhooks file does not define."""
        return self._sender.config.unknown_names(names) if self._sender is not None else []

    # -- the events ---------------------------------------------------------------------------
    def _event(
        self, kind: Event, name: str, cfg: AppConfig, image: str, rollout: str, **fields: Any
    ) -> WebhookEvent:
        """A webhook event with what every event of this aggregator carries."""
        return WebhookEvent(
            event=kind,
            app=cfg.app,
            rollout_id=rollout,
            namespace=self._namespace,
            deployment=name,
            image=image,
            cluster=self._cluster,
            group=self._group,
            **fields,
        )

    def rollout_failed(
        self, name: str, cfg: AppConfig, failure: Failure, intent: Intent | None, status: str
    ) -> None:
        event = self._event(
            Event.FAILED,
            name,
            cfg,
            failure.image,
            failure.rollout_id,
            previous_image=intent.from_image if intent else None,
            attempt=intent.attempt if intent else 1,
            status=status,
            reason=str(failure.reason),
        )
        self._send_async(name, event, cfg)

    def rollout_slow(self, name: str, cfg: AppConfig, intent: Intent, waiting: str) -> None:
        event = self._event(
            Event.TIMEOUT,
            name,
            cfg,
            intent.image,
            intent.rollout_id,
            previous_image=intent.from_image,
            attempt=intent.attempt,
            status=ROLLOUT_TIMEOUT,
            reason=waiting,
        )
        self._send_async(name, event, cfg)

    def purge_failed(self, name: str, cfg: AppConfig, intent: Intent, reason: str) -> None:
        event = self._event(
            Event.FAILED,
            name,
            cfg,
            intent.image,
            intent.rollout_id,
            previous_image=intent.from_image,
            attempt=intent.attempt,
            provider=cfg.provider,
            status=PURGE_FAILED,
            reason=reason,
        )
        self._send_async(name, event, cfg)

    def _settled_event(self, name: str, cfg: AppConfig, settled: Settled) -> WebhookEvent:
        d = settled.detail
        what: dict[str, Any] = {
            "previous_image": d.from_image or None,
            "attempt": d.attempt or 1,
        }
        if settled.outcome is Outcome.SKIPPED:
            kind = Event.SKIPPED
            what |= {
                "status": Event.SKIPPED.value,
                "reason": f"{d.error}: {d.message}" if d.error else d.message,
            }
        else:
            kind = Event.COMPLETED if d.status == "completed" else Event.TIMEOUT
            what |= {
                "folded_rollout_id": d.folded,
                "provider": d.provider,
                "distribution": d.target,
                "invalidation_id": d.request_id,
                "paths": d.paths or (),
                "status": d.status,
                "timings": {
                    "purge_requested_at": d.requested_at or 0.0,
                    "purge_finished_at": d.finished_at or 0.0,
                },
            }
        return self._event(kind, name, cfg, settled.image, settled.rollout_id, **what)

    # -- delivery -----------------------------------------------------------------------------
    def _send_async(self, name: str, event: WebhookEvent, cfg: AppConfig) -> None:
        if self._sender is None:
            return
        sender = self._sender
        thread = threading.Thread(
            target=lambda: self._deliver(sender, event, cfg),
            name=f"webhook-{name}",
            daemon=True,
        )
        thread.start()

    def _deliver(
        self,
        sender: WebhookSender,
        event: WebhookEvent,
        cfg: AppConfig,
        only: Sequence[str] | None = None,
    ) -> list[Delivery]:
        deliveries = sender.send(event, extra_names=cfg.webhooks, stop=self._stop, only=only)
        for delivery in deliveries:
            self._metrics.webhooks.labels(
                app=cfg.app, hook=delivery.hook, result="ok" if delivery.ok else "failed"
            ).inc()
            if hook_state(delivery) is WebhookState.FAILED:
                log.error(
                    LogEvent.WEBHOOK_FAILED,
                    app=cfg.app,
                    image=event.image,
                    cluster=self._cluster,
                    rollout=event.rollout_id,
                    hook=delivery.hook,
                    webhook_event=str(event.event),
                    attempts=delivery.attempts,
                    error=delivery.error,
                )
        return deliveries

    def deliver_then_mark(self, name: str, cfg: AppConfig, settled: Settled) -> None:
        """Send a settled rollout's webhooks (in the caller's thread) to the hooks still owed
        them, then record each hook's outcome, unless the ledger moved on meanwhile."""
        event = self._settled_event(name, cfg, settled)
        known = dict(settled.detail.hooks)
        outcomes: dict[str, WebhookState] = {}
        if self._sender is not None:
            applicable = [h.name for h in self._sender.applicable(event, cfg.webhooks)]
            # First delivery: every applicable hook. A successor's: only those still pending
            # (a hook added to the file since is owed too; one removed is owed nothing).
            owed = [
                n for n in applicable if known.get(n, WebhookState.PENDING) is WebhookState.PENDING
            ]
            outcomes = {n: s for n, s in known.items() if n in applicable}
            if owed:
                for delivery in self._deliver(self._sender, event, cfg, only=owed):
                    outcomes[delivery.hook] = hook_state(delivery)
        for _ in range(5):
            current = self._ledger.get(cfg.app)
            if current.settled is None or current.settled.rollout_id != settled.rollout_id:
                return
            hooks = {**current.settled.detail.hooks, **outcomes}
            detail = replace(current.settled.detail, hooks=hooks, webhooks=webhooks_summary(hooks))
            done = replace(current, settled=replace(current.settled, detail=detail))
            if done == current or self._ledger.compare_and_set(cfg.app, current, done):
                return
            self._ledger.load()
