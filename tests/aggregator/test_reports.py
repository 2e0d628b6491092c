"""`sidecar.aggregator.reports.ReportCache` against a real redis-server, fed by the real
reporter write path (`sidecar.reporter.loop.Reporter`, the `sidecar.core.wire` format): resync
on subscribe, publish -> on_change, `fresh()` dropping expired and deleted records, and
recovery after a Redis restart or a dropped subscriber connection."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from sidecar.aggregator.reports import ReportCache
from sidecar.core.grammar import parse_redis_url
from sidecar.core.wire import encode_report, report_channel, report_key
from sidecar.reporter.config import ReporterConfig
from sidecar.reporter.loop import Observation, Reporter
from sidecar.reporter.resp import RespError
from sidecar.sim.redis_servers import RedisServer

NS = "shop"


class Changes:
    """on_change recorder: every template hash reported, in order."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.cond = threading.Condition()

    def __call__(self, template_hash: str) -> None:
        with self.cond:
            self.seen.append(template_hash)
            self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.seen)

    def wait_for(self, template_hash: str, since: int = 0, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: template_hash in self.seen[since:], timeout)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class Pods:
    """Reporters for pods of one namespace, each with the real write path."""

    def __init__(self, server: RedisServer) -> None:
        self.address = parse_redis_url(server.url)
        self.reporters: dict[str, Reporter] = {}

    def reporter(self, pod: str, template_hash: str) -> Reporter:
        if pod not in self.reporters:
            config = ReporterConfig(
                pod=pod, namespace=NS, redis=self.address, template_hash=template_hash
            )
            self.reporters[pod] = Reporter(config)
        return self.reporters[pod]

    def write(self, pod: str, template_hash: str, probe_ok: bool = True) -> None:
        """One heartbeat; a connection lost to a restart is retried as the sidecar would."""
        reporter = self.reporter(pod, template_hash)
        deadline = time.monotonic() + 5
        while True:
            try:
                reporter.write(Observation(probe_ok=probe_ok))
                return
            except (OSError, RespError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        for reporter in self.reporters.values():
            reporter.client.close()


@pytest.fixture
def pods(redis_server: RedisServer) -> Iterator[Pods]:
    fleet = Pods(redis_server)
    yield fleet
    fleet.close()


@pytest.fixture
def start_cache(redis_server: RedisServer) -> Iterator[Callable[..., tuple[ReportCache, Changes]]]:
    started: list[tuple[ReportCache, Any]] = []

    def start(client: redis.Redis | None = None) -> tuple[ReportCache, Changes]:
        changes = Changes()
        conn = client if client is not None else redis_server.client()
        cache = ReportCache(conn, NS, changes).start()
        started.append((cache, conn))
        assert cache.connected.wait(5)
        return cache, changes

    yield start
    for cache, conn in started:
        cache.stop()
        conn.close()


def pods_of(cache: ReportCache, template_hash: str) -> set[str]:
    return {r.pod for r in cache.for_hash(template_hash)}


def test_resync_on_subscribe_picks_up_records_written_before_start(
    pods: Pods, start_cache: Callable[..., tuple[ReportCache, Changes]]
) -> None:
    pods.write("web-a-1", "aaa")
    pods.write("web-a-2", "aaa", probe_ok=False)
    pods.write("web-b-1", "bbb")
    cache, changes = start_cache()
    assert pods_of(cache, "aaa") == {"web-a-1", "web-a-2"}
    assert pods_of(cache, "bbb") == {"web-b-1"}
    assert {r.pod: r.probe_ok for r in cache.for_hash("aaa")} == {
        "web-a-1": True,
        "web-a-2": False,
    }
    assert set(changes.seen) == {"aaa", "bbb"}


def test_a_publish_triggers_on_change_with_the_template_hash(
    pods: Pods, start_cache: Callable[..., tuple[ReportCache, Changes]]
) -> None:
    cache, changes = start_cache()
    assert changes.seen == []
    pods.write("web-c-1", "ccc", probe_ok=False)
    assert changes.wait_for("ccc")
    assert [r.probe_ok for r in cache.for_hash("ccc")] == [False]

    mark = changes.mark()
    pods.write("web-c-1", "ccc", probe_ok=True)  # the probe now passes: published again
    assert changes.wait_for("ccc", since=mark)
    assert wait_until(lambda: [r.probe_ok for r in cache.for_hash("ccc")] == [True])

    mark = changes.mark()
    pods.reporters["web-c-1"].withdraw()  # SIGTERM: terminating, then deleted
    assert changes.wait_for("ccc", since=mark)
    assert wait_until(lambda: pods_of(cache, "ccc") == set())


def test_fresh_drops_records_whose_key_expired_or_was_deleted(
    redis_server: RedisServer, pods: Pods, start_cache: Callable[..., tuple[ReportCache, Changes]]
) -> None:
    for pod in ("web-d-1", "web-d-2", "web-d-3"):
        pods.write(pod, "ddd")
    cache, _ = start_cache()
    assert pods_of(cache, "ddd") == {"web-d-1", "web-d-2", "web-d-3"}
    with redis_server.client() as admin:
        # No publish for either: a pod that died without SIGTERM, and a heartbeat TTL running out.
        admin.delete(report_key(NS, "web-d-1"))
        admin.pexpire(report_key(NS, "web-d-2"), 20)
        assert wait_until(lambda: not admin.exists(report_key(NS, "web-d-2")))
    assert pods_of(cache, "ddd") == {"web-d-1", "web-d-2", "web-d-3"}  # not told yet
    assert {r.pod for r in cache.fresh("ddd")} == {"web-d-3"}
    assert pods_of(cache, "ddd") == {"web-d-3"}
    assert cache.fresh("nothing-here") == []


def test_after_a_redis_restart_the_cache_resyncs_and_sees_rewritten_records(
    redis_server: RedisServer, pods: Pods, start_cache: Callable[..., tuple[ReportCache, Changes]]
) -> None:
    pods.write("web-e-1", "eee")
    pods.write("web-e-2", "eee")
    cache, changes = start_cache()
    assert pods_of(cache, "eee") == {"web-e-1", "web-e-2"}

    mark = changes.mark()
    redis_server.restart()  # every key lost, every connection dropped
    # The cache notices, reconnects and re-reads: the records are gone.
    assert changes.wait_for("eee", since=mark)
    assert wait_until(lambda: pods_of(cache, "eee") == set() and cache.connected.is_set())

    # The reporters' next heartbeats find their records missing and write them again.
    pods.write("web-e-1", "eee")
    pods.write("web-e-2", "eee")
    assert wait_until(lambda: pods_of(cache, "eee") == {"web-e-1", "web-e-2"})
    assert {r.pod for r in cache.fresh("eee")} == {"web-e-1", "web-e-2"}


def test_a_client_that_reconnects_by_itself_still_triggers_a_resync(
    redis_server: RedisServer, pods: Pods, start_cache: Callable[..., tuple[ReportCache, Changes]]
) -> None:
    """A client with redis-py's default retries (`redis.Redis(host=..., port=...)`): its pub/sub
    connection reconnects and re-subscribes inside get_message without raising. A
    notification lost meanwhile must still be caught up by a re-read."""
    client = redis.Redis(host=redis_server.host, port=redis_server.port, decode_responses=True)
    probe: Any = client.connection_pool.make_connection()
    assert probe.retry.get_retries() > 0
    cache, changes = start_cache(client)
    with redis_server.client() as admin:
        # A record whose notification never reaches the cache (written, publish lost)...
        reporter = pods.reporter("web-f-1", "fff")
        record = reporter.record(Observation(probe_ok=True))
        admin.set(report_key(NS, "web-f-1"), encode_report(record), ex=30)
        assert pods_of(cache, "fff") == set()
        # ...then the subscriber's connection drops.
        assert admin.client_kill_filter(_type="pubsub") >= 1
        assert changes.wait_for("fff")
        assert pods_of(cache, "fff") == {"web-f-1"}
        # Still subscribed: later publishes arrive.
        mark = changes.mark()
        pods.write("web-f-2", "fff")
        assert changes.wait_for("fff", since=mark)
        assert wait_until(lambda: pods_of(cache, "fff") == {"web-f-1", "web-f-2"})
        assert admin.pubsub_numsub(report_channel(NS)) == [(report_channel(NS), 1)]


def test_a_failing_on_change_does_not_end_the_subscriber(
    pods: Pods, redis_server: RedisServer
) -> None:
    calls: list[str] = []
    fail = threading.Event()
    fail.set()

    def on_change(template_hash: str) -> None:
        calls.append(template_hash)
        if fail.is_set():
            fail.clear()
            raise RuntimeError("handler bug")

    conn = redis_server.client()
    cache = ReportCache(conn, NS, on_change).start()
    try:
        assert cache.connected.wait(5)
        pods.write("web-g-1", "ggg")  # the handler raises on this one
        assert wait_until(lambda: "ggg" in calls)
        pods.write("web-g-2", "hhh")
        assert wait_until(lambda: "hhh" in calls)
        assert wait_until(lambda: {r.pod for r in cache.for_hash("ggg")} == {"web-g-1"})
    finally:
        cache.stop()
        conn.close()


def test_fresh_leaves_out_reports_whose_heartbeat_is_stale(
    redis_server: RedisServer, start_cache: Callable[..., tuple[ReportCache, Changes]]
) -> None:
    address = parse_redis_url(redis_server.url)
    live = Reporter(ReporterConfig(pod="web-1", namespace=NS, redis=address, template_hash="h"))
    # A reporter whose clock says its last heartbeat was a minute ago (hung, or partitioned
    # while its key has not expired yet).
    hung = Reporter(
        ReporterConfig(pod="web-2", namespace=NS, redis=address, template_hash="h", interval=60),
        clock=lambda: time.time() - 60,
    )
    live.write(Observation(probe_ok=True))
    hung.write(Observation(probe_ok=True))
    cache, _ = start_cache()
    assert {r.pod for r in cache.fresh("h")} == {"web-1", "web-2"}
    assert {r.pod for r in cache.fresh("h", stale_after=15.0)} == {"web-1"}
    live.client.close()
    hung.client.close()


def test_the_aggregators_connection_honours_every_field_of_the_redis_url(
    redis_server: RedisServer,
) -> None:
    """One URL grammar for `report` and `aggregate`: the database and the TLS options of
    REDIS_URL reach redis-py as they reach the reporter's client."""
    from sidecar.aggregator.wiring import redis_client

    url = f"redis://{redis_server.host}:{redis_server.port}?db=3"
    client = redis_client(parse_redis_url(url))
    try:
        client.set("k", "v")
        with redis_server.client(db=3) as admin:
            assert admin.get("k") == "v"
    finally:
        client.close()
    tls = redis_client(parse_redis_url("rediss://h:6380/1?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem"))
    kwargs = tls.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("h", 6380, 1)
    assert kwargs["ssl_cert_reqs"] == "none" and kwargs["ssl_check_hostname"] is False
    assert kwargs["ssl_ca_certs"] == "/ca.pem"
    assert tls.connection_pool.connection_class.__name__ == "SSLConnection"
