"""The cluster group's I/O edge: every member's Redis (this cluster's and each
`REMOTE_REDIS_HOSTS` entry), kept in caches the evaluator reads without blocking.

One subscriber thread per member, each with its own client and connection pool and short
socket timeouts: a slow or silent peer holds up only its own thread, never another peer or
another app (docs/architecture.md, "Cluster groups"). Each thread subscribes to the member's
events channel and, after every (re)subscribe, re-reads everything of the group in that Redis
(pub/sub drops messages while disconnected); between messages it checks the member every
`PEER_CHECK_EVERY` with a read bounded by `PEER_SOCKET_TIMEOUT`, so a blackholed peer is
noticed in seconds. Reachability is measured on this cluster's monotonic clock; liveness of
a member is its heartbeat's Redis TTL: no wall clocks of two clusters are ever compared.

This cluster's own records (heartbeat, per-app state, the chain head its ledger holds) are
written by one publisher thread from a coalescing queue, each write followed by an explicit
PUBLISH. Writes to other members (the claim winner's in-flight record and outcome) are made by
the purge thread that needs them (`mirror_*`), member by member, each bounded by the timeout.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from sidecar.core.backoff import RECONNECT, Backoff
from sidecar.core.group import (
    HEARTBEAT_EVERY,
    HEARTBEAT_TTL,
    PEER_CHECK_EVERY,
    PEER_DOWN_AFTER,
    PEER_SOCKET_TIMEOUT,
    ChainLink,
    EventKind,
    GroupView,
    InFlight,
    MemberInfo,
    MemberState,
    MemberView,
    Reach,
    configuration_problems,
    decode_event,
    epoch_key,
    event_message,
    events_channel,
    inflight_key,
    inflight_pattern,
    key_app,
    member_key,
    member_pattern,
    recovering_key,
    settled_key,
    settled_pattern,
    state_key,
    state_key_parts,
    state_pattern,
)
from sidecar.logs import get_logger

log = get_logger("group")

ClientFactory = Callable[[], redis.Redis]


def peer_client_options() -> dict[str, Any]:
    """redis-py options for a member's client: short timeouts and no retries of its own
    (redis-py retries three times with backoff by default, which would turn a blackholed
    peer's 2 s timeout into many seconds); the subscriber's loop is the retry policy."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "socket_timeout": PEER_SOCKET_TIMEOUT,
        "socket_connect_timeout": PEER_SOCKET_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }


# Write the chain head only if it ranks above what the Redis holds (sequence, then rollout
# id): a late or repeated mirror never moves a member's head backwards. ARGV: rid, seq,
# outcome, doc, channel, message.
_SET_LINK = """
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '-1')
local rid = redis.call('HGET', KEYS[1], 'rid') or ''
local new = tonumber(ARGV[2])
if seq > new or (seq == new and rid >= ARGV[1]) then
  if not (seq == new and rid == ARGV[1] and redis.call('HGET', KEYS[1], 'outcome') ~= ARGV[3])
  then return 0 end
end
redis.call('HSET', KEYS[1], 'rid', ARGV[1], 'seq', ARGV[2], 'outcome', ARGV[3], 'doc', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""


def read_link(client: redis.Redis, group: str, app: str) -> ChainLink | None:
    return ChainLink.decode(client.hget(settled_key(group, app), "doc"))


def write_link(client: redis.Redis, group: str, link: ChainLink, cluster: str) -> bool:
    """Mirror a chain link into one member's Redis (monotonic); True when it moved."""
    moved = client.eval(
        _SET_LINK,
        1,
        settled_key(group, link.app),
        link.rollout_id,
        str(link.seq),
        str(link.outcome),
        link.encode(),
        events_channel(group),
        event_message(EventKind.SETTLED, cluster, link.app),
    )
    return bool(moved)


