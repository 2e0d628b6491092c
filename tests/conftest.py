"""Shared fixtures: real redis-server processes (tests/redis_fixtures.py), the emulated world
(tests/world_fixtures.py), and structured logs shown for failing tests."""

import pytest

from sidecar import logs

pytest_plugins = ["tests.redis_fixtures", "tests.world_fixtures"]


@pytest.fixture(autouse=True, scope="session")
def _json_logs() -> None:
    """Structured log lines on stderr: pytest shows them for a failing test."""
    logs.setup("info")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow scenario and chaos tests first: with xdist they then run beside the many short
    tests instead of being the tail of the run (the suite's wall time is its longest tail)."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") else 1)
