"""Shared fixtures: real redis-server processes (tests/redis_fixtures.py), the emulated world
(tests/world_fixtures.py), and structured logs shown for failing tests."""

import pytest

from sidecar import logs

pytest_plugins = ["tests.redis_fixtures", "tests.world_fixtures"]


@pytest.fixture(autouse=True, scope="session")
def _json_logs() -> None:
    """Structured log lines on stderr: pytest shows them for a failing test."""
    logs.setup("info")
