"""Cluster groups of two and three clusters, each with its own real redis-server, emulated
API and aggregator: one purge per group rollout, only after every cluster finished."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from sidecar.sim.group_world import GroupWorld


@pytest.fixture
def group2() -> Iterator[GroupWorld]:
    with GroupWorld(2) as g:
        yield g


def test_two_clusters_purge_once_after_both(group2: GroupWorld) -> None:
    g = group2
    g.deploy("web", "nginx:1")
    g.ready_all("web")
    g.aggregators_everywhere()
    assert g.wait_for(lambda: all(g.settled(c.name, "web") for c in g.clusters), 10)
    assert [g.settled(c.name, "web")["outcome"] for c in g.clusters] == ["baseline"] * 2

    g.set_image("web", "nginx:2")
    g.ready_all("web", clusters=["eu-west"])
    time.sleep(1.0)
    assert g.invalidations() == []  # us-east has not finished

    g.ready_all("web", clusters=["us-east"])
    assert g.wait_for(lambda: len(g.invalidations()) == 1, 10)
    assert g.wait_for(
        lambda: all(
            (g.settled(c.name, "web") or {}).get("outcome") == "purged" for c in g.clusters
        ),
        10,
    )
    ids = {g.settled(c.name, "web")["rollout_id"] for c in g.clusters}
    assert len(ids) == 1
    time.sleep(0.5)
    assert len(g.invalidations()) == 1
    assert len(g.deliveries("completed")) == 1
