"""`cache-buster status`: what a cluster group knows of its apps, read-only, from every member's
Redis (and, when the API answers, the local ledger).

Two halves: `gather` does the I/O (one thread per Redis, each read bounded by a short socket
timeout and no retries, so an unreachable member shows as unreachable and never holds up the
command), and `summarize` turns the gathered records into a `GroupStatus` without any I/O;
`render_text` and `GroupStatus.to_json` print it. `run` is the command itself.

Nothing here compares two clusters' clocks to decide anything: a heartbeat's age comes from
its Redis TTL, and a state's "last seen" is the member's own `at` against this machine's
clock, shown as such.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from sidecar.aggregator.facade import MEMBERS_ANNOTATION
from sidecar.aggregator.peers import Snapshot, read_snapshot
from sidecar.core.grammar import RedisEndpoint
from sidecar.core.group import (
    HEARTBEAT_TTL,
    PEER_SOCKET_TIMEOUT,
    ChainLink,
    ClaimKind,
    InFlight,
    MemberInfo,
    MemberView,
    Reach,
    chain_head,
    configuration_problems,
    holder_cluster,
    member_key,
)
from sidecar.core.records import AppRecord

UNREACHABLE = "unreachable"
LEDGER = "ledger"  # a head found in the local ledger (who decided it is not recorded there)


# -- what gather reads -----------------------------------------------------------------------
@dataclass(frozen=True)
class MemberRead:
    """One configured Redis (the local one first) as read once."""

    endpoint: str  # display form: never a password
    local: bool = False
    error: str | None = None  # None: it answered
    snapshot: Snapshot = field(default_factory=Snapshot)
    # member name -> seconds left on its heartbeat key (its Redis's TTL; None: no expiry)
    heartbeat_ttl: Mapping[str, float | None] = field(default_factory=dict)
    name_hint: str | None = None  # the name the local ledger learned for this endpoint


@dataclass(frozen=True)
class ClaimRead:
    app: str
    rollout_id: str
    kind: ClaimKind
    holder: str  # cluster|instance|identity
    ttl: float | None  # seconds left (None: no expiry)


@dataclass(frozen=True)
class LedgerRead:
    source: str  # namespace/name
    records: Mapping[str, AppRecord] | None = None  # None: not read
    error: str | None = None
    names: Mapping[str, str] = field(default_factory=dict)  # endpoint -> learned member name
    corrupt: Mapping[str, str] = field(default_factory=dict)  # app -> parse error


@dataclass(frozen=True)
class Gathered:
    group: str
    members: tuple[MemberRead, ...]  # the local Redis first
    ledger: LedgerRead
    claim_place: str | None = None  # the member whose Redis was read for claims
    claims: tuple[ClaimRead, ...] = ()
    claims_error: str | None = None
    now: float = 0.0  # this machine's wall clock when read


# -- what is shown ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MemberSummary:
    """One configured member, for the group's table."""

    name: str | None
    endpoint: str
    local: bool
    reach: str  # Reach value, or "unreachable"
    error: str | None
    heartbeat_age: float | None  # seconds since its last heartbeat (from its Redis TTL)
    instance: str | None
    namespace: str | None
    mode: str | None
    configured: int | None  # entries in its REMOTE_REDIS_HOSTS
    peers: tuple[str, ...]  # peer names it has learned

    @property
    def label(self) -> str:
        return self.name or self.endpoint

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "endpoint": self.endpoint,
            "local": self.local,
            "reach": self.reach,
            "error": self.error,
            "heartbeat_age_s": _round(self.heartbeat_age, 1),
            "instance": self.instance,
            "namespace": self.namespace,
            "mode": self.mode,
            "configured_peers": self.configured,
            "learned_peers": list(self.peers),
        }


