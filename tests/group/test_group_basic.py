"""Cluster groups of two and three clusters, each with its own real redis-server, emulated
API and aggregator: one purge per group rollout, only after every cluster finished, one
rollout id for the whole group (the chain of settled rollouts)."""

from __future__ import annotations

import time

from sidecar.sim.group_world import GroupWorld
from tests.group.conftest import caller_references, settled_everywhere, stays


def baseline(g: GroupWorld, image: str = "nginx:1", **options: object) -> None:
    g.deploy("web", image)
    g.ready_all("web")
    g.aggregators_everywhere(**options)
    assert g.wait_for(lambda: settled_everywhere(g, image, "baseline"), 10)


def roll(g: GroupWorld, image: str, clusters: list[str] | None = None) -> None:
    g.set_image("web", image, clusters)
    g.ready_all("web", clusters)


def test_two_clusters_purge_once_after_both(group2: GroupWorld) -> None:
    g = group2
    baseline(g)
    roll(g, "nginx:2", ["eu-west"])
    assert stays(lambda: g.invalidations() == [], 1.0)  # us-east has not finished

    roll(g, "nginx:2", ["us-east"])
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:2", "purged"), 10)
    assert len({g.settled(c.name, "web")["rollout_id"] for c in g.clusters}) == 1
    assert stays(lambda: len(g.invalidations()) == 1, 0.5)
    senders = [s for s, _ in g.deliveries("completed")]
    assert len(senders) == 1  # `completed` from the claim winner only
    creates = g.cloudfront.calls("CreateInvalidation")
    assert len({r.access_key for r in creates}) == 1


def test_three_clusters_wait_for_the_last_one(group3: GroupWorld) -> None:
    g = group3
    baseline(g)
    g.set_image("web", "nginx:2")
    g.ready_all("web", ["eu-west", "us-east"])
    assert stays(lambda: g.invalidations() == [], 1.0)
    last_ready = time.time()
    g.ready_all("web", ["ap-south"])
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:2", "purged"), 10)
    assert len(g.invalidations()) == 1
    assert g.cloudfront.calls("CreateInvalidation")[0].time >= last_ready


def test_a_late_joiner_with_an_empty_ledger_purges_once(group3: GroupWorld) -> None:
    g = group3
    g.deploy("web", "nginx:1")
    g.ready_all("web")
    for name in ("eu-west", "us-east"):
        g.aggregator(name, group_timeout=1.0)
    # ap-south's aggregator is not running: past GROUP_TIMEOUT the others baseline.
    assert g.wait_for(lambda: all(g.settled(n, "web") for n in ("eu-west", "us-east")), 10)
    g.aggregator("ap-south", group_timeout=1.0)  # empty ledger: adopts the group's head
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:1", "baseline"), 10)
    ids = {g.settled(c.name, "web")["rollout_id"] for c in g.clusters}
    assert len(ids) == 1
    roll(g, "nginx:2")
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:2", "purged"), 10)
    assert stays(lambda: len(g.invalidations()) == 1, 0.5)


def test_a_deleted_ledger_mid_group_purges_once(group2: GroupWorld) -> None:
    g = group2
    baseline(g)
    roll(g, "nginx:2")
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:2", "purged"), 10)
    us = g.cluster("us-east")
    for agg in list(us.aggregators):
        agg.stop()
        us.aggregators.remove(agg)
    us.world.kube.delete("configmaps", g.namespace, "cache-buster-ledger")
    g.aggregator("us-east", "aggregator-1")
    # The empty ledger adopts the group's head (its own Redis's mirror): no new baseline.
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:2", "purged"), 10)
    roll(g, "nginx:3")
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:3", "purged"), 10)
    assert stays(lambda: len(g.invalidations()) == 2, 0.5)
    assert len(set(caller_references(g))) == 2


def test_a_return_to_an_earlier_image_purges_again(group2: GroupWorld) -> None:
    g = group2
    baseline(g)
    roll(g, "nginx:2")
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:2", "purged"), 10)
    roll(g, "nginx:1")
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:1", "purged"), 10)
    assert stays(lambda: len(g.invalidations()) == 2, 0.5)
    assert len(set(caller_references(g))) == 2


def test_one_cluster_skipping_an_image_purges_only_the_common_one(group3: GroupWorld) -> None:
    g = group3
    baseline(g)
    roll(g, "nginx:2", ["eu-west", "us-east"])
    roll(g, "nginx:3", ["ap-south"])  # A -> C directly
    assert stays(lambda: g.invalidations() == [], 1.5)  # B: ap-south lags without limit
    roll(g, "nginx:3", ["eu-west", "us-east"])
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:3", "purged"), 10)
    assert stays(lambda: len(g.invalidations()) == 1, 0.5)


def test_the_claim_place_wiped_between_two_rollouts_purges_the_next_once(
    group2: GroupWorld,
) -> None:
    g = group2
    baseline(g)
    roll(g, "nginx:2")
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:2", "purged"), 10)
    g.cluster("eu-west").redis.wipe()  # the lowest name: the claim place
    assert stays(lambda: len(g.invalidations()) == 1, 1.0)
    roll(g, "nginx:3")
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:3", "purged"), 10)
    assert stays(lambda: len(g.invalidations()) == 2, 0.5)
    assert len(set(caller_references(g))) == 2
