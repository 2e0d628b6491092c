"""Cluster groups, as pure logic: what the members publish, the chain of settled rollouts, and
the agreement that says when the group purges (docs/architecture.md, "Cluster groups").

Every cluster of a group has its own Redis and lists the others in `REMOTE_REDIS_HOSTS`. For
one app, each member publishes its state (`MemberState`: image, rollout id, phase) in its own
Redis; the group's settled rollouts form a chain (`ChainLink`: each names its predecessor and
carries a sequence number), mirrored in every member's Redis and copied into every member's
ledger. Three pure functions make the decisions:

- `chain_head`: the head of the longest chain a cluster can see (its ledger plus every
  reachable member's mirror). A cluster that is behind adopts it (`adopt`), whatever image it
  runs; its rollout id for the next rollout derives from that head, so every member derives
  the same id. An id is provisional until its claim is taken: it is re-derived whenever the
  head moves.
- `agree`: given this cluster's state and every member's last published state, wait (for
  whom, and why), purge, or skip per the failure policy.
- `decide_in_group` (sidecar.core.decision): `decide()` with the group's view around it.

The wire format of the Redis records is here too (keys and JSON), so the aggregator, the
`wait --group` Job and `cache-buster status` read and write the same thing. Every key starts
with `cb:{group}:`: the Go worker's `<deployment>` and `lock:<deployment>` keys are never
touched.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sidecar.core.images import same_image
from sidecar.core.records import (
    AppRecord,
    IntentState,
    Outcome,
    PurgeDetail,
    Settled,
    WebhookState,
    rollout_id,
)

# -- timings (seconds) -----------------------------------------------------------------------
# A member refreshes its heartbeat this often; the record lives HEARTBEAT_TTL (Redis TTL, so
# staleness never compares two clusters' clocks). A peer whose Redis answers but whose
# heartbeat expired has no live cache-buster: it counts as unreachable.
HEARTBEAT_EVERY = 5.0
HEARTBEAT_TTL = 20
# A peer's Redis that did not answer for this long (on this cluster's monotonic clock) is
# unreachable: the subscriber's liveness reads have a short socket timeout.
PEER_CHECK_EVERY = 2.0
PEER_SOCKET_TIMEOUT = 2.0
# A member whose Redis has not answered for this long counts as down: one check interval, one
# timed-out read, and a second of slack.
PEER_DOWN_AFTER = PEER_CHECK_EVERY + PEER_SOCKET_TIMEOUT + 1.0
# The claim's lease, in leader leases (LEASE_DURATION): a holder whose cluster fails over to
# another aggregator replica keeps its claim; only a cluster gone this long loses it.
CLAIM_LEASES = 4
# Why a rollout was settled SKIPPED by the group (a peer unreachable past GROUP_TIMEOUT): a
# peer that returns and completes the rollout reopens it (it then purges once, same id).
PEERS_UNREACHABLE = "PeersUnreachable"

WIRE_VERSION = 1


# -- keys ------------------------------------------------------------------------------------
def member_key(group: str, cluster: str) -> str:
    return f"cb:{group}:member:{cluster}"


def member_pattern(group: str) -> str:
    return f"cb:{group}:member:*"


def state_key(group: str, app: str, cluster: str) -> str:
    return f"cb:{group}:state:{app}:{cluster}"


def state_pattern(group: str) -> str:
    return f"cb:{group}:state:*"


def settled_key(group: str, app: str) -> str:
    """The chain head the Redis holds for the app: a hash (`rid`, `seq`, `doc`), so the Lua
    scripts compare ranks without a JSON parser."""
    return f"cb:{group}:settled:{app}"


def settled_pattern(group: str) -> str:
    return f"cb:{group}:settled:*"


def inflight_key(group: str, app: str) -> str:
    return f"cb:{group}:inflight:{app}"


def inflight_pattern(group: str) -> str:
    return f"cb:{group}:inflight:*"


def claim_key(group: str, app: str, rollout: str, kind: ClaimKind) -> str:
    suffix = "" if kind is ClaimKind.PURGE else ":skip"
    return f"cb:{group}:claim:{app}:{rollout}{suffix}"


def epoch_key(group: str) -> str:
    """Present while this Redis has kept the group's records since cache-buster first wrote
    there: absent means it was wiped or restarted empty (then `recovering_key` opens)."""
    return f"cb:{group}:epoch"


def recovering_key(group: str) -> str:
    """Set for one claim lease after a Redis lost the group's records: no new claim is taken
    there meanwhile, so live holders re-create theirs first (docs/architecture.md, G4)."""
    return f"cb:{group}:recovering"


def events_channel(group: str) -> str:
    return f"cb:{group}:events"


def key_app(key: str, group: str, kind: str) -> str | None:
    """The app key of `cb:{group}:{kind}:{app}` (None when the key is not of that kind)."""
    prefix = f"cb:{group}:{kind}:"
    return key[len(prefix) :] if key.startswith(prefix) else None


def state_key_parts(key: str, group: str) -> tuple[str, str] | None:
    """(app, cluster) of a state key; cluster names hold no ':' (they are label values)."""
    rest = key_app(key, group, "state")
    if rest is None or ":" not in rest:
        return None
    app, _, cluster = rest.rpartition(":")
    return app, cluster


# -- records ---------------------------------------------------------------------------------
class ClaimKind(enum.StrEnum):
    PURGE = "purge"
    SKIP = "skip"


class GroupPhase(enum.StrEnum):
    """A member's rollout phase for one app, as it publishes it."""

    COMPLETE = "complete"  # every new pod ready (kubectl's verdict, and reports in sidecar mode)
    PROGRESSING = "progressing"
    STALLED = "stalled"  # the controller's ProgressDeadlineExceeded
    PAUSED = "paused"
    NO_IMAGE = "no_image"


