"""Exit statuses of the Job-mode commands, `cache-buster wait` and `cache-buster purge`
(docs/architecture.md, "Job mode"; README, "Job mode").

One table for both commands, so the Job's `podFailurePolicy` can name them once: the statuses
that are a verdict on the rollout or the purge (a new Pod would reach the same verdict) fail
the Job; 1 (an unexpected error: the API or the network went away) may be retried.
"""

from __future__ import annotations

from enum import IntEnum


class JobExit(IntEnum):
    # `wait`: the rollout completed. `purge`: purged, or already purged (without --strict).
    OK = 0
    # Unexpected: an API or network failure, a bug. The only status worth a new Pod.
    ERROR = 1
    # A bad flag or setting (one line naming it); also typer's own usage errors.
    USAGE = 2
    # The Deployment went back to the image it ran before the rollout.
    ROLLED_BACK = 3
    # The Deployment moved on to another image before the rollout completed.
    SUPERSEDED = 4
    # The timeout passed while the controller's verdict was `ProgressDeadlineExceeded`.
    STALLED = 5
    # The timeout passed (waiting for the image, for the rollout, for the group or the purge).
    TIMEOUT = 6
    # The CDN refused the purge (bad token, unknown zone, rejected request): needs a person.
    PURGE_FAILED = 7
    # `purge --strict` only: this rollout was purged before, nothing was sent.
    ALREADY_PURGED = 8


# The statuses after which a retried Pod would only repeat the verdict: the Job's
# podFailurePolicy fails the Job on these (kustomize/bases/purge-job).
FINAL = (
    JobExit.USAGE,
    JobExit.ROLLED_BACK,
    JobExit.SUPERSEDED,
    JobExit.STALLED,
    JobExit.TIMEOUT,
    JobExit.PURGE_FAILED,
    JobExit.ALREADY_PURGED,
)