@dataclass(frozen=True)
class MemberRow:
    """One member's state for one app."""

    member: str
    reach: str
    heartbeat_age: float | None
    image: str | None = None
    phase: str | None = None
    ready: int | None = None
    desired: int | None = None
    rollout_id: str | None = None
    derived_from: str | None = None  # the chain head its rollout id derives from
    instance: str | None = None
    at: float | None = None  # the member's wall clock when it wrote the state
    last_seen: float | None = None  # now - at: this machine's clock against the member's

    def to_json(self) -> dict[str, Any]:
        return {
            "member": self.member,
            "reach": self.reach,
            "heartbeat_age_s": _round(self.heartbeat_age, 1),
            "image": self.image,
            "phase": self.phase,
            "ready": self.ready,
            "desired": self.desired,
            "rollout_id": self.rollout_id,
            "derived_from": self.derived_from,
            "instance": self.instance,
            "state_at": _round(self.at, 3),
            "last_seen_s": _round(self.last_seen, 1),
        }


@dataclass(frozen=True)
class ClaimRow:
    rollout_id: str
    kind: str
    holder: str
    cluster: str
    ttl: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "kind": self.kind,
            "holder": self.holder,
            "cluster": self.cluster,
            "ttl_s": _round(self.ttl, 1),
        }


@dataclass(frozen=True)
class InFlightRow:
    rollout_id: str
    cluster: str  # the claim winner making the purge
    provider: str | None
    targets: tuple[str, ...]
    requests: Mapping[str, str]  # target -> CDN request id, once known
    at: float  # the winner's clock
    found_in: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "cluster": self.cluster,
            "provider": self.provider,
            "targets": list(self.targets),
            "requests": dict(sorted(self.requests.items())),
            "at": _round(self.at, 3),
            "found_in": list(self.found_in),
        }


@dataclass(frozen=True)
class HeadRow:
    """The group's last settled rollout of an app (the chain head)."""

    rollout_id: str
    image: str
    outcome: str
    seq: int
    previous: str | None
    decided_by: str | None  # None: only the ledger has it, which does not record who
    at: float
    provider: str | None
    target: str | None
    request_id: str | None  # the invalidation id
    status: str | None
    error: str | None
    message: str | None
    found_in: tuple[str, ...]  # members whose Redis holds it, and "ledger"

    def to_json(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "image": self.image,
            "outcome": self.outcome,
            "seq": self.seq,
            "previous": self.previous,
            "decided_by": self.decided_by,
            "at": _round(self.at, 3),
            "provider": self.provider,
            "target": self.target,
            "invalidation_id": self.request_id,
            "status": self.status,
            "error": self.error,
            "message": self.message,
            "found_in": list(self.found_in),
        }


@dataclass(frozen=True)
class AppStatus:
    app: str
    known: bool  # found in some member's records or the ledger
    members: tuple[MemberRow, ...]
    claims: tuple[ClaimRow, ...]
    claims_note: str | None  # why the claims could not be read
    inflight: InFlightRow | None
    head: HeadRow | None

    def to_json(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "known": self.known,
            "members": [m.to_json() for m in self.members],
            "claims": [c.to_json() for c in self.claims],
            "claims_note": self.claims_note,
            "inflight": None if self.inflight is None else self.inflight.to_json(),
            "head": None if self.head is None else self.head.to_json(),
        }


