"""Fixtures and helpers for the cluster-group tests (real redis-server per cluster)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from sidecar.sim.group_world import GroupWorld


def stays(predicate: Callable[[], bool], seconds: float = 0.8) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.02)
    return True


def outcome(g: GroupWorld, cluster: str, app: str = "web") -> str | None:
    settled = g.settled(cluster, app)
    return settled.get("outcome") if settled else None


def settled_everywhere(g: GroupWorld, image: str, outcome_: str, app: str = "web") -> bool:
    return all(
        (s := g.settled(c.name, app)) is not None
        and s.get("image") == image
        and s.get("outcome") == outcome_
        for c in g.clusters
    )


def caller_references(g: GroupWorld) -> list[str]:
    return [inv.caller_reference for inv in g.invalidations()]


@pytest.fixture
def group2() -> Iterator[GroupWorld]:
    with GroupWorld(2) as g:
        yield g


@pytest.fixture
def group3() -> Iterator[GroupWorld]:
    with GroupWorld(3) as g:
        yield g
