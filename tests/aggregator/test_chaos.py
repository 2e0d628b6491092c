"""Chaos, one cluster: many apps rolling out at once under random faults (leaders killed and
replaced, graceful hand-overs, Redis wiped, CloudFront throttling and slow completion and
refusing same-path replays, supersedes, undos, paths changed between a crash and the resume,
fake and stale report records, a second Deployment claiming an app's key), two leaders during
a hand-over, and a ledger conflict storm.

What is recorded comes from the emulators themselves, never from cache-buster: every
Deployment and ledger write is seen synchronously through the API emulator's store listener
(with the time it was committed), every CloudFront request through the CloudFront emulator.

Safety is asserted strictly: one invalidation per CallerReference; every invalidation belongs
to a rollout whose PURGING intent was durable in the ledger before the CDN call; and the
invalidations of an app can be matched one to one to *distinct* rollouts of that image that
had completed (kubectl's rule) before the intent was written, so a failed or superseded
rollout, a premature purge, or one rollout purged twice under two different keys all fail.
Liveness is asserted fairly: after the faults stop and everything is ready, every app settles
on its final image.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from sidecar.aggregator.facade import Aggregator
from sidecar.aggregator.options import AggregatorOptions
from sidecar.core.images import same_image
from sidecar.core.records import BASELINE, PURGED, PURGING, idempotency_key
from sidecar.core.rollout import rollout_status
from sidecar.providers.cloudfront import CloudFrontProvider
from sidecar.sim.cloudfront import TEST_SECRET_ACCESS_KEY, ReplayRejection
from sidecar.sim.kube.watch import Event
from sidecar.sim.redis_servers import RedisServer
from sidecar.sim.world import World

pytestmark = pytest.mark.slow

LEDGER = "cache-buster-ledger"
KEY_PREFIX = idempotency_key("")


# -- what happened, as the emulators saw it ---------------------------------------------------
@dataclass
class Rollout:
    """One change of an app's watched image (the first one is the initial deploy)."""

    image: str
    started: float  # monotonic, when the Deployment write that changed the image committed
    completed: float | None = None  # first committed status that kubectl calls complete
    ended: float | None = None  # superseded (or undone) before completing


@dataclass
class Recorder:
    """Listens to every committed write of the API emulator (under its lock: quick, no I/O)."""

    namespace: str
    rollouts: dict[str, list[Rollout]] = field(default_factory=dict)
    purging_at: dict[str, float] = field(default_factory=dict)  # rollout id -> first PURGING
    target: dict[str, tuple[str, str]] = field(default_factory=dict)  # rollout id -> app, image

    def attach(self, world: World) -> Recorder:
        world.kube.store.listeners.append(self.on_event)
        return self

    def on_event(self, ev: Event) -> None:
        if ev.namespace != self.namespace or ev.type == "DELETED":
            return
        now = time.monotonic()
        if ev.resource == "deployments":
            self._on_deployment(ev.obj, now)
        elif ev.resource == "configmaps" and ev.obj["metadata"]["name"] == LEDGER:
            for app, text in (ev.obj.get("data") or {}).items():
                self._on_record(app, json.loads(text), now)

    def _on_deployment(self, dep: dict[str, Any], now: float) -> None:
        name = dep["metadata"]["name"]
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        history = self.rollouts.setdefault(name, [])
        if not history or history[-1].image != image:
            if history and history[-1].completed is None:
                history[-1].ended = now
            history.append(Rollout(image, now))
        last = history[-1]
        if last.completed is None and rollout_status(dep).complete:
            last.completed = now

    def _on_record(self, app: str, record: dict[str, Any], now: float) -> None:
        for part in (record.get("intent"), record.get("settled")):
            if part:
                self.target.setdefault(part["rollout_id"], (app, part["image"]))
        intent = record.get("intent")
        if intent and intent["state"] == PURGING:
            self.purging_at.setdefault(intent["rollout_id"], now)

    def completed(self, app: str) -> int:
        return sum(1 for r in self.rollouts.get(app, []) if r.completed is not None)