@dataclass(frozen=True)
class GroupStatus:
    group: str
    now: float
    members: tuple[MemberSummary, ...]
    claim_place: str | None
    claim_place_note: str | None
    ledger_source: str
    ledger_error: str | None
    ledger_apps: int | None
    problems: tuple[str, ...]
    apps: tuple[AppStatus, ...]

    def to_json(self) -> dict[str, Any]:
        """One document with stable keys, for scripts."""
        return {
            "group": self.group,
            "generated_at": _round(self.now, 3),
            "members": [m.to_json() for m in self.members],
            "claim_place": {"member": self.claim_place, "note": self.claim_place_note},
            "ledger": {
                "source": self.ledger_source,
                "read": self.ledger_error is None,
                "error": self.ledger_error,
                "apps": self.ledger_apps,
            },
            "problems": list(self.problems),
            "apps": [a.to_json() for a in self.apps],
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# -- summarize: gathered records -> what is shown (pure) -------------------------------------
def member_name(read: MemberRead) -> str | None:
    """The member a Redis belongs to: its heartbeat's name (the hint picks among several
    writers), else the name the ledger learned, else the one cluster whose states it holds
    (a member publishes its states only in its own Redis)."""
    infos = read.snapshot.infos
    if len(infos) == 1:
        return next(iter(infos))
    if read.name_hint is not None and (not infos or read.name_hint in infos):
        return read.name_hint
    if infos:
        return None  # several writers and no hint: reported as a problem
    clusters = {cluster for _, cluster in read.snapshot.states}
    return clusters.pop() if len(clusters) == 1 else None


def member_names(members: Sequence[MemberRead]) -> list[str | None]:
    """Each Redis's member (`member_name`); when exactly one is unknown (typically a member
    that is down) and the heartbeats of the others name exactly one peer not seen yet, that
    is it: the claim place stays known while a member is down."""
    names = [member_name(m) for m in members]
    unnamed = [i for i, n in enumerate(names) if n is None]
    if len(unnamed) == 1:
        learned = {p for m in members for i in m.snapshot.infos.values() for p in i.peers}
        missing = learned - {n for n in names if n is not None}
        if len(missing) == 1:
            names[unnamed[0]] = missing.pop()
    return names


def _reach(read: MemberRead, name: str | None) -> str:
    if read.error is not None:
        return UNREACHABLE
    if name is not None and name in read.snapshot.infos:
        return str(Reach.UP)
    return str(Reach.NO_HEARTBEAT)


def _heartbeat_age(read: MemberRead, name: str | None) -> float | None:
    if name is None or name not in read.snapshot.infos:
        return None
    ttl = read.heartbeat_ttl.get(name)
    return None if ttl is None else max(0.0, HEARTBEAT_TTL - ttl)


def claim_place(members: Sequence[MemberRead]) -> tuple[str | None, str | None]:
    """(the member whose Redis holds the claims, why it is unknown): the lowest name among all
    configured members, as the aggregators compute it."""
    names = member_names(members)
    unnamed = [m.endpoint for m, n in zip(members, names, strict=True) if n is None]
    if unnamed:
        return None, "member names not known for " + ", ".join(unnamed)
    return min(n for n in names if n is not None), None


def _problems(g: Gathered, names: Sequence[str | None]) -> list[str]:
    """Configuration faults, as the aggregators see them (configuration_problems), plus what
    only a reader of every Redis sees: two writers of one name, several writers in one Redis,
    a state written by another instance than the member's heartbeat, unreadable ledger
    entries, and a peer list that differs from the local member's."""
    problems: list[str] = []
    by_name: dict[str, list[tuple[str, str]]] = {}  # name -> [(endpoint, instance)]
    for read, name in zip(g.members, names, strict=True):
        infos = read.snapshot.infos
        if len(infos) > 1:
            problems.append(
                f"several cache-busters write heartbeats in {read.endpoint}: "
                f"{', '.join(sorted(infos))} (each cluster needs its own Redis)"
            )
        for info in infos.values():
            by_name.setdefault(info.name, []).append((read.endpoint, info.instance))
        own = infos.get(name) if name is not None else None
        for (app, cluster), state in sorted(read.snapshot.states.items()):
            if own is not None and cluster == own.name and state.instance != own.instance:
                problems.append(
                    f"name collision: instance {state.instance or '?'} publishes app {app!r} "
                    f"as {cluster!r} in {read.endpoint}, whose heartbeat is instance "
                    f"{own.instance or '?'}; give each cluster its own CLUSTER_NAME"
                )
    for name, writers in sorted(by_name.items()):
        if len(writers) < 2:
            continue
        shown = ", ".join(f"instance {inst or '?'} in {ep}" for ep, inst in writers)
        if len({inst for _, inst in writers}) > 1:
            problems.append(
                f"name collision: {len(writers)} members say they are {name!r} ({shown}); "
                "give each cluster its own CLUSTER_NAME"
            )
        else:
            problems.append(
                f"one member answers at {len(writers)} endpoints as {name!r} ({shown}): "
                "a Redis listed twice?"
            )
    local = g.members[0] if g.members else None
    local_name = names[0] if names else None
    local_info = local.snapshot.infos.get(local_name) if local is not None and local_name else None
    if local_info is not None:
        # The aggregators' own check, run as the local member: asymmetric peer lists. Its
        # name-collision lines are left out: the ones above also name the instances.
        views = [
            MemberView(
                endpoint=read.endpoint,
                name=name,
                reach=Reach.UP if read.error is None else Reach.DOWN,
                info=read.snapshot.infos.get(name) if name else None,
                local=read.local,
            )
            for read, name in zip(g.members, names, strict=True)
        ]
        problems += [
            p
            for p in configuration_problems(
                local_info.name, local_info.instance, local_info.configured, views
            )
            if not p.startswith("name collision")
        ]
        given = len(g.members) - 1
        if local_info.mode == "aggregator" and given != local_info.configured:
            problems.append(
                f"status was given {given} peer(s), {local_info.name} is configured with "
                f"{local_info.configured}: members may be missing from this view"
            )
    for app, error in sorted(g.ledger.corrupt.items()):
        problems.append(f"ledger entry {app!r} is unreadable: {error}")
    return problems


def _apps(g: Gathered) -> list[str]:
    apps: set[str] = set()
    for read in g.members:
        apps |= {app for app, _ in read.snapshot.states}
        apps |= set(read.snapshot.links)
    if g.ledger.records is not None:
        apps |= set(g.ledger.records)
    return sorted(apps)


def _head(g: Gathered, app: str, labels: Sequence[str]) -> HeadRow | None:
    links: list[tuple[str, ChainLink]] = [
        (label, read.snapshot.links[app])
        for read, label in zip(g.members, labels, strict=True)
        if read.error is None and app in read.snapshot.links
    ]
    record = (g.ledger.records or {}).get(app)
    if record is not None and record.settled is not None:
        # Last: at equal rank, a Redis link wins, since it names who decided.
        links.append((LEDGER, ChainLink.of(app, record.settled, "")))
    head = chain_head(link for _, link in links)
    if head is None:
        return None
    d = head.detail
    return HeadRow(
        rollout_id=head.rollout_id,
        image=head.image,
        outcome=str(head.outcome),
        seq=head.seq,
        previous=head.previous,
        decided_by=head.cluster or None,
        at=head.at,
        provider=d.provider,
        target=d.target,
        request_id=d.request_id,
        status=d.status,
        error=d.error,
        message=d.message,
        found_in=tuple(label for label, link in links if link.rank == head.rank),
    )


def _inflight(
    g: Gathered, app: str, labels: Sequence[str], head: HeadRow | None
) -> InFlightRow | None:
    """The purge a claim winner has started and the group has not settled yet. The record
    stays after the settle, so only one for a rollout some member still follows (not the
    head's, already settled) is in flight."""
    found: list[tuple[str, InFlight]] = [
        (label, read.snapshot.inflight[app])
        for read, label in zip(g.members, labels, strict=True)
        if read.error is None and app in read.snapshot.inflight
    ]
    followed = {
        state.rollout_id
        for read in g.members
        for (name, _), state in read.snapshot.states.items()
        if name == app
    }
    pending = [
        (label, f)
        for label, f in found
        if f.rollout_id in followed and (head is None or f.rollout_id != head.rollout_id)
    ]
    if not pending:
        return None
    flight = max((f for _, f in pending), key=lambda f: f.at)
    plan = flight.plan
    requests = plan.get("requests") or {}
    return InFlightRow(
        rollout_id=flight.rollout_id,
        cluster=flight.cluster,
        provider=str(plan["provider"]) if plan.get("provider") else None,
        targets=tuple(str(t) for t in plan.get("targets") or ()),
        requests={str(k): str(v) for k, v in requests.items()}
        if isinstance(requests, Mapping)
        else {},
        at=flight.at,
        found_in=tuple(label for label, f in pending if f.rollout_id == flight.rollout_id),
    )


def summarize(g: Gathered, app: str | None = None) -> GroupStatus:
    """What `cache-buster status [APP]` shows, from the gathered records (no I/O)."""
    names = member_names(g.members)
    labels = [n or m.endpoint for m, n in zip(g.members, names, strict=True)]
    summaries: list[MemberSummary] = []
    for read, name in zip(g.members, names, strict=True):
        info: MemberInfo | None = read.snapshot.infos.get(name) if name else None
        summaries.append(
            MemberSummary(
                name=name,
                endpoint=read.endpoint,
                local=read.local,
                reach=_reach(read, name),
                error=read.error,
                heartbeat_age=_heartbeat_age(read, name),
                instance=info.instance if info else None,
                namespace=info.namespace if info else None,
                mode=info.mode if info else None,
                configured=info.configured if info else None,
                peers=tuple(sorted(info.peers)) if info else (),
            )
        )
    place, place_note = claim_place(g.members)
    if g.claims_error is not None and place is not None:
        place_note = f"{place} did not answer: {g.claims_error}"
    known = _apps(g)
    apps: list[AppStatus] = []
    for name in known if app is None else [app]:
        rows = []
        for read, member, summary in zip(g.members, names, summaries, strict=True):
            state = read.snapshot.states.get((name, member)) if member else None
            row = MemberRow(
                member=summary.label, reach=summary.reach, heartbeat_age=summary.heartbeat_age
            )
            if state is not None:
                row = MemberRow(
                    member=summary.label,
                    reach=summary.reach,
                    heartbeat_age=summary.heartbeat_age,
                    image=state.image,
                    phase=str(state.phase),
                    ready=state.ready,
                    desired=state.desired,
                    rollout_id=state.rollout_id,
                    derived_from=state.head,
                    instance=state.instance,
                    at=state.at,
                    last_seen=max(0.0, g.now - state.at) if state.at else None,
                )
            rows.append(row)
        head = _head(g, name, labels)
        claims = tuple(
            ClaimRow(c.rollout_id, str(c.kind), c.holder, holder_cluster(c.holder), c.ttl)
            for c in sorted(g.claims, key=lambda c: (c.rollout_id, str(c.kind)))
            if c.app == name
        )
        apps.append(
            AppStatus(
                app=name,
                known=name in known,
                members=tuple(rows),
                claims=claims,
                claims_note=place_note,
                inflight=_inflight(g, name, labels, head),
                head=head,
            )
        )
    records = g.ledger.records
    return GroupStatus(
        group=g.group,
        now=g.now,
        members=tuple(summaries),
        claim_place=place,
        claim_place_note=place_note,
        ledger_source=g.ledger.source,
        ledger_error=g.ledger.error,
        ledger_apps=None if records is None else len(records),
        problems=tuple(_problems(g, names)),
        apps=tuple(apps),
    )


# -- render (pure) ---------------------------------------------------------------------------
def short_id(rollout: str | None) -> str:
    """`r-` and the first 8 hex digits: enough to tell rollouts apart on screen."""
    if not rollout:
        return "-"
    return rollout[:10]


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s ago"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m ago"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Plain aligned columns (the last one unpadded)."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    out = []
    for r in [headers, *rows]:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)] + [r[-1]]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def _reach_text(reach: str, heartbeat_age: float | None) -> str:
    if reach == str(Reach.UP):
        return f"up (heartbeat {ago(heartbeat_age)})" if heartbeat_age is not None else "up"
    return "no heartbeat" if reach == str(Reach.NO_HEARTBEAT) else reach


