"""`cache-buster demo --clusters N`: a cluster group on one laptop, in one process.

`GroupWorld` (sidecar.sim.group_world) gives each cluster its own Kubernetes API emulator,
its own real `redis-server` (peers reach it through a TCP proxy the demo can cut) and its own
aggregator replicas, in front of one CloudFront emulator and one webhook receiver. The image
change reaches the clusters at different times, as a pipeline that rolls cluster by cluster;
each cluster's pods then become ready one by one. The timeline is the single-cluster demo's
(sidecar.sim.demo), one line per event with the cluster that logged it, plus the group's own
events: whom a purge waits for, the claim, peers lost and found, a skipped rollout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from sidecar.aggregator.events import LogEvent
from sidecar.core.decision import Verdict
from sidecar.core.group import PEER_CHECK_EVERY, holder_cluster, settled_key
from sidecar.core.records import Outcome, WebhookState
from sidecar.sim.demo import (
    APP,
    CDN_COMPLETION,
    DOMAIN,
    MODES,
    NAMESPACE,
    REPLICAS,
    SETTLE_TIMEOUT,
    TIME_SCALE,
    V1,
    V2,
    Demo,
    Timeline,
    _short,
    demo_logging,
    stop_aggregators,
)
from sidecar.sim.redis_servers import RedisServerError
from sidecar.sim.tcp_proxy import ProxyMode
from sidecar.webhooks.events import IDEMPOTENCY_HEADER

if TYPE_CHECKING:
    from sidecar.aggregator.facade import Aggregator
    from sidecar.sim.group_world import GroupWorld

# Compressed timescales, as in the single-cluster demo: leases last 1.5 s (a group claim
# CLAIM_LEASES of them); GROUP_TIMEOUT is a few seconds, set per scenario.
LEASE = 1.5
STAGGER = 0.3  # between the image change reaching one cluster and the next
SLOW_PAUSE = 4.0  # slow-cluster: its remaining pods start this much later
# peer-down: how long the peer's Redis refuses connections. Its peers count it unreachable
# once it has not answered for 2 * PEER_CHECK_EVERY + 3 s (real time: a blip is no outage),
# so the outage lasts a little longer than that, and GROUP_TIMEOUT longer still.
OUTAGE = 2 * PEER_CHECK_EVERY + 4.0
MAX_CLUSTERS = 5
GROUP = "group"  # the cluster column of lines about no single cluster


@dataclass(frozen=True)
class GroupScenario:
    name: str
    summary: str
    play: Callable[[GroupDemo], None]
    expected_invalidations: int = 1
    expected_skipped: int = 0
    group_timeout: float = 5.0
    replicas: int = 1  # aggregator replicas per cluster
    late_joiner: bool = False  # the last cluster's aggregator starts after the others baseline


@dataclass(frozen=True)
class GroupDemoResult:
    scenario: str
    mode: str
    clusters: int
    rollouts: int
    invalidations: int
    expected_invalidations: int
    webhooks_delivered: int  # `completed` deliveries
    senders: tuple[str, ...]  # "cluster/identity" of each `completed` delivery
    purged_by: tuple[str, ...]  # the cluster of each accepted CreateInvalidation
    skipped: int  # `skipped` deliveries
    expected_skipped: int
    purge_latency_ms: int | None
    seconds: float
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
            "expected_invalidations": self.expected_invalidations,
            "webhooks_delivered": self.webhooks_delivered,
            "senders": list(self.senders),
            "purged_by": list(self.purged_by),
            "skipped": self.skipped,
            "expected_skipped": self.expected_skipped,
            "purge_latency_ms": self.purge_latency_ms,
            "ok": self.ok,
        }


# -- the timeline ----------------------------------------------------------------------------


class ClusterTimeline(Timeline):
    """One cluster's share of the group's timeline: the single-cluster renderer with its own
    memory (each cluster sees the rollout on its own) and the group's events; its lines go to
    the group's timeline under the cluster's name. Never attached to a logger itself."""

    def __init__(self, group: GroupTimeline, cluster: str, out: TextIO) -> None:
        super().__init__(out)
        self._group = group
        self.cluster = cluster
        self._not_won: tuple[object, ...] | None = None  # the last "claim not won" shown
        self._learned: set[tuple[object, object]] = set()  # (member, endpoint): every replica

    def _line(self, at: float, kind: str, subject: str, text: str) -> None:
        self._group.write(at, self.cluster, kind, subject, text)

    def render(self, event: str, f: dict[str, Any]) -> tuple[str, str, str] | None:
        return self._render_group(event, f) or self._render(event, f)

    def _render_group(self, event: str, f: dict[str, Any]) -> tuple[str, str, str] | None:
        app = f"{NAMESPACE}/{f.get('app') or '?'}"
        rollout = _short(f.get("rollout"))
        if event == "group.started":
            peers = len(f.get("peers") or ())
            return "group", str(f.get("group")), f"member, {peers} peer(s) in REMOTE_REDIS_HOSTS"
        if event == "group.member_learned":
            learned = (f.get("member"), f.get("endpoint"))
            if f.get("member") == self.cluster or learned in self._learned:
                return None
            self._learned.add(learned)
            return "peer", str(f.get("member")), f"learned: its Redis is {f.get('endpoint')}"
        if event == "group.member_unreachable":
            return "peer", str(f.get("member")), f"unreachable: {str(f.get('error'))[:90]}"
        if event == "group.member_reachable":
            return "peer", str(f.get("member")), "reachable again"
        if event == LogEvent.GROUP_CLAIM_WON:
            return (
                "claim",
                app,
                f"won ({f.get('kind')}) in {f.get('place')}'s Redis for rollout {rollout}: "
                f"{f.get('reason')}",
            )
        if event == LogEvent.GROUP_CLAIM_NOT_WON:
            # Retried while the holder works (every half lease, and on each re-evaluation):
            # the timeline shows the first of a run.
            seen = (f.get("rollout"), f.get("state"), f.get("holder"))
            if seen == self._not_won:
                return None
            self._not_won = seen
            holder = f.get("holder")
            by = f", held by {holder_cluster(str(holder))}" if holder else ""
            return "claim", app, f"not won in {f.get('place')}'s Redis: {f.get('state')}{by}"
        if event == LogEvent.GROUP_CLAIM_UNREACHABLE:
            why = f.get("error") or f.get("reason")
            return "claim", app, f"the claim place {f.get('place') or '?'} is unreachable: {why}"
        if event == LogEvent.GROUP_SKIPPED:
            return "skipped", app, f"no purge for rollout {rollout}: {f.get('reason')}"
        if event == LogEvent.GROUP_WAITING_OVERDUE:
            late = ", ".join(f.get("waiting_for") or ())
            return (
                "overdue",
                app,
                f"still waiting for {late} past GROUP_TIMEOUT (reported, never skipped)",
            )
        return None

    def _status(self, app: str, f: dict[str, Any]) -> tuple[str, str, str] | None:
        rendered = super()._status(app, f)
        if rendered is not None and f.get("verdict") == Verdict.WAITING_FOR_GROUP:
            return "waiting", app, f"{f.get('image')}: for the group: {f.get('reason')}"
        return rendered


class GroupTimeline(Timeline):
    """The single-cluster timeline with a cluster column. The cluster of a log event is its
    `cluster` field; the core logs some events without one (leader election, peers' reach,
    CloudFront, webhook deliveries), and those take the cluster of the thread that logged
    them: threads an aggregator starts are its cluster's (`owned_by`), and so is a thread
    that logged an event naming its cluster; a webhook delivery from a short-lived thread is
    the receiver's sender of that delivery."""

    def __init__(
        self,
        out: TextIO,
        clusters: Sequence[str],
        sender_of: Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__(out)
        self._views = {name: ClusterTimeline(self, name, out) for name in clusters}
        self._width = max(len(n) for n in [GROUP, *clusters])
        self._threads: dict[threading.Thread, str] = {}
        self._sender_of = sender_of
        self._listeners: list[Callable[[str, str | None, dict[str, Any]], None]] = []

    def view(self, cluster: str) -> ClusterTimeline:
        return self._views[cluster]

    @contextlib.contextmanager
    def owned_by(self, cluster: str) -> Iterator[None]:
        """Threads started inside the block are `cluster`'s (an aggregator's, its sidecars')."""
        before = set(threading.enumerate())
        try:
            yield
        finally:
            with self._lock_ctx():
                for thread in set(threading.enumerate()) - before:
                    self._threads.setdefault(thread, cluster)

    def listen(self, listener: Callable[[str, str | None, dict[str, Any]], None]) -> None:
        """`listener(event, cluster, fields)` for every event, in the logging thread: quick."""
        with self._lock_ctx():
            self._listeners.append(listener)

    def write(self, at: float, cluster: str, kind: str, subject: str, text: str) -> None:
        with self._lock_ctx():
            if not self._open:
                return
            if not self._ellipsis_ok:
                text = text.replace("…", "...")
            rel = max(0.0, at - self._start)
            self._out.write(
                f"{rel:6.2f}s  {cluster:<{self._width}}  {kind:<{self.WIDTH}} {subject}  {text}\n"
            )
            self._out.flush()

    def _line(self, at: float, kind: str, subject: str, text: str) -> None:
        self.write(at, GROUP, kind, subject, text)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            raw = getattr(record, "fields", None)
            f = raw if isinstance(raw, dict) else {}
            event = record.getMessage()
            cluster = self._cluster_of(event, f)
            view = self._views.get(cluster) if cluster is not None else None
            rendered = view.render(event, f) if view is not None else self._render(event, f)
            if rendered is None and record.levelno >= logging.WARNING:
                rendered = self._generic(record, f)
            if rendered is not None:
                self.write(record.created, cluster or "?", *rendered)
            for listener in self._listeners:
                listener(event, cluster, f)
        except Exception:
            self.handleError(record)

    def _cluster_of(self, event: str, f: dict[str, Any]) -> str | None:
        thread = threading.current_thread()
        named = f.get("cluster")
        if isinstance(named, str) and named in self._views:
            # The main thread starts every cluster's aggregators: it belongs to none.
            if thread is not threading.main_thread():
                self._threads[thread] = named
            return named
        owner = self._threads.get(thread)
        if owner is None and event == "webhook.sent" and self._sender_of is not None:
            owner = self._sender_of(str(f.get("idempotency_id")))
        return owner


# -- driving the group -----------------------------------------------------------------------


class _Roll:
    """The rollout reaching every cluster, one thread per cluster; `join` waits for all."""

    def __init__(self, threads: list[threading.Thread]) -> None:
        self._threads = threads

    def join(self, timeout: float = 4 * SETTLE_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _steady(d: Demo) -> None:
    d.set_image(V2)
    d.ready_steps()


class GroupDemo:
    """One scenario's group and the actions scenarios take on it. Each cluster has a
    single-cluster `Demo` driving its API (image changes, pods ready one by one)."""

    def __init__(
        self, g: GroupWorld, timeline: GroupTimeline, mode: str, scenario: GroupScenario
    ) -> None:
        self.g = g
        self.timeline = timeline
        self.mode = mode
        self.scenario = scenario
        self.names = list(g.names)
        # The highest name: never the claim place (the lowest name's Redis holds the claims),
        # so the member the scenarios make late, cut off or join is never the claim place.
        self.last = max(self.names)
        self.drivers = {c.name: Demo(c.world, timeline.view(c.name), mode) for c in g.clusters}
        self.problems: list[str] = []

    # -- setup --------------------------------------------------------------------------------
    def setup(self) -> None:
        g, scenario = self.g, self.scenario
        self.timeline.note("setup", "cloudfront", f"distribution {g.distribution}, alias {DOMAIN}")
        self.timeline.note(
            "setup",
            "redis",
            "one redis-server per cluster; peers reach it through a proxy the demo can cut",
        )
        self.timeline.note("setup", "webhooks", f"hook {APP!r} of every replica -> receiver")
        sidecar = self.mode == "sidecar"
        for c in g.clusters:
            if sidecar:
                with self.timeline.owned_by(c.name):
                    c.world.start_sidecars()
            c.world.deploy(APP, V1, replicas=REPLICAS, sidecar=sidecar)
            self.timeline.view(c.name).note(
                "deploy", f"{NAMESPACE}/{APP}", f"{V1}, {REPLICAS} replicas, domain {DOMAIN}"
            )
        g.ready_all(APP)
        self.timeline.note("pod", f"{NAMESPACE}/{APP}", f"{REPLICAS}/{REPLICAS} ready on {V1}")
        members = [n for n in self.names if not (scenario.late_joiner and n == self.last)]
        for name in members:
            peers = (
                {"peers": [g.cluster(m).proxy.url for m in members if m != name]}
                if scenario.late_joiner
                else {}
            )
            for i in range(scenario.replicas):
                self.start_aggregator(name, f"aggregator-{i}", **peers)
        # The first version is a baseline everywhere: nothing to purge.
        self.expect(
            lambda: all(self.outcome(n) == Outcome.BASELINE for n in members),
            f"a baseline for {V1} in {', '.join(members)}",
        )

    def start_aggregator(self, cluster: str, identity: str, **options: Any) -> Aggregator:
        opts: dict[str, Any] = {
            "mode": self.mode,
            "lease_duration": LEASE,
            "group_timeout": self.scenario.group_timeout,
            "on_peer_timeout": "skip",
            **options,
        }
        with self.timeline.owned_by(cluster):
            return self.g.aggregator(cluster, identity, **opts)

    # -- actions ------------------------------------------------------------------------------
    def roll(
        self, parts: Mapping[str, Callable[[Demo], None]] | None = None, *, wait: bool = True
    ) -> _Roll:
        """The new image reaches the clusters STAGGER apart; each then makes its pods ready
        one by one (`parts` replaces what a cluster does)."""
        threads = []
        for i, name in enumerate(self.names):
            part = (parts or {}).get(name, _steady)
            threads.append(
                threading.Thread(
                    target=self._part,
                    args=(name, i * STAGGER, part),
                    name=f"demo-roll-{name}",
                    daemon=True,
                )
            )
        for thread in threads:
            thread.start()
        roll = _Roll(threads)
        if wait:
            roll.join()
        return roll

    def _part(self, name: str, delay: float, part: Callable[[Demo], None]) -> None:
        time.sleep(delay)
        try:
            part(self.drivers[name])
        except Exception as exc:  # reported with the verdict, not lost in a thread
            self.problems.append(f"{name}: {type(exc).__name__}: {exc}")

    def note(self, cluster: str, kind: str, subject: str, text: str) -> None:
        self.timeline.view(cluster).note(kind, subject, text)

    def cut(self, cluster: str, mode: ProxyMode) -> None:
        """What the other clusters get from `cluster`'s Redis (its own aggregator and pods
        reach it directly, as in a real group)."""
        self.g.cluster(cluster).proxy.set_mode(mode)
        what = {
            ProxyMode.REFUSE: "refuses its peers' connections (a Redis that is down)",
            ProxyMode.BLACKHOLE: "is blackholed for its peers (a partition: no answer at all)",
            ProxyMode.PASS: "answers its peers again",
        }[mode]
        self.note(cluster, "network", "redis", f"{cluster}'s Redis {what}")

    def crash(self, cluster: str) -> None:
        leader = self.g.cluster(cluster).leader()
        if leader is None:
            self.note(cluster, "crash", "aggregator", "no leader to kill")
            return
        self.note(
            cluster,
            "crash",
            leader.options.identity,
            "killed: its Lease and the group's claim are left to expire, not released",
        )
        leader.stop(release=False)

    def restart(self, clusters: Sequence[str], identity: str) -> None:
        """A rolling restart with the group's full REMOTE_REDIS_HOSTS: the old replicas stop
        (releasing their Lease) and a new one starts in each cluster."""
        stop_aggregators(a for n in clusters for a in self.g.cluster(n).aggregators)
        for name in clusters:
            self.start_aggregator(name, identity)

    def expect(
        self, predicate: Callable[[], bool], what: str, timeout: float = SETTLE_TIMEOUT
    ) -> bool:
        """Wait (generously) for the outcome the scenario leads to; a miss is a problem."""
        if self.g.wait_for(predicate, timeout):
            return True
        self.problems.append(f"{what}: not within {timeout:.0f}s")
        return False

    def pause(self, seconds: float) -> None:
        time.sleep(seconds)

    # -- reading the group ----------------------------------------------------------------------
    def settled(self, cluster: str) -> dict[str, Any]:
        return self.g.settled(cluster, APP) or {}

    def outcome(self, cluster: str) -> str | None:
        return self.settled(cluster).get("outcome")

    def settled_everywhere(self, image: str, outcome: Outcome, clusters: Sequence[str]) -> bool:
        """`image` settled with `outcome` in every one of `clusters`, its webhooks sent."""
        for name in clusters:
            s = self.settled(name)
            if s.get("image") != image or s.get("outcome") != outcome:
                return False
            if (s.get("detail") or {}).get("webhooks") != WebhookState.DELIVERED:
                return False
        return True

    def purged(self) -> bool:
        return self.settled_everywhere(V2, Outcome.PURGED, self.names)

    def link_published(self, cluster: str) -> bool:
        """The cluster's Redis holds the group's chain head for the app."""
        import redis

        client = redis.Redis.from_url(self.g.cluster(cluster).redis.url, socket_timeout=2)
        try:
            return bool(client.exists(settled_key(self.g.group, APP)))
        except redis.RedisError:
            return False
        finally:
            client.close()

    # -- the verdict --------------------------------------------------------------------------
    def result(self, seconds: float) -> GroupDemoResult:
        g, scenario = self.g, self.scenario
        problems = list(self.problems)
        for name, driver in self.drivers.items():
            problems.extend(f"{name}: {p}" for p in driver.problems)
        invalidations = len(g.invalidations())
        if invalidations != scenario.expected_invalidations:
            problems.append(
                f"{invalidations} CloudFront invalidation(s), expected "
                f"{scenario.expected_invalidations}"
            )
        duplicates = {
            ref: n for ref, n in g.cloudfront.count_by_caller_reference().items() if n > 1
        }
        if duplicates:
            problems.append(f"duplicate invalidations for one rollout: {duplicates}")
        completed = g.deliveries("completed")
        if len(completed) != scenario.expected_invalidations:
            problems.append(
                f"{len(completed)} `completed` webhook deliveries, expected "
                f"{scenario.expected_invalidations} (one per group purge, from its decider)"
            )
        skipped = g.deliveries("skipped")
        if len(skipped) != scenario.expected_skipped:
            problems.append(
                f"{len(skipped)} `skipped` webhook deliveries, expected {scenario.expected_skipped}"
            )
        senders = g.senders()
        purged_by: list[str] = []
        latencies: list[float] = []
        seen: set[str | None] = set()
        for call in g.cloudfront.calls("CreateInvalidation", status=201):
            if call.caller_reference in seen:
                continue  # a successor's retry of the same request: CloudFront deduplicated it
            seen.add(call.caller_reference)
            purged_by.append(senders.get(call.access_key or "", "?"))
            # The group purges only once the rollout is complete in every cluster.
            completions: list[float] = []
            for name, driver in self.drivers.items():
                rollout = next(
                    (r for r in reversed(driver.rollouts) if r.started <= call.time), None
                )
                if rollout is None or rollout.completed is None or call.time < rollout.completed:
                    problems.append(
                        f"purge requested at {call.time - self.timeline.start:.2f}s, before the "
                        f"last pod of the rollout was ready in {name}"
                    )
                    break
                completions.append(rollout.completed)
            else:
                latencies.append(call.time - max(completions))
        return GroupDemoResult(
            scenario=scenario.name,
            mode=self.mode,
            clusters=len(self.names),
            rollouts=max(d.image_changes for d in self.drivers.values()),
            invalidations=invalidations,
            expected_invalidations=scenario.expected_invalidations,
            webhooks_delivered=len(completed),
            senders=tuple(sender for sender, _ in completed),
            purged_by=tuple(purged_by),
            skipped=len(skipped),
            expected_skipped=scenario.expected_skipped,
            # Last pod ready in the last cluster -> the CreateInvalidation request.
            purge_latency_ms=round(max(latencies) * 1000) if latencies else None,
            seconds=round(seconds, 2),
            problems=tuple(problems),
        )


# -- the scenarios ---------------------------------------------------------------------------


def _happy(d: GroupDemo) -> None:
    d.roll()
    d.expect(d.purged, f"{V2} purged once for the group, its webhook delivered")


def _slow_cluster(d: GroupDemo) -> None:
    slow = d.last

    def part(c: Demo) -> None:
        c.set_image(V2)
        c.ready_steps(limit=1)
        d.note(slow, "slow", f"{NAMESPACE}/{APP}", f"the next pods start {SLOW_PAUSE:.0f}s later")
        d.pause(SLOW_PAUSE)
        c.ready_steps()

    d.roll({slow: part})
    d.expect(d.purged, f"{V2} purged once, after {slow} completed")


def _peer_down(d: GroupDemo) -> None:
    down = d.last

    def part(c: Demo) -> None:
        c.set_image(V2)
        c.ready_steps(limit=1)
        d.cut(down, ProxyMode.REFUSE)
        d.pause(OUTAGE)  # the others complete meanwhile and wait for it
        d.cut(down, ProxyMode.PASS)
        c.ready_steps()

    d.roll({down: part})
    d.expect(d.purged, f"{V2} purged once, after {down} was back and complete")


def _peer_timeout(d: GroupDemo) -> None:
    gone = d.last

    def part(c: Demo) -> None:
        c.set_image(V2)
        c.ready_steps(limit=1)
        d.cut(gone, ProxyMode.BLACKHOLE)
        d.note(gone, "pod", f"{NAMESPACE}/{APP}", f"its rollout stalls: 1/{REPLICAS} ready")

    d.roll({gone: part})
    others = [n for n in d.names if n != gone]
    d.expect(
        lambda: d.settled_everywhere(V2, Outcome.SKIPPED, others),
        f"{V2} settled skipped past GROUP_TIMEOUT, its `skipped` webhook delivered",
        timeout=2 * SETTLE_TIMEOUT,
    )
    d.pause(1.0)  # nothing may follow: no purge while the peer is gone


def _split_leaders(d: GroupDemo) -> None:
    requested: list[str] = []
    first = threading.Event()

    def on_event(event: str, cluster: str | None, f: dict[str, Any]) -> None:
        if event == LogEvent.PURGE_REQUESTED and cluster:
            requested.append(cluster)
            first.set()

    d.timeline.listen(on_event)
    roll = d.roll(wait=False)
    # The claim winner's leader dies with its CDN request sent and not complete: the
    # successor resumes that request (same CallerReference), it never makes a second one.
    if first.wait(2 * SETTLE_TIMEOUT):
        d.crash(requested[0])
    else:
        d.problems.append("no purge requested")
    roll.join()
    d.expect(d.purged, f"{V2} purged once, by whoever took over", timeout=2 * SETTLE_TIMEOUT)


def _late_joiner(d: GroupDemo) -> None:
    joiner = d.last
    old = [n for n in d.names if n != joiner]
    d.timeline.note(
        "group",
        d.g.group,
        f"{joiner} joins with an empty ledger; the aggregators of {', '.join(old)} restart "
        "with it in REMOTE_REDIS_HOSTS",
    )
    d.restart(old, "aggregator-1")
    d.expect(
        lambda: all(d.link_published(n) for n in old),
        f"the group's chain head in the Redis of {', '.join(old)}",
    )
    d.start_aggregator(joiner, "aggregator-0")
    baseline = d.settled(old[0]).get("rollout_id")
    if d.expect(
        lambda: (
            d.outcome(joiner) == Outcome.BASELINE
            and d.settled(joiner).get("rollout_id") == baseline
        ),
        f"{joiner} took the group's baseline (rollout {_short(baseline)})",
    ):
        d.note(joiner, "ledger", f"{NAMESPACE}/{APP}", f"the group's baseline: rollout {baseline}")
    d.roll()
    d.expect(d.purged, f"{V2} purged once for the group, {joiner} included")


GROUP_SCENARIOS: dict[str, GroupScenario] = {
    s.name: s
    for s in (
        GroupScenario(
            "happy",
            "roll web from 1.0 to 1.1 in every cluster, one after another: one purge",
            _happy,
        ),
        GroupScenario(
            "slow-cluster",
            "one cluster finishes seconds after the others: the purge waits for it",
            _slow_cluster,
            group_timeout=1.5,  # the wait outlasts it: reported overdue, never skipped
        ),
        GroupScenario(
            "peer-down",
            "one cluster's Redis refuses its peers mid-rollout, back before GROUP_TIMEOUT: "
            "one purge",
            _peer_down,
            # Back, and reconnected to (its peers back off up to seconds), well before.
            group_timeout=2 * OUTAGE,
        ),
        GroupScenario(
            "peer-timeout",
            "one cluster's Redis is partitioned away and stays so past GROUP_TIMEOUT: no "
            "purge, one `skipped` event",
            _peer_timeout,
            expected_invalidations=0,
            expected_skipped=1,
            group_timeout=2.5,
        ),
        GroupScenario(
            "split-leaders",
            "two replicas per cluster; the claim winner's leader crashes with its CDN request "
            "in flight: its cluster's next leader (once the Lease expires) or another cluster "
            "(once the claim expires) finishes that request: one purge",
            _split_leaders,
            replicas=2,
        ),
        GroupScenario(
            "late-joiner",
            "a cluster with an empty ledger joins after the others recorded a baseline, "
            "before the rollout: one purge",
            _late_joiner,
            late_joiner=True,
        ),
    )
}


# -- running ---------------------------------------------------------------------------------


def run_group_scenario(
    name: str, *, clusters: int = 2, mode: str = "sidecar", out: TextIO | None = None
) -> GroupDemoResult:
    """Run one scenario in a fresh group of `clusters`, render its timeline to `out`, return
    the verdict. Attaches the timeline to the `cache_buster` logger for the duration only.
    Raises RedisServerError when `redis-server` cannot start."""
    from sidecar.sim.group_world import GroupWorld

    if name not in GROUP_SCENARIOS:
        raise ValueError(f"unknown group scenario {name!r}; one of {', '.join(GROUP_SCENARIOS)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
    if not 2 <= clusters <= MAX_CLUSTERS:
        raise ValueError(f"a group has 2 to {MAX_CLUSTERS} clusters")
    scenario = GROUP_SCENARIOS[name]
    stream = out or sys.stdout
    skipped = f", {scenario.expected_skipped} skipped" if scenario.expected_skipped else ""
    stream.write(
        f"cache-buster demo: {scenario.name} ({clusters} clusters, {mode} mode): "
        f"{scenario.summary}\n"
        f"expect {scenario.expected_invalidations} CloudFront invalidation(s){skipped}\n\n"
    )
    stream.flush()
    g = GroupWorld(clusters, time_scale=TIME_SCALE, completion_delay=CDN_COMPLETION)
    timeline = GroupTimeline(stream, g.names, sender_of=lambda key: _sender_cluster(g, key))
    root = logging.getLogger("cache_buster")
    root.addHandler(timeline)
    started = time.monotonic()
    try:
        g.start()
        demo = GroupDemo(g, timeline, mode, scenario)
        demo.setup()
        scenario.play(demo)
        timeline.close_timeline()
        return demo.result(time.monotonic() - started)
    finally:
        timeline.close_timeline()
        stop_aggregators(a for c in g.clusters for a in c.aggregators)
        g.stop()
        root.removeHandler(timeline)


def _sender_cluster(g: GroupWorld, idempotency: str) -> str | None:
    """The cluster whose replica delivered the webhook with this idempotency key (its hooks'
    paths start with the sender's name)."""
    for hook in g.receiver.received:
        headers = {k.lower(): v for k, v in hook.headers.items()}
        if headers.get(IDEMPOTENCY_HEADER.lower()) == idempotency:
            return hook.path.strip("/").split("/")[0]
    return None


def run_group(
    scenario: str = "happy",
    *,
    clusters: int = 2,
    mode: str = "sidecar",
    json_output: bool = False,
    verbose: bool = False,
    out: TextIO | None = None,
) -> int:
    """`cache-buster demo --clusters N`: 0 when the scenario made the invalidations and
    `skipped` events it should, 1 when not, 2 when the group cannot start."""
    stream = out or sys.stdout
    with demo_logging(verbose):
        try:
            result = run_group_scenario(scenario, clusters=clusters, mode=mode, out=stream)
        except RedisServerError as err:
            stream.write(
                f"cannot start the group: {err}\n"
                "the group demo runs one real redis-server per cluster (`make redis-server`)\n"
            )
            return 2
        except KeyboardInterrupt:
            stream.write("\ninterrupted\n")
            return 130
    latency = (
        f"{result.purge_latency_ms} ms from the last pod ready to the CDN request"
        if result.purge_latency_ms is not None
        else "no purge"
    )
    senders = f" (from {', '.join(result.senders)})" if result.senders else ""
    stream.write(
        f"\n{result.invalidations} invalidation(s) (expected {result.expected_invalidations}), "
        f"{result.webhooks_delivered} `completed` webhook(s){senders}, {result.skipped} "
        f"`skipped` (expected {result.expected_skipped}), {latency}, {result.seconds:.1f}s\n"
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
