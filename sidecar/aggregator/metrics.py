"""Prometheus metrics of the aggregator (never imported by the reporter).

Each Aggregator owns a registry, so several can run in one process (tests, the demo).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.purges = Counter(
            "cache_buster_purges_total",
            "Purges by outcome (completed, timeout, failed, retry).",
            ["app", "provider", "outcome"],
            registry=r,
        )
        self.rollouts = Counter(
            "cache_buster_rollouts_total",
            "Rollouts that ended, by result (purged, baseline, superseded, rolled_back, skipped).",
            ["app", "result"],
            registry=r,
        )
        self.config_errors = Counter(
            "cache_buster_config_errors_total",
            "Invalid per-app configuration seen (one per distinct error).",
            ["app"],
            registry=r,
        )
        self.webhooks = Counter(
            "cache_buster_webhook_deliveries_total",
            "Webhook deliveries by result (ok, failed).",
            ["app", "hook", "result"],
            registry=r,
        )
        self.purge_latency = Gauge(
            "cache_buster_last_purge_latency_seconds",
            "Seconds from the rollout's completion being observed to the CDN request.",
            ["app"],
            registry=r,
        )
        self.leader = Gauge(
            "cache_buster_leader", "1 while this replica is the leader.", registry=r
        )

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)