def _head_lines(head: HeadRow | None) -> list[str]:
    if head is None:
        return ["  last settled: none (no member and no ledger has settled this app)"]
    who = head.decided_by or "? (only the ledger has it)"
    lines = [
        f"  last settled: {head.outcome} {head.image}, rollout {short_id(head.rollout_id)}, "
        f"seq {head.seq}, decided by {who}",
    ]
    if head.request_id or head.target or head.provider:
        lines.append(
            f"                invalidation {head.request_id or '-'} on "
            f"{head.provider or '?'} {head.target or '-'}"
            + (f" ({head.status})" if head.status else "")
        )
    if head.error or head.message:
        lines.append(f"                error {head.error or '-'}: {head.message or ''}".rstrip())
    lines.append(f"                held by {', '.join(head.found_in)}")
    return lines


def render_text(status: GroupStatus) -> str:
    """The human form: the group's members, its problems, then one block per app."""
    lines: list[str] = []
    s = status
    place = s.claim_place or "?"
    where = f"claims at {s.claim_place}" if s.claim_place else "claim place unknown"
    lines.append(f"group {s.group}: {len(s.members)} member(s), {where}")
    if s.ledger_error is None:
        lines.append(f"ledger {s.ledger_source}: {s.ledger_apps} app(s)")
    else:
        lines.append(f"ledger {s.ledger_source}: not read ({s.ledger_error}); Redis data only")
    member_rows = []
    for m in s.members:
        peers = "-" if m.configured is None else f"{len(m.peers)} of {m.configured} learned"
        member_rows.append(
            [
                (m.name or "?") + (" (local)" if m.local else ""),
                m.endpoint,
                _reach_text(m.reach, m.heartbeat_age),
                m.instance or "-",
                m.mode or "-",
                peers,
            ]
        )
    lines += table(["MEMBER", "REDIS", "REACH", "INSTANCE", "MODE", "PEERS"], member_rows)
    for m in s.members:
        if m.error is not None:
            lines.append(f"  {m.label}: {m.error}")
    if s.problems:
        lines.append("problems:")
        lines += [f"  - {p}" for p in s.problems]
    else:
        lines.append("problems: none")
    if not s.apps:
        lines.append("")
        lines.append("no apps in any member's records or the ledger")
    for a in s.apps:
        lines.append("")
        lines.append(f"app {a.app}" + ("" if a.known else ": no records of this app"))
        rows = [
            [
                m.member,
                _reach_text(m.reach, m.heartbeat_age),
                m.image or "-",
                m.phase or "-",
                "-" if m.ready is None else f"{m.ready}/{m.desired}",
                short_id(m.rollout_id),
                ago(m.last_seen),
            ]
            for m in a.members
        ]
        lines += table(["MEMBER", "REACH", "IMAGE", "PHASE", "READY", "ROLLOUT", "LAST SEEN"], rows)
        if a.claims:
            for c in a.claims:
                ttl = "no expiry" if c.ttl is None else f"{c.ttl:.1f}s left"
                lines.append(
                    f"  claim ({c.kind}) at {place}: rollout {short_id(c.rollout_id)} held by "
                    f"{c.holder}, {ttl}"
                )
        elif a.claims_note is not None:
            lines.append(f"  claim: not read ({a.claims_note})")
        else:
            lines.append(f"  claim: none at {place}")
        f = a.inflight
        if f is None:
            lines.append("  in flight: none")
        else:
            requests = ", ".join(f"{t}={r}" for t, r in sorted(f.requests.items())) or "none yet"
            lines.append(
                f"  in flight: rollout {short_id(f.rollout_id)} by {f.cluster}, "
                f"{f.provider or '?'} {', '.join(f.targets) or '-'}, requests {requests}, "
                f"started {ago(s.now - f.at)} (its clock)"
            )
        lines += _head_lines(a.head)
    if any(m.last_seen is not None for a in s.apps for m in a.members):
        lines.append("")
        lines.append(
            "LAST SEEN: when each member last wrote its state, by that member's own clock "
            "(its 'at') against this machine's"
        )
    return "\n".join(lines) + "\n"


