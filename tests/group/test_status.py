"""`cache-buster status`: the rendering from hand-built records, then the real gathering against
a 3-cluster group (real redis-servers, emulated APIs), the command line, and unreachable
members and APIs that must not hang it."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from sidecar.aggregator.peers import Snapshot
from sidecar.aggregator.status import (
    ClaimRead,
    Gathered,
    LedgerRead,
    MemberRead,
    ago,
    gather,
    member_name,
    parse_claim_key,
    render_text,
    run,
    short_id,
    summarize,
)
from sidecar.cli import app as cli_app
from sidecar.core.grammar import parse_redis_url
from sidecar.core.group import (
    ChainLink,
    ClaimKind,
    GroupPhase,
    InFlight,
    MemberInfo,
    MemberState,
    member_key,
    state_key,
)
from sidecar.core.records import AppRecord, Outcome, PurgeDetail
from sidecar.sim.group_world import GroupWorld
from sidecar.sim.redis_servers import RedisServer
from sidecar.sim.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_700_000_000.0
OLD, NEW = "r-" + "a" * 24, "r-" + "b" * 24
NAMES = ("eu-west", "us-east", "ap-south")


# -- hand-built records ------------------------------------------------------------------------
def info(name: str, instance: str | None = None, configured: int = 2, **kw: Any) -> MemberInfo:
    peers = kw.pop("peers", tuple(n for n in NAMES if n != name))
    return MemberInfo(
        name, instance or f"inst-{name}", "shop", peers=peers, configured=configured, **kw
    )


def state(
    name: str, phase: GroupPhase, rollout: str = NEW, image: str = "nginx:2", **kw: Any
) -> MemberState:
    ready = 3 if phase is GroupPhase.COMPLETE else 1
    return MemberState(
        name,
        kw.pop("instance", f"inst-{name}"),
        "web",
        image,
        rollout,
        phase,
        ready=ready,
        desired=3,
        at=kw.pop("at", NOW - 4),
        head=OLD,
    )


def baseline(cluster: str = "eu-west") -> ChainLink:
    return ChainLink("web", "nginx:1", OLD, None, 0, Outcome.BASELINE, cluster, at=NOW - 100)


def purged(cluster: str = "us-east") -> ChainLink:
    detail = PurgeDetail(
        provider="cloudfront", target="E2DIST", request_id="I3INVAL", status="completed"
    )
    return ChainLink("web", "nginx:2", NEW, OLD, 1, Outcome.PURGED, cluster, NOW - 1, detail)


def member(
    name: str,
    *,
    phase: GroupPhase | None = GroupPhase.COMPLETE,
    link: ChainLink | None = None,
    local: bool = False,
    ttl: float = 17.0,
    **kw: Any,
) -> MemberRead:
    snap = Snapshot()
    heartbeat = kw.pop("info", info(name))
    snap.infos[heartbeat.name] = heartbeat
    if phase is not None:
        snap.states[("web", name)] = state(name, phase)
    snap.links["web"] = link or baseline()
    if "inflight" in kw:
        snap.inflight["web"] = kw.pop("inflight")
    return MemberRead(
        f"redis://10.0.0.{NAMES.index(name) + 1}:6379/0",
        local=local,
        snapshot=snap,
        heartbeat_ttl={heartbeat.name: ttl},
        **kw,
    )


def ledger(link: ChainLink | None = None) -> LedgerRead:
    settled = (link or baseline()).settled(owe_webhooks=False)
    return LedgerRead("shop/cache-buster-ledger", {"web": AppRecord(settled=settled)})


def half_done(**kw: Any) -> Gathered:
    return Gathered(
        group="shop",
        members=(
            member("eu-west", local=True),
            member("us-east"),
            member("ap-south", phase=GroupPhase.PROGRESSING),
        ),
        ledger=ledger(),
        claim_place="ap-south",
        now=NOW,
        **kw,
    )


def columns(header: str) -> list[int]:
    """Start offsets of the header's columns (two or more spaces apart)."""
    return [m.start() for m in re.finditer(r"(?:(?<=\s\s)|^\s*)\S", header)]


