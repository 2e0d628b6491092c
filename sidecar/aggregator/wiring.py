"""Builds the long-running pieces from validated Settings (the I/O edge of `aggregate`)."""

from __future__ import annotations

import socket
from typing import Any

from sidecar.aggregator.facade import Aggregator
from sidecar.aggregator.metrics import Metrics
from sidecar.aggregator.options import AggregatorOptions
from sidecar.aggregator.peers import peer_client_options
from sidecar.config import ConfigError, Settings
from sidecar.core.grammar import RedisEndpoint
from sidecar.logs import get_logger
from sidecar.providers.base import Provider
from sidecar.webhooks.sender import WebhookSender

log = get_logger("runtime")


class StartupError(RuntimeError):
    """The process cannot start for a reason other than its settings; `str()` is one line
    for the operator, free of secrets."""


def kubernetes_client(kubeconfig: str | None = None) -> Any:
    """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config.

    Raises ConfigError naming where the configuration came from when it cannot be loaded."""
    from sidecar.kube.client import KubeconfigError, load_api_client

    try:
        return load_api_client(kubeconfig)
    except KubeconfigError as err:
        raise ConfigError(err.source, err.message) from None


def serve_metrics(metrics: Metrics, port: int) -> None:
    """Listen for Prometheus scrapes (0: off). Raises ConfigError when the port is taken."""
    try:
        metrics.serve(port)
    except OSError as err:
        raise ConfigError(
            "METRICS_PORT", f"cannot listen on port {port}: {err.strerror or err}"
        ) from None


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


def _describe_api_error(err: BaseException) -> str:
    status = getattr(err, "status", None)
    if isinstance(status, int) and status:
        # ApiException's str() spans lines and dumps response headers.
        return f"HTTP {status} {getattr(err, 'reason', '') or ''}".strip()
    return _one_line(f"{type(err).__name__}: {err}")


def redis_client(endpoint: RedisEndpoint, timeout: float = 5.0, **options: Any) -> Any:
    """A redis-py client for every field of the endpoint, TLS options included (the same ones
    the reporter's client honours; see sidecar.core.grammar)."""
    import redis

    tls: dict[str, Any] = {}
    if endpoint.tls:
        tls = {
            "ssl": True,
            "ssl_cert_reqs": "required" if endpoint.tls_verify else "none",
            "ssl_check_hostname": endpoint.tls_verify,
            "ssl_ca_certs": endpoint.tls_ca_file,
        }
    return redis.Redis(
        host=endpoint.host,
        port=endpoint.port,
        db=endpoint.db,
        username=endpoint.username,
        password=endpoint.password,
        decode_responses=True,
        **{
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "health_check_interval": 15,
            **tls,
            **options,
        },
    )


def providers(settings: Settings) -> dict[str, Provider]:
    """The configured providers. Cloudflare only with an API token: without one it is absent
    (an app asking for it fails ProviderUnavailable), and the startup log says what to set."""
    from sidecar.providers.cloudflare import UNAVAILABLE_HINT, CloudflareProvider
    from sidecar.providers.cloudfront import CloudFrontProvider

    built: dict[str, Provider] = {
        "cloudfront": CloudFrontProvider(
            distribution_cache_ttl=settings.distribution_cache_ttl,
            poll_interval=settings.invalidation_poll_interval,
        )
    }
    if settings.has_cloudflare_token:
        rate = settings.cloudflare_rate_limit
        built["cloudflare"] = CloudflareProvider(
            settings.cloudflare_token,
            api_url=settings.cloudflare_api_url,
            files_per_request=settings.cloudflare_files_per_request,
            rate=rate.per_second,
            burst=rate.burst,
            purge_everything=settings.cloudflare_purge_everything,
        )
    else:
        log.info("provider.unavailable", provider="cloudflare", hint=UNAVAILABLE_HINT)
    return built


def options(settings: Settings, cluster: str, instance: str) -> AggregatorOptions:
    return AggregatorOptions(
        namespace=settings.namespace,
        mode=settings.mode,
        label_selector=settings.effective_selector or None,
        group=settings.cluster_group,
        cluster=cluster,
        instance=instance,
        identity=settings.pod_name or socket.gethostname(),
        lease_name=settings.leader_lease_name,
        lease_duration=settings.lease_duration,
        renew_deadline=settings.lease_renew_deadline,
        retry_period=settings.lease_retry_period,
        ledger_name=settings.ledger_configmap,
        invalidation_timeout=settings.invalidation_timeout,
        rollout_timeout=settings.rollout_timeout,
        report_stale_after=settings.report_stale_after,
        group_timeout=settings.group_timeout,
        on_peer_timeout=settings.on_peer_timeout,
        guard=settings.guard,
    )


def build_aggregator(
    settings: Settings,
    api_client: Any,
    *,
    provider_map: dict[str, Provider] | None = None,
    redis_override: Any = None,
    metrics: Metrics | None = None,
) -> Aggregator:
    """Raises StartupError when the cluster identity (generated name, instance id) cannot be
    read or persisted (API unreachable, RBAC missing for the cluster ConfigMap)."""
    from kubernetes import client

    from sidecar.kube.identity import IdentityError, load_identity

    try:
        identity = load_identity(
            client.CoreV1Api(api_client),
            settings.namespace,
            settings.cluster_configmap,
            configured_name=settings.cluster_name,
            ledger_name=settings.ledger_configmap,
        )
    except IdentityError as err:
        raise StartupError(_one_line(str(err))) from None  # says what to fix
    except Exception as err:
        # Without a cluster identity there is no group protocol: stop with one clear line
        # (the pod restarts with backoff) rather than a traceback.
        raise StartupError(
            f"the cluster identity could not be kept in ConfigMap "
            f"{settings.namespace}/{settings.cluster_configmap} ({_describe_api_error(err)}); "
            "check the API server and the RBAC for configmaps (get, create, update)"
        ) from None
    cluster = identity.name
    if identity.generated:
        log.info(
            "cluster.generated_name",
            cluster=cluster,
            configmap=f"{settings.namespace}/{settings.cluster_configmap}",
        )
        if settings.remote_redis:
            log.warning(
                "cluster.name_not_set",
                cluster=cluster,
                hint="in a cluster group every cluster should set CLUSTER_NAME: a generated "
                f"name is tied to ConfigMap {settings.namespace}/{settings.cluster_configmap}, "
                "and deleting it makes the group see a new member",
            )
    redis_conn = None
    # The pods' reports (sidecar mode) and a cluster group (either mode, as the Go worker)
    # meet in this cluster's Redis.
    if settings.mode == "sidecar" or settings.remote_redis:
        redis_conn = redis_override if redis_override is not None else redis_client(settings.redis)
    # One client (own pool, short timeouts) per peer: a silent peer blocks only its own.
    peers = [
        (p.display_url, redis_client(p, **peer_client_options())) for p in settings.remote_redis
    ]
    sender = WebhookSender(
        settings.webhooks,
        default_timeout=settings.webhook_timeout,
        default_retries=settings.webhook_retries,
    )
    return Aggregator(
        options(settings, cluster, identity.instance),
        api_client,
        providers=provider_map if provider_map is not None else providers(settings),
        webhooks=sender,
        redis_client=redis_conn,
        metrics=metrics,
        peers=peers,
        local_endpoint=settings.redis.display_url,
    )