# -- gather (I/O) ----------------------------------------------------------------------------
def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


def _describe(err: BaseException) -> str:
    status = getattr(err, "status", None)
    if isinstance(status, int) and status:
        return f"HTTP {status} {getattr(err, 'reason', '') or ''}".strip()
    text = _one_line(str(err))
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _parallel(calls: Sequence[Callable[[], Any]], seconds: float) -> list[tuple[Any, str | None]]:
    """Run each call in a daemon thread, all at once, for at most `seconds` together:
    (result, None) or (None, error) per call. A call that overruns is abandoned, never
    waited for: it cannot hang the command."""
    boxes: list[dict[str, Any]] = [{} for _ in calls]

    def target(fn: Callable[[], Any], box: dict[str, Any]) -> None:
        try:
            box["value"] = fn()
        except Exception as err:
            box["error"] = _describe(err)

    threads = [
        threading.Thread(target=target, args=(fn, box), name="status-read", daemon=True)
        for fn, box in zip(calls, boxes, strict=True)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + seconds
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    out: list[tuple[Any, str | None]] = []
    for t, box in zip(threads, boxes, strict=True):
        if t.is_alive():
            out.append((None, f"no answer within {seconds:g}s"))
        elif "error" in box:
            out.append((None, str(box["error"])))
        else:
            out.append((box.get("value"), None))
    return out


def _client(endpoint: RedisEndpoint, timeout: float) -> Any:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from sidecar.aggregator.wiring import redis_client

    client = redis_client(endpoint, timeout=timeout)
    # redis-py retries a failed command (with backoff) by default: one try, then report.
    client.set_retry(Retry(NoBackoff(), 0))
    return client


def _read_member(client: Any, group: str) -> tuple[Snapshot, dict[str, float | None]]:
    snap = read_snapshot(client, group)
    names = sorted(snap.infos)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.pttl(member_key(group, name))
    ttls = {
        n: (ms / 1000 if ms >= 0 else None) for n, ms in zip(names, pipe.execute(), strict=True)
    }
    return snap, ttls


def parse_claim_key(key: str, group: str) -> tuple[str, str, ClaimKind] | None:
    """(app, rollout id, kind) of `cb:{group}:claim:{app}:{rollout}[:skip]`: parsed from the
    right, since an app key may hold ':' and a rollout id never does."""
    prefix = f"cb:{group}:claim:"
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix) :]
    kind = ClaimKind.PURGE
    if rest.endswith(":skip"):
        kind, rest = ClaimKind.SKIP, rest[: -len(":skip")]
    app, sep, rollout = rest.rpartition(":")
    return (app, rollout, kind) if sep and app and rollout else None