def assert_safe(world: World, rec: Recorder) -> dict[str, int]:
    """The strict half; returns the number of invalidations per app."""
    counts = world.cloudfront.count_by_caller_reference()
    assert all(n <= 1 for n in counts.values()), f"two invalidations for one reference: {counts}"
    first_call: dict[str, float] = {}
    for call in world.cloudfront.calls("CreateInvalidation", status=201):
        assert call.caller_reference is not None
        first_call.setdefault(call.caller_reference, call.monotonic)
    purges: list[tuple[float, str, str, str]] = []  # (intent durable at, app, image, reference)
    for inv in world.cloudfront.invalidations():
        rid = inv.caller_reference.removeprefix(KEY_PREFIX)
        assert rid in rec.purging_at, f"{inv.caller_reference}: no PURGING intent in the ledger"
        app, image = rec.target[rid]
        assert first_call[inv.caller_reference] >= rec.purging_at[rid], (
            f"{app} {image}: CDN called before its intent was durable"
        )
        purges.append((rec.purging_at[rid], app, image, inv.caller_reference))
    used: set[int] = set()
    per_app: dict[str, int] = {}
    for at, app, image, ref in sorted(purges):
        # Rollouts of this image complete when the intent was written, not already matched to
        # another invalidation. The candidates only grow with `at`, so any choice is as good.
        candidates = [
            id(r)
            for r in rec.rollouts.get(app, [])
            if same_image(r.image, image)
            and r.completed is not None
            and r.completed <= at
            and id(r) not in used
        ]
        assert candidates, (
            f"{app}: invalidation {ref} for {image} matches no completed rollout not already "
            f"purged (premature, failed or duplicate): {rec.rollouts.get(app)}"
        )
        used.add(candidates[-1])
        per_app[app] = per_app.get(app, 0) + 1
    return per_app


def settled_on(world: World, app: str, image: str) -> bool:
    record = world.ledger().get(app) or {}
    settled = record.get("settled") or {}
    return (
        record.get("intent") is None
        and settled.get("outcome") in (PURGED, BASELINE)
        and same_image(settled.get("image", ""), image)
    )