# -- rendering -----------------------------------------------------------------------------
def test_half_done_group_shows_two_complete_one_progressing_and_the_baseline_head() -> None:
    status = summarize(half_done())
    doc = status.to_json()
    assert [m["name"] for m in doc["members"]] == list(NAMES)
    assert [m["reach"] for m in doc["members"]] == ["up"] * 3
    assert doc["members"][0]["heartbeat_age_s"] == 3.0  # 20 s TTL, 17 s left
    assert doc["claim_place"] == {"member": "ap-south", "note": None}
    assert doc["problems"] == []
    assert doc["ledger"] == {
        "source": "shop/cache-buster-ledger",
        "read": True,
        "error": None,
        "apps": 1,
    }
    [web] = doc["apps"]
    assert [(m["member"], m["phase"], m["rollout_id"]) for m in web["members"]] == [
        ("eu-west", "complete", NEW),
        ("us-east", "complete", NEW),
        ("ap-south", "progressing", NEW),
    ]
    assert web["members"][2]["ready"] == 1 and web["members"][2]["desired"] == 3
    assert web["members"][0]["last_seen_s"] == 4.0
    assert web["claims"] == [] and web["inflight"] is None
    head = web["head"]
    assert head["outcome"] == "baseline" and head["rollout_id"] == OLD and head["seq"] == 0
    assert head["decided_by"] == "eu-west" and head["invalidation_id"] is None
    assert head["found_in"] == [*NAMES, "ledger"]
    json.dumps(doc)  # a document for scripts: plain JSON types only

    text = render_text(status)
    lines = text.splitlines()
    assert lines[0] == "group shop: 3 member(s), claims at ap-south"
    i = lines.index("app web")
    header, rows = lines[i + 1], lines[i + 2 : i + 5]
    assert header.split() == [
        "MEMBER",
        "REACH",
        "IMAGE",
        "PHASE",
        "READY",
        "ROLLOUT",
        "LAST",
        "SEEN",
    ]
    starts = columns(header)
    for row in rows:  # every value starts under its header
        for at in starts[1:]:
            assert row[at - 2 : at] == "  " and row[at] != " ", (row, at)
    assert "ap-south" in rows[2] and "progressing" in rows[2] and "1/3" in rows[2]
    assert short_id(NEW) in rows[0] and "4s ago" in rows[0]
    assert "  claim: none at ap-south" in lines
    assert "  in flight: none" in lines
    assert any(line.startswith("  last settled: baseline nginx:1") for line in lines)
    assert "that member's own clock" in text


def test_purged_head_names_the_invalidation_and_who_decided() -> None:
    g = half_done()
    members = tuple(
        MemberRead(m.endpoint, m.local, None, m.snapshot, m.heartbeat_ttl) for m in g.members
    )
    members[1].snapshot.links["web"] = purged("us-east")  # only us-east's mirror moved
    doc = summarize(Gathered("shop", members, ledger(), "ap-south", now=NOW)).to_json()
    head = doc["apps"][0]["head"]
    assert head["outcome"] == "purged" and head["rollout_id"] == NEW and head["seq"] == 1
    assert head["invalidation_id"] == "I3INVAL" and head["target"] == "E2DIST"
    assert head["decided_by"] == "us-east" and head["found_in"] == ["us-east"]
    text = render_text(summarize(Gathered("shop", members, ledger(), "ap-south", now=NOW)))
    assert "invalidation I3INVAL on cloudfront E2DIST (completed)" in text


def test_a_head_only_the_ledger_holds_is_shown_without_a_decider() -> None:
    g = half_done()
    status = summarize(Gathered("shop", g.members, ledger(purged()), "ap-south", now=NOW))
    head = status.apps[0].head
    assert head is not None and head.rollout_id == NEW and head.found_in == ("ledger",)
    assert head.decided_by is None
    assert "decided by ? (only the ledger has it)" in render_text(status)


def test_claims_and_the_purge_in_flight() -> None:
    plan = {"provider": "cloudfront", "targets": ["E2DIST"], "requests": {"E2DIST": "I9"}}
    flight = InFlight("web", NEW, "us-east", plan, at=NOW - 2)
    g = half_done(
        claims=(
            ClaimRead("web", NEW, ClaimKind.PURGE, "us-east|inst-us-east|aggregator-0", 41.5),
            ClaimRead("api", NEW, ClaimKind.PURGE, "eu-west|inst-eu-west|aggregator-0", 3.0),
        )
    )
    members = (g.members[0], member("us-east", inflight=flight), g.members[2])
    status = summarize(Gathered("shop", members, g.ledger, "ap-south", g.claims, now=NOW), "web")
    [web] = status.to_json()["apps"]
    assert web["claims"] == [
        {
            "rollout_id": NEW,
            "kind": "purge",
            "holder": "us-east|inst-us-east|aggregator-0",
            "cluster": "us-east",
            "ttl_s": 41.5,
        }
    ]
    assert web["inflight"]["rollout_id"] == NEW and web["inflight"]["cluster"] == "us-east"
    assert web["inflight"]["requests"] == {"E2DIST": "I9"}
    assert web["inflight"]["found_in"] == ["us-east"]
    text = render_text(status)
    assert "claim (purge) at ap-south: rollout r-bbbbbbbb held by us-east|" in text
    assert "41.5s left" in text
    assert "in flight: rollout r-bbbbbbbb by us-east, cloudfront E2DIST, requests E2DIST=I9" in text

    # Once the head is that rollout, the record left behind is not a purge in flight.
    settled = (
        g.members[0],
        member("us-east", inflight=flight, link=purged()),
        g.members[2],
    )
    after = summarize(Gathered("shop", settled, g.ledger, "ap-south", now=NOW), "web")
    assert after.apps[0].inflight is None
    # Nor is one for a rollout no member follows any more (settled further back).
    old = InFlight("web", "r-" + "c" * 24, "us-east", plan, at=NOW - 900)
    stale = (g.members[0], member("us-east", inflight=old), g.members[2])
    assert summarize(Gathered("shop", stale, g.ledger, now=NOW)).apps[0].inflight is None


