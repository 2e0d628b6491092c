"""Chaos for cluster groups: many apps rolling out at once across a `GroupWorld`, on a
randomized schedule reproducible from its seed, under faults (leader kills and restarts, a
deposed leader that cannot renew while a standby takes over, a Redis wiped, a peer's Redis
blackholed or refused for a moment, CloudFront throttling and slow completion).

Everything is counted at the emulators and in Redis, never from cache-buster's own logs:
- the CloudFront emulator: invalidations per app (each app has its own distribution), their
  CallerReferences, and which cluster's access key sent every CreateInvalidation;
- a claim watcher polling every member's Redis for claim keys and their holders;
- the webhook receiver: `completed` deliveries and which cluster sent each;
- the emulated APIs: the schedule's own record of when the last new pod became ready on the
  last cluster (the harness makes the pods ready, so it knows).

Steps per app, in order: `complete` (every cluster finishes, one of them late: purges once),
`stuck` (one cluster never finishes, the next step supersedes it: purges nothing), and
`rollback` (one cluster never finishes, then every cluster goes back to the settled image:
purges nothing). Each step waits until the group settled it, or for its window, before the
next: a purge is attributed to the step in whose window the CDN received it.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis

from sidecar.logs import get_logger
from sidecar.sim.group_world import GroupWorld
from sidecar.webhooks.events import EVENT_HEADER

log = get_logger("sim.chaos")

STEP_KINDS = ("complete", "complete", "complete", "stuck", "rollback")


@dataclass
class Step:
    app: str
    index: int
    image: str
    kind: str
    late: str  # the cluster that finishes last (complete) or never (stuck, rollback)
    started: float = 0.0  # wall clock (the emulators record wall-clock times)
    ended: float = 0.0
    last_ready: float | None = None  # the last new pod made ready on the last cluster
    settled: bool = False


@dataclass
class ChaosCounts:
    rollouts: int = 0
    expected_purges: int = 0
    purges: int = 0
    duplicates: int = 0
    premature: int = 0
    failed_purged: int = 0
    missed: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)

    def line(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        return (
            f"rollouts {self.rollouts}, expected purges {self.expected_purges}, purges "
            f"{self.purges}: duplicates {self.duplicates}, premature {self.premature}, purges "
            f"of failed or superseded rollouts {self.failed_purged}, missed {self.missed} "
            f"(faults: {faults})"
        )


class ClaimWatcher:
    """Every claim key seen in any member's Redis, with every holder it ever had."""

    def __init__(self, world: GroupWorld, every: float = 0.01) -> None:
        self._world = world
        self._every = every
        self.holders: dict[str, set[str]] = defaultdict(set)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="claim-watch", daemon=True)

    def start(self) -> ClaimWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        clients = [
            redis.Redis(
                host="127.0.0.1", port=c.redis.port, decode_responses=True, socket_timeout=1
            )
            for c in self._world.clusters
        ]
        pattern = f"cb:{self._world.group}:claim:*"
        while not self._stop.wait(self._every):
            for client in clients:
                with contextlib.suppress(redis.RedisError):
                    keys = list(client.scan_iter(match=pattern, count=1000))
                    if keys:
                        for key, holder in zip(keys, client.mget(keys), strict=True):
                            if holder:
                                self.holders[str(key)].add(str(holder))


