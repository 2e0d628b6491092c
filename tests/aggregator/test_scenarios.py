"""Scenarios, one cluster: the real aggregator (and, in sidecar mode, the reporter's write path)
against the emulated Kubernetes API, the CloudFront emulator, a webhook receiver and a real
redis-server, on compressed timescales.

Safety is asserted strictly (no duplicate, counted by distinct CallerReference at the emulator;
no premature purge; none for failed or superseded rollouts); liveness with generous windows.
"""

from __future__ import annotations

import itertools
import time

import pytest

from sidecar.sim.redis_servers import RedisServer
from sidecar.sim.world import World

pytestmark = pytest.mark.slow

HOOKS = ["web", "api"]


def invalidations(world: World) -> int:
    counts = world.cloudfront.count_by_caller_reference()
    assert all(n <= 1 for n in counts.values()), counts  # never two for one reference
    return len(world.cloudfront.invalidations())


def create_calls(world: World) -> list[float]:
    return [r.time for r in world.cloudfront.calls("CreateInvalidation", status=201)]


def settle(world: World, name: str, image: str) -> None:
    """Deploy and complete a first version; the aggregator records it as a baseline."""
    world.deploy(name, image)
    world.ready_all(name)
    assert world.wait_for(lambda: world.ledger().get(name, {}).get("settled") is not None)


def stays(predicate, seconds: float = 0.8) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.02)
    return True


def test_happy_rollout_purges_once_after_the_last_pod_and_calls_the_webhook_once(
    world: World,
) -> None:
    world.cloudfront.add_distribution(["www.example.com"])
    world.aggregator(webhooks=world.webhooks_config(HOOKS))
    settle(world, "web", "shop/web:1")
    assert invalidations(world) == 0  # first sight is a baseline

    world.set_image("web", "shop/web:2")
    for _ in range(2):
        time.sleep(0.15)
        world.ready("web", 1)
    assert stays(lambda: invalidations(world) == 0), "purged before the last pod was ready"

    last_ready = time.time()
    world.ready_all("web")
    assert world.wait_for(lambda: invalidations(world) == 1)
    assert create_calls(world)[0] >= last_ready
    assert world.receiver.wait_for(lambda hooks: len(hooks) == 1)
    assert stays(lambda: invalidations(world) == 1 and len(world.receiver.received) == 1, 1.0)
    hook = world.receiver.received[0]
    assert hook.path == "/web"  # as the Go worker: the hook named like the Deployment
    assert hook.headers.get("Idempotency-Key")
    settled = world.ledger()["web"]["settled"]
    assert (settled["image"], settled["outcome"]) == ("shop/web:2", "purged")


def test_stalled_then_completed_purges_once(world: World) -> None:
    world.cloudfront.add_distribution(["www.example.com"])
    world.aggregator()
    settle(world, "web", "shop/web:1")
    dep = world.kube.get("deployments", "shop", "web")
    assert dep is not None
    dep["spec"]["progressDeadlineSeconds"] = 6  # x time_scale 0.05: 0.3 s
    world.kube.update("deployments", "shop", dep)
    world.set_image("web", "shop/web:2")

    def stalled() -> bool:
        d = world.kube.get("deployments", "shop", "web") or {}
        return any(
            c.get("reason") == "ProgressDeadlineExceeded" for c in d["status"].get("conditions", [])
        )

    assert world.wait_for(stalled)
    assert stays(lambda: invalidations(world) == 0)
    world.ready_all("web")
    assert world.wait_for(lambda: invalidations(world) == 1)
    assert stays(lambda: invalidations(world) == 1)