@dataclass
class Snapshot:
    """Everything of one group in one member's Redis."""

    infos: dict[str, MemberInfo] = field(default_factory=dict)  # member name -> heartbeat
    states: dict[tuple[str, str], MemberState] = field(default_factory=dict)  # (app, cluster)
    links: dict[str, ChainLink] = field(default_factory=dict)  # app -> chain head
    inflight: dict[str, InFlight] = field(default_factory=dict)  # app -> in-flight purge


def _scan(client: redis.Redis, pattern: str) -> list[str]:
    return [str(k) for k in client.scan_iter(match=pattern, count=1000)]


def _mget(client: redis.Redis, keys: Sequence[str]) -> list[Any]:
    out: list[Any] = []
    for start in range(0, len(keys), 500):
        out.extend(client.mget(keys[start : start + 500]))
    return out


def read_snapshot(client: redis.Redis, group: str) -> Snapshot:
    """Read the group's records from one Redis (SCAN + MGET/HGET): the resync after every
    subscribe, and `cache-buster status`."""
    snap = Snapshot()
    keys = _scan(client, member_pattern(group))
    for raw in _mget(client, keys):
        info = MemberInfo.decode(raw)
        if info is not None:
            snap.infos[info.name] = info
    keys = _scan(client, state_pattern(group))
    for key, raw in zip(keys, _mget(client, keys), strict=True):
        parts = state_key_parts(key, group)
        state = MemberState.decode(raw)
        if parts is not None and state is not None:
            snap.states[parts] = state
    keys = _scan(client, settled_pattern(group))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, "doc")
    for key, raw in zip(keys, pipe.execute(), strict=True):
        app = key_app(key, group, "settled")
        link = ChainLink.decode(raw)
        if app is not None and link is not None:
            snap.links[app] = link
    keys = _scan(client, inflight_pattern(group))
    for key, raw in zip(keys, _mget(client, keys), strict=True):
        app = key_app(key, group, "inflight")
        flight = InFlight.decode(raw)
        if app is not None and flight is not None:
            snap.inflight[app] = flight
    return snap


class _Member:
    """One member's Redis and what was last read from it (guarded by the owner's lock)."""

    def __init__(self, endpoint: str, client: redis.Redis, local: bool, name: str | None):
        self.endpoint = endpoint
        self.client = client
        self.local = local
        self.name = name  # learned from its heartbeat, or kept in the ledger
        self.snapshot = Snapshot()
        self.answered_at: float | None = None  # monotonic: its Redis last answered
        # Monotonic: last seen answering with a live heartbeat (start: from now on).
        self.live_at = time.monotonic()
        self.thread: threading.Thread | None = None
        self.reconnected = threading.Event()

    def own_info(self) -> MemberInfo | None:
        if self.name is not None:
            return self.snapshot.infos.get(self.name)
        if len(self.snapshot.infos) == 1:
            return next(iter(self.snapshot.infos.values()))
        return None


