"""Redis key and channel names shared by the reporter and the aggregator (stdlib only)."""

from __future__ import annotations

PREFIX = "cache-buster"


def report_key(namespace: str, pod: str) -> str:
    return f"{PREFIX}:report:{namespace}:{pod}"


def report_pattern(namespace: str) -> str:
    return f"{PREFIX}:report:{namespace}:*"


def report_channel(namespace: str) -> str:
    return f"{PREFIX}:reports:{namespace}"