def test_failed_and_superseded_rollouts_purge_nothing(world: World) -> None:
    world.cloudfront.add_distribution(["www.example.com"])
    world.aggregator(webhooks=world.webhooks_config(HOOKS, events=["completed", "failed"]))
    settle(world, "web", "shop/web:1")

    world.set_image("web", "shop/web:2")  # never completes: failed within the window
    world.ready("web", 1)
    assert stays(lambda: invalidations(world) == 0, 1.0)

    world.set_image("web", "shop/web:3")  # supersedes 2
    assert world.receiver.wait_for(lambda hooks: len(hooks) == 1)
    assert world.receiver.received[0].headers.get("X-Cache-Buster-Event") == "failed"
    assert world.ledger()["web"]["last_failure"]["image"] == "shop/web:2"
    assert world.ledger()["web"]["last_failure"]["reason"] == "superseded"
    world.ready_all("web")
    assert world.wait_for(lambda: invalidations(world) == 1)  # only 3 purges
    assert world.wait_for(lambda: world.ledger()["web"]["settled"]["image"] == "shop/web:3")
    ref = world.cloudfront.invalidations()[0].caller_reference
    assert ref.endswith(world.ledger()["web"]["settled"]["rollout_id"])


@pytest.mark.parametrize("purge_on_rollback", [False, True])
def test_rollback_purges_only_with_purge_on_rollback(world: World, purge_on_rollback: bool) -> None:
    world.cloudfront.add_distribution(["www.example.com"])
    world.aggregator()
    world.deploy(
        "web",
        "shop/web:1",
        annotations={"cache-buster.io/purge-on-rollback": str(purge_on_rollback).lower()},
    )
    world.ready_all("web")
    assert world.wait_for(lambda: "web" in world.ledger())
    world.set_image("web", "shop/web:2")
    world.ready("web", 1)
    time.sleep(0.3)
    world.undo("web")  # kubectl rollout undo, before 2 completed
    world.ready_all("web")
    expected = 1 if purge_on_rollback else 0
    assert world.wait_for(lambda: world.ledger()["web"].get("last_failure") is not None)
    if expected:
        assert world.wait_for(lambda: invalidations(world) == 1)
    assert stays(lambda: invalidations(world) == expected, 1.0)
    assert world.ledger()["web"]["last_failure"]["reason"] == "rolled back"


def test_a_to_b_to_a_purges_twice(world: World) -> None:
    world.cloudfront.add_distribution(["www.example.com"])
    world.aggregator()
    settle(world, "web", "shop/web:1")
    world.set_image("web", "shop/web:2")
    world.ready_all("web")
    assert world.wait_for(lambda: invalidations(world) == 1)
    world.set_image("web", "shop/web:1")
    world.ready_all("web")
    assert world.wait_for(lambda: invalidations(world) == 2)
    assert stays(lambda: invalidations(world) == 2)


def test_leader_killed_mid_rollout_purges_once(world: World) -> None:
    world.cloudfront.add_distribution(["www.example.com"])
    first = world.aggregator("aggregator-0")
    assert world.wait_for(first.is_leader)
    second = world.aggregator("aggregator-1")
    settle(world, "web", "shop/web:1")
    world.set_image("web", "shop/web:2")
    world.ready("web", 1)
    first.stop(release=False)  # a crash: the lease is left to expire
    world.ready_all("web")
    assert world.wait_for(second.is_leader, timeout=5)
    assert world.wait_for(lambda: invalidations(world) == 1)
    assert stays(lambda: invalidations(world) == 1)


def test_leader_killed_right_after_requesting_the_purge_is_resumed_with_the_same_key(
    world: World,
) -> None:
    world.cloudfront.add_distribution(["www.example.com"])
    world.cloudfront.set_completion_delay(None, 30.0)  # the first leader waits on CloudFront
    first = world.aggregator("aggregator-0")
    assert world.wait_for(first.is_leader)
    second = world.aggregator("aggregator-1")
    settle(world, "web", "shop/web:1")
    world.set_image("web", "shop/web:2")
    world.ready_all("web")
    assert world.wait_for(lambda: invalidations(world) == 1)
    first.stop(release=False)
    assert world.wait_for(second.is_leader, timeout=5)
    world.cloudfront.complete()  # CloudFront finishes the invalidation
    # The successor finds the PURGING intent and resumes: CloudFront answers with the
    # existing invalidation for the same CallerReference; nothing new is billed.
    assert world.wait_for(
        lambda: world.ledger()["web"].get("settled", {}).get("image") == "shop/web:2", timeout=8
    )
    assert len(create_calls(world)) == 2
    assert invalidations(world) == 1


