"""Chaos for cluster groups, counted at the emulators and in Redis (sidecar.sim.group_chaos):
for every group rollout, no duplicate (claims won by more than one holder, CreateInvalidation
from more than one cluster, more than one CallerReference or invalidation, `completed` from
more than one sender), no premature purge, no purge of a failed or superseded rollout, no
missed purge (peers come back well within GROUP_TIMEOUT). Fixed seeds: a failure reproduces."""

from __future__ import annotations

import pytest

from sidecar.sim.group_chaos import GroupChaos


def run(seed: int, **kw: object) -> None:
    chaos = GroupChaos(seed, **kw)  # type: ignore[arg-type]
    counts = chaos.run()
    print(f"group chaos seed={seed}: {counts.line()}")
    assert counts.rollouts >= kw.get("apps", 10) * kw.get("steps", 5)  # type: ignore[operator]
    assert sum(counts.faults.values()) > 0
    problems = (counts.duplicates, counts.premature, counts.failed_purged, counts.missed)
    assert problems == (0, 0, 0, 0), "\n".join(counts.details)
    assert counts.purges == counts.expected_purges


def test_fifty_group_rollouts_under_faults() -> None:
    run(11, clusters=3, apps=10, steps=5)


@pytest.mark.slow
@pytest.mark.timeout(400)  # ~100 s alone; slower beside the rest of the suite on 2 cores
def test_two_hundred_group_rollouts_under_faults() -> None:
    run(23, clusters=3, apps=25, steps=8, replicas=1)