def _read_claims(client: Any, group: str) -> list[ClaimRead]:
    keys = [str(k) for k in client.scan_iter(match=f"cb:{group}:claim:*", count=1000)]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
        pipe.pttl(key)
    values = pipe.execute()
    claims = []
    for i, key in enumerate(keys):
        holder, ms = values[2 * i], values[2 * i + 1]
        parts = parse_claim_key(key, group)
        if parts is None or holder is None:
            continue  # expired between SCAN and GET
        app, rollout, kind = parts
        claims.append(ClaimRead(app, rollout, kind, str(holder), ms / 1000 if ms >= 0 else None))
    return claims


def read_ledger(api_client: Any, namespace: str, name: str, timeout: float) -> LedgerRead:
    """The local ledger and the member names it learned, through the API (bounded)."""
    from kubernetes import client as k8s

    from sidecar.kube.ledger import Ledger

    source = f"{namespace}/{name}"
    ledger = Ledger(k8s.CoreV1Api(api_client), namespace, name, request_timeout=timeout)

    def load() -> LedgerRead:
        records = ledger.load()
        try:
            doc = json.loads(ledger.annotation(MEMBERS_ANNOTATION) or "{}")
        except ValueError:
            doc = {}
        names = {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}
        return LedgerRead(source, records, None, names, dict(ledger.corrupt))

    [(result, error)] = _parallel([load], timeout + 1)
    if result is None:
        return LedgerRead(source, None, f"API unreachable: {error}")
    assert isinstance(result, LedgerRead)
    return result


