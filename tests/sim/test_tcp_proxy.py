"""The cuttable loopback proxy (`sidecar.sim.tcp_proxy.TcpProxy`) in front of a real
redis-server, seen through redis-py clients with short socket timeouts."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sidecar.sim.redis_servers import RedisServer, free_port
from sidecar.sim.tcp_proxy import ProxyMode, TcpProxy

TIMEOUT = 0.5


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", redis_server.port) as p:
        yield p


def client(url: str) -> redis.Redis:
    # No retries: each call shows what one attempt met.
    return redis.Redis.from_url(
        url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, retry=Retry(NoBackoff(), 0)
    )


def raw(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT)


def ping(sock: socket.socket) -> bytes:
    sock.sendall(b"PING\r\n")
    return sock.recv(64)


def test_pass_forwards_both_ways(proxy: TcpProxy, redis_server: RedisServer) -> None:
    assert proxy.mode is ProxyMode.PASS
    assert proxy.url == f"redis://127.0.0.1:{proxy.port}/0"
    r = client(proxy.url)
    assert r.set("k", "v")
    assert r.get("k") == b"v"
    # More than the proxy buffers per direction, both ways.
    big = b"x" * (3 << 20)
    assert r.set("big", big)
    assert r.get("big") == big
    assert client(redis_server.url).get("k") == b"v"  # it reached the real server
    assert proxy.connections_accepted == 1
    assert proxy.bytes_forwarded > 2 * len(big)
    r.close()


def test_refuse_refuses_new_connections_and_resets_existing_ones(proxy: TcpProxy) -> None:
    r = client(proxy.url)
    assert r.ping()
    sock = raw(proxy)
    assert ping(sock) == b"+PONG\r\n"
    proxy.refuse()
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        r.ping()
    with pytest.raises(redis.ConnectionError):
        client(proxy.url).ping()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT)
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        ping(sock)
    assert time.monotonic() - started < TIMEOUT  # refused and reset, never a wait
    sock.close()

    proxy.pass_through()  # listening again, on the same port
    assert r.ping()  # redis-py reconnects
    assert client(proxy.url).ping()


def test_blackhole_is_silence_for_existing_and_new_connections(
    proxy: TcpProxy, redis_server: RedisServer
) -> None:
    r = client(proxy.url)
    assert r.ping()
    sock = raw(proxy)
    assert ping(sock) == b"+PONG\r\n"
    proxy.blackhole()
    forwarded = proxy.bytes_forwarded
    with pytest.raises(redis.TimeoutError):
        r.set("k", "lost")
    new = client(proxy.url)
    with pytest.raises(redis.TimeoutError):  # connected, then nothing: not refused
        new.ping()
    sock.sendall(b"PING\r\n")
    with pytest.raises(TimeoutError):
        sock.recv(64)
    assert proxy.bytes_forwarded == forwarded
    assert client(redis_server.url).get("k") is None  # nothing reached the server
    assert proxy.connections_accepted >= 3

    proxy.pass_through()
    sock.settimeout(TIMEOUT)
    assert sock.recv(64) == b""  # the silent connection is closed: the client reconnects
    sock.close()
    assert r.set("k", "v")
    assert new.ping()
    assert client(redis_server.url).get("k") == b"v"


def test_modes_set_before_start_and_a_target_that_is_down(redis_server: RedisServer) -> None:
    with TcpProxy("127.0.0.1", redis_server.port) as p:
        p.refuse()
    refused = TcpProxy("127.0.0.1", redis_server.port)
    refused.set_mode(ProxyMode.REFUSE)
    with refused:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((refused.host, refused.port), timeout=TIMEOUT)
        refused.pass_through()
        assert client(refused.url).ping()

    with TcpProxy("127.0.0.1", free_port()) as down:
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            client(down.url).ping()
        assert time.monotonic() - started < TIMEOUT  # reset as a dead server's, not silence


def test_stop_leaves_no_listener_and_no_thread(redis_server: RedisServer) -> None:
    before = set(threading.enumerate())
    proxy = TcpProxy("127.0.0.1", redis_server.port).start()
    r = client(proxy.url)
    assert r.ping()
    sock = raw(proxy)
    proxy.blackhole()  # stop also closes connections it keeps silent
    proxy.stop()
    proxy.stop()  # twice is fine
    assert set(threading.enumerate()) <= before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
    try:
        closed = sock.recv(64) == b""
    except ConnectionResetError:
        closed = True
    assert closed  # not a TimeoutError: nothing left open
    sock.close()
    r.close()
