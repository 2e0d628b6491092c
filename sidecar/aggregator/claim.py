"""The group's claim: exactly one member purges (or skips) a group rollout.

The claim place is the Redis of the lowest name among all configured members, reachable or
not (`GroupView.claim_place`): every member computes the same one, and while it does not
answer nobody purges (a majority of members' Redis would keep purging through one Redis's
outage, but with two members there is no majority, and the group's common case is two or
three clusters: one place, documented, is the simpler invariant).

Set-if-absent with a lease (Redis TTL: no wall clock of another cluster is read); renewal
and release are compare-and-set in Lua, so a holder whose lease lapsed can neither extend nor
delete its successor's claim. The acquire script also reads the chain head held at the claim
place: a rollout already settled there is not claimed again (a member whose cache lags the
winner's outcome), and a claim derived from a head the group has moved past is refused as
stale (the member re-evaluates and adopts the new head).
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass

import redis

from sidecar.core.group import ClaimKind, claim_key, epoch_key, recovering_key, settled_key
from sidecar.logs import get_logger

log = get_logger("group")

# KEYS: claim, the other kind's claim, the chain head hash, the epoch, the recovery window.
# A Redis that lost the group's records (wiped, restarted empty: the epoch is gone) takes no
# new claim for one lease: live holders re-create theirs at their next renewal first.
# ARGV: holder (cluster|instance), lease ms, rollout id, the sequence number its id derives
# from, kind, and `take` or `probe` (probe: never create the claim, say `absent`; checked and
# answered in one script, so a claim lost between a check and a take cannot be taken).
_ACQUIRE = """
if redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('SET', KEYS[4], '1')
  redis.call('SET', KEYS[5], '1', 'PX', ARGV[2])
end
local seq = tonumber(redis.call('HGET', KEYS[3], 'seq') or '-1')
local rid = redis.call('HGET', KEYS[3], 'rid') or ''
local outcome = redis.call('HGET', KEYS[3], 'outcome') or ''
if rid == ARGV[3] and (ARGV[5] == 'skip' or outcome ~= 'skipped') then
  return {'settled', rid}
end
if rid ~= ARGV[3] and seq > tonumber(ARGV[4]) then return {'stale', rid} end
local other = redis.call('GET', KEYS[2])
if other and not (ARGV[5] == 'purge' and rid == ARGV[3] and outcome == 'skipped') then
  return {'held', other}
end
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'won', cur}
end
if cur then return {'held', cur} end
if redis.call('EXISTS', KEYS[5]) == 1 then return {'held', 'recovering'} end
if ARGV[6] == 'probe' then return {'absent', ''} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {'won', ARGV[1]}
"""

# Renew: extend our own claim; re-create it when it vanished (its Redis was wiped or
# restarted) so a wipe does not hand the claim to a member waiting for it. Another holder's
# claim is never touched: then ours is lost.
_RENEW = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


RENEW_EVERY_MAX = 1.0  # seconds


class ClaimState(enum.StrEnum):
    WON = "won"  # this holder has it (newly, or it already held it)
    HELD = "held"  # another holder has it: wait for its outcome
    SETTLED = "settled"  # the rollout is settled at the claim place already
    STALE = "stale"  # the group's chain moved past the head this id derives from
    ABSENT = "absent"  # a probe: nobody holds it (nothing was written)


@dataclass(frozen=True)
class ClaimResult:
    state: ClaimState
    holder: str  # the holder (WON, HELD) or the head's rollout id (SETTLED, STALE)


def acquire(
    client: redis.Redis,
    *,
    group: str,
    app: str,
    rollout: str,
    kind: ClaimKind,
    holder: str,
    lease: float,
    derived_from_seq: int,
    probe: bool = False,
) -> ClaimResult:
    """Try to take the claim (raises redis.RedisError when the claim place does not answer).
    `probe`: only look (HELD, ABSENT, or WON when this holder already has it)."""
    other = ClaimKind.SKIP if kind is ClaimKind.PURGE else ClaimKind.PURGE
    state, who = client.eval(
        _ACQUIRE,
        5,
        claim_key(group, app, rollout, kind),
        claim_key(group, app, rollout, other),
        settled_key(group, app),
        epoch_key(group),
        recovering_key(group),
        holder,
        str(max(1, int(lease * 1000))),
        rollout,
        str(derived_from_seq),
        str(kind),
        "probe" if probe else "take",
    )
    return ClaimResult(ClaimState(str(state)), str(who))


class ClaimLease:
    """A won claim kept alive by a renewal thread while the purge runs. `valid_for()` is how
    long the claim is known to be held, on this process's monotonic clock, counted from the
    start of the last successful renewal: the purge halts before it could lapse."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        holder: str,
        lease: float,
        *,
        margin: float = 0.0,
    ) -> None:
        self._client = client
        self._key = key
        self._holder = holder
        self._lease = lease
        self._margin = margin
        self._valid_until = time.monotonic() + lease - margin
        self._stop = threading.Event()
        self._lost = False
        self._thread: threading.Thread | None = None

    def start(self) -> ClaimLease:
        self._thread = threading.Thread(target=self._run, name="claim-lease", daemon=True)
        self._thread.start()
        return self

    def valid_for(self) -> float:
        return 0.0 if self._lost else self._valid_until - time.monotonic()

    def _run(self) -> None:
        # Often, whatever the lease: a claim its place lost is re-created within this.
        every = max(0.05, min(self._lease / 3, RENEW_EVERY_MAX))
        while not self._stop.wait(every) and not self._lost:
            self.confirm()  # a failed call leaves the lease to run out: valid_for() says so

    def confirm(self) -> bool:
        """Renew now (the renewal thread, and the fence right before a CDN call). False:
        the claim is another holder's (then it is lost for good), or its place does not
        answer."""
        if self._lost:
            return False
        started = time.monotonic()
        try:
            ok = self._client.eval(_RENEW, 1, self._key, self._holder, str(int(self._lease * 1000)))
        except redis.RedisError as exc:
            log.warning("claim.renew_failed", key=self._key, error=str(exc)[:200])
            return False
        if not ok:
            self._lost = True
            log.warning("claim.lost", key=self._key)
            return False
        self._valid_until = started + self._lease - self._margin
        return True

    def release(self) -> None:
        """Stop renewing and delete the claim if still held (CAS); never raises."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        try:
            self._client.eval(_RELEASE, 1, self._key, self._holder)
        except redis.RedisError as exc:
            log.info("claim.release_failed", key=self._key, error=str(exc)[:200])

    def stop(self) -> None:
        """Stop renewing, keep the claim (it expires by its lease)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
