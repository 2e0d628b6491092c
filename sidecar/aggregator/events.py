"""The names of the aggregator's log events that readers key on (the demo's timeline, people's
log queries). The values are part of the interface: they never change."""

from __future__ import annotations

import enum


class LogEvent(enum.StrEnum):
    STARTING = "aggregator.starting"
    STOPPED = "aggregator.stopped"
    APP_EVALUATED = "app.evaluated"  # the decision's reason changed (`verdict` says which rule)
    ROLLOUT_FAILED = "rollout.failed"  # superseded or rolled back
    ROLLOUT_SLOW = "rollout.slow"  # not complete after ROLLOUT_TIMEOUT: reported, not final
    PURGE_REQUESTED = "purge.requested"
    PURGE_DONE = "purge.done"
    PURGE_RETRY = "purge.retry"
    PURGE_FAILED = "purge.failed"
    PURGE_REUSED = "purge.reused"  # the CDN answered with an earlier attempt's request
    PURGE_SKIPPED = "purge.skipped"  # nothing to purge (no domain): settled skipped
    # A completed rollout whose purge was never requested, folded into a newer rollout.
    ROLLOUT_FOLDED = "rollout.folded"
    WEBHOOK_FAILED = "webhook.failed"  # a hook's retries are exhausted: not retried again
    # Cluster groups.
    GROUP_WAITING_OVERDUE = "group.waiting_overdue"  # lagging peers past GROUP_TIMEOUT
    GROUP_CLAIM_WON = "group.claim_won"
    GROUP_CLAIM_NOT_WON = "group.claim_not_won"  # held by another, settled or stale
    GROUP_CLAIM_UNREACHABLE = "group.claim_place_unreachable"
    GROUP_SKIPPED = "group.skipped"  # a peer unreachable past GROUP_TIMEOUT: no purge
    GROUP_ADOPTED = "group.adopted"  # this cluster took the group's settled rollout