def test_name_collision_and_asymmetric_peers_are_problems() -> None:
    twin = member("us-east", info=info("eu-west", "inst-other"))
    twin.snapshot.states.clear()
    lonely = member("ap-south", info=info("ap-south", configured=3))
    status = summarize(Gathered("shop", (member("eu-west", local=True), twin, lonely), ledger()))
    problems = " | ".join(status.problems)
    assert "name collision: 2 members say they are 'eu-west'" in problems
    assert "inst-eu-west" in problems and "inst-other" in problems
    assert "asymmetric group: ap-south lists 3 peer(s)" in problems
    assert "problems:" in render_text(status)

    # A peer that does not list the local member, and a state written by another instance.
    local = member("eu-west", local=True)
    local.snapshot.states[("web", "eu-west")] = state(
        "eu-west", GroupPhase.COMPLETE, instance="inst-x"
    )
    deaf = member("us-east", info=info("us-east", peers=("ap-south", "sa-east")))
    problems = " | ".join(
        summarize(Gathered("shop", (local, deaf, member("ap-south")), ledger())).problems
    )
    assert "us-east does not list this cluster (eu-west)" in problems
    assert "instance inst-x publishes app 'web' as 'eu-west'" in problems

    # A view with fewer peers than the local member is configured with says so.
    few = summarize(Gathered("shop", (member("eu-west", local=True), member("us-east")), ledger()))
    assert few.problems == (
        "status was given 1 peer(s), eu-west is configured with 2: members may be missing "
        "from this view",
    )


def test_an_unreachable_member_and_the_claim_place() -> None:
    down = MemberRead("redis://10.0.0.3:6379/0", error="ConnectionError: refused")
    up = (member("eu-west", local=True), member("us-east"))
    # Its name comes from the others' heartbeats (the one peer they list and nobody answers
    # as): the claim place is known, and down.
    g = Gathered("shop", (*up, down), ledger(), claims_error=down.error, now=NOW)
    status = summarize(g)
    assert status.claim_place == "ap-south"
    assert status.claim_place_note == "ap-south did not answer: ConnectionError: refused"
    [web] = status.to_json()["apps"]
    assert web["members"][2] == {
        "member": "ap-south",
        "reach": "unreachable",
        "heartbeat_age_s": None,
        "image": None,
        "phase": None,
        "ready": None,
        "desired": None,
        "rollout_id": None,
        "derived_from": None,
        "instance": None,
        "state_at": None,
        "last_seen_s": None,
    }
    text = render_text(status)
    assert "ap-south: ConnectionError: refused" in text
    assert "claim: not read (ap-south did not answer: ConnectionError: refused)" in text

    # Two members down: which is which is not known, nor is the claim place.
    other = MemberRead("redis://10.0.0.4:6379/0", error="TimeoutError: Timeout reading")
    g2 = Gathered("shop", (up[0], down, other), ledger(), now=NOW)
    s2 = summarize(g2)
    assert s2.claim_place is None
    assert s2.claim_place_note == (
        "member names not known for redis://10.0.0.3:6379/0, redis://10.0.0.4:6379/0"
    )
    text = render_text(s2)
    assert "claim place unknown" in text.splitlines()[0]
    assert "claim: not read (member names not known" in text

    # The ledger's learned names settle it.
    hinted = (
        up[0],
        MemberRead(down.endpoint, error=down.error, name_hint="us-east"),
        MemberRead(other.endpoint, error=other.error, name_hint="ap-south"),
    )
    assert summarize(Gathered("shop", hinted, ledger())).claim_place == "ap-south"


