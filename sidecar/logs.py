"""Structured logging: one JSON line per event, secrets never written.

Stdlib only: the reporter imports it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

# Field names whose values are never logged, whatever the caller passes.
_SECRET_MARKERS = ("secret", "token", "password", "authorization", "credential", "signature")
_REDACTED = "[redacted]"


def _is_secret(key: str) -> bool:
    lowered = key.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)


def redact(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (_REDACTED if _is_secret(k) and v not in (None, "") else v) for k, v in fields.items()
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(redact(fields))
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(doc, default=str, separators=(",", ":"))


class EventLogger:
    """`log.info("purge.requested", app="web", image="...")`: the event name, then fields."""

    def __init__(self, logger: logging.Logger, context: dict[str, Any] | None = None) -> None:
        self._logger = logger
        self._context = dict(context or {})

    def bind(self, **context: Any) -> EventLogger:
        return EventLogger(self._logger, {**self._context, **context})

    def _log(self, level: int, event: str, fields: dict[str, Any], exc: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(
                level, event, extra={"fields": {**self._context, **fields}}, exc_info=exc
            )

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields, exc=True)


def get_logger(name: str, **context: Any) -> EventLogger:
    return EventLogger(logging.getLogger(f"cache_buster.{name}"), context)


def setup(level: str | None = None, stream: Any = None) -> None:
    """Configure the root cache_buster logger once; `LOGLEVEL` (the Go worker's setting) picks
    the level."""
    chosen = (level or os.environ.get("LOGLEVEL") or "info").upper()
    if chosen == "WARN":
        chosen = "WARNING"
    root = logging.getLogger("cache_buster")
    root.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(getattr(logging, chosen, logging.INFO))
    root.propagate = False
