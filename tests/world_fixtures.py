"""The emulated world for scenario tests: Kubernetes API + controller, CloudFront, webhook
receiver, and a real redis-server for the cluster (sidecar mode)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sidecar.sim.redis_servers import RedisServer
from sidecar.sim.world import World


@pytest.fixture
def world(redis_server: RedisServer) -> Iterator[World]:
    with World(redis_url=redis_server.url, time_scale=0.05, completion_delay=0.1) as w:
        yield w