def gather(
    endpoints: Sequence[RedisEndpoint],
    *,
    group: str,
    api_client: Any | None,
    namespace: str,
    ledger_name: str,
    kube_error: str | None = None,
    timeout: float = PEER_SOCKET_TIMEOUT,
    api_timeout: float = 5.0,
    clock: Callable[[], float] = time.time,
) -> Gathered:
    """Read every member's Redis (the first endpoint is the local one) and the local ledger,
    all at once, each bounded: a member that does not answer within `timeout` per read is
    reported unreachable. `api_client` None: no ledger (`kube_error` says why)."""
    clients = [_client(e, timeout) for e in endpoints]
    source = f"{namespace}/{ledger_name}"
    calls: list[Callable[[], Any]] = [functools.partial(_read_member, c, group) for c in clients]
    if api_client is not None:
        calls.append(lambda: read_ledger(api_client, namespace, ledger_name, api_timeout))
    # A Redis read is a handful of round trips, each bounded by `timeout`.
    results = _parallel(calls, max(3 * timeout, api_timeout + 2 if api_client else 0))
    if api_client is None:
        ledger = LedgerRead(source, None, kube_error or "no Kubernetes API configured")
    else:
        value, error = results.pop()
        ledger = (
            value
            if isinstance(value, LedgerRead)
            else LedgerRead(source, None, f"API unreachable: {error}")
        )
    members = []
    for i, (endpoint, (value, error)) in enumerate(zip(endpoints, results, strict=True)):
        snap, ttls = value if value is not None else (Snapshot(), {})
        members.append(
            MemberRead(
                endpoint=endpoint.display_url,
                local=i == 0,
                error=error if value is None else None,
                snapshot=snap,
                heartbeat_ttl=ttls,
                name_hint=ledger.names.get(endpoint.display_url),
            )
        )
    place, _ = claim_place(members)
    claims: list[ClaimRead] = []
    claims_error = None
    if place is not None:
        at = member_names(members).index(place)
        if members[at].error is not None:
            claims_error = members[at].error
        else:
            [(got, claims_error)] = _parallel(
                [lambda: _read_claims(clients[at], group)], 3 * timeout
            )
            claims = list(got or [])
    for c in clients:
        threading.Thread(target=c.close, daemon=True).start()  # a blackholed close never waits
    return Gathered(
        group=group,
        members=tuple(members),
        ledger=ledger,
        claim_place=place,
        claims=tuple(claims),
        claims_error=claims_error,
        now=clock(),
    )


