"""Partitions that look like real ones: a peer's Redis behind a loopback TCP proxy the test
cuts (a refused port, or a blackhole that accepts connections and never answers), and the
failure policy: a lagging peer blocks without limit, an unreachable one until GROUP_TIMEOUT,
then `skip` (the default) or `purge`; a peer that returns and completes reopens a skip."""

from __future__ import annotations

import json

import pytest

from sidecar.sim.group_world import GroupWorld
from tests.group.conftest import settled_everywhere, stays


def start(g: GroupWorld, **options: object) -> None:
    g.deploy("web", "nginx:1")
    g.ready_all("web")
    g.aggregators_everywhere(**options)
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:1", "baseline"), 10)


@pytest.mark.parametrize("cut", ["blackhole", "refuse"])
def test_a_peer_cut_and_back_before_group_timeout_purges_once_after_it(
    group2: GroupWorld, cut: str
) -> None:
    g = group2
    start(g, group_timeout=30.0)
    for c in g.clusters:  # a full partition: neither reads the other's Redis
        getattr(c.proxy, cut)()
    g.set_image("web", "nginx:2")
    g.ready_all("web")
    assert stays(lambda: g.invalidations() == [], 2.0)  # complete on both, seen by neither
    for c in g.clusters:
        c.proxy.pass_through()
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:2", "purged"), 15)
    assert stays(lambda: len(g.invalidations()) == 1, 0.5)


def test_while_the_claim_place_is_unreachable_nobody_purges(group2: GroupWorld) -> None:
    g = group2
    # ON_PEER_TIMEOUT=purge: us-east agrees without eu-west, but the claim lives in eu-west's
    # Redis (the lowest name), which is down: no purge until it answers.
    start(g, group_timeout=0.5, on_peer_timeout="purge")
    eu = g.cluster("eu-west")
    eu.redis.kill()
    g.set_image("web", "nginx:2")
    g.ready_all("web")
    assert stays(lambda: g.invalidations() == [], 2.5)
    eu.redis.start()  # back, empty: the ledgers still hold the chain
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:2", "purged"), 15)
    assert stays(lambda: len(g.invalidations()) == 1, 0.5)


def test_a_lagging_reachable_peer_blocks_past_group_timeout_and_is_reported(
    group2: GroupWorld,
) -> None:
    g = group2
    start(g, group_timeout=0.5)
    g.set_image("web", "nginx:2")
    g.ready_all("web", ["eu-west"])  # us-east stays mid-rollout
    assert g.wait_for(lambda: bool(g.deliveries("timeout")), 10)
    sender, _ = g.deliveries("timeout")[0]
    assert sender.startswith("eu-west/")  # per cluster: the one that waits reports
    assert stays(lambda: g.invalidations() == [], 1.0)  # reported, never skipped
    g.ready_all("web", ["us-east"])
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:2", "purged"), 10)
    assert len(g.invalidations()) == 1


def test_an_unreachable_peer_past_group_timeout_is_skipped_then_reopened(
    group2: GroupWorld,
) -> None:
    g = group2
    start(g, group_timeout=1.5)
    us = g.cluster("us-east")
    us.proxy.blackhole()
    g.set_image("web", "nginx:2")
    g.ready_all("web", ["eu-west"])
    assert g.wait_for(lambda: g.settled("eu-west", "web")["outcome"] == "skipped", 15)
    assert g.invalidations() == []
    assert g.wait_for(lambda: len(g.deliveries("skipped")) == 1, 10)
    assert g.deliveries("skipped")[0][0].startswith("eu-west/")  # sent once, by the skipper
    # us-east returns and completes the same rollout: the group purges once, same id.
    rid = g.settled("eu-west", "web")["rollout_id"]
    us.proxy.pass_through()
    g.ready_all("web", ["us-east"])
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:2", "purged"), 15)
    assert stays(lambda: len(g.invalidations()) == 1, 0.5)
    assert {g.settled(c.name, "web")["rollout_id"] for c in g.clusters} == {rid}
    assert len(g.deliveries("skipped")) == 1


def test_on_peer_timeout_purge_purges_without_the_unreachable_peer(group2: GroupWorld) -> None:
    g = group2
    start(g, group_timeout=1.0, on_peer_timeout="purge")
    g.cluster("us-east").proxy.refuse()
    g.set_image("web", "nginx:2")
    g.ready_all("web", ["eu-west"])
    assert g.wait_for(lambda: g.settled("eu-west", "web")["outcome"] == "purged", 15)
    assert stays(lambda: len(g.invalidations()) == 1, 0.5)


def test_webhooks_scope_cluster_sends_completed_from_every_cluster(group2: GroupWorld) -> None:
    g = group2
    g.deploy("web", "nginx:1")
    g.ready_all("web")
    for c in g.clusters:
        doc = json.loads(g.webhooks_config(["web"], prefix=f"{c.name}/aggregator-0"))
        g.aggregator(c.name, webhooks=json.dumps({**doc, "scope": "cluster"}))
    assert g.wait_for(lambda: settled_everywhere(g, "nginx:1", "baseline"), 10)
    g.set_image("web", "nginx:2")
    g.ready_all("web")
    assert g.wait_for(lambda: len(g.deliveries("completed")) == 2, 10)
    assert {s.split("/")[0] for s, _ in g.deliveries("completed")} == {"eu-west", "us-east"}
    assert len(g.invalidations()) == 1


def test_an_asymmetric_configuration_blocks_group_purges(group2: GroupWorld) -> None:
    g = group2
    g.deploy("web", "nginx:1")
    g.ready_all("web")
    eu = g.cluster("eu-west")
    g.aggregator("eu-west", group_timeout=0.5)
    # us-east lists a third peer that eu-west does not know.
    g.aggregator("us-east", group_timeout=0.5, peers=[eu.proxy.url, "redis://127.0.0.1:1/0"])
    g.set_image("web", "nginx:2")
    g.ready_all("web")
    assert stays(lambda: g.invalidations() == [], 2.5)
