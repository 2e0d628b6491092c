"""`cache-buster wait`, the Job-mode init container: wait until a Deployment runs an image,
then until its rollout completes; the exit status says how it ended (sidecar.core.exits).

    options = parse_options(deployment="web", image="nginx:1.27", env=os.environ)
    result = wait_for_rollout(api_client, options)   # WaitResult
    result.outcome, result.exit_status               # Outcome.COMPLETE, JobExit.OK

`initwait.command.main` is the command (flags, client, signals, the reason line).
Layers (tests/test_layers.py): the standard library, sidecar.core, sidecar.logs,
sidecar.config, sidecar.kube and the kubernetes client; never the aggregator or the emulators.
"""

from initwait.options import Match, UsageError, WaitOptions, parse_options
from initwait.result import EXIT_STATUS, Outcome, WaitResult
from initwait.wait import Tracker, Waiter, wait_for_rollout

__all__ = [
    "EXIT_STATUS",
    "Match",
    "Outcome",
    "Tracker",
    "UsageError",
    "WaitOptions",
    "WaitResult",
    "Waiter",
    "parse_options",
    "wait_for_rollout",
]
