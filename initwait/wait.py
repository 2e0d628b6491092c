"""`cache-buster wait`: wait until a Deployment runs an image, then until its rollout
completes, as the Flux Job pattern's init container did with `kubectl get` every second and
`kubectl rollout status` without a timeout; here with one watch and one bounded wait.

Phases: waiting for the Deployment (not created yet), waiting for the image (it runs another:
the line says which), waiting for the rollout (kubectl's verdict, `rollout_status`), done.
Once the Deployment runs the expected image (it "took" it), the image it moves to before the
rollout completes decides between ROLLED_BACK (the image it ran before: the newest older
ReplicaSet's, read once when it took the expected image) and SUPERSEDED (any other). An image
seen while still waiting for the expected one decides nothing. A ProgressDeadlineExceeded is
reported once per stall and is not final: the rollout may still complete; only a timeout
during a stall is STALLED. A deleted Deployment is waited for again from the start.

`Tracker` is the state machine, without I/O; `Waiter` feeds it from the watch and returns a
`WaitResult`, so a caller can go on (a group wait) after COMPLETE with the time left.
"""

from __future__ import annotations

import queue
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from initwait.options import Match, WaitOptions
from initwait.progress import Counts, human_duration, progress_line
from initwait.result import Outcome, WaitResult
from initwait.stream import (
    API_ATTEMPTS,
    REQUEST_TIMEOUT,
    WATCH_TIMEOUT,
    ApiFailure,
    DeploymentWatch,
    Failed,
    Retrying,
    Seen,
    list_replicasets,
)
from sidecar.core.annotations import CONTAINER
from sidecar.core.backoff import RECONNECT, BackoffPolicy
from sidecar.core.images import ImageRefError, same_image
from sidecar.core.rollout import (
    TIMED_OUT_REASON,
    Phase,
    Status,
    Waiting,
    observe,
    previous_image,
)
from sidecar.logs import get_logger

Obj = Mapping[str, Any]
# (deployment, container) -> the image it ran before the rollout; may raise ApiFailure.
PreviousImage = Callable[[Obj, str | None], str | None]

log = get_logger("wait")


def images_match(a: str | None, b: str | None, match: Match) -> bool:
    if a is None or b is None:
        return a is b
    if a == b:
        return True
    if match is Match.NORMALIZED:
        try:
            return same_image(a, b)
        except ImageRefError:  # a template the kubelet would reject: only equal strings match
            return False
    return False


