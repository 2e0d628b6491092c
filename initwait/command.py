"""The `cache-buster wait` command around `Waiter`: flags checked before anything connects,
the client, SIGTERM and SIGINT, the reason line and the exit status.

Output: the progress lines on stdout (people read them in `kubectl logs`); the verdict's one
line on stdout when the rollout completed, on stderr otherwise; structured log lines (JSON,
sidecar.logs, on stderr) for the events: started, image applied, stalled, retries, finished.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Mapping
from typing import TextIO

from initwait.client import api_client
from initwait.options import UsageError, parse_options
from initwait.wait import Waiter
from sidecar import logs
from sidecar.config import SERVICEACCOUNT_NAMESPACE_FILE
from sidecar.core.exits import JobExit

PROG = "cache-buster wait"


@contextlib.contextmanager
def _stopped_by_signals(waiter: Waiter) -> Iterator[None]:
    """SIGTERM (the kubelet, at activeDeadlineSeconds or an eviction) and SIGINT end the wait
    (exit status 1). Signals can be caught only in the main thread; elsewhere, none are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        waiter.stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(
    *,
    deployment: str | None,
    namespace: str | None,
    container: str | None,
    image: str | None,
    match: str,
    timeout: str,
    kubeconfig: str | None,
    env: Mapping[str, str],
    out: TextIO,
    err: TextIO,
    namespace_file: str = SERVICEACCOUNT_NAMESPACE_FILE,
) -> int:
    """Run the command; returns its exit status (sidecar.core.exits.JobExit)."""
    try:
        options = parse_options(
            deployment=deployment,
            namespace=namespace,
            container=container,
            image=image,
            match=match,
            timeout=timeout,
            kubeconfig=kubeconfig,
            env=env,
            namespace_file=namespace_file,
        )
        client = api_client(options.kubeconfig, env)
    except UsageError as error:
        print(f"{PROG}: {error}", file=err, flush=True)
        return int(JobExit.USAGE)
    logs.setup(env.get("LOGLEVEL"))
    try:
        waiter = Waiter(client, options, out=out)
        with _stopped_by_signals(waiter):
            result = waiter.run()
    finally:
        client.close()
    if result.ok:
        print(result.reason, file=out, flush=True)
    else:
        print(f"{PROG}: {result.reason}", file=err, flush=True)
    return int(result.exit_status)
