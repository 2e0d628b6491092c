"""`cache-buster demo`: the whole product on one laptop, in one process, in a few seconds.

The emulated world (`sidecar.sim.world`: Kubernetes API with its Deployment controller,
CloudFront, a webhook receiver, fakeredis over TCP) runs the real code: the reporter's write
path for every pod, two aggregator replicas electing a leader, the real CloudFront provider
and webhook sender. The demo drives the rollout (image changes, pods becoming ready one by one,
a crash, `rollout undo`) and renders a timeline from the structured log events of the real
code plus its own actions. Then it counts what the CDN emulator billed and the receiver got.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from sidecar import logs
from sidecar.aggregator.events import LogEvent
from sidecar.core.decision import Verdict
from sidecar.core.records import Outcome, WebhookState
from sidecar.kube.leader import LEADER_ACQUIRED, LEADER_LOST

if TYPE_CHECKING:
    from sidecar.aggregator.facade import Aggregator
    from sidecar.sim.world import World

NAMESPACE = "shop"
APP = "web"
REPLICAS = 3
DOMAIN = "www.example.com"
V1 = "shop/web:1.0"
V2 = "shop/web:1.1"
MODES = ("sidecar", "watcher")

# Compressed timescales: the controller runs 20x faster than Kubernetes (grace periods,
# progress deadlines), leases last 1.5 s, CloudFront completes in 0.4 s.
TIME_SCALE = 0.05
CDN_COMPLETION = 0.4
STEP = 0.35  # between two pods becoming ready, so the timeline shows the rollout progressing
SETTLE_TIMEOUT = 10.0  # generous: liveness only, the verdict is the count


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    expected_invalidations: int
    play: Callable[[Demo], None]
    rollout_timeout: float = 600.0  # the aggregator's "rollout.slow" report
    manifest: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoResult:
    scenario: str
    mode: str
    clusters: int
    rollouts: int
    invalidations: int
    expected_invalidations: int
    webhooks_delivered: int
    purge_latency_ms: int | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        """The `--json` line."""
        return {
            "scenario": self.scenario,
            "clusters": self.clusters,
            "rollouts": self.rollouts,
            "invalidations": self.invalidations,
            "webhooks_delivered": self.webhooks_delivered,
            "purge_latency_ms": self.purge_latency_ms,
        }


# -- the timeline ----------------------------------------------------------------------------


def _short(rollout: object) -> str:
    text = str(rollout or "")
    return text[:8] + "…" if len(text) > 8 else text


class Timeline(logging.Handler):
    """Renders the real code's structured events (and the demo's own actions) as one readable
    line each, with the time since the scenario started. Called from many threads: logging's
    handler lock serialises `emit`, `note` takes the same lock."""

    WIDTH = 9

    def __init__(self, out: TextIO) -> None:
        super().__init__(logging.INFO)
        self._out = out
        self._start = time.time()
        self._open = True
        self._rollouts: set[str] = set()
        self._requested: set[str] = set()  # rollouts whose purge request was shown
        self._last_status: dict[str, tuple[str, str]] = {}  # deployment -> (image, verdict)
        self._images: dict[str, tuple[str, str]] = {}  # deployment -> (from, to) last set
        self._ellipsis_ok = _can_encode(out, "…")

    @property
    def start(self) -> float:
        """Wall-clock time the timeline counts from."""
        return self._start

    def close_timeline(self) -> None:
        """Shutdown chatter (watches closing, leases released) is not part of the story."""
        with self._lock_ctx():
            self._open = False

    def _lock_ctx(self) -> _HandlerLock:
        return _HandlerLock(self)

    def note(self, kind: str, subject: str, text: str, at: float | None = None) -> None:
        with self._lock_ctx():
            self._line(at if at is not None else time.time(), kind, subject, text)

    def image_set(self, deployment: str, old: str, new: str) -> None:
        with self._lock_ctx():
            self._images[deployment] = (old, new)

    def _line(self, at: float, kind: str, subject: str, text: str) -> None:
        if not self._open:
            return
        if not self._ellipsis_ok:
            text = text.replace("…", "...")
        rel = max(0.0, at - self._start)
        self._out.write(f"{rel:6.2f}s  {kind:<{self.WIDTH}} {subject}  {text}\n")
        self._out.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = getattr(record, "fields", None)
            rendered = self._render(record.getMessage(), fields if isinstance(fields, dict) else {})
            if rendered is None and record.levelno >= logging.WARNING:
                rendered = self._generic(record, fields if isinstance(fields, dict) else {})
            if rendered is not None:
                self._line(record.created, *rendered)
        except Exception:
            self.handleError(record)

    def _render(self, event: str, f: dict[str, Any]) -> tuple[str, str, str] | None:
        app = f"{NAMESPACE}/{f.get('deployment') or f.get('app') or '?'}"
        rollout = _short(f.get("rollout") or f.get("rollout_id"))
        if event == LogEvent.STARTING:
            return "start", str(f.get("identity")), f"aggregator started ({f.get('mode')} mode)"
        if event == LEADER_ACQUIRED:
            return "leader", str(f.get("identity")), f"acquired Lease {f.get('lease')}: leads"
        if event == LEADER_LOST:
            return "leader", str(f.get("identity")), f"lost the Lease ({f.get('reason')})"
        if event == LogEvent.APP_EVALUATED:
            rid = f.get("rollout")
            if rid and rid not in self._rollouts:
                self._rollouts.add(str(rid))
                old, new = self._images.get(str(f.get("deployment")), ("?", str(f.get("image"))))
                if new == f.get("image"):
                    return "rollout", app, f"{old} -> {new} (rollout {_short(rid)})"
                return "rollout", app, f"{f.get('image')} (rollout {_short(rid)})"
            return self._status(app, f)
        if event == LogEvent.ROLLOUT_FAILED:
            return "failed", app, f"{f.get('image')} {f.get('reason')} (rollout {rollout})"
        if event == LogEvent.ROLLOUT_SLOW:
            return (
                "slow",
                app,
                f"{f.get('image')} not complete after {f.get('seconds')}s "
                f"(reported, not final): {f.get('waiting_for')}",
            )
        if event == LogEvent.PURGE_REQUESTED:
            self._requested.add(str(f.get("rollout")))
            domains = ",".join(f.get("domains") or [])
            paths = ",".join(f.get("paths") or [])
            return "purge", app, f"requested: {domains} {paths} (rollout {rollout})"
        if event == "cloudfront.lookup":
            return "cdn", str(f.get("distribution")), f"serves {f.get('domains')} (by alias)"
        if event in ("cloudfront.invalidation.created", "cloudfront.invalidation.reused"):
            verb = "created" if event.endswith("created") else "reused (same CallerReference)"
            return (
                "cdn",
                str(f.get("distribution")),
                f"invalidation {f.get('invalidation_id')} {verb}: {f.get('status')}",
            )
        if event == "cloudfront.invalidation.completed":
            return (
                "cdn",
                str(f.get("distribution")),
                f"invalidation {f.get('invalidation_id')} Completed",
            )
        if event == LogEvent.PURGE_DONE:
            return "purge", app, f"done: {f.get('status')} after {f.get('seconds')}s"
        if event in (LogEvent.PURGE_FAILED, LogEvent.PURGE_RETRY):
            verb = "failed" if event == LogEvent.PURGE_FAILED else "retry"
            return "purge", app, f"{verb}: {f.get('error')}: {f.get('message')}"
        if event == "webhook.sent":
            return (
                "webhook",
                str(f.get("hook")),
                f"{f.get('webhook_event')} delivered (HTTP {f.get('status')}, "
                f"attempt {f.get('attempts')})",
            )
        if event == "webhook.failed":
            return (
                "webhook",
                str(f.get("hook")),
                f"{f.get('webhook_event')} failed: {f.get('error')}",
            )
        return None

    def _status(self, app: str, f: dict[str, Any]) -> tuple[str, str, str] | None:
        deployment, image, reason = str(f.get("deployment")), str(f.get("image")), f.get("reason")
        verdict = f.get("verdict")
        previous = self._last_status.get(deployment)
        self._last_status[deployment] = (image, str(verdict))
        # The evaluator logs every change of its reason; two are not news on a timeline: the
        # settled image still settled (a baseline, then "settled" before the new ReplicaSet
        # exists), and the leader re-evaluating while its own purge is in flight.
        if verdict == Verdict.SETTLED and previous is not None and previous[0] == image:
            return None
        if verdict == Verdict.RESUMING and str(f.get("rollout")) in self._requested:
            return None
        return "status", app, f"{image}: {reason}"

    @staticmethod
    def _generic(record: logging.LogRecord, f: dict[str, Any]) -> tuple[str, str, str]:
        detail = " ".join(f"{k}={v}" for k, v in logs.redact(f).items())
        return record.levelname.lower(), record.getMessage(), detail[:160]


class _HandlerLock:
    """`with` over a Handler's lock (acquire/release are its public API)."""

    def __init__(self, handler: logging.Handler) -> None:
        self._handler = handler

    def __enter__(self) -> None:
        self._handler.acquire()

    def __exit__(self, *exc: object) -> None:
        self._handler.release()