def _get(obj: Obj, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        cur = cur.get(key) if isinstance(cur, Mapping) else None
    return cur


def _container_names(deployment: Obj) -> list[str]:
    containers = _get(deployment, "spec", "template", "spec", "containers") or []
    return [str(c.get("name")) for c in containers if isinstance(c, Mapping)]


def _stall_condition(deployment: Obj) -> tuple[str, str]:
    for cond in _get(deployment, "status", "conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == TIMED_OUT_REASON:
            return TIMED_OUT_REASON, " ".join(str(cond.get("message") or "").split())
    return TIMED_OUT_REASON, ""


@dataclass
class Step:
    """What one observation produced: lines for stdout, log events, maybe the verdict."""

    lines: list[str] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    result: WaitResult | None = None


class Tracker:
    """Feed it every state of the Deployment (`observe`); it says what changed and, once
    there is one, the verdict. `timed_out`, `interrupted` and `failed` give the verdict for
    what happened outside the Deployment."""

    def __init__(self, options: WaitOptions, *, started: float, previous: PreviousImage) -> None:
        self.options = options
        self.name = f"{options.namespace}/{options.deployment}"
        self._started = started
        self._previous = previous
        self._expected = options.image  # pinned at first sight when None
        self._seen = False  # the Deployment was observed at least once (present or not)
        self._present = False
        self._uid: str | None = None
        self._taken = False  # it runs (ran) the expected image: the rollout phase
        self._before: str | None = None
        self._running: str | None = None
        self._container: str | None = None
        self._deployment: Obj | None = None
        self._status: Status | None = None
        self._image_key: tuple[str | None, str | None] | None = None
        self._progress_key: tuple[Any, ...] | None = None
        self._stalled = False

    # -- lines ------------------------------------------------------------------------------
    def first_line(self) -> str:
        timeout = human_duration(self.options.timeout) if self.options.timeout else "none"
        if self._expected is None:
            return (
                "no --image or APP_IMAGE given: waiting for the rollout of whatever deployment "
                f"{self.name} runs when first seen (timeout {timeout})"
            )
        return (
            f"waiting for deployment {self.name} to run {self._expected} "
            f"({self.options.image_source}, match {self.options.match.value}), then for its "
            f"rollout (timeout {timeout})"
        )

    def waiting_for(self) -> str:
        """What the wait is waiting for now, for the timeout and interruption lines."""
        if not self._present:
            return f"deployment {self.name} to exist"
        if not self._taken:
            runs = (
                f"container {self._container} runs {self._running}"
                if self._running
                else f"no container {self._container!r}"
            )
            return f"the image {self._expected} ({runs})"
        detail = f": {self._status.message}" if self._status else ""
        return f"the rollout of {self._expected}{detail}"

    # -- verdicts ---------------------------------------------------------------------------
    def _result(self, outcome: Outcome, reason: str, now: float) -> WaitResult:
        return WaitResult(
            outcome=outcome,
            reason=reason,
            deployment=self.name,
            image=self._expected,
            running=self._running,
            elapsed=max(0.0, now - self._started),
        )

    def timed_out(self, now: float, last_error: str | None = None) -> WaitResult:
        after = human_duration(self.options.timeout)
        if not self._seen:
            detail = f" (last error: {last_error})" if last_error else ""
            return self._result(
                Outcome.TIMEOUT, f"timed out after {after} waiting for the API{detail}", now
            )
        if self._taken and self._status is not None and self._status.phase is Phase.STALLED:
            assert self._deployment is not None
            reason, message = _stall_condition(self._deployment)
            counts = Counts.of(self._deployment).describe()
            return self._result(
                Outcome.STALLED,
                f"stalled: the rollout of {self._expected} did not complete in {after}: "
                f"Progressing=False, {reason}: {message} ({counts})",
                now,
            )
        return self._result(
            Outcome.TIMEOUT, f"timed out after {after} waiting for {self.waiting_for()}", now
        )

    def interrupted(self, why: str, now: float) -> WaitResult:
        return self._result(
            Outcome.INTERRUPTED,
            f"stopped by {why} after {human_duration(round(now - self._started))} while "
            f"waiting for {self.waiting_for()}",
            now,
        )

    def failed(self, error: str, now: float) -> WaitResult:
        return self._result(Outcome.API_ERROR, f"API error: {error}", now)

    # -- observations -----------------------------------------------------------------------
    def observe(self, deployment: Obj | None, now: float) -> Step:
        """May raise ApiFailure (from `previous`, when the rollout phase starts)."""
        step = Step()
        if deployment is None:
            self._absent(step)
            return step
        uid = _get(deployment, "metadata", "uid")
        if self._present and uid != self._uid:
            # Replaced between two observations (a missed delete): start again.
            self._absent(step)
        if not self._present:
            self._present, self._uid = True, uid
        self._seen = True
        self._deployment = deployment
        annotated = (_get(deployment, "metadata", "annotations") or {}).get(CONTAINER)
        container = self.options.container or (str(annotated).strip() if annotated else None)
        container = container or None
        obs = observe(deployment, (), container=container)
        names = _container_names(deployment)
        self._container = container or (names[0] if names else None)
        self._running = obs.image
        self._status = obs.status

        if self._expected is None and obs.image is not None:
            self._expected = obs.image
            step.lines.append(
                f"deployment {self.name} runs {obs.image} (container {self._container}): "
                "waiting for its rollout"
            )

        matches = obs.image is not None and images_match(
            obs.image, self._expected, self.options.match
        )
        if not self._taken:
            if not matches:
                self._waiting_for_image(step, names)
                return step
            self._take(step, deployment, container, obs.status)
        elif not matches:
            self._moved(step, obs.image, now)
            return step
        if obs.status.complete:
            self._complete(step, deployment, now)
        else:
            self._progress(step, deployment, obs.status, now)
        return step

    def _absent(self, step: Step) -> None:
        if self._present:
            step.lines.append(
                f"deployment {self.name} was deleted: waiting for it to be created again"
            )
            step.events.append(("wait.deployment_deleted", {}))
        elif not self._seen:
            step.lines.append(f"deployment {self.name} not found yet: waiting for it")
        self._seen = True
        self._present = self._taken = self._stalled = False
        self._uid = self._before = self._running = self._status = self._deployment = None
        self._image_key = self._progress_key = None
        if self.options.image is None:
            self._expected = None  # pin again on the new object

    def _waiting_for_image(self, step: Step, names: list[str]) -> None:
        key = (self._container, self._running)
        if key == self._image_key:
            return
        self._image_key = key
        if self._running is None:
            step.lines.append(
                f"waiting for the image: deployment {self.name} has no container "
                f"{self._container!r} (containers: {', '.join(names) or 'none'})"
            )
        else:
            step.lines.append(
                f"waiting for the image: container {self._container} runs {self._running}, "
                f"not {self._expected}"
            )

    def _take(self, step: Step, deployment: Obj, container: str | None, status: Status) -> None:
        self._taken = True
        if status.complete:
            # Nothing left to roll out: the image before it can no longer matter.
            step.lines.append(f"container {self._container} runs {self._running}")
            return
        self._before = self._previous(deployment, container)
        before = self._before or "no earlier revision"
        step.lines.append(
            f"image applied: container {self._container} runs {self._running} "
            f"(before: {before}); waiting for the rollout"
        )
        step.events.append(
            (
                "wait.image_applied",
                {"image": self._running, "before": self._before, "container": self._container},
            )
        )

    def _moved(self, step: Step, image: str | None, now: float) -> None:
        shown = image or f"no container {self._container!r}"
        if self._before is not None and images_match(image, self._before, self.options.match):
            step.result = self._result(
                Outcome.ROLLED_BACK,
                f"rolled back: deployment {self.name} went back to {shown} (the image before "
                f"{self._expected}) before its rollout completed",
                now,
            )
        else:
            step.result = self._result(
                Outcome.SUPERSEDED,
                f"superseded: deployment {self.name} moved to {shown} before the rollout of "
                f"{self._expected} completed",
                now,
            )

    def _progress(self, step: Step, deployment: Obj, status: Status, now: float) -> None:
        counts = Counts.of(deployment)
        key = (status.phase, counts)
        if status.phase is Phase.STALLED and not self._stalled:
            self._stalled = True
            reason, message = _stall_condition(deployment)
            step.lines.append(
                f"rollout stalled: Progressing=False, {reason}: {message} "
                "(not final: the rollout may still complete)"
            )
            step.events.append(("wait.stalled", {"reason": reason, "message": message}))
            # One line per stall: the counts have not moved, that is what a stall is.
            self._progress_key = key
            return
        if status.phase is not Phase.STALLED:
            self._stalled = False
        # Until the controller has seen the new template, the counts are the last rollout's.
        if key == self._progress_key or status.waiting_for is Waiting.SPEC_OBSERVED:
            return
        self._progress_key = key
        label = {Phase.STALLED: "rollout stalled", Phase.PAUSED: "rollout paused"}.get(
            status.phase, "rollout"
        )
        step.lines.append(progress_line(label, counts, now - self._started))

    def _complete(self, step: Step, deployment: Obj, now: float) -> None:
        counts = Counts.of(deployment)
        step.lines.append(progress_line("rollout complete", counts, now - self._started))
        step.result = self._result(
            Outcome.COMPLETE,
            f"deployment {self.name} rolled out {self._expected} in "
            f"{human_duration(round(now - self._started))}",
            now,
        )


class Output(Protocol):
    """Where the human lines go: sys.stdout, or anything that writes text."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


@dataclass(frozen=True)
class _Stop:
    why: str


class Waiter:
    """One wait: `run()` blocks until the verdict; `stop(why)` ends it from a signal handler
    or another thread (the verdict is then INTERRUPTED)."""

    def __init__(
        self,
        api_client: Any,
        options: WaitOptions,
        *,
        out: Output | None = None,
        clock: Callable[[], float] = time.monotonic,
        policy: BackoffPolicy = RECONNECT,
        attempts: int = API_ATTEMPTS,
        watch_timeout: int = WATCH_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._api = api_client
        self.options = options
        self._out = out or sys.stdout
        self._clock = clock
        self._policy = policy
        self._attempts = attempts
        self._watch_timeout = watch_timeout
        self._request_timeout = request_timeout
        # SimpleQueue.put is reentrant: safe from a signal handler interrupting a get().
        self._inbox: queue.SimpleQueue[Seen | Retrying | Failed | _Stop] = queue.SimpleQueue()
        self.watch: DeploymentWatch | None = None

    def stop(self, why: str = "a stop request") -> None:
        self._inbox.put(_Stop(why))

    def _say(self, line: str) -> None:
        print(line, file=self._out, flush=True)

    def _previous(self, deployment: Obj, container: str | None) -> str | None:
        replicasets = list_replicasets(
            self._api,
            self.options.namespace,
            deployment,
            policy=self._policy,
            attempts=self._attempts,
            request_timeout=self._request_timeout,
        )
        return previous_image(deployment, replicasets, container)

    def run(self) -> WaitResult:
        o = self.options
        started = self._clock()
        tracker = Tracker(o, started=started, previous=self._previous)
        self._say(tracker.first_line())
        log.info(
            "wait.started",
            deployment=o.deployment,
            namespace=o.namespace,
            image=o.image,
            container=o.container,
            match=o.match.value,
            timeout=o.timeout,
        )
        self.watch = DeploymentWatch(
            self._api,
            o.namespace,
            o.deployment,
            self._inbox.put,
            policy=self._policy,
            attempts=self._attempts,
            watch_timeout=self._watch_timeout,
            request_timeout=self._request_timeout,
        ).start()
        try:
            result = self._loop(tracker, started + o.timeout if o.timeout else None)
        finally:
            self.watch.stop()
        fields = {"outcome": result.outcome.value, "exit_status": int(result.exit_status)}
        (log.info if result.ok else log.warning)(
            "wait.finished",
            **fields,
            reason=result.reason,
            image=result.image,
            running=result.running,
            elapsed=round(result.elapsed, 3),
        )
        return result

    def _loop(self, tracker: Tracker, deadline: float | None) -> WaitResult:
        last_error: str | None = None
        while True:
            remaining = None if deadline is None else deadline - self._clock()
            if remaining is not None and remaining <= 0:
                return tracker.timed_out(self._clock(), last_error)
            try:
                item = self._inbox.get(timeout=remaining)
            except queue.Empty:
                continue
            now = self._clock()
            if isinstance(item, _Stop):
                return tracker.interrupted(item.why, now)
            if isinstance(item, Failed):
                return tracker.failed(item.error, now)
            if isinstance(item, Retrying):
                last_error = item.error
                continue
            try:
                step = tracker.observe(item.deployment, now)
            except ApiFailure as err:
                return tracker.failed(str(err), self._clock())
            for line in step.lines:
                self._say(line)
            for event, fields in step.events:
                log.info(event, deployment=tracker.name, **fields)
            if step.result is not None:
                return step.result


def wait_for_rollout(
    api_client: Any, options: WaitOptions, *, out: Output | None = None
) -> WaitResult:
    """Block until the verdict on the Deployment's rollout (see the module docstring)."""
    return Waiter(api_client, options, out=out).run()