class GroupChaos:
    def __init__(
        self,
        seed: int,
        *,
        clusters: int = 3,
        apps: int = 10,
        steps: int = 5,
        replicas: int = 2,
        faults: bool = True,
        settle_timeout: float = 20.0,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.n_apps = apps
        self.n_steps = steps
        self.replicas = replicas
        self.faults_on = faults
        self.settle_timeout = settle_timeout
        self.apps = [f"app{i}" for i in range(apps)]
        self.world = GroupWorld(clusters, hooks=self.apps)
        self.counts = ChaosCounts()
        self.steps: dict[str, list[Step]] = {}
        self.distribution: dict[str, str] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._replica_seq = 0

    # -- the schedule ---------------------------------------------------------------------------
    def _plan(self) -> None:
        names = self.world.names
        for app in self.apps:
            kinds = [self.rng.choice(STEP_KINDS) for _ in range(self.n_steps - 1)] + ["complete"]
            self.steps[app] = [
                Step(app, k, f"shop/{app}:{k + 2}", kind, self.rng.choice(names))
                for k, kind in enumerate(kinds)
            ]

    def run(self) -> ChaosCounts:
        w = self.world
        w.start()
        watcher = ClaimWatcher(w).start()
        try:
            self._plan()
            for app in self.apps:
                domain = f"{app}.example.com"
                self.distribution[app] = w.cloudfront.add_distribution([domain])
                w.deploy(app, f"shop/{app}:1", domains=domain, replicas=2)
            for app in self.apps:
                w.ready_all(app)
            for c in w.clusters:
                for _ in range(self.replicas):
                    self._new_replica(c.name)
            base = self._wait(
                lambda: all(
                    w.settled(c.name, app) is not None for c in w.clusters for app in self.apps
                ),
                self.settle_timeout,
            )
            if not base:
                self.counts.details.append("baselines not settled in time")
            faults = threading.Thread(target=self._faults, name="chaos-faults", daemon=True)
            if self.faults_on:
                faults.start()
            drivers = [
                threading.Thread(target=self._drive, args=(app, random.Random(self.seed + i)))
                for i, app in enumerate(self.apps)
            ]
            for t in drivers:
                t.start()
            for t in drivers:
                t.join()
            self._stop.set()
            if faults.is_alive():
                faults.join(timeout=10)
            self._heal()
            time.sleep(1.0)  # late duplicates would show now
            self._count(watcher)
        finally:
            self._stop.set()
            watcher.stop()
            w.stop()
        return self.counts

    def _wait(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.1)  # every app's driver polls: keep the harness's own load low
        return bool(predicate())

    # -- one app's rollouts -------------------------------------------------------------------
    def _ready(self, cluster: str, app: str) -> float | None:
        try:
            return self.world.cluster(cluster).world.ready_until_complete(app)
        except TimeoutError:
            return None

    def _drive(self, app: str, rng: random.Random) -> None:
        w = self.world
        settled_image = f"shop/{app}:1"
        for step in self.steps[app]:
            step.started = time.time()
            order = [n for n in w.names if n != step.late] + [step.late]
            for name in order:
                w.cluster(name).world.set_image(app, step.image)
                time.sleep(rng.uniform(0, 0.05))
            lasts: list[float | None] = []
            finishing = order if step.kind == "complete" else order[:-1]
            for name in finishing:
                if name == step.late:
                    time.sleep(rng.uniform(0.1, 0.6))  # the late cluster
                lasts.append(self._ready(name, app))
            if step.kind == "complete":
                step.last_ready = max(t for t in lasts if t is not None) if all(lasts) else None
                step.settled = self._wait(
                    lambda step=step: all(
                        (s := w.settled(c.name, app)) is not None
                        and s.get("image") == step.image
                        and s.get("outcome") == "purged"
                        for c in w.clusters
                    ),
                    self.settle_timeout,
                )
                settled_image = step.image
            elif step.kind == "stuck":
                time.sleep(rng.uniform(0.3, 0.8))  # the next step supersedes it
            else:  # rollback: every cluster back to the settled image
                time.sleep(rng.uniform(0.2, 0.5))
                for name in w.names:
                    w.cluster(name).world.set_image(app, settled_image)
                for name in w.names:
                    self._ready(name, app)
                time.sleep(0.5)
            step.ended = time.time()

    # -- faults ---------------------------------------------------------------------------------
    def _fault(self, kind: str) -> None:
        with self._lock:
            self.counts.faults[kind] = self.counts.faults.get(kind, 0) + 1

    def _new_replica(self, cluster: str) -> None:
        self._replica_seq += 1
        self.world.aggregator(
            cluster,
            f"aggregator-{self._replica_seq}",
            group_timeout=600.0,  # peers come back well within: no skips in this run
        )

    def _leader(self, cluster: str) -> Any:
        return self.world.cluster(cluster).leader()

    def _faults(self) -> None:
        rng = random.Random(self.seed * 7919)
        w = self.world
        kinds = [
            "leader-kill",
            "deposed-leader",
            "redis-wipe",
            "blackhole",
            "refuse",
            "throttle",
            "slow-completion",
        ]
        while not self._stop.wait(rng.uniform(0.4, 1.2)):
            kind = rng.choice(kinds)
            c = w.cluster(rng.choice(w.names))
            log.info("chaos.fault", kind=kind, cluster=c.name)
            if kind in ("leader-kill", "deposed-leader"):
                leader = self._leader(c.name)
                if leader is None:
                    continue
                if kind == "deposed-leader":
                    # It cannot renew (API unreachable for it): it must stop acting before its
                    # lease could lapse while a standby takes over.
                    leader.elector._try_acquire_or_renew = lambda: False
                    self._stop.wait(1.5)
                leader.stop(release=rng.random() < 0.5)
                c.world.aggregators.remove(leader)
                self._new_replica(c.name)
            elif kind == "redis-wipe":
                c.redis.wipe()
            elif kind in ("blackhole", "refuse"):
                getattr(c.proxy, kind)()
                self._stop.wait(rng.uniform(0.3, 1.0))
                c.proxy.pass_through()
            elif kind == "throttle":
                w.cloudfront.throttle_next(rng.randint(1, 3), "CreateInvalidation")
            else:
                dist = self.distribution[rng.choice(self.apps)]
                w.cloudfront.set_completion_delay(dist, rng.uniform(0.5, 1.5))
            self._fault(kind)

    def _heal(self) -> None:
        for c in self.world.clusters:
            c.proxy.pass_through()
        self.world.cloudfront.clear_injections()

    # -- counting -------------------------------------------------------------------------------
    def _count(self, watcher: ClaimWatcher) -> None:
        w = self.world
        counts = self.counts
        creates = [r for r in w.cloudfront.calls("CreateInvalidation") if r.caller_reference]
        keys_by_ref: dict[str, set[str]] = defaultdict(set)
        for r in creates:
            keys_by_ref[str(r.caller_reference)].add(str(r.access_key))
        # app -> idempotency id -> senders: a repeat from one sender (a successor leader
        # delivering what its predecessor may have sent) is at-least-once delivery, with the
        # same id; the same event from two senders is a duplicate.
        completed: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for hook in w.receiver.received:
            if hook.headers.get(EVENT_HEADER) == "completed":
                parts = hook.path.strip("/").split("/")
                key = hook.headers.get("Idempotency-Key", "")
                completed[parts[-1]][key].add(parts[0])
        for key, holders in watcher.holders.items():
            if len(holders) > 1:
                counts.duplicates += 1
                counts.details.append(f"claim {key} won by {sorted(holders)}")
        for ref, keys in keys_by_ref.items():
            if len(keys) > 1:
                counts.duplicates += 1
                counts.details.append(f"CreateInvalidation {ref} from {sorted(keys)}")
        for app in self.apps:
            invs = sorted(
                w.cloudfront.invalidations(self.distribution[app]), key=lambda i: i.create_time
            )
            counts.purges += len(invs)
            refs = [i.caller_reference for i in invs]
            if len(set(refs)) != len(refs):
                counts.duplicates += len(refs) - len(set(refs))
                counts.details.append(f"{app}: repeated CallerReference")
            steps = self.steps[app]
            complete = [s for s in steps if s.kind == "complete"]
            counts.rollouts += len(steps)
            counts.expected_purges += len(complete)
            events = completed.get(app, {})
            for key, senders in events.items():
                if len(senders) > 1:
                    counts.duplicates += 1
                    counts.details.append(f"{app}: completed {key} from {sorted(senders)}")
            if len(events) > len(complete):
                counts.duplicates += len(events) - len(complete)
                counts.details.append(f"{app}: {len(events)} completed events")
            for k, step in enumerate(steps):
                end = steps[k + 1].started if k + 1 < len(steps) else float("inf")
                mine = [i for i in invs if step.started <= i.create_time < end]
                if step.kind != "complete":
                    if mine:
                        counts.failed_purged += len(mine)
                        counts.details.append(f"{app} step {k} ({step.kind}) purged")
                    continue
                if not mine:
                    counts.missed += 1
                    counts.details.append(f"{app} step {k}: no purge (settled={step.settled})")
                elif len(mine) > 1:
                    counts.duplicates += len(mine) - 1
                    counts.details.append(f"{app} step {k}: {len(mine)} invalidations")
                if step.last_ready is not None and mine and mine[0].create_time < step.last_ready:
                    counts.premature += 1
                    counts.details.append(
                        f"{app} step {k}: purged {step.last_ready - mine[0].create_time:.3f}s "
                        "before the last pod was ready"
                    )