def ready_everything(world: World, apps: list[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    for app in apps:
        world.ready_all(app, timeout=max(0.5, deadline - time.monotonic()))


# -- 1. many apps at once, random faults ----------------------------------------------------
@dataclass
class Chaos:
    world: World
    rng: random.Random
    mode: str
    apps: list[str]
    dists: dict[str, str]
    redis: RedisServer
    live: list[Aggregator] = field(default_factory=list)
    images: dict[str, list[str]] = field(default_factory=dict)  # every image set, in order
    versions: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(
        default_factory=lambda: {
            "kills": 0,
            "stops": 0,
            "wipes": 0,
            "throttles": 0,
            "undos": 0,
            "fakes": 0,
            "paths": 0,
            "dups": 0,
        }
    )
    started: int = 0

    def start_aggregator(self) -> None:
        self.started += 1
        self.live.append(self.world.aggregator(f"agg-{self.started}", mode=self.mode))

    def retire(self, agg: Aggregator, *, crash: bool) -> None:
        self.live.remove(agg)
        self.world.aggregators.remove(agg)  # the world must not stop it a second time
        agg.stop(release=not crash)
        self.start_aggregator()  # a replacement pod comes up

    def current(self, app: str) -> str:
        return self.images[app][-1]

    def set_image(self, app: str, image: str) -> None:
        self.world.set_image(app, image)
        self.images[app].append(image)

    def step(self) -> None:
        rng, world = self.rng, self.world
        app = rng.choice(self.apps)
        actions: list[tuple[str, int]] = [
            ("new", 6),
            ("return", 2),
            ("ready_some", 5),
            ("ready_all", 8),
            ("undo", 1),
            ("kill", 1),
            ("stop", 1),
            ("throttle", 1),
            ("slow", 1),
        ]
        if self.mode == "sidecar":
            actions += [("wipe", 1), ("fake", 2)]
        actions += [("paths", 1), ("dup", 1)]
        action = rng.choices([a for a, _ in actions], [w for _, w in actions])[0]
        if action == "new":
            self.versions[app] += 1
            self.set_image(app, f"shop/{app}:{self.versions[app]}")
        elif action == "return":
            earlier = sorted({i for i in self.images[app] if i != self.current(app)})
            if earlier:
                self.set_image(app, rng.choice(earlier))
        elif action == "ready_some":
            world.ready(app, rng.randint(1, 2))
        elif action == "ready_all":
            # The controller may be slow on a loaded machine: the rollout completes later.
            with contextlib.suppress(TimeoutError):
                world.ready_all(app, timeout=2.0)
        elif action == "undo":
            try:
                world.undo(app)
            except Exception:  # no earlier revision, or a conflict with the controller
                return
            dep = world.kube.get("deployments", world.namespace, app)
            assert dep is not None
            self.images[app].append(dep["spec"]["template"]["spec"]["containers"][0]["image"])
            self.stats["undos"] += 1
        elif action == "kill":
            leader = world.leader() or rng.choice(self.live)
            self.retire(leader, crash=True)
            self.stats["kills"] += 1
        elif action == "stop":
            self.retire(rng.choice(self.live), crash=False)
            self.stats["stops"] += 1
        elif action == "wipe":
            self.redis.wipe()
            self.stats["wipes"] += 1
        elif action == "throttle":
            world.cloudfront.throttle_next(rng.randint(1, 4), "CreateInvalidation")
            self.stats["throttles"] += 1
        elif action == "slow":
            world.cloudfront.set_completion_delay(self.dists[app], rng.choice([0.5, 1.0, 2.0]))
        elif action == "fake":
            # Records under pod names that are no pod (or a killed one's, left behind), probe
            # passing, for the app's newest ReplicaSet: they must never complete a rollout.
            hashes = [
                rs["metadata"]["labels"]["pod-template-hash"]
                for rs in world.kube.list("replicasets", world.namespace)
                if rs["metadata"]["name"].startswith(f"{app}-")
            ]
            if hashes:
                h = hashes[-1]
                for n in range(3):
                    world.write_report(f"{app}-{h}-fake{n}", h, uid=f"fake-{n}")
                self.stats["fakes"] += 1
        elif action == "paths":
            paths = rng.choice(["/*", "/index.html,/assets/*", "/a/*,/b/*,/c"])
            dep = world.kube.get("deployments", world.namespace, app)
            assert dep is not None
            dep["metadata"].setdefault("annotations", {})["cache-buster.io/paths"] = paths
            with contextlib.suppress(Exception):  # a conflict with the controller: skip
                world.kube.update("deployments", world.namespace, dep)
                self.stats["paths"] += 1
        elif action == "dup":
            # The blue/green twin claiming the first app's key rolls out and scales: a
            # configuration error, never a purge.
            self.versions["dup"] = self.versions.get("dup", 1) + 1
            with contextlib.suppress(Exception):
                world.set_image("dup", f"shop/dup:{self.versions['dup']}")
            with contextlib.suppress(TimeoutError):
                world.ready_all("dup", timeout=1.0)
            self.stats["dups"] += 1


@pytest.mark.parametrize(
    ("seed", "mode", "replicas", "n_apps", "steps", "replays"),
    [
        (1, "watcher", 3, 8, 70, ReplayRejection.OFF),
        (2, "sidecar", 2, 6, 60, ReplayRejection.ALWAYS),
        (3, "watcher", 2, 10, 60, ReplayRejection.AFTER_COMPLETE),
    ],
)
def test_many_apps_under_random_faults(
    world: World,
    redis_server: RedisServer,
    seed: int,
    mode: str,
    replicas: int,
    n_apps: int,
    steps: int,
    replays: ReplayRejection,
) -> None:
    rng = random.Random(seed)
    world.cloudfront.replay_rejection = replays
    rec = Recorder(world.namespace).attach(world)
    apps = [f"app{i}" for i in range(n_apps)]
    dists = {app: world.cloudfront.add_distribution([f"{app}.example.com"]) for app in apps}
    if mode == "sidecar":
        world.start_sidecars()
    chaos = Chaos(world, rng, mode, apps, dists, redis_server)
    for _ in range(replicas):
        chaos.start_aggregator()
    for app in apps:
        world.deploy(app, f"shop/{app}:1", replicas=2, domains=f"{app}.example.com", sidecar=True)
        chaos.images[app] = [f"shop/{app}:1"]
        chaos.versions[app] = 1
    # The twin of the first app: same key, so a configuration error (never watched).
    world.deploy(
        "dup",
        "shop/dup:1",
        replicas=1,
        domains=f"{apps[0]}.example.com",
        sidecar=True,
        annotations={"cache-buster.io/name": apps[0]},
    )
    ready_everything(world, [*apps, "dup"])
    assert world.wait_for(lambda: all(settled_on(world, a, f"shop/{a}:1") for a in apps), 15)

    errors: list[BaseException] = []

    def drive() -> None:
        try:
            for _ in range(steps):
                chaos.step()
                time.sleep(rng.uniform(0.01, 0.12))
        except BaseException as exc:  # surfaced in the test's thread below
            errors.append(exc)

    driver = threading.Thread(target=drive, name="chaos-driver", daemon=True)
    driver.start()
    driver.join(timeout=90)
    assert not driver.is_alive(), "the driver is stuck"
    assert not errors, errors

    # The faults stop: fast CloudFront again, everything ready, the fleet settles.
    for dist in dists.values():
        world.cloudfront.set_completion_delay(dist, None)
    world.cloudfront.complete()
    ready_everything(world, apps)
    finals = {app: chaos.current(app) for app in apps}
    settled = world.wait_for(lambda: all(settled_on(world, a, finals[a]) for a in apps), timeout=30)
    per_app = assert_safe(world, rec)  # safety first: it explains most liveness failures
    assert settled, {a: world.ledger().get(a) for a in apps if not settled_on(world, a, finals[a])}
    time.sleep(0.5)  # nothing more may happen once settled
    per_app = assert_safe(world, rec)

    for app in apps:
        assert per_app.get(app, 0) <= rec.completed(app), app
        if not same_image(finals[app], chaos.images[app][0]):
            assert per_app.get(app, 0) >= 1, f"{app}: final image {finals[app]} never purged"
    rollouts = sum(len(rec.rollouts[a]) - 1 for a in apps)
    completed = sum(rec.completed(a) - 1 for a in apps)
    print(
        f"chaos seed={seed} mode={mode} steps={steps} apps={n_apps} rollouts={rollouts} "
        f"completed={completed} invalidations={len(world.cloudfront.invalidations())} "
        f"kills={chaos.stats['kills']} stops={chaos.stats['stops']} "
        f"wipes={chaos.stats['wipes']} throttles={chaos.stats['throttles']} "
        f"undos={chaos.stats['undos']} fakes={chaos.stats['fakes']} "
        f"paths={chaos.stats['paths']} dups={chaos.stats['dups']} replays={replays}"
    )
    assert "dup" not in world.ledger()


# -- 2. two leaders during a hand-over ------------------------------------------------------
DEPOSED_KEY = "AKIACHAOSDEPOSED0001"


def aggregator_with_key(world: World, identity: str, access_key: str, **kw: Any) -> Aggregator:
    """An aggregator whose CloudFront calls carry their own access key, so the emulator's
    request log tells which replica made each call."""
    world.cloudfront.access_keys = world.cloudfront.access_keys | {access_key}
    provider = CloudFrontProvider(
        client_factory=lambda: world.cloudfront.boto3_client(
            aws_access_key_id=access_key, aws_secret_access_key=TEST_SECRET_ACCESS_KEY
        ),
        poll_interval=0.05,
        backoff_base=0.05,
        backoff_cap=0.5,
        miss_refresh_interval=0.0,
    )
    options = AggregatorOptions(
        namespace=world.namespace,
        identity=identity,
        cluster="sim-1",
        lease_duration=1.5,
        renew_deadline=1.0,
        retry_period=0.1,
        invalidation_timeout=10.0,
        purge_retry_max=0.5,
        **kw,
    )
    agg = Aggregator(options, world.kube.api_client(), providers={"cloudfront": provider})
    world.aggregators.append(agg)
    return agg.start()


def end_throttling(world: World) -> None:
    """CloudFront recovers: the injected errors left are dropped."""
    world.cloudfront.clear_injections()


def freeze_renewals(monkeypatch: pytest.MonkeyPatch, agg: Aggregator) -> float:
    """From now on the elector cannot renew (the API is unreachable for it, say). Returns its
    renew deadline on the monotonic clock: past it, it must make no CDN call."""
    monkeypatch.setattr(agg.elector, "_try_acquire_or_renew", lambda: False)
    time.sleep(0.2)  # a renewal already in flight lands (it takes milliseconds)
    return time.monotonic() + agg.elector.leading_for()


@pytest.mark.parametrize("fault", ["slow-completion", "throttled"])
def test_deposed_leader_stops_calling_the_cdn_and_the_purge_happens_once(
    world: World, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    rec = Recorder(world.namespace).attach(world)
    dist = world.cloudfront.add_distribution(["www.example.com"])
    first = aggregator_with_key(world, "aggregator-0", DEPOSED_KEY)
    assert world.wait_for(first.is_leader)
    second = world.aggregator("aggregator-1")
    world.deploy("web", "shop/web:1")
    world.ready_all("web")
    assert world.wait_for(lambda: settled_on(world, "web", "shop/web:1"))

    if fault == "slow-completion":
        # The leader requests the invalidation, then waits on CloudFront's `Completed`.
        world.cloudfront.set_completion_delay(dist, 60.0)
    else:
        # The leader's CreateInvalidation is throttled again and again: it is in its backoff.
        world.cloudfront.throttle_next(10_000, "CreateInvalidation")
    world.set_image("web", "shop/web:2")
    world.ready_all("web")
    op = "CreateInvalidation" if fault == "throttled" else "GetInvalidation"
    assert world.wait_for(lambda: len(world.cloudfront.calls(op)) >= 2)
    assert first.is_leader()
    deadline = freeze_renewals(monkeypatch, first)

    assert world.wait_for(second.is_leader, timeout=5)
    if fault == "throttled":
        end_throttling(world)
    else:
        world.cloudfront.complete()
    assert world.wait_for(lambda: settled_on(world, "web", "shop/web:2"), timeout=10)

    late = [
        r
        for r in world.cloudfront.requests
        if r.access_key == DEPOSED_KEY and r.monotonic > deadline
    ]
    assert not late, [(r.operation, round(r.monotonic - deadline, 3)) for r in late]
    assert any(r.access_key != DEPOSED_KEY for r in world.cloudfront.calls("CreateInvalidation"))
    per_app = assert_safe(world, rec)
    assert per_app == {"web": 1}


# -- 3. ledger conflict storm ---------------------------------------------------------------
def count_conflicts(agg: Aggregator, counter: list[int]) -> None:
    """Counts ledger writes that lost a compare-and-set (somebody else wrote first)."""
    real = agg.ledger.compare_and_set_many

    def counting(changes: Any) -> set[str]:
        written = real(changes)
        counter[0] += len(changes) - len(written)
        return written

    agg.ledger.compare_and_set_many = counting  # type: ignore[method-assign]


def force_leadership(
    monkeypatch: pytest.MonkeyPatch, agg: Aggregator, forced: threading.Event
) -> None:
    """While `forced` is set, `agg` believes it leads whatever the Lease says."""
    elector = agg.elector
    real_is_leader, real_leading_for = elector.is_leader, elector.leading_for
    monkeypatch.setattr(elector, "is_leader", lambda: forced.is_set() or real_is_leader())
    monkeypatch.setattr(
        elector,
        "leading_for",
        lambda: elector.renew_deadline if forced.is_set() else real_leading_for(),
    )


def test_ledger_conflict_storm_never_purges_one_rollout_twice(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder(world.namespace).attach(world)
    rng = random.Random(7)
    apps = [f"app{i}" for i in range(4)]
    for app in apps:
        world.cloudfront.add_distribution([f"{app}.example.com"])
    leader = world.aggregator("aggregator-0")
    assert world.wait_for(leader.is_leader)
    others = [world.aggregator(f"aggregator-{i}") for i in (1, 2)]
    for app in apps:
        world.deploy(app, f"shop/{app}:1", replicas=2, domains=f"{app}.example.com")
    ready_everything(world, apps)
    assert world.wait_for(lambda: all(settled_on(world, a, f"shop/{a}:1") for a in apps), 10)

    # Two replicas believe they lead (a stale identity, a clock jump): they decide and write
    # from their own, never loaded, ledger caches, racing the real leader on every event.
    forced = threading.Event()
    forced.set()
    conflicts = [0]
    for agg in [leader, *others]:
        count_conflicts(agg, conflicts)
    for agg in others:
        force_leadership(monkeypatch, agg, forced)
    versions = dict.fromkeys(apps, 1)
    for _ in range(12):
        app = rng.choice(apps)
        versions[app] += 1
        world.set_image(app, f"shop/{app}:{versions[app]}")
        if rng.random() < 0.7:
            world.ready_all(app)
        time.sleep(rng.uniform(0.0, 0.1))
    ready_everything(world, apps)
    finals = {app: f"shop/{app}:{versions[app]}" for app in apps}
    assert world.wait_for(lambda: all(settled_on(world, a, finals[a]) for a in apps), 15)
    forced.clear()

    per_app = assert_safe(world, rec)
    assert conflicts[0] >= 1, "no write lost a compare-and-set: the storm did not happen"
    for app in apps:
        assert per_app.get(app, 0) <= rec.completed(app) - 1, (app, per_app)
        if versions[app] == 1:
            continue  # the storm did not touch it
        assert per_app.get(app, 0) >= 1, (app, per_app)
        settled = world.ledger()[app]["settled"]
        assert settled["outcome"] == PURGED
        refs = {i.caller_reference for i in world.cloudfront.invalidations()}
        assert idempotency_key(settled["rollout_id"]) in refs, app
    print(
        f"conflict-storm rollouts={sum(versions.values()) - len(apps)} "
        f"invalidations={len(world.cloudfront.invalidations())} conflicts={conflicts[0]}"
    )