def test_the_ledger_not_read_is_one_line() -> None:
    g = half_done()
    gone = LedgerRead("shop/cache-buster-ledger", None, "API unreachable: ConnectionError: x")
    text = render_text(summarize(Gathered("shop", g.members, gone, "ap-south", now=NOW)))
    assert [line for line in text.splitlines() if "ledger" in line and "not read" in line] == [
        "ledger shop/cache-buster-ledger: not read (API unreachable: ConnectionError: x); "
        "Redis data only"
    ]


def test_helpers() -> None:
    assert parse_claim_key(f"cb:shop:claim:web:{NEW}", "shop") == ("web", NEW, ClaimKind.PURGE)
    assert parse_claim_key(f"cb:shop:claim:a:b:{NEW}:skip", "shop") == (
        "a:b",
        NEW,
        ClaimKind.SKIP,
    )
    assert parse_claim_key(f"cb:other:claim:web:{NEW}", "shop") is None
    assert parse_claim_key("cb:shop:claim:web", "shop") is None
    assert [ago(x) for x in (None, 4.9, 125, 7300, 200000)] == [
        "-",
        "4s ago",
        "2m05s ago",
        "2h01m ago",
        "2d07h ago",
    ]
    assert short_id(NEW) == "r-bbbbbbbb" and short_id(None) == "-"
    # A Redis without a heartbeat is named by the one cluster whose states it holds.
    snap = Snapshot()
    snap.states[("web", "us-east")] = state("us-east", GroupPhase.PAUSED)
    assert member_name(MemberRead("redis://x:1/0", snapshot=snap)) == "us-east"
    assert member_name(MemberRead("redis://x:1/0")) is None


# -- the real thing --------------------------------------------------------------------------
def _gather(g: GroupWorld) -> Gathered:
    return gather(
        [parse_redis_url(c.redis.url) for c in g.clusters],
        group=g.group,
        api_client=g.clusters[0].world.kube.api_client(),
        namespace=g.namespace,
        ledger_name="cache-buster-ledger",
    )


def _web(g: GroupWorld) -> dict[str, Any]:
    doc = summarize(_gather(g), "web").to_json()
    web: dict[str, Any] = doc["apps"][0]
    return web


def _env(g: GroupWorld, kubeconfig: Path) -> dict[str, str]:
    first, *rest = g.clusters
    return {
        "REDIS_URL": first.redis.url,
        "REMOTE_REDIS_HOSTS": ",".join(c.redis.url for c in rest),
        "CLUSTER_GROUP": g.group,
        "NAMESPACE": g.namespace,
        "KUBECONFIG": str(kubeconfig),
    }


