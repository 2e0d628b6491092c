"""Correctness on the paths users hit, one scenario per symptom: the real aggregator (sidecar
mode: with the pods' reporters writing through the reporter's own write path) against the
emulated Kubernetes API, the CloudFront emulator, webhook receivers and a real redis-server.

Each test reproduces a symptom the aggregator showed before the rule it checks
(docs/architecture.md, decision rules 3, 10-13 and guarantees 7-10), with the count of
invalidations and webhooks it must give.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from sidecar.aggregator.facade import Aggregator
from sidecar.core.records import idempotency_key
from sidecar.sim.cloudfront import ReplayRejection
from sidecar.sim.redis_servers import RedisServer
from sidecar.sim.webhook_receiver import WebhookReceiver
from sidecar.sim.world import World
from tests.aggregator.test_scenarios import create_calls, invalidations, settle, stays

pytestmark = pytest.mark.slow

Obj = dict[str, Any]


# -- helpers ----------------------------------------------------------------------------------
def new_hash(world: World, name: str, image: str) -> str:
    """The pod-template-hash of the ReplicaSet running `image`."""
    for rs in world.kube.list("replicasets", world.namespace):
        containers = rs["spec"]["template"]["spec"]["containers"]
        if rs["metadata"]["name"].startswith(name + "-") and containers[0]["image"] == image:
            return str(rs["metadata"]["labels"]["pod-template-hash"])
    raise AssertionError(f"no ReplicaSet of {name} with {image}")


def pod_names(world: World, name: str) -> set[str]:
    return {p["metadata"]["name"] for p in world.kube.pods(world.namespace, name)}


def annotate(world: World, name: str, **annotations: str) -> None:
    for _ in range(10):
        dep = world.kube.get("deployments", world.namespace, name)
        assert dep is not None
        dep["metadata"].setdefault("annotations", {}).update(annotations)
        try:
            world.kube.update("deployments", world.namespace, dep)
            return
        except Exception:  # a conflict with the controller's status write
            time.sleep(0.01)
    raise RuntimeError(f"could not annotate {name}")


def scale(world: World, name: str, replicas: int) -> None:
    for _ in range(10):
        dep = world.kube.get("deployments", world.namespace, name)
        assert dep is not None
        dep["spec"]["replicas"] = replicas
        try:
            world.kube.update("deployments", world.namespace, dep)
            return
        except Exception:
            time.sleep(0.01)
    raise RuntimeError(f"could not scale {name}")


def crash(world: World, agg: Aggregator) -> None:
    """As kill -9 leaves it: the lease is not released, the ledger holds what was written."""
    world.aggregators.remove(agg)
    agg.stop(release=False)


def entry(world: World, app: str) -> Obj:
    return dict(world.ledger().get(app) or {})


def settled_as(world: World, app: str, image: str, outcome: str) -> bool:
    settled = entry(world, app).get("settled") or {}
    return settled.get("image") == image and settled.get("outcome") == outcome


def hooks_to(world: World, path: str) -> list[Any]:
    return [h for h in world.receiver.received if h.path == path]


def json_hooks(world: World, path: str) -> list[Obj]:
    return [json.loads(h.body) for h in hooks_to(world, path)]


def json_hook(world: World, name: str, events: list[str], **extra: Any) -> Obj:
    return {
        "name": name,
        "url": f"{world.receiver.url}/{name}",
        "events": events,
        "apps": ["*"],
        "body": "json",
        "retries": 0,
        **extra,
    }


def webhooks(*hooks: Obj) -> str:
    return json.dumps({"webhooks": list(hooks)})


def config_errors(agg: Aggregator, deployment: str) -> float:
    return float(agg.metrics.config_errors.labels(app=deployment)._value.get())


# -- 1. a report counts only for a real pod ---------------------------------------------------
def test_report_records_of_pods_that_do_not_exist_never_complete_a_rollout(world: World) -> None:
    """Three records under invented pod names with the new template hash, probe passing, made
    the aggregator purge while no real pod had reported (the real sidecars are silent here)."""
    world.cloudfront.add_distribution(["www.example.com"])
    fleet = world.start_sidecars()
    world.aggregator(mode="sidecar")
    world.deploy("web", "shop/web:1", sidecar=True)
    world.ready_all("web")
    assert world.wait_for(lambda: settled_as(world, "web", "shop/web:1", "baseline"))

    fleet.paused.set()  # the real sidecars stop writing (their probes would fail)
    world.set_image("web", "shop/web:2")
    world.ready_all("web")  # the API says complete
    template_hash = new_hash(world, "web", "shop/web:2")
    for n in range(3):
        assert world.write_report(f"fake-{template_hash}-{n}", template_hash, uid=f"u{n}")
    # A pod of the new ReplicaSet hard-killed after reporting ready: its record outlives it.
    victim = next(
        p["metadata"]
        for p in world.kube.pods(world.namespace, "web")
        if p["metadata"]["labels"]["pod-template-hash"] == template_hash
    )
    world.write_report(victim["name"], template_hash, uid=victim["uid"])
    world.kill_pod(victim["name"])
    assert world.wait_for(lambda: victim["name"] not in pod_names(world, "web"))
    assert world.wait_for(lambda: len(pod_names(world, "web")) == 3)
    world.ready_all("web")  # its replacement is ready for the API, silent for us
    # ... and a record under a real pod's name, written by someone else (another uid).
    real = world.kube.pods(world.namespace, "web")[0]["metadata"]["name"]
    world.write_report(real, template_hash, uid="not-its-uid")
    assert stays(lambda: invalidations(world) == 0, 1.5), "purged on records of no real pod"

    fleet.paused.clear()  # the real pods report: the rollout completes
    assert world.wait_for(lambda: invalidations(world) == 1, 30)  # liveness: generous under load
    assert world.wait_for(lambda: settled_as(world, "web", "shop/web:2", "purged"))
    assert stays(lambda: invalidations(world) == 1)


# -- 2. a replayed purge is never a failure ---------------------------------------------------
def _purge_in_flight(world: World, paths: str = "/*", **agg_options: Any) -> tuple[Aggregator, str]:
    """web rolled out to :2, its invalidation requested and still in progress."""
    dist = world.cloudfront.add_distribution(["www.example.com"])
    world.cloudfront.set_completion_delay(dist, 60.0)
    hooks = world.webhooks_config(["web"])  # the Go worker's format: the hook named like it
    agg = world.aggregator(webhooks=hooks, **agg_options)
    world.deploy("web", "shop/web:1", annotations={"cache-buster.io/paths": paths})
    world.ready_all("web")
    assert world.wait_for(lambda: settled_as(world, "web", "shop/web:1", "baseline"))
    world.set_image("web", "shop/web:2")
    world.ready_all("web")
    assert world.wait_for(lambda: invalidations(world) == 1)
    return agg, dist


def _restart(world: World, agg: Aggregator) -> Aggregator:
    crash(world, agg)
    return world.aggregator("aggregator-2", webhooks=world.webhooks_config(["web"]))


def test_resume_after_the_paths_changed_replays_the_recorded_plan(world: World) -> None:
    """kill -9 after CreateInvalidation, change `cache-buster.io/paths`, restart: the resumed
    purge sent the new paths with the old CallerReference, CloudFront answered
    InvalidationBatchAlreadyExists and the rollout was settled FAILED, no `completed` sent."""
    agg, dist = _purge_in_flight(world, "/*")
    plan = entry(world, "web")["ext"]["intent"]["plan"]
    assert plan["targets"] == [dist] and plan["paths"] == ["/*"]
    annotate(world, "web", **{"cache-buster.io/paths": "/index.html,/assets/*"})
    _restart(world, agg)
    world.cloudfront.set_completion_delay(dist, None)
    world.cloudfront.complete()
    assert world.wait_for(lambda: settled_as(world, "web", "shop/web:2", "purged"), 10)
    assert invalidations(world) == 1
    assert world.cloudfront.invalidations()[0].paths == ("/*",)
    assert world.receiver.wait_for(lambda hooks: len(hooks) == 1)
    assert stays(lambda: len(hooks_to(world, "/web")) == 1)


@pytest.mark.parametrize("mode", [ReplayRejection.ALWAYS, ReplayRejection.AFTER_COMPLETE])
def test_cloudfront_refusing_a_same_path_replay_settles_purged(
    world: World, mode: ReplayRejection
) -> None:
    """Users report InvalidArgument for a same-path replay of a CallerReference: every resume
    (failover, restart during the wait) ended FAILED."""
    world.cloudfront.replay_rejection = mode
    agg, dist = _purge_in_flight(world)
    if mode is ReplayRejection.AFTER_COMPLETE:
        world.cloudfront.set_completion_delay(dist, None)
        world.cloudfront.complete()
    # The purge thread is stopped mid-wait; the successor's replay is refused by CloudFront.
    _restart(world, agg)
    world.cloudfront.set_completion_delay(dist, None)
    world.cloudfront.complete()
    assert world.wait_for(lambda: settled_as(world, "web", "shop/web:2", "purged"), 10)
    assert invalidations(world) == 1
    settled = entry(world, "web")["settled"]
    assert settled["detail"]["reused"] == "true"
    assert world.receiver.wait_for(lambda hooks: len(hooks) == 1)
    assert stays(lambda: len(hooks_to(world, "/web")) == 1)


def test_a_lost_reply_with_replays_refused_is_found_by_the_lookup(world: World) -> None:
    """The CreateInvalidation reply is lost (no id on record), the retry is refused: the
    provider lists the distribution's invalidations to find its own."""
    world.cloudfront.replay_rejection = ReplayRejection.ALWAYS
    dist = world.cloudfront.add_distribution(["www.example.com"])
    world.cloudfront.drop_next(1, "CreateInvalidation")
    world.aggregator(webhooks=world.webhooks_config(["web"]))
    settle(world, "web", "shop/web:1")
    world.set_image("web", "shop/web:2")
    world.ready_all("web")
    assert world.wait_for(lambda: settled_as(world, "web", "shop/web:2", "purged"), 10)
    assert invalidations(world) == 1
    assert world.cloudfront.calls("ListInvalidations")
    assert entry(world, "web")["settled"]["detail"]["target"] == dist
    assert world.receiver.wait_for(lambda hooks: len(hooks) == 1)


