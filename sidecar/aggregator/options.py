"""What one aggregator is told: its namespace, identity and timings.

Defaults are the process settings' defaults (`sidecar.config.Settings`), never restated here:
a test or a bench building an aggregator directly gets what `cache-buster aggregate` gets.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.config import Settings
from sidecar.core.backoff import PURGE_RETRY
from sidecar.core.guard import Guard
from sidecar.kube.reflector import WATCH_TIMEOUT

_DEFAULTS = Settings()


@dataclass(frozen=True)
class AggregatorOptions:
    namespace: str
    mode: str = _DEFAULTS.mode  # "watcher" | "sidecar"
    label_selector: str | None = None
    group: str = _DEFAULTS.cluster_group
    cluster: str = "local"
    # This namespace's instance id (sidecar.kube.identity): tells two writers claiming one
    # cluster name apart.
    instance: str = ""
    # Cluster groups (used only when peers are configured).
    group_timeout: float = _DEFAULTS.group_timeout
    on_peer_timeout: str = _DEFAULTS.on_peer_timeout
    identity: str = "aggregator"
    lease_name: str = _DEFAULTS.leader_lease_name
    lease_duration: float = _DEFAULTS.lease_duration
    renew_deadline: float = _DEFAULTS.lease_renew_deadline
    retry_period: float = _DEFAULTS.lease_retry_period
    ledger_name: str = _DEFAULTS.ledger_configmap
    invalidation_timeout: float = _DEFAULTS.invalidation_timeout
    rollout_timeout: float = _DEFAULTS.rollout_timeout
    # How often a rollout waiting only on reports re-reads them (Redis wiped, ...); None: a
    # third of `report_stale_after`.
    report_recheck: float | None = None
    report_stale_after: float = _DEFAULTS.report_stale_after  # older heartbeats are ignored
    purge_retry_max: float = PURGE_RETRY.cap  # the longest wait between purge attempts
    watch_timeout: int = WATCH_TIMEOUT
    # The platform team's allow-lists and path cap (sidecar.core.guard): the evaluator reports
    # an app outside them as a config error, the purge runner refuses lookups outside them.
    guard: Guard = _DEFAULTS.guard

    @property
    def report_recheck_every(self) -> float:
        if self.report_recheck is not None:
            return self.report_recheck
        return self.report_stale_after / 3
