"""A cluster group, emulated: N clusters, each with its own Kubernetes API emulator, its own
real `redis-server` and its aggregator replicas, behind one CloudFront emulator and one
webhook receiver. Every aggregator reaches a peer's Redis through a loopback TCP proxy the
test can cut (refused port, or a blackhole that accepts and never answers), and its own Redis
directly, as in a real group. Each cluster signs its CloudFront requests with its own access
key (the claim holder is the cluster), so the CDN emulator tells which holder sent each request,
and each aggregator replica's webhooks go to a path of its own, so the receiver names the sender.

Used by the group tests, the chaos runs, `cache-buster demo --clusters N` and the benchmarks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from sidecar.aggregator.facade import Aggregator
from sidecar.sim.cloudfront import CloudFrontEmulator
from sidecar.sim.redis_servers import RedisServer
from sidecar.sim.tcp_proxy import TcpProxy
from sidecar.sim.webhook_receiver import WebhookReceiver
from sidecar.sim.world import World
from sidecar.webhooks.events import EVENT_HEADER

Obj = dict[str, Any]

CLUSTER_NAMES = ("eu-west", "us-east", "ap-south", "sa-east", "af-south")


def access_key(cluster: str) -> str:
    """The access key a cluster's aggregators sign with (AKIA + 16 upper-case characters)."""
    text = "".join(ch for ch in cluster.upper() if ch.isalnum())
    return ("AKIA" + (text + "0" * 16)[:16])[:20]


class Cluster:
    """One member: its world (API, aggregators), its Redis and the proxy in front of it."""

    def __init__(self, name: str, world: World, redis: RedisServer, proxy: TcpProxy) -> None:
        self.name = name
        self.world = world
        self.redis = redis
        self.proxy = proxy
        self.key = access_key(name)  # its CloudFront access key

    @property
    def aggregators(self) -> list[Aggregator]:
        return self.world.aggregators

    def leader(self) -> Aggregator | None:
        return self.world.leader()


class GroupWorld:
    def __init__(
        self,
        clusters: int = 2,
        *,
        names: Sequence[str] | None = None,
        group: str = "shop",
        namespace: str = "shop",
        time_scale: float = 0.05,
        completion_delay: float = 0.1,
        kube_options: dict[str, Any] | None = None,
        hooks: Sequence[str] = ("web",),
    ) -> None:
        """`hooks`: webhooks in the Go worker's format, one per app named like it."""
        if not 1 <= clusters <= len(CLUSTER_NAMES):
            raise ValueError(f"1 to {len(CLUSTER_NAMES)} clusters")
        self.group = group
        self.namespace = namespace
        self.names = list(names or CLUSTER_NAMES[:clusters])
        self.cloudfront = CloudFrontEmulator(completion_delay=completion_delay)
        self.receiver = WebhookReceiver()
        self._time_scale = time_scale
        self._kube_options = kube_options
        self.clusters: list[Cluster] = []
        self.hooks = list(hooks)

    def start(self) -> GroupWorld:
        self.cloudfront.start()
        self.receiver.start()
        self.distribution = self.cloudfront.add_distribution(["www.example.com"])
        try:
            for name in self.names:
                redis = RedisServer().start()
                proxy = TcpProxy("127.0.0.1", redis.port).start()
                world = World(
                    namespace=self.namespace,
                    time_scale=self._time_scale,
                    redis_url=redis.url,
                    kube_options=self._kube_options,
                    cloudfront=self.cloudfront,
                    receiver=self.receiver,
                ).start()
                self.clusters.append(Cluster(name, world, redis, proxy))
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for c in self.clusters:
            for agg in c.world.aggregators:
                agg.stop()
            c.world.aggregators.clear()
        for c in self.clusters:
            c.world.stop()
            c.proxy.stop()
            c.redis.stop()
        self.receiver.stop()
        self.cloudfront.stop()

    def __enter__(self) -> GroupWorld:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cluster(self, name: str) -> Cluster:
        return next(c for c in self.clusters if c.name == name)

    # -- cache-buster -------------------------------------------------------------------------
    def peers_of(self, cluster: Cluster) -> list[str]:
        return [c.proxy.url for c in self.clusters if c is not cluster]

    def aggregator(
        self, cluster: str, identity: str = "aggregator-0", *, start: bool = True, **options: Any
    ) -> Aggregator:
        c = self.cluster(cluster)
        key = access_key(cluster)
        self.cloudfront.access_keys = self.cloudfront.access_keys | {key}
        # Each replica's hooks point at its own path: the receiver names the sender.
        options.setdefault(
            "webhooks",
            self.webhooks_config(
                self.hooks,
                prefix=f"{cluster}/{identity}",
                events=["completed", "skipped", "timeout", "failed"],
            ),
        )
        agg = c.world.aggregator(
            identity,
            start=False,
            cluster=cluster,
            group=self.group,
            instance=f"inst-{cluster}",
            peers=options.pop("peers", self.peers_of(c)),
            access_key=key,
            **options,
        )
        return agg.start() if start else agg

    def aggregators_everywhere(self, **options: Any) -> list[Aggregator]:
        return [self.aggregator(c.name, **options) for c in self.clusters]

    def webhooks_config(self, names: list[str], *, prefix: str = "", **hook: Any) -> str:
        return self.clusters[0].world.webhooks_config(names, prefix=prefix, **hook)

    # -- the app, on every cluster ------------------------------------------------------------
    def deploy(self, name: str, image: str, **kw: Any) -> None:
        for c in self.clusters:
            c.world.deploy(name, image, **kw)

    def set_image(self, name: str, image: str, clusters: Sequence[str] | None = None) -> None:
        for c in self.clusters:
            if clusters is None or c.name in clusters:
                c.world.set_image(name, image)

    def ready_all(self, name: str, clusters: Sequence[str] | None = None) -> None:
        for c in self.clusters:
            if clusters is None or c.name in clusters:
                c.world.ready_all(name)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    # -- ground truth ---------------------------------------------------------------------------
    def invalidations(self) -> list[Any]:
        return self.cloudfront.invalidations()

    def create_requests(self) -> list[Any]:
        return [
            r
            for r in self.cloudfront.calls("CreateInvalidation")
            if r.status in (200, 201) or r.error_code is None
        ]

    def senders(self) -> dict[str, str]:
        """access key -> cluster, for reading the emulator's records."""
        return {c.key: c.name for c in self.clusters}

    def deliveries(self, event: str = "completed") -> list[tuple[str, Obj]]:
        """(sender "cluster/identity", body) of every webhook delivery of `event`."""
        out = []
        for hook in self.receiver.received:
            if hook.headers.get(EVENT_HEADER) != event:
                continue
            sender = "/".join(hook.path.strip("/").split("/")[:2])
            try:
                body = json.loads(hook.body)
            except ValueError:
                body = {}
            out.append((sender, body))
        return out

    def settled(self, cluster: str, app: str) -> Obj | None:
        entry = self.cluster(cluster).world.ledger().get(app)
        return entry.get("settled") if entry else None
