"""The Redis base's ACL users (kustomize/bases/redis/users.acl.example), proven on a real
redis-server started with the base's own flags as `kubectl kustomize` builds them (mount paths
mapped to temporary files, ports to free ones): the product's own code paths work as each
user, what each user must not do is refused, and Redis's ACL log shows no other refusal.

- a pod's reporter (`sidecar.reporter.loop.Reporter`, its RESP client) as `reporter-shop`,
  read by the aggregator's `ReportCache` as `aggregator`;
- a group of two (`GroupMembers` on both sides): heartbeats, states, the subscriber's reads,
  the claim (`claim.acquire`, `ClaimLease` renew and release) at the claim place as `peer`
  and as `aggregator`, `mirror_inflight`, `mirror_link`, and `status.gather`;
- the exposed build's TLS listener carrying the peer, and the tls-only build with no
  plaintext listener at all.

The test appends one admin user of its own to the ACL file, only to read `ACL LOG`."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from sidecar.aggregator.claim import ClaimLease, ClaimState, acquire
from sidecar.aggregator.peers import GroupMembers, peer_client_options, read_link, read_snapshot
from sidecar.aggregator.reports import ReportCache
from sidecar.aggregator.status import gather
from sidecar.aggregator.wiring import redis_client
from sidecar.core.grammar import RedisEndpoint
from sidecar.core.group import (
    ChainLink,
    ClaimKind,
    GroupPhase,
    InFlight,
    MemberState,
    claim_holder,
    claim_key,
)
from sidecar.core.records import Outcome
from sidecar.reporter.config import ReporterConfig
from sidecar.reporter.loop import Observation, Reporter
from sidecar.reporter.resp import RespClient, RespConnectionError, RespError
from sidecar.sim.redis_servers import RedisServer, RedisServerError, free_port, redis_server_binary
from tests.kustomize.test_redis_base import ACL_EXAMPLE, build_variant, options

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(
        shutil.which("kubectl") is None,
        reason="kubectl binary not on PATH (its kustomize builds the manifests)",
    ),
]

Obj = dict[str, Any]

GROUP = "default"  # the group the template is written for (CLUSTER_GROUP's default)
NAMESPACE = "shop"
APP = "shop:web"
RID = "r-" + "c" * 24
USERS = ("aggregator", "peer", "reporter-shop")
ADMIN = "cb-test-admin"
# Refusals the product's clients expect and ignore, not granted since nothing needs them: the
# reporter names its connection (CLIENT SETNAME); redis-py names its library on every new
# connection (CLIENT SETINFO) on Redis 7.2 and later, the image's 7.4 (an older server does
# not know the command, so no ACL refusal is logged there).
TOLERATED = {
    ("aggregator", "command", "client|setinfo"),
    ("peer", "command", "client|setinfo"),
    ("reporter-shop", "command", "client|setname"),
}


# --- the base's flags, on this machine ------------------------------------------------------


@pytest.fixture(scope="module")
def containers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Obj]:
    """variant -> the built Redis container (the real kustomize build of each variant)."""
    workdir = tmp_path_factory.mktemp("redis-acl-kustomize")
    found = {}
    for variant in ("base", "expose", "tls-only"):
        objs = build_variant(variant, workdir)
        (sts,) = [o for o in objs if o["kind"] == "StatefulSet"]
        (found[variant],) = sts["spec"]["template"]["spec"]["containers"]
    return found


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    return {user: secrets.token_hex(16) for user in (*USERS, ADMIN)}


def acl_file(directory: Path, passwords: dict[str, str], *, fill: bool = True) -> Path:
    """The template as a user would fill it in (each placeholder replaced by `#` and the
    SHA-256 of that user's password), plus the test's admin user."""
    text = ACL_EXAMPLE.read_text(encoding="utf-8")
    if fill:
        for user in USERS:
            placeholder = f"#SHA256-OF-THE-{user.upper()}-PASSWORD"
            assert text.count(placeholder) == 1, placeholder
            digest = hashlib.sha256(passwords[user].encode()).hexdigest()
            text = text.replace(placeholder, "#" + digest)
    text += f"user {ADMIN} on >{passwords[ADMIN]} ~* &* +@all\n"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "users.acl"
    path.write_text(text, encoding="utf-8")
    return path


def tls_files(directory: Path) -> Path:
    """A self-signed certificate for 127.0.0.1, as the TLS Secret's tls.crt and tls.key."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(directory / "tls.key"), "-out", str(directory / "tls.crt")],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return directory / "tls.crt"


def server_args(container: Obj, mounts: dict[str, Path], ports: dict[str, int]) -> list[str]:
    """The container's args with every mounted path mapped to its local directory and every
    listening port (but 0: off) to a free local one; nothing else changed."""
    mount_paths = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    args: list[str] = []
    flags = container["args"]
    for name, given in zip(flags[::2], flags[1::2], strict=True):
        value = given
        for path, volume in mount_paths.items():
            if given == path or given.startswith(path + "/"):
                value = str(mounts[volume]) + given[len(path) :]
        if name in ("--port", "--tls-port") and given != "0":
            value = str(ports[given])
        args += [name, value]
    return args


class Servers:
    """Real redis-servers run with a built container's flags; all stopped at teardown."""

    def __init__(self, tmp_path: Path, passwords: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.passwords = passwords
        self._started: list[RedisServer] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    def mounts(self, name: str, *, fill: bool = True) -> dict[str, Path]:
        root = self.tmp_path / name
        acl_file(root / "acl", self.passwords, fill=fill)
        (root / "data").mkdir(parents=True, exist_ok=True)
        return {"acl": root / "acl", "data": root / "data", "tls": root / "tls"}

    def start(self, container: Obj, name: str, *, fill: bool = True) -> RedisServer:
        """Through RedisServer (it owns the plaintext port and waits for it)."""
        mounts = self.mounts(name, fill=fill)
        if any(m["name"] == "tls" for m in container["volumeMounts"]):
            tls_files(mounts["tls"])
        server = RedisServer(workdir=str(self.tmp_path / name / "run"))
        args = server_args(container, mounts, {"6379": server.port, "6380": free_port()})
        # RedisServer sets the plaintext port itself (and retries another if it was taken).
        at = args.index("--port")
        del args[at : at + 2]
        server.extra_args = tuple(args)
        self._started.append(server)
        return server.start()

    def spawn(self, container: Obj, name: str) -> tuple[int, int, Path]:
        """Run the container's command line as it is (for a build whose plaintext port is
        off, which RedisServer cannot wait on). Returns (plaintext port as mapped, TLS port,
        certificate)."""
        mounts = self.mounts(name)
        cert = tls_files(mounts["tls"])
        plain, tls = free_port(), free_port()
        log = self.tmp_path / name / "redis.log"
        argv = [
            redis_server_binary(),
            *server_args(container, mounts, {"6379": plain, "6380": tls}),
        ]
        argv += ["--bind", "127.0.0.1", "--daemonize", "no", "--logfile", str(log)]
        assert container["command"] == ["redis-server"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self._procs.append(proc)
        deadline = time.monotonic() + 10
        while "Ready to accept connections" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        return plain, tls, cert

    def stop(self) -> None:
        for server in self._started:
            server.stop()
        for proc in self._procs:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def servers(tmp_path: Path, passwords: dict[str, str]) -> Iterator[Servers]:
    s = Servers(tmp_path, passwords)
    try:
        yield s
    finally:
        s.stop()


def endpoint(
    port: int, user: str, passwords: dict[str, str], *, cert: Path | None = None
) -> RedisEndpoint:
    return RedisEndpoint(
        "127.0.0.1",
        port,
        username=user,
        password=passwords[user],
        tls=cert is not None,
        tls_ca_file=str(cert) if cert else None,
    )


def admin(server: RedisServer, passwords: dict[str, str]) -> redis.Redis:
    return server.client(username=ADMIN, password=passwords[ADMIN])


def denials(server: RedisServer, passwords: dict[str, str]) -> set[tuple[str, str, str]]:
    """What the ACL log holds, as (user, reason, object); then cleared."""
    with admin(server, passwords) as client:
        entries = client.acl_log()
        client.acl_log_reset()
    return {(e["username"], e["reason"], e["object"]) for e in entries}


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# --- the template and the default user ------------------------------------------------------


def test_the_unedited_template_keeps_redis_down(
    servers: Servers, containers: dict[str, Obj]
) -> None:
    # The placeholders are not valid hashes: Redis refuses the whole file and does not start,
    # rather than start with users nobody chose a password for.
    with pytest.raises(RedisServerError, match=r"ACL|hash|password"):
        servers.start(containers["base"], "unedited", fill=False)


def test_the_default_user_is_off(servers: Servers, containers: dict[str, Obj]) -> None:
    server = servers.start(containers["base"], "default")
    anonymous = RespClient(RedisEndpoint(server.host, server.port))
    with pytest.raises(RespError, match="NOAUTH"):
        anonymous.execute("GET", "cache-buster:report:shop:web-1")
    for password in ("", "nopass", "default"):
        client = RespClient(RedisEndpoint(server.host, server.port, "default", password))
        with pytest.raises(RespError, match="WRONGPASS"):
            client.connect()
    user: Any = admin(server, servers.passwords).acl_getuser("default")
    flags = user["flags"]
    assert "off" in flags and "nopass" not in flags


# --- the product's code paths ---------------------------------------------------------------


def test_a_reporter_writes_its_record_and_the_aggregator_reads_it(
    servers: Servers, containers: dict[str, Obj]
) -> None:
    server = servers.start(containers["base"], "reports")
    pw = servers.passwords
    config = ReporterConfig(
        pod="web-1",
        namespace=NAMESPACE,
        uid="0f1e2d3c",
        template_hash="7d9f8c6b5d",
        redis=endpoint(server.port, "reporter-shop", pw),
    )
    reporter = Reporter(config)  # its own RESP client, as in the sidecar
    seen: list[str] = []
    cache = ReportCache(
        redis_client(endpoint(server.port, "aggregator", pw)), NAMESPACE, seen.append
    ).start()
    try:
        assert cache.connected.wait(5)  # SUBSCRIBE + SCAN/MGET as `aggregator`
        assert reporter.write(Observation(probe_ok=True, version="v2")) is True  # SET EX, PUBLISH
        assert reporter.write(Observation(probe_ok=True, version="v2")) is False  # SET XX
        assert wait_until(lambda: [r.pod for r in cache.for_hash("7d9f8c6b5d")] == ["web-1"])
        (report,) = cache.fresh("7d9f8c6b5d")  # MGET
        assert (report.version, report.uid) == ("v2", "0f1e2d3c")
        reporter.withdraw()  # SET, PUBLISH, DEL, PUBLISH
        assert wait_until(lambda: cache.for_hash("7d9f8c6b5d") == [])
    finally:
        cache.stop()
        reporter.client.close()
    assert denials(server, pw) <= TOLERATED


def test_a_group_of_two_works_as_aggregator_and_peer(
    servers: Servers, containers: dict[str, Obj]
) -> None:
    """eu-west's Redis (A) is the claim place (the lowest name): us-east claims there as
    `peer`, eu-west as `aggregator`; both mirror into each other's Redis as `peer`."""
    a = servers.start(containers["base"], "eu-west")
    b = servers.start(containers["base"], "us-east")
    pw = servers.passwords
    local_a, local_b = endpoint(a.port, "aggregator", pw), endpoint(b.port, "aggregator", pw)
    peer_a, peer_b = endpoint(a.port, "peer", pw), endpoint(b.port, "peer", pw)
    holder_a, holder_b = claim_holder("eu-west", "inst-a"), claim_holder("us-east", "inst-b")

    def members(
        cluster: str, instance: str, local: RedisEndpoint, peer: RedisEndpoint
    ) -> GroupMembers:
        return GroupMembers(
            group=GROUP,
            cluster=cluster,
            instance=instance,
            namespace=NAMESPACE,
            local=(local.display_url, redis_client(local)),
            peers=[(peer.display_url, redis_client(peer, **peer_client_options()))],
            on_change=lambda app: None,
            claim_lease=5.0,
        )

    ga = members("eu-west", "inst-a", local_a, peer_b).start()
    gb = members("us-east", "inst-b", local_b, peer_a).start()
    try:
        # Heartbeats (GET, SET EX, SET NX on the epoch, PUBLISH) as `aggregator`; each side
        # learns the other's name from a SUBSCRIBE, SCAN and MGET as `peer`.
        assert wait_until(lambda: ga.learned_names() == {peer_b.display_url: "us-east"})
        assert wait_until(lambda: gb.learned_names() == {peer_a.display_url: "eu-west"})
        for g, cluster, instance in ((ga, "eu-west", "inst-a"), (gb, "us-east", "inst-b")):
            g.publish_state(
                MemberState(
                    cluster, instance, APP, "nginx:2", RID, GroupPhase.COMPLETE, 3, 3, time.time()
                )
            )

        def peers_state(g: GroupMembers) -> MemberState | None:
            return g.view(APP).peers[0].state

        # The state written and PUBLISHed by each, read by the other (GET as `peer`).
        assert wait_until(lambda: peers_state(ga) is not None and peers_state(gb) is not None)
        view = gb.view(APP)
        assert view.problems == ()
        place = view.claim_place()
        assert place is not None and place.name == "eu-west"
        at_a_as_peer = gb.client_of("eu-west")
        at_a_as_aggregator = ga.client_of("eu-west")
        assert at_a_as_peer is not None and at_a_as_aggregator is not None

        def claim(client: redis.Redis, holder: str, probe: bool = False) -> Any:
            return acquire(
                client,
                group=GROUP,
                app=APP,
                rollout=RID,
                kind=ClaimKind.PURGE,
                holder=holder,
                lease=5.0,
                derived_from_seq=0,
                probe=probe,
            )

        key = claim_key(GROUP, APP, RID, ClaimKind.PURGE)
        # The acquire script (EXISTS, SET, HGET, GET, PEXPIRE) as `peer`, then as `aggregator`.
        assert claim(at_a_as_peer, holder_b).state is ClaimState.WON
        held = claim(at_a_as_aggregator, holder_a)
        assert (held.state, held.holder) == (ClaimState.HELD, holder_b)
        lease = ClaimLease(at_a_as_peer, key, holder_b, 5.0)
        assert lease.confirm() is True  # the renew script
        lease.release()  # the release script (GET, DEL)
        assert claim(at_a_as_aggregator, holder_a, probe=True).state is ClaimState.ABSENT
        assert claim(at_a_as_aggregator, holder_a).state is ClaimState.WON
        own = ClaimLease(at_a_as_aggregator, key, holder_a, 5.0)
        assert own.confirm() is True

        # The winner's in-flight record and outcome, into both Redis (SET EX + PUBLISH, and
        # the chain-head script: HGET, HSET, PUBLISH), here from us-east.
        flight = InFlight(APP, RID, "us-east", {"provider": "cloudfront"}, time.time(), holder_b)
        assert gb.mirror_inflight(flight) == []
        assert ga.read_inflight(APP, RID) is not None
        assert wait_until(lambda: ga.inflight(APP, RID) is not None)  # eu-west's subscriber
        link = ChainLink(APP, "nginx:2", RID, None, 1, Outcome.PURGED, "us-east", time.time())
        assert gb.mirror_link(link) == []
        for client in (at_a_as_aggregator, at_a_as_peer):
            got = read_link(client, GROUP, APP)
            assert got is not None and got.rank == link.rank
        assert wait_until(lambda: (ga.view(APP).members[0].link or link).rank == link.rank)
        assert ga.view(APP).members[0].link is not None

        # `cache-buster status` from each side: its own Redis as `aggregator`, the other's as
        # `peer` (SCAN, MGET, HGET, PTTL); the claims read at eu-west either way.
        for local, peer in ((local_a, peer_b), (local_b, peer_a)):
            got_status = gather(
                [local, peer], group=GROUP, api_client=None, namespace=NAMESPACE, ledger_name="x"
            )
            assert [m.error for m in got_status.members] == [None, None]
            assert got_status.claim_place == "eu-west" and got_status.claims_error is None
            assert [c.holder for c in got_status.claims] == [holder_a]
        snapshot = read_snapshot(at_a_as_peer, GROUP)
        assert set(snapshot.infos) == {"eu-west"} and APP in snapshot.links
        own.release()
    finally:
        ga.stop()
        gb.stop()
    for server in (a, b):
        assert denials(server, pw) <= TOLERATED


# --- what each user must not do -------------------------------------------------------------

SCRIPT_SET = "return redis.call('SET', KEYS[1], 'x')"
# (user, command): every one refused, and logged by Redis as a refusal for that user.
FORBIDDEN: list[tuple[str, tuple[str, ...]]] = [
    # A pod's reporter: its namespace's records, write-only, and its channel; nothing else.
    ("reporter-shop", ("SET", "cache-buster:report:billing:web-1", "{}")),
    ("reporter-shop", ("DEL", "cache-buster:report:billing:web-1")),
    ("reporter-shop", ("GET", "cache-buster:report:shop:web-2")),
    ("reporter-shop", ("SET", "cache-buster:report:shop:web-1", "{}", "GET")),
    ("reporter-shop", ("PUBLISH", "cache-buster:reports:billing", "{}")),
    ("reporter-shop", ("SUBSCRIBE", "cache-buster:reports:shop")),
    ("reporter-shop", ("GET", "cb:default:member:eu-west")),
    ("reporter-shop", ("SET", "cb:default:claim:shop:web:r-1", "x")),
    ("reporter-shop", ("SCAN", "0")),
    ("reporter-shop", ("KEYS", "*")),
    ("reporter-shop", ("EVAL", "return 1", "0")),
    ("reporter-shop", ("FLUSHALL",)),
    ("reporter-shop", ("CONFIG", "GET", "*")),
    # Another cluster's aggregator: the group's records, and writes only where the group
    # protocol writes to a peer (claims, mirrors, the epoch); never this cluster's own.
    ("peer", ("SET", "cb:default:member:eu-west", "{}")),
    ("peer", ("SET", "cb:default:state:shop:web:eu-west", "{}")),
    ("peer", ("DEL", "cb:default:member:eu-west")),
    ("peer", ("EVAL", SCRIPT_SET, "1", "cb:default:state:shop:web:eu-west")),
    ("peer", ("EVAL", "return redis.call('SET', 'cb:default:member:eu-west', 'x')", "0")),
    ("peer", ("GET", "cache-buster:report:shop:web-1")),
    ("peer", ("SUBSCRIBE", "cache-buster:reports:shop")),
    ("peer", ("PUBLISH", "cache-buster:reports:shop", "{}")),
    ("peer", ("SET", "cb:other:claim:shop:web:r-1", "x")),
    ("peer", ("SUBSCRIBE", "cb:other:events")),
    ("peer", ("FLUSHALL",)),
    ("peer", ("FLUSHDB",)),
    ("peer", ("CONFIG", "GET", "*")),
    ("peer", ("CONFIG", "SET", "maxmemory", "1")),
    ("peer", ("KEYS", "*")),
    ("peer", ("SCRIPT", "FLUSH")),
    ("peer", ("ACL", "LIST")),
    ("peer", ("CLIENT", "LIST")),
    ("peer", ("MONITOR",)),
    ("peer", ("REPLICAOF", "127.0.0.1", "1")),
    ("peer", ("SHUTDOWN",)),
    ("peer", ("EVAL", "return redis.call('FLUSHALL')", "0")),
    # This cluster's aggregator: reads the reports, never writes one; its group only.
    ("aggregator", ("SET", "cache-buster:report:shop:web-1", "{}")),
    ("aggregator", ("DEL", "cache-buster:report:shop:web-1")),
    ("aggregator", ("EVAL", SCRIPT_SET, "1", "cache-buster:report:shop:web-1")),
    ("aggregator", ("SET", "cb:other:member:eu-west", "{}")),
    ("aggregator", ("SUBSCRIBE", "cb:other:events")),
    ("aggregator", ("CONFIG", "GET", "*")),
    ("aggregator", ("CONFIG", "SET", "appendonly", "yes")),
    ("aggregator", ("FLUSHALL",)),
    ("aggregator", ("KEYS", "*")),
    ("aggregator", ("ACL", "WHOAMI")),
    ("aggregator", ("SAVE",)),
    ("aggregator", ("BGSAVE",)),
    ("aggregator", ("SHUTDOWN",)),
    ("aggregator", ("EVAL", "return redis.call('FLUSHALL')", "0")),
    (
        "aggregator",
        ("EVAL", "return redis.call('DEL', KEYS[1])", "1", "cache-buster:report:shop:x"),
    ),
]


def test_what_each_user_must_not_do_is_refused_by_the_acl(
    servers: Servers, containers: dict[str, Obj]
) -> None:
    """One command at a time: each is refused, and the refusal is in the ACL log under that
    user (refused by the ACL, not for some other reason)."""
    server = servers.start(containers["base"], "forbidden")
    pw = servers.passwords
    allowed, unlogged = [], []
    for user, command in FORBIDDEN:
        client = RespClient(endpoint(server.port, user, pw))
        try:
            client.execute(*command)
            allowed.append((user, command))
        except RespError:
            pass
        except RespConnectionError:  # a SHUTDOWN that went through
            allowed.append((user, command))
        finally:
            client.close()
        assert server.running, command
        if {u for u, _, _ in denials(server, pw)} != {user}:
            unlogged.append((user, command))
    assert allowed == []
    assert unlogged == []


# --- exposed to peers: TLS --------------------------------------------------------------------


def test_the_exposed_tls_port_carries_the_peer(
    servers: Servers, containers: dict[str, Obj]
) -> None:
    container = containers["expose"]
    server = servers.start(container, "expose")
    pw = servers.passwords
    tls_port = int(options(list(server.extra_args))["tls-port"])
    cert = servers.tmp_path / "expose" / "tls" / "tls.crt"
    # A peer as REMOTE_REDIS_HOSTS would reach it: rediss://, the server's certificate
    # checked against its CA.
    peer = redis_client(endpoint(tls_port, "peer", pw, cert=cert), **peer_client_options())
    assert peer.ping() is True
    result = acquire(
        peer,
        group=GROUP,
        app=APP,
        rollout=RID,
        kind=ClaimKind.PURGE,
        holder=claim_holder("us-east", "inst-b"),
        lease=5.0,
        derived_from_seq=0,
    )
    # A fresh Redis (no epoch yet): the script opened the recovery window (SET, SET PX as
    # `peer`) and takes no claim for one lease.
    assert (result.state, result.holder) == (ClaimState.HELD, "recovering")
    read_snapshot(peer, GROUP)
    peer.close()
    # The TLS listener speaks nothing else.
    with socket.create_connection(("127.0.0.1", tls_port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        sock.settimeout(2)
        with contextlib.suppress(TimeoutError, ConnectionError):
            assert not sock.recv(64).startswith(b"+PONG")
    # In the cluster, the plaintext port still serves this cluster's pods.
    assert RespClient(endpoint(server.port, "aggregator", pw)).ping()
    assert denials(server, pw) <= TOLERATED


def test_tls_only_listens_on_tls_alone(servers: Servers, containers: dict[str, Obj]) -> None:
    container = containers["tls-only"]
    assert options(container["args"])["port"] == "0"
    plain, tls_port, cert = servers.spawn(container, "tls-only")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", plain), timeout=1).close()
    pw = servers.passwords
    # Every client over TLS: the reporter's RESP client, the aggregator and a peer.
    reporter = Reporter(
        ReporterConfig(
            pod="web-1",
            namespace=NAMESPACE,
            redis=endpoint(tls_port, "reporter-shop", pw, cert=cert),
            template_hash="h",
        )
    )
    assert reporter.write(Observation(probe_ok=True)) is True
    reporter.client.close()
    aggregator = redis_client(endpoint(tls_port, "aggregator", pw, cert=cert))
    assert aggregator.get(f"cache-buster:report:{NAMESPACE}:web-1") is not None
    aggregator.close()
    peer = redis_client(endpoint(tls_port, "peer", pw, cert=cert), **peer_client_options())
    assert read_snapshot(peer, GROUP).infos == {}
    peer.close()
