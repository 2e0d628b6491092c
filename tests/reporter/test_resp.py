"""The reporter's RESP2 client against real redis-server processes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.core.grammar import RedisEndpoint, parse_redis_url
from sidecar.reporter.resp import RespClient, RespConnectionError, RespError
from sidecar.sim.redis_servers import RedisServer, free_port, reporter_acl
from tests.redis_fixtures import RedisServersFactory

# The reporter's ACL, per namespace (the README's line): write its own namespace's records,
# publish on its channel, nothing else. `%W~` (write-only keys) needs Redis 7.
REPORTER_ACL = reporter_acl("ns")


def _address(server: RedisServer, **kw: object) -> RedisEndpoint:
    return RedisEndpoint(host=server.host, port=server.port, **kw)  # type: ignore[arg-type]


URLS: list[tuple[str, RedisEndpoint]] = [
    ("redis://localhost", RedisEndpoint("localhost")),
    ("redis://10.0.0.1:6380/2", RedisEndpoint("10.0.0.1", 6380, db=2)),
    ("redis://:p%40ss@r:1", RedisEndpoint("r", 1, password="p@ss")),
    ("redis://user:pw@r", RedisEndpoint("r", username="user", password="pw")),
    ("rediss://r.example.com", RedisEndpoint("r.example.com", tls=True)),
    (
        "rediss://r:6380?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem&db=3",
        RedisEndpoint("r", 6380, db=3, tls=True, tls_verify=False, tls_ca_file="/ca.pem"),
    ),
    ("redis://[::1]:7000", RedisEndpoint("::1", 7000)),
]


@pytest.mark.parametrize(("url", "expected"), URLS)
def test_parse_redis_url(url: str, expected: RedisEndpoint) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://r", "scheme"),
        ("r:6379", "scheme"),
        ("redis://", "no host"),
        ("redis://r:notaport", "not a valid URL"),
        ("redis://r/x", "database"),
        ("rediss://r?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
    ],
)
def test_parse_redis_url_rejects(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_redis_url(url)


def test_describe_and_repr_never_show_the_password() -> None:
    address = parse_redis_url("redis://u:hunter2@r:1/0")
    assert "hunter2" not in address.describe()
    assert "hunter2" not in repr(address)
    assert address.describe() == "redis://u@r:1/0"


def test_commands_and_pipeline(redis_server: RedisServer) -> None:
    with RespClient(_address(redis_server)) as client:
        assert client.ping()
        assert client.set("k", "v\r\nwith crlf", ex=10)
        assert client.execute("GET", "k") == b"v\r\nwith crlf"
        assert not client.set("k", "x", nx=True)
        assert not client.set("missing", "x", xx=True)
        assert client.set("k", b"\x00\xff", px=5000, xx=True)
        assert client.execute("GET", "k") == b"\x00\xff"
        assert 0 < int(client.execute("PTTL", "k")) <= 5000  # type: ignore[arg-type]
        assert client.execute("GET", "missing") is None
        assert client.execute("INCRBYFLOAT", "f", 1.5) == b"1.5"
        client.execute("RPUSH", "l", "a", "b")
        assert client.execute("LRANGE", "l", 0, -1) == [b"a", b"b"]
        assert client.publish("ch", "hello") == 0
        replies = client.pipeline([["SET", "a", "1"], ["INCR", "k"], ["GET", "a"]])
        assert replies[0] == b"OK"
        assert isinstance(replies[1], RespError)
        assert replies[2] == b"1"
        with pytest.raises(RespError) as raised:
            client.execute("NOSUCHCOMMAND")
        assert raised.value.code == "ERR"
        assert client.delete("a", "k", "nothing") == 2


def test_publish_reaches_a_subscriber(redis_server: RedisServer) -> None:
    pubsub = redis_server.client().pubsub()
    pubsub.subscribe("cache-buster:reports:ns")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    with RespClient(_address(redis_server)) as client:
        assert client.publish("cache-buster:reports:ns", '{"pod":"p"}') == 1
    message = pubsub.get_message(timeout=5)
    assert message is not None and message["data"] == '{"pod":"p"}'
    pubsub.close()


def test_select_database(redis_server: RedisServer) -> None:
    with RespClient(_address(redis_server, db=3)) as client:
        client.set("k", "in-db-3")
    assert redis_server.client(db=3).get("k") == "in-db-3"
    assert redis_server.client(db=0).get("k") is None


def test_legacy_password_auth(redis_servers: RedisServersFactory) -> None:
    (server,) = redis_servers(1, password="s3cret")
    with RespClient(parse_redis_url(server.url)) as client:
        assert client.ping()
    with pytest.raises(RespError, match="WRONGPASS"):
        RespClient(_address(server, password="wrong")).ping()
    with pytest.raises(RespError, match="NOAUTH"):
        RespClient(_address(server)).ping()


def test_restricted_reporter_acl(redis_servers: RedisServersFactory) -> None:
    (server,) = redis_servers(1, acl_lines=[REPORTER_ACL])
    address = _address(server, username="reporter", password="pw")
    with RespClient(address, client_name="cache-buster-reporter") as client:
        # CLIENT SETNAME is refused by this ACL and skipped; the connection still works.
        assert client.set("cache-buster:report:ns:pod", "{}", ex=15)
        assert client.set("cache-buster:report:ns:pod", "{}", ex=15, xx=True)
        assert client.publish("cache-buster:reports:ns", "m") == 0
        assert client.delete("cache-buster:report:ns:pod") == 1
        for command in (
            ["SET", "other", "v"],
            ["PUBLISH", "other", "m"],
            ["GET", "cache-buster:report:ns:pod"],
            ["KEYS", "*"],
            ["FLUSHALL"],
        ):
            with pytest.raises(RespError, match="NOPERM"):
                client.execute(*command)
    with pytest.raises(RespError, match="WRONGPASS"):
        RespClient(_address(server, username="reporter", password="bad")).ping()


def test_connection_refused_is_a_connection_error() -> None:
    client = RespClient(RedisEndpoint("127.0.0.1", free_port()), timeout=1)
    with pytest.raises(RespConnectionError, match="connect"):
        client.ping()
    assert not client.connected


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never answers: a hung Redis."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def test_timeout_is_a_connection_error(silent_server: int) -> None:
    client = RespClient(RedisEndpoint("127.0.0.1", silent_server), timeout=0.2)
    with pytest.raises(RespConnectionError, match="timed out"):
        client.ping()
    assert not client.connected


def test_reconnects_after_a_server_restart(redis_server: RedisServer) -> None:
    client = RespClient(_address(redis_server))
    assert client.ping()
    redis_server.restart()
    # The old connection is dead; the stale-connection retry makes this call succeed.
    assert client.set("k", "v")
    assert redis_server.client().get("k") == "v"
    no_retry = RespClient(_address(redis_server), retry_stale=False)
    assert no_retry.ping()
    redis_server.restart()
    with pytest.raises(RespConnectionError):
        no_retry.ping()
    assert no_retry.ping()  # the next call reconnects
    client.close()
    no_retry.close()


def test_killed_server_fails_then_recovers(redis_server: RedisServer) -> None:
    client = RespClient(_address(redis_server), timeout=1)
    assert client.ping()
    redis_server.kill()
    with pytest.raises(RespConnectionError):
        client.ping()
    redis_server.restart()
    assert client.ping()
    client.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls_rediss(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    tls_port = free_port()
    tls_args = [
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
    ]  # fmt: skip
    with RedisServer(extra_args=tls_args) as server:
        verified = parse_redis_url(f"rediss://localhost:{tls_port}/0?ssl_ca_certs={cert}")
        with RespClient(verified) as client:
            assert client.set("k", "over-tls")
        assert server.client().get("k") == "over-tls"
        with RespClient(parse_redis_url(f"rediss://127.0.0.1:{tls_port}?ssl_cert_reqs=none")) as c:
            assert c.ping()
        # Verification on by default: a self-signed certificate is refused.
        with pytest.raises(RespConnectionError, match="connect"):
            RespClient(parse_redis_url(f"rediss://localhost:{tls_port}")).ping()