def test_aggregator_restarted_after_the_purge_purges_nothing_more(world: World) -> None:
    world.cloudfront.add_distribution(["www.example.com"])
    agg = world.aggregator("aggregator-0")
    settle(world, "web", "shop/web:1")
    world.set_image("web", "shop/web:2")
    world.ready_all("web")
    assert world.wait_for(lambda: invalidations(world) == 1)
    assert world.wait_for(lambda: world.ledger()["web"]["settled"]["image"] == "shop/web:2")
    agg.stop()
    again = world.aggregator("aggregator-0b")
    assert world.wait_for(again.is_leader)
    assert stays(lambda: invalidations(world) == 1, 1.0)


def test_aggregator_first_started_mid_rollout_purges_when_it_completes(world: World) -> None:
    world.cloudfront.add_distribution(["www.example.com"])
    world.deploy("web", "shop/web:1")
    world.ready_all("web")
    world.set_image("web", "shop/web:2")
    world.ready("web", 1)
    world.aggregator()  # no ledger entry: follows from the old ReplicaSet's image
    assert stays(lambda: invalidations(world) == 0)
    world.ready_all("web")
    assert world.wait_for(lambda: invalidations(world) == 1)
    assert world.wait_for(lambda: world.ledger()["web"]["settled"] is not None)
    assert world.ledger()["web"]["settled"]["image"] == "shop/web:2"


def test_bad_annotation_on_one_app_does_not_stop_another(world: World) -> None:
    world.cloudfront.add_distribution(["www.example.com"])
    world.cloudfront.add_distribution(["api.example.com"])
    agg = world.aggregator()
    world.deploy("web", "shop/web:1", annotations={"cache-buster.io/paths": "index.html"})
    world.deploy("api", "shop/api:1", domains="api.example.com")
    world.ready_all("web")
    world.ready_all("api")
    assert world.wait_for(lambda: "api" in world.ledger())
    world.set_image("web", "shop/web:2")
    world.set_image("api", "shop/api:2")
    world.ready_all("web")
    world.ready_all("api")
    assert world.wait_for(lambda: invalidations(world) == 1)
    assert world.wait_for(lambda: world.ledger()["api"]["settled"]["image"] == "shop/api:2")
    assert world.cloudfront.invalidations()[0].caller_reference.endswith(
        world.ledger()["api"]["settled"]["rollout_id"]
    )
    assert "web" not in world.ledger()
    errors = agg.metrics.registry.get_sample_value(
        "cache_buster_config_errors_total", {"app": "web"}
    )
    assert errors == 1.0  # one clear error, not one per event


def test_slow_cloudfront_for_one_app_does_not_delay_another(world: World) -> None:
    slow = world.cloudfront.add_distribution(["www.example.com"])
    world.cloudfront.add_distribution(["api.example.com"])
    world.cloudfront.set_completion_delay(slow, 30.0)
    world.aggregator(webhooks=world.webhooks_config(HOOKS))
    settle(world, "web", "shop/web:1")
    world.deploy("api", "shop/api:1", domains="api.example.com")
    world.ready_all("api")
    assert world.wait_for(lambda: "api" in world.ledger())
    world.set_image("web", "shop/web:2")
    world.ready_all("web")
    assert world.wait_for(lambda: invalidations(world) == 1)
    world.set_image("api", "shop/api:2")
    world.ready_all("api")
    # api's purge completes and its webhook fires while web's invalidation is still running.
    assert world.receiver.wait_for(lambda hooks: any(h.path == "/api" for h in hooks))
    statuses = {i.distribution_id: i.status for i in world.cloudfront.invalidations()}
    assert statuses[slow] == "InProgress"
    assert not any(h.path == "/web" for h in world.receiver.received)


