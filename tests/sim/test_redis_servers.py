"""The redis-server fixtures behave like the failures the scenarios simulate."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import redis

from sidecar.sim.redis_servers import RedisServer, RedisServerError, reporter_acl, start_servers
from tests.redis_fixtures import RedisServersFactory


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its state in /proc says it is gone.
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_server_starts_empty_without_persistence(redis_server: RedisServer) -> None:
    client = redis_server.client()
    assert client.ping()
    assert client.dbsize() == 0
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}
    assert client.config_get("dir")["dir"] == os.path.realpath(redis_server.workdir)
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"


def test_restart_keeps_the_port_and_loses_data(redis_server: RedisServer) -> None:
    redis_server.client().set("k", "v")
    port, pid = redis_server.port, redis_server.pid
    redis_server.restart()
    assert redis_server.port == port
    assert redis_server.pid != pid
    assert redis_server.client().get("k") is None


def test_kill_is_a_crash_then_restart(redis_server: RedisServer) -> None:
    redis_server.client().set("k", "v")
    pid = redis_server.pid
    assert pid is not None
    redis_server.kill()
    assert not redis_server.running
    assert not _alive(pid)
    with pytest.raises(redis.ConnectionError):
        redis_server.client().ping()
    redis_server.restart()
    assert redis_server.client().get("k") is None


def test_wipe_loses_data_but_keeps_connections(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.set("k", "v")
    client_id = client.client_id()
    redis_server.wipe()
    assert client.get("k") is None
    assert client.client_id() == client_id  # same connection: the server never went away


def test_password_and_acl_users(redis_servers: RedisServersFactory) -> None:
    (server,) = redis_servers(
        1, password="s3cret with space", acl_lines=["alice on >pw ~a:* -@all +get +set"]
    )
    assert server.url.startswith("redis://:s3cret%20with%20space@127.0.0.1:")
    assert redis.Redis.from_url(server.url).ping()
    with pytest.raises(redis.AuthenticationError):
        server.client(password=None).ping()
    alice = server.client(username="alice", password="pw")
    assert alice.set("a:1", "x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        alice.set("b:1", "x")
    server.restart()  # the ACL comes from the config file: it survives a restart
    assert server.client(username="alice", password="pw").set("a:1", "y")


def test_factory_starts_distinct_servers_and_stops_them(
    redis_servers: RedisServersFactory,
) -> None:
    servers = redis_servers(3)
    assert len({server.port for server in servers}) == 3
    for index, server in enumerate(servers):
        server.client().set("who", index)
    assert [server.client().get("who") for server in servers] == ["0", "1", "2"]


def test_start_servers_and_context_manager() -> None:
    servers = start_servers(2)
    try:
        assert all(server.running for server in servers)
    finally:
        for server in servers:
            server.stop()
    assert not any(server.running for server in servers)
    assert not any(os.path.exists(server.workdir) for server in servers)
    with RedisServer() as server:
        assert server.client().ping()
    assert not server.running


def test_a_taken_fixed_port_is_a_clear_error(redis_server: RedisServer) -> None:
    with pytest.raises(RedisServerError, match=str(redis_server.port)):
        RedisServer(port=redis_server.port).start()


def test_servers_do_not_outlive_the_process() -> None:
    # A child that starts a server and exits without stopping it: atexit must stop it.
    code = textwrap.dedent(
        """
        from sidecar.sim.redis_servers import RedisServer
        print(RedisServer().start().pid, flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert not _alive(int(out.stdout.strip()))


def test_reporter_acl_confines_a_reporter_to_its_namespace(
    redis_servers: RedisServersFactory,
) -> None:
    assert reporter_acl("a") == (
        "reporter on >pw resetchannels &cache-buster:reports:a "
        "%W~cache-buster:report:a:* -@all +set +del +publish"
    )
    (server,) = redis_servers(1, acl_lines=[reporter_acl("a"), reporter_acl("b", user="rb")])
    reporter = server.client(username="reporter", password="pw")
    assert reporter.set("cache-buster:report:a:pod1", "{}", ex=15)
    assert reporter.publish("cache-buster:reports:a", "{}") == 0
    assert reporter.delete("cache-buster:report:a:pod1") == 1
    for refused in (
        lambda: reporter.set("cache-buster:report:b:pod1", "{}"),
        lambda: reporter.publish("cache-buster:reports:b", "{}"),
        lambda: reporter.delete("cache-buster:report:b:pod1"),
        lambda: reporter.get("cache-buster:report:a:pod1"),  # write-only keys, no reads
        lambda: reporter.set("cache-buster:ledger", "{}"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            refused()
    # Namespace b's user is the mirror image.
    other = server.client(username="rb", password="pw")
    assert other.set("cache-buster:report:b:pod1", "{}")
    with pytest.raises(redis.exceptions.NoPermissionError):
        other.set("cache-buster:report:a:pod2", "{}")


def test_reporter_acl_fits_the_reporters_own_write_path(
    redis_servers: RedisServersFactory,
) -> None:
    from sidecar.core.grammar import parse_redis_url
    from sidecar.reporter.config import ReporterConfig
    from sidecar.reporter.loop import Observation, Reporter
    from sidecar.reporter.resp import RespError

    (server,) = redis_servers(1, acl_lines=[reporter_acl("a")])
    address = parse_redis_url(f"redis://reporter:pw@127.0.0.1:{server.port}/0")

    def reporter(namespace: str) -> Reporter:
        return Reporter(ReporterConfig(pod="pod1", namespace=namespace, redis=address))

    own = reporter("a")
    assert own.write(Observation(probe_ok=True))  # SET + PUBLISH
    own.withdraw()  # SET, PUBLISH, DEL, PUBLISH
    own.client.close()
    foreign = reporter("b")
    with pytest.raises(RespError):
        foreign.write(Observation(probe_ok=True))
    foreign.client.close()