# -- 3. an interrupted purge found during a newer rollout --------------------------------------
def _interrupted_at_purge_requested(world: World) -> tuple[Aggregator, str]:
    """1.39 completed and is PURGING, but CloudFront never got the request (throttled until
    the aggregator dies): kill -9 at `purge.requested`."""
    dist = world.cloudfront.add_distribution(["www.example.com"])
    hooks = webhooks(json_hook(world, "audit", ["completed", "failed"]))
    agg = world.aggregator(webhooks=hooks)
    settle(world, "web", "shop/web:1.38")
    world.cloudfront.throttle_next(10_000, "CreateInvalidation")
    world.set_image("web", "shop/web:1.39")
    world.ready_all("web")
    assert world.wait_for(
        lambda: (entry(world, "web").get("intent") or {}).get("state") == "purging"
    )
    assert world.wait_for(lambda: len(world.cloudfront.calls("CreateInvalidation")) >= 1)
    crash(world, agg)
    world.cloudfront.clear_injections()
    return agg, dist


def test_an_interrupted_purge_is_folded_into_the_newer_rollout(world: World) -> None:
    """The 1.39 purge ran while 1.39 and 1.40 pods were mixed, then 1.40 purged again."""
    _interrupted_at_purge_requested(world)
    world.set_image("web", "shop/web:1.40")  # while the aggregator is down
    rollout_139 = entry(world, "web")["intent"]["rollout_id"]
    world.aggregator("aggregator-2", webhooks=webhooks(json_hook(world, "audit", ["completed"])))
    assert world.wait_for(lambda: "deferred" in (entry(world, "web").get("ext") or {}), 10)
    world.ready("web", 1)
    assert stays(lambda: invalidations(world) == 0, 1.0), "purged while pods were mixed"
    world.ready_all("web")
    assert world.wait_for(lambda: settled_as(world, "web", "shop/web:1.40", "purged"), 10)
    assert invalidations(world) == 1
    settled = entry(world, "web")["settled"]
    assert settled["detail"]["folded"] == rollout_139
    assert world.receiver.wait_for(lambda hooks: len(hooks) == 1)
    (completed,) = json_hooks(world, "/audit")
    assert completed["event"] == "completed" and completed["folded_rollout_id"] == rollout_139
    assert stays(lambda: invalidations(world) == 1)