class GroupMembers:
    """The members of this cluster's group, their caches, and this cluster's publisher."""

    def __init__(
        self,
        *,
        group: str,
        cluster: str,
        instance: str,
        namespace: str,
        local: tuple[str, redis.Redis],
        peers: Sequence[tuple[str, redis.Redis]],
        on_change: Callable[[str | None], None],
        known_names: Mapping[str, str] | None = None,
        on_learned: Callable[[dict[str, str]], None] | None = None,
        clock: Callable[[], float] = time.time,
        mode: str = "aggregator",
        claim_lease: float = 60.0,
    ) -> None:
        """`local`, `peers`: (endpoint as shown, client). `on_change(app)`: something of that
        app changed (None: anything may have; re-evaluate every app). `known_names`: endpoint
        -> name learned earlier (kept in the ledger), so the claim place is known even while a
        peer is down; `on_learned` is told when a name is learned or changes."""
        self.group = group
        self.cluster = cluster
        self.instance = instance
        self.namespace = namespace
        self.mode = mode
        self._on_change = on_change
        self._on_learned = on_learned
        self._clock = clock
        names = dict(known_names or {})
        self._lock = threading.Lock()
        self._members = [_Member(local[0], local[1], True, cluster)]
        self._members += [_Member(e, c, False, names.get(e)) for e, c in peers]
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pending_states: dict[str, MemberState] = {}
        self._pending_links: dict[str, ChainLink] = {}
        self._published: dict[str, MemberState] = {}  # app -> last state written (at=0)
        self._links: dict[str, ChainLink] = {}  # app -> last head written to the own Redis
        self._publisher: threading.Thread | None = None
        self._beats = 0  # heartbeats written by this process
        # member name -> instance id -> when (monotonic) a heartbeat of it was last read: two
        # instances writing one name alternate in its key, and every reader sees both.
        self._instances: dict[str, dict[str, float]] = {}
        self.claim_lease = claim_lease
        self.synced = threading.Event()  # the own Redis was read once

    @property
    def configured(self) -> int:
        return len(self._members) - 1

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> GroupMembers:
        for m in self._members:
            m.thread = threading.Thread(
                target=self._watch, args=(m,), name=f"group-{m.endpoint}", daemon=True
            )
            m.thread.start()
        self._publisher = threading.Thread(target=self._publish_loop, name="group-pub", daemon=True)
        self._publisher.start()
        log.info(
            "group.started",
            group=self.group,
            cluster=self.cluster,
            peers=[m.endpoint for m in self._members[1:]],
        )
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in [m.thread for m in self._members] + [self._publisher]:
            if t is not None:
                t.join(timeout=5)

    # -- what the evaluator reads (never blocks on Redis) ---------------------------------
    def view(self, app: str) -> GroupView:
        now = time.monotonic()
        with self._lock:
            views = [self._member_view(m, app, now) for m in self._members]
            local = self._members[0].snapshot
        problems = configuration_problems(self.cluster, self.instance, self.configured, views)
        problems += self._collisions(now)
        mine = local.states.get((app, self.cluster))
        if mine is not None and mine.instance and mine.instance != self.instance:
            problems.append(
                f"name collision: another writer (instance {mine.instance}) publishes app "
                f"{app!r} as cluster {self.cluster!r}; give each cluster its own CLUSTER_NAME"
            )
        return GroupView(self.cluster, self.instance, tuple(views), tuple(problems))

    def _member_view(self, m: _Member, app: str, now: float) -> MemberView:
        info = m.own_info()
        answered = m.answered_at is not None and now - m.answered_at <= PEER_DOWN_AFTER
        if m.local:
            reach = Reach.UP if answered else Reach.DOWN
        else:
            reach = Reach.DOWN if not answered else Reach.UP if info else Reach.NO_HEARTBEAT
        name = m.name or (info.name if info else None)
        state = m.snapshot.states.get((app, name)) if name else None
        return MemberView(
            endpoint=m.endpoint,
            name=name,
            reach=reach,
            unreachable_for=0.0 if reach is Reach.UP else now - m.live_at,
            info=info,
            state=state,
            link=m.snapshot.links.get(app),
            local=m.local,
        )

    def _collisions(self, now: float) -> list[str]:
        """Names written by more than one instance within two heartbeat TTLs (under the
        lock): two clusters with one CLUSTER_NAME, or two namespaces sharing a Redis."""
        out = []
        for name, seen in sorted(self._instances.items()):
            recent = sorted(i for i, at in seen.items() if now - at <= 2 * HEARTBEAT_TTL)
            if len(recent) > 1:
                out.append(
                    f"name collision: instances {', '.join(recent)} all write as cluster "
                    f"{name!r}; give each cluster (and namespace) its own CLUSTER_NAME"
                )
        return out

    def _saw(self, infos: Mapping[str, MemberInfo]) -> None:
        now = time.monotonic()
        for info in infos.values():
            if info.instance:
                self._instances.setdefault(info.name, {})[info.instance] = now

    def client_of(self, name: str) -> redis.Redis | None:
        with self._lock:
            for m in self._members:
                if m.name == name:
                    return m.client
        return None

    def inflight(self, app: str, rollout: str) -> InFlight | None:
        """An in-flight purge of this rollout mirrored to any member (cached)."""
        with self._lock:
            for m in self._members:
                flight = m.snapshot.inflight.get(app)
                if flight is not None and flight.rollout_id == rollout:
                    return flight
        return None

    def read_inflight(self, app: str, rollout: str) -> InFlight | None:
        """This cluster's own Redis's in-flight record of the rollout, read now (a claim
        winner mirrors it to every member on winning): the claim's check does not rest on a
        cache that a reconnect or a lost message may have left behind. Raises RedisError."""
        flight = InFlight.decode(self._members[0].client.get(inflight_key(self.group, app)))
        return flight if flight is not None and flight.rollout_id == rollout else None

    def note_link(self, member: str, link: ChainLink) -> None:
        """A chain head read from `member` outside its subscriber (the claim place's)."""
        with self._lock:
            for m in self._members:
                if m.name == member:
                    m.snapshot.links[link.app] = link
        self._on_change(link.app)

    def learned_names(self) -> dict[str, str]:
        with self._lock:
            return {m.endpoint: m.name for m in self._members[1:] if m.name}

    # -- what this cluster publishes --------------------------------------------------------
    def publish_state(self, state: MemberState) -> None:
        """Queue this cluster's state for an app (written and PUBLISHed by the publisher;
        unchanged states are not rewritten)."""
        with self._lock:
            last = self._published.get(state.app)
            if last is not None and last == replace(state, at=0.0):
                return
            self._pending_states[state.app] = state
        self._wake.set()

    def publish_link(self, link: ChainLink) -> None:
        """Queue the chain head this cluster's ledger holds for an app, for its own Redis."""
        with self._lock:
            last = self._links.get(link.app)
            if last is not None and last.rank >= link.rank and last.outcome == link.outcome:
                return
            self._pending_links[link.app] = link
        self._wake.set()

    def _to_every_member(self, what: str, write: Callable[[_Member], None]) -> list[str]:
        """Run `write` against every member's Redis at once (one thread each, bounded by the
        socket timeout): a blackholed peer costs one timeout, not one per peer. Returns the
        members that could not be written (they catch up from another member or a ledger)."""
        missed: list[str] = []
        lock = threading.Lock()

        def one(m: _Member) -> None:
            try:
                write(m)
            except redis.RedisError as exc:
                with lock:
                    missed.append(m.name or m.endpoint)
                log.warning(
                    "group.mirror_failed",
                    cluster=self.cluster,
                    what=what,
                    member=m.name or m.endpoint,
                    error=str(exc)[:200],
                )

        threads = [threading.Thread(target=one, args=(m,), daemon=True) for m in self._members]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=PEER_SOCKET_TIMEOUT * 3)
        return missed

    def mirror_link(self, link: ChainLink) -> list[str]:
        """Write a group decision's outcome to every member's Redis (monotonic)."""

        def write(m: _Member) -> None:
            write_link(m.client, self.group, link, self.cluster)
            with self._lock:
                known = m.snapshot.links.get(link.app)
                if known is None or link.rank >= known.rank:
                    m.snapshot.links[link.app] = link

        missed = self._to_every_member(f"settled {link.app} {link.rollout_id}", write)
        with self._lock:
            self._links[link.app] = link
        return missed

    def mirror_inflight(self, flight: InFlight) -> list[str]:
        """Before the CDN call: the winner's in-flight record (rollout id, exact request) on
        every reachable member, so a successor claimer resumes it with the same key."""
        message = event_message(EventKind.INFLIGHT, self.cluster, flight.app)

        def write(m: _Member) -> None:
            pipe = m.client.pipeline(transaction=False)
            pipe.set(inflight_key(self.group, flight.app), flight.encode(), ex=7 * 86400)
            pipe.publish(events_channel(self.group), message)
            pipe.execute()
            with self._lock:
                m.snapshot.inflight[flight.app] = flight

        return self._to_every_member(f"inflight {flight.app} {flight.rollout_id}", write)

    # -- the publisher thread ---------------------------------------------------------------
    def _heartbeat(self) -> MemberInfo:
        with self._lock:
            learned = tuple(m.name for m in self._members[1:] if m.name)
        return MemberInfo(
            name=self.cluster,
            instance=self.instance,
            namespace=self.namespace,
            peers=learned,
            configured=self.configured,
            mode=self.mode,
        )

    def _publish_loop(self) -> None:
        client = self._members[0].client
        backoff = Backoff(RECONNECT)
        next_beat = 0.0
        channel = events_channel(self.group)
        while not self._stop.is_set():
            self._wake.wait(timeout=max(0.0, next_beat - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                states, self._pending_states = self._pending_states, {}
                links, self._pending_links = self._pending_links, {}
            try:
                if time.monotonic() >= next_beat:
                    info = self._heartbeat()
                    key = member_key(self.group, self.cluster)
                    before = client.get(key)
                    existed = before is not None
                    client.set(key, info.encode(), ex=HEARTBEAT_TTL)
                    other = MemberInfo.decode(before)
                    if other is not None and other.instance != self.instance:
                        # Another writer of this name (it would overwrite ours in turn).
                        with self._lock:
                            self._saw({other.name: other})
                    if (
                        not existed
                        and self._beats
                        and client.set(epoch_key(self.group), "1", nx=True)
                    ):
                        # It lost the group's records while we ran (wiped, restarted empty):
                        # no new claim there for one lease, holders re-create theirs first.
                        client.set(recovering_key(self.group), "1", px=int(self.claim_lease * 1000))
                    elif not self._beats:
                        client.set(epoch_key(self.group), "1", nx=True)
                    self._beats += 1
                    if not existed:
                        # First beat, or the Redis lost our records (wiped, restarted):
                        # announce and write everything again.
                        client.publish(channel, event_message(EventKind.MEMBER, self.cluster))
                        with self._lock:
                            states = {**self._published, **states}
                            links = {**self._links, **links}
                    next_beat = time.monotonic() + HEARTBEAT_EVERY
                if states:
                    pipe = client.pipeline(transaction=False)
                    for app, state in states.items():
                        pipe.set(state_key(self.group, app, self.cluster), state.encode())
                        pipe.publish(channel, event_message(EventKind.STATE, self.cluster, app))
                    pipe.execute()
                    with self._lock:
                        for app, state in states.items():
                            self._published[app] = replace(state, at=0.0)
                for link in links.values():
                    write_link(client, self.group, link, self.cluster)
                    with self._lock:
                        self._links[link.app] = link
                backoff.reset()
            except redis.RedisError as exc:
                with self._lock:  # keep what was not written; newer values win
                    self._pending_states = {**states, **self._pending_states}
                    self._pending_links = {**links, **self._pending_links}
                delay = backoff.next()
                log.warning(
                    "group.publish_failed",
                    cluster=self.cluster,
                    error=str(exc)[:200],
                    retry_in=round(delay, 2),
                )
                next_beat = 0.0
                self._stop.wait(delay)

    # -- the subscriber threads -------------------------------------------------------------
    def _resync(self, m: _Member) -> None:
        snap = read_snapshot(m.client, self.group)
        with self._lock:
            before = m.snapshot
            m.snapshot = snap
            self._saw(snap.infos)
            m.answered_at = time.monotonic()
            if m.local or m.own_info() is not None:
                m.live_at = m.answered_at
            learned = self._learn(m)
        changed = {a for a, _ in snap.states} | {a for a, _ in before.states}
        changed |= set(snap.links) | set(before.links)
        if learned or m.local:
            self._on_change(None)
        else:
            for app in changed:
                self._on_change(app)
        if m.local:
            self.synced.set()

    def _learn(self, m: _Member) -> bool:
        """Learn a peer's name from its heartbeat (under the lock); True when it changed."""
        if m.local:
            return False
        infos = [i for i in m.snapshot.infos.values()]
        if len(infos) != 1:
            return False  # none yet, or several writers: reported by configuration_problems
        name = infos[0].name
        if name == m.name:
            return False
        log.info(
            "group.member_learned",
            cluster=self.cluster,
            endpoint=m.endpoint,
            member=name,
            was=m.name,
        )
        m.name = name
        if self._on_learned is not None:
            names = {x.endpoint: x.name for x in self._members[1:] if x.name}
            threading.Thread(target=self._on_learned, args=(names,), daemon=True).start()
        return True

    def _apply(self, m: _Member, data: Any) -> None:
        event = decode_event(data)
        if event is None:
            return
        kind, cluster, app = event
        client = m.client
        if kind is EventKind.MEMBER or app is None:
            self._resync(m)
            return
        if kind is EventKind.STATE:
            state = MemberState.decode(client.get(state_key(self.group, app, cluster)))
            with self._lock:
                if state is None:
                    m.snapshot.states.pop((app, cluster), None)
                else:
                    m.snapshot.states[(app, cluster)] = state
        elif kind is EventKind.SETTLED:
            link = read_link(client, self.group, app)
            with self._lock:
                if link is not None:
                    m.snapshot.links[app] = link
        elif kind is EventKind.INFLIGHT:
            flight = InFlight.decode(client.get(inflight_key(self.group, app)))
            with self._lock:
                if flight is not None:
                    m.snapshot.inflight[app] = flight
        self._on_change(app)

    def _check(self, m: _Member) -> None:
        """The liveness read between messages: the member's heartbeats (short timeout)."""
        keys = _scan(m.client, member_pattern(self.group))
        infos = {i.name: i for i in (MemberInfo.decode(r) for r in _mget(m.client, keys)) if i}
        with self._lock:
            had = set(m.snapshot.infos)
            m.snapshot.infos = infos
            self._saw(infos)
            m.answered_at = time.monotonic()
            if m.local or m.own_info() is not None:
                m.live_at = m.answered_at
            learned = self._learn(m)
        if learned or had != set(infos):
            self._on_change(None)

    def _watch(self, m: _Member) -> None:
        backoff = Backoff(RECONNECT)
        channel = events_channel(self.group)
        was_up = True
        while not self._stop.is_set():
            pubsub = m.client.pubsub()  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(channel)
                _await_subscribed(pubsub, self._stop)
                self._resync(m)
                if not was_up:
                    log.info(
                        "group.member_reachable", cluster=self.cluster, member=m.name or m.endpoint
                    )
                was_up = True
                backoff.reset()
                next_check = time.monotonic() + PEER_CHECK_EVERY
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "message":
                        self._apply(m, message.get("data"))
                    if time.monotonic() >= next_check:
                        self._check(m)
                        next_check = time.monotonic() + PEER_CHECK_EVERY
            except redis.RedisError as exc:
                delay = backoff.next()
                if was_up:
                    log.warning(
                        "group.member_unreachable",
                        cluster=self.cluster,
                        member=m.name or m.endpoint,
                        error=str(exc)[:200],
                        retry_in=round(delay, 2),
                    )
                was_up = False
                self._on_change(None)
                self._stop.wait(delay)
            except Exception as exc:  # never end the only thread that watches this member
                log.error(
                    "group.watch_error",
                    cluster=self.cluster,
                    member=m.endpoint,
                    error=repr(exc)[:200],
                )
                self._stop.wait(backoff.next())
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()


def _await_subscribed(pubsub: Any, stop: threading.Event, timeout: float = 5.0) -> None:
    """Only once Redis confirmed SUBSCRIBE is every later PUBLISH seen: the re-read after."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        message = pubsub.get_message(timeout=0.5)
        if message and message.get("type") == "subscribe":
            return
    if not stop.is_set():
        raise redis.ConnectionError("no SUBSCRIBE confirmation")
