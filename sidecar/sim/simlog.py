"""The emulators' logging: `log.info("sim.kube.started", url=...)`, an event name then fields.

The emulators import nothing of the product (an emulator that shares the product's code cannot
catch its mistakes), so this is their own small helper on stdlib `logging`. Records go to the
logger `cache_buster.sim.<name>` and carry their fields in `record.fields`, the shape the
product's log formatter and the demo's timeline read, so whoever configured the
`cache_buster` logger sees the emulators' events with everyone else's. Nothing is printed
unless someone configured it.
"""

from __future__ import annotations

import logging
from typing import Any

ROOT = "cache_buster.sim"


class SimLogger:
    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, event: str, fields: dict[str, Any], exc: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": fields}, exc_info=exc)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """At error level, with the exception being handled."""
        self._log(logging.ERROR, event, fields, exc=True)


def get_logger(name: str) -> SimLogger:
    """`get_logger("kube.http")` logs as `cache_buster.sim.kube.http`."""
    return SimLogger(logging.getLogger(f"{ROOT}.{name}"))