def test_a_folded_rollout_purges_under_its_own_id_when_the_newer_one_is_rolled_back(
    world: World,
) -> None:
    _interrupted_at_purge_requested(world)
    rollout_139 = entry(world, "web")["intent"]["rollout_id"]
    world.set_image("web", "shop/web:1.40")
    world.aggregator("aggregator-2")
    assert world.wait_for(lambda: "deferred" in (entry(world, "web").get("ext") or {}), 10)
    world.set_image("web", "shop/web:1.38")  # 1.40 rolled back before completing
    assert world.wait_for(lambda: invalidations(world) >= 1, 10)
    first = world.cloudfront.invalidations()[0]
    assert first.caller_reference == idempotency_key(rollout_139)
    # 1.39 was live, then 1.38 is rolled out again: that is a rollout of its own, and purges.
    world.ready_all("web")
    assert world.wait_for(lambda: settled_as(world, "web", "shop/web:1.38", "purged"), 10)
    assert stays(lambda: invalidations(world) == 2)


# -- 4. one Deployment per app key ------------------------------------------------------------
def test_two_deployments_with_one_app_key_is_a_config_error_never_a_purge(world: World) -> None:
    """`kubectl annotate deploy api cache-buster.io/name=web; kubectl scale deploy/web
    --replicas=4; kubectl scale deploy/api --replicas=3` gave 3 invalidations."""
    world.cloudfront.add_distribution(["www.example.com"])
    agg = world.aggregator(webhooks=world.webhooks_config(["web", "api"]))
    settle(world, "web", "shop/web:1")
    settle(world, "api", "shop/api:7")
    annotate(world, "api", **{"cache-buster.io/name": "web"})
    scale(world, "web", 4)
    world.ready_all("web")
    scale(world, "api", 3)
    world.ready_all("api")
    scale(world, "api", 2)
    assert stays(lambda: invalidations(world) == 0 and not world.receiver.received, 1.5)
    assert config_errors(agg, "api") == 1  # reported once, however often it changes
    assert config_errors(agg, "web") == 0  # the key stays with the Deployment named like it
    # web still purges on its own rollouts.
    world.set_image("web", "shop/web:2")
    world.ready_all("web")
    assert world.wait_for(lambda: invalidations(world) == 1)
    assert stays(lambda: invalidations(world) == 1)


