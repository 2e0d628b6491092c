"""Pytest fixtures for real redis-server processes (see sidecar.sim.redis_servers).

Register with `pytest_plugins = ["tests.redis_fixtures"]` in the root conftest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sidecar.sim.redis_servers import RedisServer

RedisServersFactory = Callable[..., list[RedisServer]]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """One fresh, empty redis-server for this test, stopped at teardown."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_servers() -> Iterator[RedisServersFactory]:
    """A factory: `redis_servers(3)` starts three servers; all are stopped at teardown.

    Keyword arguments go to RedisServer (`password=`, `acl_lines=`)."""
    started: list[RedisServer] = []

    def start(n: int = 1, **kw: Any) -> list[RedisServer]:
        servers = [RedisServer(**kw) for _ in range(n)]
        started.extend(servers)  # registered before start: a failure still cleans up
        for server in servers:
            server.start()
        return servers

    try:
        yield start
    finally:
        for server in started:
            server.stop()
