"""The pod fleet (every pod's sidecar, with the reporter's real write path) and the World's
report helpers, against a real redis-server: a deleted pod keeps reporting while its app
drains and withdraws only once the app has exited (Kubernetes 1.29+ native sidecars); a
hard-killed pod's record outlives it until its TTL; `write_report` writes and publishes as the
reporter does for a pod that need not exist."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from sidecar.core.wire import Event, Report, decode_message, decode_report, report_channel
from sidecar.core.wire import report_key as wire_report_key
from sidecar.sim.kube.kubelet import app_exited
from sidecar.sim.redis_servers import RedisServer
from sidecar.sim.world import World

NS = "shop"
# 0.5 s of draining (10 s x 0.05), a 1.5 s grace period; heartbeats every 0.2 s, TTL 1 s.
TIME_SCALE = 0.05
DRAIN = 10.0
INTERVAL = 0.2


@pytest.fixture
def world(redis_server: RedisServer) -> Iterator[World]:
    with World(
        namespace=NS,
        redis_url=redis_server.url,
        time_scale=TIME_SCALE,
        report_interval=INTERVAL,
        kube_options={"app_exit_after": DRAIN},
    ) as w:
        yield w


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.close()


def report(r: redis.Redis, pod: str) -> Report | None:
    return decode_report(r.get(wire_report_key(NS, pod)))


def one_ready_pod(world: World, **fleet: Any) -> str:
    world.start_sidecars(**fleet)
    world.deploy("web", "shop/web:1", replicas=1)
    world.ready_all("web")
    (pod,) = [str(p["metadata"]["name"]) for p in world.kube.pods(NS, "web")]
    return pod


@dataclass(frozen=True)
class Sample:
    at: float
    pod: dict[str, Any] | None
    record: Report | None


def follow(world: World, r: redis.Redis, name: str, timeout: float = 5.0) -> list[Sample]:
    """Sample the pod and its record until both are gone."""
    samples: list[Sample] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod = world.kube.get("pods", NS, name)
        samples.append(Sample(time.time(), pod, report(r, name)))
        if pod is None and samples[-1].record is None:
            return samples
        time.sleep(0.01)
    raise AssertionError(f"pod {name} or its record still there after {timeout} s")


def messages_for(pubsub: Any, pod: str, wait: float = 0.5) -> list[Event]:
    """The events published for `pod` so far (a subscribe confirmation reads as None)."""
    events: list[Event] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.05)
        decoded = decode_message(message["data"]) if message else None
        if decoded is not None and decoded.pod == pod:
            events.append(decoded.event)
    pubsub.close()
    return events


def test_a_deleted_pod_reports_while_its_app_drains_and_withdraws_after_it_exits(
    world: World, r: redis.Redis
) -> None:
    name = one_ready_pod(world)
    assert world.wait_for(lambda: (report(r, name) or Report("", "", False, None, True)).probe_ok)
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(report_channel(NS))
    deleted_at = time.time()
    world.kube.delete("pods", NS, name)
    samples = follow(world, r, name)

    draining = [s for s in samples if s.pod is not None and not app_exited(s.pod)]
    assert draining and all(s.pod and s.pod["metadata"].get("deletionTimestamp") for s in draining)
    # The sidecar is not signalled while the app drains: its record stays, not terminating,
    # its probe passing (the pod stays Ready), and heartbeats go on.
    assert all(s.record is not None for s in draining), "withdrawn before the app exited"
    assert all(s.record and not s.record.terminating and s.record.probe_ok for s in draining)
    assert any(s.record and s.record.updated_at > deleted_at for s in draining)
    # Withdrawn (DEL + PUBLISH) once the app has exited, not left to expire.
    first_gone = next(s for s in samples if s.record is None)
    last_beat = max(s.record.updated_at for s in samples if s.record is not None)
    assert first_gone.at - last_beat < 1.0  # the record's TTL
    assert messages_for(pubsub, name)[-1] == Event.DELETE


def test_a_draining_app_that_fails_its_probe(world: World, r: redis.Redis) -> None:
    name = one_ready_pod(world, draining_probe_ok=False)
    assert world.wait_for(lambda: report(r, name) is not None and report(r, name).probe_ok)  # type: ignore[union-attr]
    world.kube.delete("pods", NS, name)
    samples = follow(world, r, name)
    draining = [s for s in samples if s.pod is not None and not app_exited(s.pod)]
    late = [s for s in draining if s.at > draining[0].at + 0.3]  # after a probe interval
    assert late and all(
        s.record and not s.record.probe_ok and not s.record.terminating for s in late
    )


def test_a_pod_removed_before_its_exit_was_seen_still_withdraws(
    world: World, r: redis.Redis
) -> None:
    name = one_ready_pod(world)
    assert world.wait_for(lambda: report(r, name) is not None)
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(report_channel(NS))
    world.kube.store.delete("pods", NS, name, grace_period=0)  # `--grace-period=0 --force`
    assert world.kube.get("pods", NS, name) is None
    assert world.wait_for(lambda: report(r, name) is None, timeout=0.5)  # before the 1 s TTL
    assert messages_for(pubsub, name)[-1] == Event.DELETE


def test_a_killed_pods_record_outlives_it_until_its_ttl(world: World, r: redis.Redis) -> None:
    name = one_ready_pod(world)
    assert world.wait_for(lambda: report(r, name) is not None)
    world.kill_pod(name)
    assert world.kube.get("pods", NS, name) is None
    assert r.ttl(wire_report_key(NS, name)) > 0  # still there, left to expire
    time.sleep(0.4)  # two heartbeats: none comes, none withdraws
    record = report(r, name)
    assert record is not None and time.time() - record.updated_at >= 0.4
    assert world.wait_for(lambda: report(r, name) is None, timeout=2)
    # The ReplicaSet replaces it, and the replacement's sidecar reports.
    assert world.wait_for(lambda: len(world.kube.pods(NS, "web")) == 1)
    (fresh,) = [p["metadata"]["name"] for p in world.kube.pods(NS, "web")]
    assert fresh != name and world.wait_for(lambda: report(r, fresh) is not None)


def test_kill_pod_of_a_missing_pod_is_an_error(world: World) -> None:
    with pytest.raises(KeyError):
        world.kill_pod("nope")


def test_write_report_writes_and_publishes_as_the_reporter(world: World, r: redis.Redis) -> None:
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(report_channel(NS))
    assert world.write_report("fake-abc-1", "abc", uid="uid-1", version="1.2")
    record = report(r, "fake-abc-1")
    assert record is not None
    assert (record.template_hash, record.uid, record.probe_ok, record.version) == (
        "abc",
        "uid-1",
        True,
        "1.2",
    )
    assert not record.terminating
    assert 0 < r.ttl(wire_report_key(NS, "fake-abc-1")) <= 1  # the heartbeat TTL
    assert messages_for(pubsub, "fake-abc-1") == [Event.UPDATE]
    # A heartbeat that says the same refreshes without a PUBLISH; a change publishes.
    assert not world.write_report("fake-abc-1", "abc", uid="uid-1", version="1.2")
    assert world.write_report("fake-abc-1", "abc", uid="uid-1", version="1.2", probe_ok=False)
    assert report(r, "fake-abc-1").probe_ok is False  # type: ignore[union-attr]