# -- 5. every attempt is reported, with its own id --------------------------------------------
def test_every_attempt_of_one_image_is_reported_with_its_own_idempotency_key(
    world: World,
) -> None:
    """ROLLOUT_TIMEOUT=8s; never-ready 1.45; `rollout undo`; never-ready 1.45 again: the second
    timeout was never reported and both `failed` events carried the same Idempotency-Key."""
    world.cloudfront.add_distribution(["www.example.com"])
    hooks = webhooks(json_hook(world, "audit", ["timeout", "failed"]))
    world.aggregator(webhooks=hooks, rollout_timeout=0.5)
    settle(world, "web", "shop/web:1.44")
    for attempt in (1, 2):
        world.set_image("web", "shop/web:1.45")  # never ready
        assert world.receiver.wait_for(lambda h, n=attempt: len(h) == 2 * n - 1, 5)
        world.set_image("web", "shop/web:1.44")  # `rollout undo`
        world.ready_all("web")
        assert world.receiver.wait_for(lambda h, n=attempt: len(h) == 2 * n, 5)
    events = json_hooks(world, "/audit")
    assert [(e["event"], e["attempt"]) for e in events] == [
        ("timeout", 1),
        ("failed", 1),
        ("timeout", 2),
        ("failed", 2),
    ]
    assert len({e["rollout_id"] for e in events}) == 1  # one rollout, two attempts
    keys = [h.headers["Idempotency-Key"] for h in hooks_to(world, "/audit")]
    assert len(set(keys)) == 4
    assert all(e["previous_image"] == "shop/web:1.44" for e in events)
    assert invalidations(world) == 0