def test_a_three_cluster_group_half_done_then_purged(tmp_path: Path) -> None:
    with GroupWorld(3) as g:
        g.deploy("web", "nginx:1")
        g.ready_all("web")
        g.aggregators_everywhere()
        assert g.wait_for(lambda: all(g.settled(c.name, "web") for c in g.clusters), 10)

        g.set_image("web", "nginx:2")
        g.ready_all("web", clusters=["eu-west", "us-east"])

        def half() -> bool:
            phases = [m["phase"] for m in _web(g)["members"]]
            return phases == ["complete", "complete", "progressing"]

        assert g.wait_for(half, 10)
        gathered = _gather(g)
        status = summarize(gathered, "web")
        doc = status.to_json()
        assert [(m["name"], m["reach"]) for m in doc["members"]] == [
            ("eu-west", "up"),
            ("us-east", "up"),
            ("ap-south", "up"),
        ]
        assert doc["claim_place"]["member"] == "ap-south" and doc["problems"] == []
        assert doc["ledger"]["read"] is True
        rows = doc["apps"][0]["members"]
        assert [r["image"] for r in rows] == ["nginx:2"] * 3
        new = rows[0]["rollout_id"]
        assert new and rows[1]["rollout_id"] == new
        head = doc["apps"][0]["head"]
        assert head["outcome"] == "baseline" and head["image"] == "nginx:1"
        assert head["seq"] == 0 and head["invalidation_id"] is None
        assert new != head["rollout_id"]
        assert doc["apps"][0]["claims"] == [] and doc["apps"][0]["inflight"] is None
        sys.stdout.write("\n" + render_text(status))  # shown with -s

        # The command line, through typer, against the same world.
        g.clusters[0].world.kube.write_kubeconfig(tmp_path / "kubeconfig", namespace="shop")
        # (--kubeconfig: the kubernetes package read KUBECONFIG when this process imported it.)
        kubeconfig = str(tmp_path / "kubeconfig")
        result = CliRunner().invoke(
            cli_app,
            ["status", "web", "--json", "--kubeconfig", kubeconfig],
            env=_env(g, tmp_path / "kubeconfig"),
        )
        assert result.exit_code == 0, result.output
        cli_doc = json.loads(result.stdout)
        assert [m["phase"] for m in cli_doc["apps"][0]["members"]] == [
            "complete",
            "complete",
            "progressing",
        ]
        assert cli_doc["ledger"]["read"] is True, cli_doc["ledger"]
        assert cli_doc["apps"][0]["head"]["rollout_id"] == head["rollout_id"]

        g.ready_all("web", clusters=["ap-south"])
        assert g.wait_for(lambda: len(g.invalidations()) == 1, 10)

        def purged_everywhere() -> bool:
            h = _web(g)["head"]
            return h is not None and h["outcome"] == "purged" and len(h["found_in"]) == 4

        assert g.wait_for(purged_everywhere, 10)
        web = _web(g)
        head = web["head"]
        assert head["rollout_id"] == new and head["seq"] == 1 and head["image"] == "nginx:2"
        assert head["invalidation_id"] == g.invalidations()[0].id
        assert head["decided_by"] in NAMES and head["found_in"] == [*NAMES, "ledger"]
        assert [m["phase"] for m in web["members"]] == ["complete"] * 3

        # The console script, as a user runs it.
        done = subprocess.run(
            [str(ROOT / ".venv/bin/cache-buster"), "status"],
            env={**os.environ, **_env(g, tmp_path / "kubeconfig")},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert "last settled: purged nginx:2" in done.stdout
        assert f"invalidation {head['invalidation_id']} on cloudfront" in done.stdout


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_peers_and_api_do_not_hang_the_command(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis_server.client()
    client.set(member_key("shop", "eu-west"), info("eu-west").encode(), ex=20)
    client.set(state_key("shop", "web", "eu-west"), state("eu-west", GroupPhase.COMPLETE).encode())
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{_closed_port()}\n"
        "users:\n- name: u\n  user:\n    token: t\n"
        "contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n"
        "current-context: c\n"
    )
    refused = f"redis://127.0.0.1:{_closed_port()}/0"
    with TcpProxy("127.0.0.1", redis_server.port) as silent:
        silent.blackhole()
        out, err = io.StringIO(), io.StringIO()
        started = time.monotonic()
        code = run(
            None,
            env={"CLUSTER_GROUP": "shop", "NAMESPACE": "shop"},
            out=out,
            err=err,
            json_output=True,
            kubeconfig=str(kubeconfig),
            redis_url=redis_server.url,
            peers=[refused, silent.url],
        )
        elapsed = time.monotonic() - started
    assert code == 0, err.getvalue()
    assert elapsed < 8, elapsed  # one 2 s timeout per silent member, in parallel
    doc = json.loads(out.getvalue())
    assert [m["reach"] for m in doc["members"]] == ["up", "unreachable", "unreachable"]
    assert "Connection refused" in doc["members"][1]["error"]
    assert "Timeout" in doc["members"][2]["error"]
    assert doc["ledger"]["read"] is False and "API unreachable" in doc["ledger"]["error"]
    assert doc["apps"][0]["app"] == "web"
    assert doc["apps"][0]["members"][0]["phase"] == "complete"
    assert doc["claim_place"]["member"] is None  # the down members' names are not known

    # The text form, without a kubeconfig at all: one line says so.
    out = io.StringIO()
    code = run(
        "web",
        env={"CLUSTER_GROUP": "shop", "NAMESPACE": "shop"},
        out=out,
        err=io.StringIO(),
        kubeconfig=str(tmp_path / "missing"),
        redis_url=redis_server.url,
        peers=[refused],
    )
    assert code == 0
    text = out.getvalue()
    assert "ledger shop/cache-buster-ledger: not read (no Kubernetes API: --kubeconfig" in text
    assert "unreachable" in text


def test_bad_flags_and_unknown_apps(redis_server: RedisServer, tmp_path: Path) -> None:
    err = io.StringIO()
    code = run(None, env={}, out=io.StringIO(), err=err, peers=["redis://:x@"])
    assert code == 2
    assert err.getvalue().startswith("cache-buster status: invalid configuration: --peer: ")
    err = io.StringIO()
    code = run(
        "nope",
        env={"CLUSTER_GROUP": "shop"},
        out=io.StringIO(),
        err=err,
        kubeconfig=str(tmp_path / "missing"),
        redis_url=redis_server.url,
    )
    assert code == 1 and "no records of app 'nope'" in err.getvalue()
