"""Builds the long-running pieces from validated Settings (the I/O edge of `aggregate`)."""

from __future__ import annotations

import os
import socket
from typing import Any

from sidecar.aggregator import Aggregator, AggregatorOptions
from sidecar.config import RedisEndpoint, Settings
from sidecar.logs import get_logger
from sidecar.providers.base import Provider
from sidecar.webhooks import WebhookSender

log = get_logger("runtime")


def kubernetes_client(kubeconfig: str | None = None) -> Any:
    """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config."""
    from kubernetes import client, config

    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        return client.ApiClient()
    api_config = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=api_config)
    return client.ApiClient(api_config)


def redis_client(endpoint: RedisEndpoint) -> Any:
    import redis

    return redis.Redis.from_url(
        endpoint.url,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=15,
        decode_responses=True,
    )


def providers(settings: Settings) -> dict[str, Provider]:
    from sidecar.providers.cloudfront import CloudFrontProvider

    return {
        "cloudfront": CloudFrontProvider(
            distribution_cache_ttl=settings.distribution_cache_ttl,
            poll_interval=settings.invalidation_poll_interval,
        )
    }


def options(settings: Settings, cluster: str) -> AggregatorOptions:
    return AggregatorOptions(
        namespace=settings.namespace,
        mode=settings.mode,
        label_selector=settings.effective_selector or None,
        group=settings.cluster_group,
        cluster=cluster,
        identity=settings.pod_name or socket.gethostname(),
        lease_name=settings.leader_lease_name,
        lease_duration=settings.lease_duration,
        renew_deadline=settings.lease_renew_deadline,
        retry_period=settings.lease_retry_period,
        ledger_name=settings.ledger_configmap,
        invalidation_timeout=settings.invalidation_timeout,
        rollout_timeout=settings.rollout_timeout,
        report_recheck=settings.report_stale_after / 3,
    )


def build_aggregator(
    settings: Settings,
    api_client: Any,
    *,
    provider_map: dict[str, Provider] | None = None,
    redis_override: Any = None,
) -> Aggregator:
    from sidecar.ledger import Ledger

    cluster = settings.cluster_name
    if not cluster:
        from kubernetes import client

        cluster = Ledger(
            client.CoreV1Api(api_client), settings.namespace, settings.ledger_configmap
        ).cluster_name()
        log.info("cluster.generated_name", cluster=cluster)
    redis_conn = None
    if settings.mode == "sidecar":
        redis_conn = redis_override if redis_override is not None else redis_client(settings.redis)
    sender = WebhookSender(
        settings.webhooks,
        default_timeout=settings.webhook_timeout,
        default_retries=settings.webhook_retries,
    )
    return Aggregator(
        options(settings, cluster),
        api_client,
        providers=provider_map if provider_map is not None else providers(settings),
        webhooks=sender,
        redis_client=redis_conn,
    )