# -- 6. bad input is reported once -------------------------------------------------------------
def test_a_bad_image_reference_is_one_config_error_cleared_when_fixed(world: World) -> None:
    world.cloudfront.add_distribution(["www.example.com"])
    agg = world.aggregator()
    settle(world, "web", "shop/web:1")
    world.set_image("web", "Nginx:BAD@@ref")
    assert world.wait_for(lambda: config_errors(agg, "web") == 1)
    assert stays(lambda: config_errors(agg, "web") == 1, 1.0)  # not a loop
    world.set_image("web", "shop/web:2")
    world.ready_all("web")
    assert world.wait_for(lambda: invalidations(world) == 1)
    world.set_image("web", "Nginx:BAD@@ref")
    assert world.wait_for(lambda: config_errors(agg, "web") == 2)  # reported again once


# -- 7. apps that cannot purge are not failures ------------------------------------------------
def test_an_app_without_a_domain_settles_skipped_and_tells_only_skipped_hooks(
    world: World,
) -> None:
    hooks = webhooks(
        json_hook(world, "everything", ["completed", "timeout", "failed"]),
        json_hook(world, "skips", ["skipped"]),
    )
    world.aggregator(webhooks=hooks)
    world.deploy("worker", "shop/worker:1", domains=None)
    world.ready_all("worker")
    assert world.wait_for(lambda: settled_as(world, "worker", "shop/worker:1", "baseline"))
    for image in ("shop/worker:2", "shop/worker:3"):
        world.set_image("worker", image)
        world.ready_all("worker")
        assert world.wait_for(lambda i=image: settled_as(world, "worker", i, "skipped"))
    assert world.receiver.wait_for(lambda h: len(h) == 2)
    assert stays(lambda: len(world.receiver.received) == 2)
    assert [e["event"] for e in json_hooks(world, "/skips")] == ["skipped", "skipped"]
    assert hooks_to(world, "/everything") == []
    assert entry(world, "worker")["settled"]["detail"]["error"] == "NoDomains"