# -- the command -----------------------------------------------------------------------------
# The flags map onto the settings they override (an error names the flag the user typed).
_FLAG_SETTINGS = {
    "REDIS_URL": "--redis",
    "REMOTE_REDIS_HOSTS": "--peer",
    "NAMESPACE": "--namespace",
    "CLUSTER_GROUP": "--group",
}


def run(
    app: str | None,
    *,
    env: Mapping[str, str],
    out: IO[str],
    err: IO[str],
    json_output: bool = False,
    kubeconfig: str | None = None,
    redis_url: str | None = None,
    peers: Sequence[str] | None = None,
    namespace: str | None = None,
    group: str | None = None,
    api_client: Any | None = None,
) -> int:
    """`cache-buster status`: 0 when shown, 1 when APP has no records anywhere, 2 for a bad
    setting or flag. `api_client` (tests) replaces the kubeconfig."""
    from sidecar.config import ConfigError, Settings

    overrides = {
        "REDIS_URL": redis_url,
        "REMOTE_REDIS_HOSTS": None if not peers else ",".join(peers),
        "NAMESPACE": namespace,
        "CLUSTER_GROUP": group,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings.from_env({**env, **given})
    except ConfigError as e:
        where = _FLAG_SETTINGS[e.setting] if e.setting in given else e.setting
        print(f"cache-buster status: invalid configuration: {where}: {e.message}", file=err)
        return 2
    kube_error = None
    if api_client is None:
        from sidecar.aggregator.wiring import kubernetes_client

        try:
            api_client = kubernetes_client(kubeconfig)
        except ConfigError as e:
            kube_error = f"no Kubernetes API: {e}"
    gathered = gather(
        [settings.redis, *settings.remote_redis],
        group=settings.cluster_group,
        api_client=api_client,
        namespace=settings.namespace,
        ledger_name=settings.ledger_configmap,
        kube_error=kube_error,
    )
    status = summarize(gathered, app)
    if json_output:
        out.write(json.dumps(status.to_json(), indent=2, sort_keys=True) + "\n")
    else:
        out.write(render_text(status))
    if app is not None and not status.apps[0].known:
        print(f"cache-buster status: no records of app {app!r} in group {status.group}", file=err)
        return 1
    return 0