class EventKind(enum.StrEnum):
    """What a PUBLISH on the events channel says changed (the reader re-reads that key)."""

    MEMBER = "member"
    STATE = "state"
    SETTLED = "settled"
    INFLIGHT = "inflight"


def _dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _load(raw: str | bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


@dataclass(frozen=True)
class MemberInfo:
    """A member's heartbeat in its own Redis: its name, the names of the peers it has learned
    and how many it is configured with (an asymmetric configuration shows here)."""

    name: str
    instance: str  # the namespace's instance id: two writers of one name differ here
    namespace: str
    peers: tuple[str, ...] = ()  # peer names learned so far
    configured: int = 0  # entries in its REMOTE_REDIS_HOSTS
    mode: str = "aggregator"  # or "job"

    def encode(self) -> str:
        return _dumps(
            {
                "v": WIRE_VERSION,
                "name": self.name,
                "instance": self.instance,
                "namespace": self.namespace,
                "peers": sorted(self.peers),
                "configured": self.configured,
                "mode": self.mode,
            }
        )

    @classmethod
    def decode(cls, raw: str | bytes | None) -> MemberInfo | None:
        doc = _load(raw)
        if doc is None or not isinstance(doc.get("name"), str):
            return None
        try:
            return cls(
                name=doc["name"],
                instance=str(doc.get("instance") or ""),
                namespace=str(doc.get("namespace") or ""),
                peers=tuple(str(p) for p in doc.get("peers") or ()),
                configured=int(doc.get("configured") or 0),
                mode=str(doc.get("mode") or "aggregator"),
            )
        except (ValueError, TypeError):  # a malformed record is skipped, never raised
            return None


@dataclass(frozen=True)
class MemberState:
    """One member's state for one app, published in its own Redis (the member's last word
    stays until it writes again: liveness is the heartbeat's job, not this record's)."""

    cluster: str
    instance: str
    app: str
    image: str | None
    rollout_id: str | None  # the rollout it follows or last settled
    phase: GroupPhase
    ready: int = 0
    desired: int = 0
    at: float = 0.0  # the member's wall clock: shown to people, never compared
    head: str | None = None  # the chain head its id derives from

    @property
    def complete(self) -> bool:
        return self.phase is GroupPhase.COMPLETE

    def encode(self) -> str:
        return _dumps(
            {
                "v": WIRE_VERSION,
                "cluster": self.cluster,
                "instance": self.instance,
                "app": self.app,
                "image": self.image,
                "rollout_id": self.rollout_id,
                "phase": str(self.phase),
                "ready": self.ready,
                "desired": self.desired,
                "at": round(self.at, 3),
                "head": self.head,
            }
        )

    @classmethod
    def decode(cls, raw: str | bytes | None) -> MemberState | None:
        doc = _load(raw)
        if doc is None:
            return None
        try:
            return cls(
                cluster=str(doc["cluster"]),
                instance=str(doc.get("instance") or ""),
                app=str(doc["app"]),
                image=doc.get("image"),
                rollout_id=doc.get("rollout_id"),
                phase=GroupPhase(str(doc.get("phase"))),
                ready=int(doc.get("ready") or 0),
                desired=int(doc.get("desired") or 0),
                at=float(doc.get("at") or 0.0),
                head=doc.get("head"),
            )
        except (KeyError, ValueError, TypeError):
            return None


@dataclass(frozen=True)
class ChainLink:
    """A settled rollout of the group: the chain's unit. `previous` is the rollout id it
    derives from; `seq` counts the group decisions before it (a baseline is 0), so the head
    of the longest chain is the link of highest (seq, rollout id)."""

    app: str
    image: str
    rollout_id: str
    previous: str | None
    seq: int
    outcome: Outcome
    cluster: str  # who decided it (the claim winner, or the cluster that made the baseline)
    at: float = 0.0
    detail: PurgeDetail = field(default_factory=PurgeDetail)

    @property
    def rank(self) -> tuple[int, str]:
        return (self.seq, self.rollout_id)

    def encode(self) -> str:
        return _dumps(
            {
                "v": WIRE_VERSION,
                "app": self.app,
                "image": self.image,
                "rollout_id": self.rollout_id,
                "previous": self.previous,
                "seq": self.seq,
                "outcome": str(self.outcome),
                "cluster": self.cluster,
                "at": round(self.at, 3),
                "detail": self.detail.to_dict(),
            }
        )

    @classmethod
    def decode(cls, raw: str | bytes | None) -> ChainLink | None:
        doc = _load(raw)
        if doc is None:
            return None
        try:
            return cls(
                app=str(doc["app"]),
                image=str(doc["image"]),
                rollout_id=str(doc["rollout_id"]),
                previous=doc.get("previous"),
                seq=int(doc.get("seq") or 0),
                outcome=Outcome(doc["outcome"]),
                cluster=str(doc.get("cluster") or ""),
                at=float(doc.get("at") or 0.0),
                detail=PurgeDetail.from_dict(doc.get("detail") or {}),
            )
        except (KeyError, ValueError, TypeError):
            return None

    @classmethod
    def of(cls, app: str, settled: Settled, cluster: str) -> ChainLink:
        return cls(
            app=app,
            image=settled.image,
            rollout_id=settled.rollout_id,
            previous=settled.previous,
            seq=settled.seq,
            outcome=settled.outcome,
            cluster=cluster,
            at=settled.at,
            detail=settled.detail,
        )

    def settled(self, *, owe_webhooks: bool) -> Settled:
        """This link as this cluster's ledger records it: a copy of a group decision owes no
        webhooks here (the decider sent them), unless the webhooks' scope is `cluster`."""
        hooks_owed = owe_webhooks and self.outcome is Outcome.PURGED
        detail = replace(
            self.detail,
            hooks={},
            webhooks=WebhookState.PENDING if hooks_owed else WebhookState.DELIVERED,
        )
        return Settled(
            self.image,
            self.rollout_id,
            self.outcome,
            self.at,
            detail,
            previous=self.previous,
            seq=self.seq,
        )


@dataclass(frozen=True)
class InFlight:
    """A claim winner's purge in progress, mirrored to every reachable member before the CDN
    call: a successor claimer that finds it resumes with the same key and the same request."""

    app: str
    rollout_id: str
    cluster: str
    plan: Mapping[str, Any]  # PurgePlan.to_dict()
    at: float = 0.0
    holder: str = ""  # the claim holder that started it (`claim_holder`)

    def encode(self) -> str:
        return _dumps(
            {
                "v": WIRE_VERSION,
                "app": self.app,
                "rollout_id": self.rollout_id,
                "cluster": self.cluster,
                "holder": self.holder,
                "plan": dict(self.plan),
                "at": round(self.at, 3),
            }
        )

    @classmethod
    def decode(cls, raw: str | bytes | None) -> InFlight | None:
        doc = _load(raw)
        if doc is None or not isinstance(doc.get("plan"), dict):
            return None
        try:
            return cls(
                app=str(doc.get("app") or ""),
                rollout_id=str(doc.get("rollout_id") or ""),
                cluster=str(doc.get("cluster") or ""),
                plan=doc["plan"],
                at=float(doc.get("at") or 0.0),
                holder=str(doc.get("holder") or ""),
            )
        except (ValueError, TypeError):
            return None


def event_message(kind: EventKind, cluster: str, app: str | None = None) -> str:
    return _dumps({"kind": str(kind), "cluster": cluster, "app": app})


def decode_event(raw: str | bytes | None) -> tuple[EventKind, str, str | None] | None:
    doc = _load(raw)
    if doc is None:
        return None
    try:
        return EventKind(str(doc.get("kind"))), str(doc.get("cluster") or ""), doc.get("app")
    except ValueError:
        return None


def claim_holder(cluster: str, instance: str) -> str:
    """The claim's value: which cluster (and namespace instance) holds it. Not the pod: a
    successor leader of the same cluster continues its predecessor's claim at once, and the
    cluster's leader election (a deposed leader halts before its lease could lapse) keeps two
    pods of one cluster from acting on it together."""
    return f"{cluster}|{instance}"


def holder_cluster(holder: str) -> str:
    return holder.split("|", 1)[0]


# -- the members as this cluster sees them ---------------------------------------------------
class Reach(enum.StrEnum):
    """Whether a member can take part right now."""

    UP = "up"  # its Redis answers and its heartbeat is live
    NO_HEARTBEAT = "no_heartbeat"  # its Redis answers, no live cache-buster writes there
    DOWN = "down"  # its Redis does not answer (refused, timed out)


@dataclass(frozen=True)
class MemberView:
    """One member (this cluster included) for one app: from the caches the subscribers keep,
    read without blocking."""

    endpoint: str  # the Redis it lives in, as configured (masked)
    name: str | None  # learned (or kept in the ledger); None until known
    reach: Reach
    unreachable_for: float = 0.0  # seconds, this cluster's monotonic clock
    info: MemberInfo | None = None
    state: MemberState | None = None
    link: ChainLink | None = None  # the chain head its Redis holds for the app
    local: bool = False

    @property
    def label(self) -> str:
        return self.name or self.endpoint


@dataclass(frozen=True)
class GroupView:
    """What a cluster knows of its group for one app when it decides."""

    cluster: str
    instance: str
    members: tuple[MemberView, ...]  # this cluster first
    problems: tuple[str, ...] = ()  # configuration faults that block group purges

    @property
    def peers(self) -> tuple[MemberView, ...]:
        return tuple(m for m in self.members if not m.local)

    def claim_place(self) -> MemberView | None:
        """The member whose Redis holds the claims: the lowest name among all configured
        members, reachable or not; None until every member's name is known."""
        if any(m.name is None for m in self.members):
            return None
        return min(self.members, key=lambda m: m.name or "")

    def links(self) -> list[ChainLink]:
        return [m.link for m in self.members if m.link is not None and m.reach is not Reach.DOWN]

    def all_up(self) -> bool:
        return all(m.reach is Reach.UP for m in self.peers)


def configuration_problems(
    cluster: str, instance: str, configured: int, members: Sequence[MemberView]
) -> list[str]:
    """Faults that block every group purge until fixed: an asymmetric configuration (a peer
    that does not list this cluster, or lists another number of peers) and a name collision
    (another writer with this cluster's name, or two members with one name)."""
    problems: list[str] = []
    names: dict[str, str] = {}
    for m in members:
        if m.name is None:
            continue
        if m.name in names and names[m.name] != m.endpoint:
            problems.append(
                f"name collision: {names[m.name]} and {m.endpoint} both say they are {m.name!r}"
            )
        names.setdefault(m.name, m.endpoint)
        info = m.info
        if info is None:
            continue
        if m.local:
            if info.instance and info.instance != instance:
                problems.append(
                    f"name collision: another cache-buster (instance {info.instance}, "
                    f"namespace {info.namespace}) writes as cluster {cluster!r} in this "
                    "cluster's Redis; give each cluster (and namespace) its own CLUSTER_NAME"
                )
            continue
        if info.configured != configured:
            problems.append(
                f"asymmetric group: {info.name} lists {info.configured} peer(s) in "
                f"REMOTE_REDIS_HOSTS, this cluster lists {configured}"
            )
        elif len(info.peers) >= info.configured and cluster not in info.peers:
            problems.append(
                f"asymmetric group: {info.name} does not list this cluster ({cluster}) in its "
                "REMOTE_REDIS_HOSTS"
            )
    return problems


# -- the chain -------------------------------------------------------------------------------
def chain_head(links: Iterable[ChainLink | None]) -> ChainLink | None:
    """The head of the longest chain: highest sequence number, ties broken by rollout id so
    every member picks the same."""
    best: ChainLink | None = None
    for link in links:
        if link is not None and (best is None or link.rank > best.rank):
            best = link
    return best


def settled_rank(settled: Settled | None) -> tuple[int, str]:
    return (-1, "") if settled is None else (settled.seq, settled.rollout_id)


def adopt(
    record: AppRecord, head: ChainLink | None, *, group: str, app: str, owe_webhooks: bool
) -> AppRecord:
    """The record once the group's chain head is taken in: unchanged when this cluster's
    ledger is at the head or ahead; otherwise the head becomes its settled rollout (a cluster
    that is behind adopts it whatever image it runs), and what was in flight is rebased:
    - an intent or a folded rollout for the head's rollout: settled by the group, gone;
    - a PURGING intent for another id: kept (its claim was taken; the runner finishes it);
    - a FOLLOWING intent for the head's image: the group settled that image, gone;
    - any other FOLLOWING intent: its provisional id is re-derived from the new head."""
    if head is None:
        return record
    settled = record.settled
    if settled is not None and settled_rank(settled) >= head.rank:
        return record
    new = head.settled(owe_webhooks=owe_webhooks)
    intent = record.intent
    if intent is not None:
        if intent.rollout_id == head.rollout_id:
            intent = None
        elif intent.state is IntentState.PURGING:
            pass
        elif same_image(intent.image, head.image):
            intent = None
        else:
            rid = rollout_id(group, app, intent.image, head.rollout_id)
            intent = replace(intent, rollout_id=rid, from_image=head.image, attempt=1, plan=None)
    deferred = record.deferred
    if deferred is not None and deferred.rollout_id == head.rollout_id:
        deferred = None
    return replace(record, settled=new, intent=intent, deferred=deferred, attempts={})


# -- agreement -------------------------------------------------------------------------------
class Accord(enum.StrEnum):
    WAIT = "wait"
    PURGE = "purge"
    SKIP = "skip"  # give up: an unreachable peer past GROUP_TIMEOUT, policy `skip`


@dataclass(frozen=True)
class Agreement:
    accord: Accord
    reason: str
    waiting_for: tuple[str, ...] = ()  # members the purge waits for
    overdue: tuple[str, ...] = ()  # reachable members lagging past GROUP_TIMEOUT (reported)
    given_up: tuple[str, ...] = ()  # unreachable members past GROUP_TIMEOUT
    # What each member showed, for the decision's log line.
    states: Mapping[str, str] = field(default_factory=dict)


def _shown(m: MemberView) -> str:
    if m.reach is not Reach.UP:
        return f"{m.reach}"
    s = m.state
    if s is None:
        return "no state"
    return f"{s.phase} {s.rollout_id} {s.ready}/{s.desired}"


def agree(
    me: MemberState,
    view: GroupView,
    *,
    group_timeout: float,
    complete_for: float,
    on_peer_timeout: str,
) -> Agreement:
    """Whether the group purges rollout `me.rollout_id` now (docs/architecture.md, "Cluster
    groups", the failure policy):
    1. a configuration fault (asymmetric, name collision, a name not learned yet) waits;
    2. a reachable peer that is not complete on the same rollout id lags: the purge waits
       without limit; past GROUP_TIMEOUT (counted from this cluster's completion) it is
       reported as overdue, never skipped: it may still finish;
    3. an unreachable peer (Redis down or no live heartbeat) waits until GROUP_TIMEOUT on
       this cluster's monotonic clock, then is given up: `skip` (the default) settles the
       rollout SKIPPED, `purge` purges without it (the claim still holds);
    4. otherwise every member is complete on the same rollout: purge."""
    states = {m.label: _shown(m) for m in view.members}
    if not me.complete or me.rollout_id is None:
        return Agreement(
            Accord.WAIT, "this cluster is not complete", (view.cluster,), (), (), states
        )
    if view.problems:
        return Agreement(Accord.WAIT, "; ".join(view.problems), (), (), (), states)
    unnamed = [m.endpoint for m in view.members if m.name is None]
    if unnamed:
        return Agreement(
            Accord.WAIT,
            "member names not known yet (the claim place is the lowest name): "
            + ", ".join(unnamed),
            tuple(unnamed),
            (),
            (),
            states,
        )
    waiting: list[str] = []
    overdue: list[str] = []
    given_up: list[str] = []
    why: list[str] = []
    for m in view.peers:
        if m.reach is not Reach.UP:
            if m.unreachable_for >= group_timeout:
                given_up.append(m.label)
            else:
                waiting.append(m.label)
                why.append(f"{m.label} unreachable ({m.reach})")
            continue
        s = m.state
        if s is not None and s.complete and s.rollout_id == me.rollout_id:
            continue
        waiting.append(m.label)
        if s is None:
            why.append(f"{m.label} has not published this app")
        elif s.rollout_id != me.rollout_id:
            why.append(f"{m.label} is on rollout {s.rollout_id} ({s.image}, {s.phase})")
        else:
            why.append(f"{m.label} is {s.phase} ({s.ready}/{s.desired} ready)")
        if complete_for >= group_timeout:
            overdue.append(m.label)
    if waiting:
        return Agreement(
            Accord.WAIT, "; ".join(why), tuple(waiting), tuple(overdue), tuple(given_up), states
        )
    if given_up:
        accord = Accord.PURGE if on_peer_timeout == "purge" else Accord.SKIP
        return Agreement(
            accord,
            f"unreachable past GROUP_TIMEOUT: {', '.join(given_up)} (ON_PEER_TIMEOUT="
            f"{on_peer_timeout})",
            (),
            (),
            tuple(given_up),
            states,
        )
    return Agreement(Accord.PURGE, "every member is complete", (), (), (), states)


def baseline_allowed(view: GroupView, group_timeout: float) -> bool:
    """A cluster makes a local baseline only when no member it can read holds a record for
    the app (else it adopts that record) and every member answers, or has been unreachable
    past GROUP_TIMEOUT. A baseline's id depends on the image alone, so members that baseline
    the same image agree; one that returns with a longer chain wins by rank (`chain_head`)."""
    if view.links():
        return False
    return all(m.reach is Reach.UP or m.unreachable_for >= group_timeout for m in view.peers)
