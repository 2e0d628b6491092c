"""The outcome of a wait, and the one place it becomes an exit status (sidecar.core.exits)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sidecar.core.exits import JobExit


class Outcome(enum.Enum):
    COMPLETE = "complete"  # the expected image rolled out (kubectl's verdict)
    ROLLED_BACK = "rolled_back"  # back to the image before it, before completing
    SUPERSEDED = "superseded"  # on to any other image, before completing
    STALLED = "stalled"  # timed out while the controller said ProgressDeadlineExceeded
    TIMEOUT = "timeout"  # timed out otherwise
    INTERRUPTED = "interrupted"  # SIGTERM or SIGINT
    API_ERROR = "api_error"  # the API kept failing (after retries), or refused (RBAC)


EXIT_STATUS: Mapping[Outcome, JobExit] = MappingProxyType(
    {
        Outcome.COMPLETE: JobExit.OK,
        Outcome.ROLLED_BACK: JobExit.ROLLED_BACK,
        Outcome.SUPERSEDED: JobExit.SUPERSEDED,
        Outcome.STALLED: JobExit.STALLED,
        Outcome.TIMEOUT: JobExit.TIMEOUT,
        # A stopped Pod (evicted, node drained) proves nothing about the rollout: 1 is the
        # status the Job's podFailurePolicy may retry. At activeDeadlineSeconds the Job has
        # failed already, whatever the Pod says.
        Outcome.INTERRUPTED: JobExit.ERROR,
        Outcome.API_ERROR: JobExit.ERROR,
    }
)


@dataclass(frozen=True)
class WaitResult:
    outcome: Outcome
    reason: str  # one line for people: printed, and logged with the outcome
    deployment: str  # namespace/name
    image: str | None  # the image waited for (the one first seen, without --image)
    running: str | None  # the image the Deployment ran at the end (None: not seen)
    elapsed: float  # seconds since the wait started

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.COMPLETE

    @property
    def exit_status(self) -> JobExit:
        return EXIT_STATUS[self.outcome]