def test_sidecar_mode_waits_for_every_report_and_survives_a_redis_wipe(
    world: World, redis_server: RedisServer
) -> None:
    world.cloudfront.add_distribution(["www.example.com"])
    fleet = world.start_sidecars()
    world.aggregator(mode="sidecar")
    world.deploy("web", "shop/web:1", sidecar=True)
    world.ready_all("web")
    assert world.wait_for(lambda: "web" in world.ledger())
    world.set_image("web", "shop/web:2")
    world.ready("web", 1)
    time.sleep(0.2)
    fleet.paused.set()  # the sidecars go quiet: nothing is re-reported after the wipe
    redis_server.wipe()
    world.ready_all("web")  # the API now says complete, but no pod reports: not early
    assert stays(lambda: invalidations(world) == 0, 1.0)
    fleet.paused.clear()  # heartbeats find their records gone, re-write and publish
    assert world.wait_for(lambda: invalidations(world) == 1, timeout=5)
    assert stays(lambda: invalidations(world) == 1)


def test_sidecar_mode_ignores_apps_without_the_label(world: World) -> None:
    world.cloudfront.add_distribution(["www.example.com"])
    world.start_sidecars()
    world.aggregator(mode="sidecar")
    world.deploy("web", "shop/web:1", sidecar=False)
    world.ready_all("web")
    world.set_image("web", "shop/web:2")
    world.ready_all("web")
    assert stays(lambda: invalidations(world) == 0 and "web" not in world.ledger(), 1.0)


def test_a_retryable_purge_error_backs_off_then_purges_once(world: World) -> None:
    import logging

    requested: list[float] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "purge.requested":
                requested.append(time.monotonic())

    handler = Capture()
    logging.getLogger("cache_buster.aggregator").addHandler(handler)
    try:
        world.cloudfront.add_distribution(["www.example.com"])
        world.aggregator(invalidation_timeout=0.3, purge_retry_max=0.6)
        settle(world, "web", "shop/web:1")
        world.cloudfront.throttle_next(1000, "CreateInvalidation")
        world.set_image("web", "shop/web:2")
        world.ready_all("web")
        assert world.wait_for(lambda: len(requested) >= 3, timeout=8)
        gaps = [b - a for a, b in itertools.pairwise(requested)]
        # The next attempt waits out the aggregator's backoff (0.6 s here, counted from when
        # the previous attempt gave up), however often the app is re-evaluated meanwhile.
        assert all(gap >= 0.6 for gap in gaps), gaps
        assert invalidations(world) == 0
        world.cloudfront.clear_injections()  # CloudFront stops throttling
        assert world.wait_for(lambda: invalidations(world) == 1, timeout=8)
        assert stays(lambda: invalidations(world) == 1)
    finally:
        logging.getLogger("cache_buster.aggregator").removeHandler(handler)


def test_an_app_on_cloudflare_purges_its_zone_once_per_rollout(world: World) -> None:
    # `cache-buster.io/provider: cloudflare` picks the provider per app; its neighbour stays
    # on CloudFront. Counted at the Cloudflare emulator.
    zone = world.cloudflare.add_zone("example.org")
    world.cloudfront.add_distribution(["www.example.com"])
    world.aggregator(providers={"cloudflare": world.cloudflare_provider()})
    world.deploy(
        "blog",
        "shop/blog:1",
        domains="blog.example.org",
        annotations={
            "cache-buster.io/provider": "cloudflare",
            "cache-buster.io/paths": "/,/feed/*",
        },
    )
    world.ready_all("blog")
    settle(world, "web", "shop/web:1")
    assert world.wait_for(lambda: world.ledger().get("blog", {}).get("settled") is not None)

    world.set_image("blog", "shop/blog:2")
    world.ready("blog", 1)
    assert stays(lambda: world.cloudflare.purges() == []), "purged before every pod was ready"
    world.ready_all("blog")
    assert world.wait_for(lambda: len(world.cloudflare.purges(zone)) == 2)
    modes = sorted((p.mode, p.items) for p in world.cloudflare.purges(zone))
    assert modes == [
        ("files", ("https://blog.example.org/",)),
        ("prefixes", ("blog.example.org/feed/",)),
    ]
    assert stays(lambda: len(world.cloudflare.purges(zone)) == 2, 1.0)
    settled = world.ledger()["blog"]["settled"]
    assert (settled["outcome"], settled["detail"]["provider"]) == ("purged", "cloudflare")
    assert invalidations(world) == 0  # CloudFront saw nothing of it