def _can_encode(out: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(out, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


# -- driving the world -----------------------------------------------------------------------


@dataclass
class _Rollout:
    image: str
    started: float
    completed: float | None = None  # when its last pod became ready (the demo made it so)


class Demo:
    """One scenario's world and the actions scenarios take on it."""

    def __init__(self, world: World, timeline: Timeline, mode: str) -> None:
        self.world = world
        self.timeline = timeline
        self.mode = mode
        self.image = V1
        self.rollouts: list[_Rollout] = []
        self.ready_times: list[float] = []
        self.image_changes = 0
        self.problems: list[str] = []  # the world misbehaved: reported, not raised

    # -- setup --------------------------------------------------------------------------------
    def setup(self, scenario: Scenario) -> None:
        w = self.world
        dist = w.cloudfront.add_distribution([DOMAIN])
        self.timeline.note("setup", "cloudfront", f"distribution {dist} with alias {DOMAIN}")
        hooks = w.webhooks_config([APP], parameters={"text": "web purged"})
        self.timeline.note("setup", "webhooks", f"Go worker style file: hook {APP!r} -> receiver")
        if self.mode == "sidecar":
            w.start_sidecars()
            self.timeline.note(
                "setup", "redis", "fakeredis; every pod's sidecar reports through it"
            )
        options: dict[str, Any] = {"rollout_timeout": scenario.rollout_timeout}
        first = w.aggregator("aggregator-0", mode=self.mode, webhooks=hooks, **options)
        w.wait_for(first.is_leader, timeout=5)
        w.aggregator("aggregator-1", mode=self.mode, webhooks=hooks, **options)
        w.deploy(APP, V1, replicas=REPLICAS, sidecar=self.mode == "sidecar", **scenario.manifest)
        self.timeline.note(
            "deploy",
            f"{NAMESPACE}/{APP}",
            f"{V1}, {REPLICAS} replicas, domain {DOMAIN}"
            + (", opted in (cache-buster.io/enabled=true)" if self.mode == "sidecar" else ""),
        )
        self.rollouts.append(_Rollout(V1, time.time()))
        self.ready_steps(step=0.0)
        # The first version is a baseline (first sight), not a rollout: nothing to purge.
        if not w.wait_for(
            lambda: w.ledger().get(APP, {}).get("settled") is not None, SETTLE_TIMEOUT
        ):
            self.problems.append(f"no baseline recorded for {V1} within {SETTLE_TIMEOUT:.0f}s")

    # -- actions ------------------------------------------------------------------------------
    def set_image(self, image: str) -> None:
        self.timeline.image_set(APP, self.image, image)
        self.world.set_image(APP, image)
        self._changed(image, f"image {self.image} -> {image} (kubectl set image)")

    def undo(self) -> None:
        """`kubectl rollout undo`: back to the previous revision's image."""
        owned = sorted(
            (
                rs
                for rs in self.world.kube.list("replicasets", NAMESPACE)
                if (rs["metadata"].get("labels") or {}).get("app") == APP
            ),
            key=lambda rs: int(
                (rs["metadata"].get("annotations") or {}).get(
                    "deployment.kubernetes.io/revision", 0
                )
            ),
        )
        previous = owned[-2]["spec"]["template"]["spec"]["containers"][0]["image"]
        self.timeline.image_set(APP, self.image, previous)
        self.world.undo(APP)
        self._changed(previous, f"kubectl rollout undo: back to {previous}")

    def _changed(self, image: str, text: str) -> None:
        self.timeline.note("kubectl", f"{NAMESPACE}/{APP}", text)
        self.image = image
        self.image_changes += 1
        self.rollouts.append(_Rollout(image, time.time()))

    def ready_steps(self, limit: int | None = None, step: float = STEP) -> bool:
        """Make the new version's pods ready one at a time, `step` apart, until the rollout is
        complete (True) or `limit` pods were readied (False). The controller creates the next
        pod only after one became ready (maxSurge 1, maxUnavailable 0)."""
        from sidecar.core.rollout import rollout_status

        readied = 0
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            dep = self.world.kube.get("deployments", NAMESPACE, APP)
            if dep is not None and rollout_status(dep).complete:
                current = self.rollouts[-1]
                # Complete without a pod readied now (an undo back to still-ready pods): it
                # completed no earlier than it started.
                current.completed = max([current.started, *self.ready_times[-1:]])
                return True
            if limit is not None and readied >= limit:
                return False
            names = self.world.ready(APP, 1)
            if not names:
                time.sleep(0.02)
                continue
            now = time.time()
            self.ready_times.append(now)
            readied += 1
            self.timeline.note(
                "pod", names[0], f"ready ({self._ready_count()}/{REPLICAS} on {self.image})", now
            )
            if step:
                time.sleep(step)
        self.problems.append(
            f"the rollout to {self.image} did not complete within {SETTLE_TIMEOUT:.0f}s"
        )
        return False

    def _ready_count(self) -> int:
        count = 0
        for pod in self.world.kube.pods(NAMESPACE, APP):
            if pod["metadata"].get("deletionTimestamp"):
                continue
            if pod["spec"]["containers"][0]["image"] != self.image:
                continue
            conds = (pod.get("status") or {}).get("conditions") or []
            count += any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
        return count

    def kill_leader(self) -> None:
        leader = self.world.leader()
        if leader is None:
            self.timeline.note("crash", "aggregator", "no leader to kill")
            return
        self.timeline.note(
            "crash", leader.options.identity, "killed (its Lease is left to expire, not released)"
        )
        leader.stop(release=False)

    def expect(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait (generously) for the outcome the scenario leads to; a miss is a problem."""
        if not self.world.wait_for(predicate, SETTLE_TIMEOUT):
            self.problems.append(f"{what}: not within {SETTLE_TIMEOUT:.0f}s")

    def pause(self, seconds: float) -> None:
        time.sleep(seconds)

    def purged(self, count: int, image: str) -> bool:
        """`count` invalidations exist and `image`'s purge is settled, its webhooks sent."""
        if len(self.world.cloudfront.invalidations()) < count:
            return False
        settled = self.world.ledger().get(APP, {}).get("settled") or {}
        detail = settled.get("detail") or {}
        return bool(
            settled.get("image") == image
            and settled.get("outcome") == Outcome.PURGED
            and detail.get("webhooks") == WebhookState.DELIVERED
        )

    # -- the verdict --------------------------------------------------------------------------
    def result(self, scenario: Scenario) -> DemoResult:
        cdn = self.world.cloudfront
        problems = list(self.problems)
        invalidations = len(cdn.invalidations())
        if invalidations != scenario.expected_invalidations:
            problems.append(
                f"{invalidations} CloudFront invalidation(s), expected "
                f"{scenario.expected_invalidations}"
            )
        duplicates = {ref: n for ref, n in cdn.count_by_caller_reference().items() if n > 1}
        if duplicates:
            problems.append(f"duplicate invalidations for one rollout: {duplicates}")
        latencies: list[float] = []
        seen: set[str | None] = set()
        for call in cdn.calls("CreateInvalidation", status=201):
            if call.caller_reference in seen:
                continue  # a retry of the same rollout's request: CloudFront deduplicated it
            seen.add(call.caller_reference)
            rollout = next((r for r in reversed(self.rollouts) if r.started <= call.time), None)
            if rollout is None or rollout.completed is None or call.time < rollout.completed:
                problems.append(
                    f"purge requested at {call.time - self.timeline.start:.2f}s, before the "
                    "last pod of its rollout was ready"
                )
                continue
            latencies.append(call.time - rollout.completed)
        return DemoResult(
            scenario=scenario.name,
            mode=self.mode,
            clusters=1,
            rollouts=self.image_changes,
            invalidations=invalidations,
            expected_invalidations=scenario.expected_invalidations,
            webhooks_delivered=len(self.world.receiver.received),
            # The slowest purge of the scenario: last pod ready -> CreateInvalidation request.
            purge_latency_ms=round(max(latencies) * 1000) if latencies else None,
            problems=tuple(problems),
        )


# -- the scenarios ---------------------------------------------------------------------------


def _happy(d: Demo) -> None:
    d.set_image(V2)
    d.ready_steps()
    d.expect(lambda: d.purged(1, V2), f"{V2} purged and its webhook delivered")


def _failed_rollout(d: Demo) -> None:
    d.set_image(V2)
    d.timeline.note(
        "pod", f"{NAMESPACE}/{APP}", f"{V2} never becomes ready (crash-looping): no pod readied"
    )
    d.pause(2.0)  # the scenario's window: the progress deadline passes, then the slow report


def _rollback(d: Demo) -> None:
    d.set_image(V2)
    d.ready_steps(limit=1)
    d.undo()
    d.ready_steps()
    d.expect(
        lambda: (d.world.ledger().get(APP, {}).get("last_failure") or {}).get("image") == V2,
        f"{V2} recorded as rolled back",
    )
    d.pause(1.0)  # nothing may follow: a rollback purges nothing by default


def _leader_failover(d: Demo) -> None:
    d.set_image(V2)
    d.ready_steps(limit=1)
    d.kill_leader()
    d.ready_steps()
    d.expect(lambda: d.purged(1, V2), f"{V2} purged by the new leader")


def _return_to_earlier(d: Demo) -> None:
    d.set_image(V2)
    d.ready_steps()
    d.expect(lambda: d.purged(1, V2), f"{V2} purged")
    d.set_image(V1)
    d.ready_steps()
    d.expect(lambda: d.purged(2, V1), f"{V1} purged again")


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("happy", f"roll {APP} from 1.0 to 1.1: one purge, one webhook", 1, _happy),
        Scenario(
            "failed-rollout",
            "1.1 never becomes ready: stalled, reported slow, never purged",
            0,
            _failed_rollout,
            rollout_timeout=1.5,
            manifest={"progress_deadline_seconds": 15},  # x TIME_SCALE: 0.75 s
        ),
        Scenario(
            "rollback",
            "1.1 rolled out partly, then `kubectl rollout undo` to 1.0: no purge",
            0,
            _rollback,
        ),
        Scenario(
            "leader-failover",
            "the leading aggregator crashes mid-rollout; the standby takes over: one purge",
            1,
            _leader_failover,
        ),
        Scenario(
            "return-to-earlier",
            "1.0 -> 1.1 -> 1.0: two rollouts, two purges (distinct rollout ids)",
            2,
            _return_to_earlier,
        ),
    )
}


# -- running ---------------------------------------------------------------------------------


def run_scenario(name: str, *, mode: str = "sidecar", out: TextIO | None = None) -> DemoResult:
    """Run one scenario in a fresh world, render its timeline to `out`, return the verdict.
    Attaches the timeline to the `cache_buster` logger for the duration only."""
    from sidecar.sim.world import World

    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
    scenario = SCENARIOS[name]
    stream = out or sys.stdout
    stream.write(
        f"cache-buster demo: {scenario.name} ({mode} mode): {scenario.summary}\n"
        f"expect {scenario.expected_invalidations} CloudFront invalidation(s)\n\n"
    )
    stream.flush()
    timeline = Timeline(stream)
    root = logging.getLogger("cache_buster")
    root.addHandler(timeline)
    world = World(namespace=NAMESPACE, time_scale=TIME_SCALE, completion_delay=CDN_COMPLETION)
    try:
        world.start()
        demo = Demo(world, timeline, mode)
        demo.setup(scenario)
        scenario.play(demo)
        timeline.close_timeline()
        return demo.result(scenario)
    finally:
        timeline.close_timeline()
        stop_aggregators(world.aggregators)
        world.stop()
        root.removeHandler(timeline)


def stop_aggregators(aggregators: Iterable[Aggregator]) -> None:
    """Stop the replicas side by side: each waits up to a second for its Redis subscriber
    to notice, and the demo should not wait for that once per replica. (World.stop's second
    call is a no-op for a stopped aggregator.)"""
    threads = [
        threading.Thread(target=agg.stop, name=f"stop-{agg.options.identity}", daemon=True)
        for agg in aggregators
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)


@contextlib.contextmanager
def demo_logging(verbose: bool) -> Iterator[None]:
    """The timeline alone on the terminal (`verbose`: the raw JSON events on stderr beside
    it); the `cache_buster` logger as it was afterwards."""
    root = logging.getLogger("cache_buster")
    saved = (list(root.handlers), root.level, root.propagate)
    if verbose:
        logs.setup("info")
    else:
        root.handlers.clear()
        root.setLevel(logging.INFO)
        root.propagate = False  # no JSON (or lastResort) noise on the terminal
    try:
        yield
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        root.propagate = saved[2]


def run(
    scenario: str = "happy",
    *,
    mode: str = "sidecar",
    json_output: bool = False,
    verbose: bool = False,
    out: TextIO | None = None,
) -> int:
    """The `cache-buster demo` command: 0 when the scenario purged as expected, else 1."""
    stream = out or sys.stdout
    with demo_logging(verbose):
        try:
            result = run_scenario(scenario, mode=mode, out=stream)
        except KeyboardInterrupt:
            stream.write("\ninterrupted\n")
            return 130
    latency = (
        f"{result.purge_latency_ms} ms from the last pod ready to the CDN request"
        if result.purge_latency_ms is not None
        else "no purge"
    )
    stream.write(
        f"\n{result.invalidations} invalidation(s) (expected {result.expected_invalidations}), "
        f"{result.webhooks_delivered} webhook(s) delivered, {latency}\n"
    )
    if result.ok:
        stream.write("OK\n")
    else:
        for problem in result.problems:
            stream.write(f"FAILED: {problem}\n")
    if json_output:
        stream.write(json.dumps(result.summary(), separators=(",", ":")) + "\n")
    stream.flush()
    return 0 if result.ok else 1
