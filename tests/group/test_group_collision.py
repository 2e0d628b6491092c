"""A name collision: two cache-busters that both say they are cluster "eu-west" (two namespaces
sharing eu-west's Redis, each with its own instance id) write one app's records under one name.
They must be reported as a collision and never merged: no group purge while it holds
(docs/architecture.md, "Cluster groups", G3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sidecar.aggregator.facade import Aggregator
from sidecar.sim.group_world import GroupWorld
from sidecar.sim.world import World
from tests.group.conftest import settled_everywhere, stays

OTHER = "inst-other"


@contextmanager
def namesake(g: GroupWorld, cluster: str, namespace: str = "shop-2") -> Iterator[World]:
    """Another namespace whose cache-buster is configured with `cluster`'s CLUSTER_NAME and
    `cluster`'s Redis (its own API here: the collision lives in Redis alone), running the
    same app. Its aggregator has its own instance id, as `sidecar.kube.identity` gives
    every namespace."""
    c = g.cluster(cluster)
    world = World(
        namespace=namespace,
        time_scale=0.05,
        redis_url=c.redis.url,
        cloudfront=g.cloudfront,
        receiver=g.receiver,
    ).start()
    try:
        world.deploy("web", "nginx:1")
        world.ready_all("web")
        world.aggregator(
            "aggregator-0",
            cluster=cluster,
            group=g.group,
            instance=OTHER,
            peers=g.peers_of(c),
            access_key=c.key,
        )
        yield world
    finally:
        world.stop()


def collision_seen(agg: Aggregator, instance: str) -> bool:
    assert agg.group is not None
    return any(
        p.startswith("name collision") and instance in p for p in agg.group.view("web").problems
    )


def start(g: GroupWorld) -> Aggregator:
    g.deploy("web", "nginx:1")
    g.ready_all("web")
    eu, _ = g.aggregators_everywhere()
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:1", "baseline"), 10)
    return eu


def test_a_second_writer_of_a_cluster_name_is_reported_as_a_collision(
    group2: GroupWorld,
) -> None:
    g = group2
    eu = start(g)
    assert not collision_seen(eu, OTHER)
    with namesake(g, "eu-west"):
        # The first writer finds another instance's heartbeat and state under its name.
        assert g.wait_for(lambda: collision_seen(eu, OTHER), 8)
        assert stays(lambda: collision_seen(eu, OTHER), 1.0)


def test_no_purge_while_two_writers_share_a_cluster_name(group2: GroupWorld) -> None:
    g = group2
    start(g)
    with namesake(g, "eu-west") as other:
        # Every reader of eu-west's Redis (both writers, and us-east) sees two instances
        # alternate in one heartbeat key.
        everyone = [*g.cluster("eu-west").aggregators, *g.cluster("us-east").aggregators]
        everyone += other.aggregators
        assert g.wait_for(lambda: all(collision_seen(a, OTHER) for a in everyone), 20)
        g.set_image("web", "nginx:2")
        other.set_image("web", "nginx:2")
        g.ready_all("web")
        other.ready_all("web")
        assert stays(lambda: g.invalidations() == [], 4.0)
        assert all(collision_seen(a, OTHER) for a in everyone)
