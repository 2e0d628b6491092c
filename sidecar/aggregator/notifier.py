"""The aggregator's webhooks: every event is built here, delivered, and (after a purge) marked
delivered in the ledger.

Deliver, then mark: a leader that dies in between leaves the settled record's webhooks
`pending` and the next leader delivers them again; receivers drop repeats by the idempotency
id (docs/architecture.md, "Identifiers"). Events of failed and slow rollouts are not owed by
the ledger: they are sent once, in a thread of their own, and never block the evaluator.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sidecar.aggregator.metrics import Metrics
from sidecar.core.annotations import AppConfig
from sidecar.core.records import Failure, Intent, Outcome, Settled, WebhookState
from sidecar.kube.ledger import Ledger
from sidecar.webhooks.events import Event, WebhookEvent
from sidecar.webhooks.sender import WebhookSender

# The status of a failed rollout's event, by why it failed; of a slow one; of a failed purge.
ROLLOUT_TIMEOUT = "rollout-timeout"
PURGE_FAILED = "purge-failed"


def owes_webhooks(settled: Settled | None) -> bool:
    """A purged rollout whose webhooks were not yet marked delivered."""
    return (
        settled is not None
        and settled.outcome is Outcome.PURGED
        and settled.detail.webhooks is WebhookState.PENDING
    )


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

    def rollout_failed(self, name: str, cfg: AppConfig, failure: Failure, status: str) -> None:
        event = self._event(
            Event.FAILED,
            name,
            cfg,
            failure.image,
            failure.rollout_id,
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
            provider=cfg.provider,
            status=PURGE_FAILED,
            reason=reason,
        )
        self._send_async(name, event, cfg)

    def _purged(self, name: str, cfg: AppConfig, settled: Settled) -> WebhookEvent:
        d = settled.detail
        return self._event(
            Event.COMPLETED if d.status == "completed" else Event.TIMEOUT,
            name,
            cfg,
            settled.image,
            settled.rollout_id,
            previous_image=d.from_image or None,
            provider=d.provider,
            distribution=d.target,
            invalidation_id=d.request_id,
            paths=d.paths or (),
            status=d.status,
            timings={
                "purge_requested_at": d.requested_at or 0.0,
                "purge_finished_at": d.finished_at or 0.0,
            },
        )

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

    def _deliver(self, sender: WebhookSender, event: WebhookEvent, cfg: AppConfig) -> None:
        for delivery in sender.send(event, extra_names=cfg.webhooks, stop=self._stop):
            self._metrics.webhooks.labels(
                app=cfg.app, hook=delivery.hook, result="ok" if delivery.ok else "failed"
            ).inc()

    def deliver_then_mark(self, name: str, cfg: AppConfig, settled: Settled) -> None:
        """Send a purged rollout's webhooks (in the caller's thread), then mark them delivered
        unless the ledger moved on to another rollout meanwhile."""
        if self._sender is not None:
            self._deliver(self._sender, self._purged(name, cfg, settled), cfg)
        for _ in range(5):
            current = self._ledger.get(cfg.app)
            if current.settled is None or current.settled.rollout_id != settled.rollout_id:
                return
            detail = replace(current.settled.detail, webhooks=WebhookState.DELIVERED)
            done = replace(current, settled=replace(current.settled, detail=detail))
            if self._ledger.compare_and_set(cfg.app, current, done):
                return
            self._ledger.load()