# -- 8. webhook delivery is recorded per hook --------------------------------------------------
def test_each_hooks_outcome_is_recorded_and_a_successor_delivers_only_what_is_owed(
    world: World,
) -> None:
    failing = WebhookReceiver(status=500).start()
    try:
        hooks = [
            json_hook(world, "ok-1", ["completed"]),
            json_hook(world, "ok-2", ["completed"]),
            {**json_hook(world, "bad-1", ["completed"]), "url": f"{failing.url}/bad-1"},
            {**json_hook(world, "bad-2", ["completed"]), "url": f"{failing.url}/bad-2"},
        ]
        world.cloudfront.add_distribution(["www.example.com"])
        agg = world.aggregator(webhooks=webhooks(*hooks))
        settle(world, "web", "shop/web:1")
        world.set_image("web", "shop/web:2")
        world.ready_all("web")
        assert world.wait_for(lambda: "hooks" in entry(world, "web")["settled"]["detail"], 10)
        detail = entry(world, "web")["settled"]["detail"]
        assert detail["hooks"] == "bad-1=failed,bad-2=failed,ok-1=delivered,ok-2=delivered"
        assert detail["webhooks"] == "delivered"  # nothing owed: failed hooks are not retried
        assert len(world.receiver.received) == 2 and len(failing.received) == 2

        # A successor with one hook still owed delivers to that hook only.
        cm = world.kube.get("configmaps", world.namespace, "cache-buster-ledger")
        assert cm is not None
        doc = json.loads(cm["data"]["web"])
        doc["settled"]["detail"]["hooks"] = "bad-1=failed,bad-2=failed,ok-1=delivered,ok-2=pending"
        doc["settled"]["detail"]["webhooks"] = "pending"
        crash(world, agg)
        cm["data"]["web"] = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        world.kube.update("configmaps", world.namespace, cm)
        world.aggregator("aggregator-2", webhooks=webhooks(*hooks))
        assert world.wait_for(
            lambda: entry(world, "web")["settled"]["detail"]["webhooks"] == "delivered", 10
        )
        assert sorted(h.path for h in world.receiver.received) == ["/ok-1", "/ok-2", "/ok-2"]
        assert len(failing.received) == 2
    finally:
        failing.stop()


# -- 10. old pods draining (opt-in) ------------------------------------------------------------
@contextmanager
def rolled_out_with_old_pods_draining(
    redis_server: RedisServer, grace_seconds: int, annotations: dict[str, str], **kube: Any
) -> Iterator[tuple[World, float]]:
    """web opted into `wait-for-old-pods`, rolled out from :1 to :2; old pods linger for their
    whole grace period (their app ignores SIGTERM). Yields the world and when :2 completed."""
    kube_options = {"app_exit_after": None, **kube}
    with World(redis_url=redis_server.url, time_scale=0.05, kube_options=kube_options) as world:
        world.cloudfront.add_distribution(["www.example.com"])
        world.aggregator()
        world.deploy(
            "web",
            "shop/web:1",
            annotations={"cache-buster.io/wait-for-old-pods": "true", **annotations},
            termination_grace_period_seconds=grace_seconds,
        )
        world.ready_all("web")
        assert world.wait_for(lambda: settled_as(world, "web", "shop/web:1", "baseline"))
        world.set_image("web", "shop/web:2")
        world.ready_all("web")
        done = time.time()
        yield world, done


def the_purge_call(world: World) -> float:
    assert world.wait_for(lambda: invalidations(world) == 1, 10)
    assert world.wait_for(lambda: len(create_calls(world)) == 1)
    (call,) = create_calls(world)
    return call


@pytest.mark.parametrize("terminating_replicas", [True, False])
def test_wait_for_old_pods_purges_once_no_old_pod_is_left(
    redis_server: RedisServer, terminating_replicas: bool
) -> None:
    with rolled_out_with_old_pods_draining(  # 40 s: 2 s at this time scale
        redis_server, 40, {}, terminating_replicas=terminating_replicas
    ) as (world, done):
        old_hash = new_hash(world, "web", "shop/web:1")
        assert the_purge_call(world) >= done + 1.0, "purged while old pods were terminating"
        assert not [
            p
            for p in world.kube.pods(world.namespace, "web")
            if p["metadata"]["labels"]["pod-template-hash"] == old_hash
        ]


def test_wait_for_old_pods_is_capped_by_its_timeout(redis_server: RedisServer) -> None:
    with rolled_out_with_old_pods_draining(  # 600 s: 30 s at this time scale
        redis_server, 600, {"cache-buster.io/old-pods-timeout": "1s"}
    ) as (world, done):
        call = the_purge_call(world)
        assert done + 0.9 <= call < done + 5, "the cap is 1 s past kubectl's verdict"
        assert world.wait_for(lambda: settled_as(world, "web", "shop/web:2", "purged"))
        note = entry(world, "web")["settled"]["detail"].get("note", "")
        assert "old-pods-timeout" in note and "old pods" in note
