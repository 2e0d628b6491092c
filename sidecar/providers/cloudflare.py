"""Cloudflare: purge the zone(s) serving the app's domains (API v4 over `requests`).

- Zones: `request.zone` (the `ZONE_ID` setting or the `cache-buster.io/zone` annotation) wins.
  Else each domain's zone is found with `GET /zones?name=`, trying the host, then each parent
  (`a.b.example.com`, `b.example.com`, `example.com`), so a subdomain zone is found before its
  parent and no public-suffix list is needed; answers are cached (`zone_cache_ttl`, a miss
  `miss_ttl`). Hosts are grouped by zone: one purge (a set of batches) per zone.
- Targets (`plan()`, no mutating call): `"{zone_id}/{host}"` per host, or `"{zone_id}"` for
  the zone-wide modes (tags, everything), sorted. A replay (`request.targets` set,
  `request.domains` empty) rebuilds the same requests from the targets, `request.paths`,
  `request.purge_mode` and `request.tags`, without any lookup.
- Modes (`request.purge_mode`): `files` (`https://{host}{path}` for exact paths), `prefixes`
  (`{host}{path}` without scheme, the `*` of `/dir/*` dropped, as the prefix-purge docs
  write them), `hosts` (every cached URL of the host), `tags`, `everything` (only when the
  provider was built with `purge_everything=True`, the CLOUDFLARE_PURGE_EVERYTHING setting).
  None: each path decides: files for an exact path, hosts for `/*`, prefixes for `/dir/*`.
- Batches: the docs allow 100 hosts, prefixes or tags per request ("Max operations per
  request", developers.cloudflare.com/cache/how-to/purge-cache/) and 30 URLs (500 on
  Enterprise: the API reference, "For Zones on Free/Pro/Business plan, you may purge up to 30
  URLs in one API call"), hence `files_per_request`. A batch the API refuses as too large
  (HTTP 400 whose message names the limit; the docs give no code) is halved and retried, and
  the rest of that list, and the zone's later purges of that mode, go at the smaller size.
- Rate: purge requests are limited per account with a token bucket (the purge docs); this
  module keeps one bucket per account (`rate`, `burst`), shared by every zone of the account
  reached with the token. The account is the zone lookup's `account.id`, or for an explicit
  zone `GET /zones/{id}` (once, cached; without Zone > Zone > Read the zones of unknown
  accounts share one bucket). A 429 is retried after its `Retry-After` through
  `sidecar.core.backoff.PROVIDER_THROTTLE` (`honour`), and holds the account's bucket for as
  long; 5xx and network errors are retried with the same policy. Every wait watches `stop`,
  and `timeout` bounds the whole purge (past it: a retryable PurgeError).
- Done: Cloudflare's purges are effectively immediate ("Instant Purge ensures that updates to
  your content are reflected immediately", the purge docs), so a purge the API accepted is
  COMPLETED with no polling. There is no idempotency key: `reused` is always False.
- `find()` is always None: Cloudflare keeps no record of past purges to look one up by key. A
  resumed purge is sent again, which is harmless (it removes what is already gone) and paced
  by the same bucket.
- Token: `token` (a string or a callable read at every call, so a rotated Secret is used). It
  is never logged, never in a repr nor an error message (any `cfut_`/`cfat_`/`cfk_` value in
  a message from the API is redacted too). A Global API Key (`cfk_`) is refused before any call:
  Bearer authentication does not take it.
- Permissions: Zone > Cache Purge > Purge, and Zone > Zone > Read unless every app names its
  zone.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from sidecar.core.backoff import PROVIDER_THROTTLE, BackoffPolicy
from sidecar.logs import EventLogger, get_logger
from sidecar.providers.base import (
    NO_DOMAINS,
    OnRequested,
    PlannedCall,
    PurgeError,
    PurgeRequest,
    PurgeResult,
    PurgeStatus,
)

NAME = "cloudflare"
DEFAULT_API_URL = "https://api.cloudflare.com/client/v4"
PURGE_PERMISSION = "Zone > Cache Purge > Purge"
ZONE_READ_PERMISSION = "Zone > Zone > Read"
# What the aggregator says when no token is configured (the provider is then absent).
UNAVAILABLE_HINT = (
    "set CLOUDFLARE_API_TOKEN (or TOKEN, or CLOUDFLARE_API_TOKEN_FILE) to an API token with "
    f"{PURGE_PERMISSION} and {ZONE_READ_PERMISSION}"
)
MODES = ("files", "prefixes", "hosts", "tags", "everything")
HOST_MODES = ("files", "prefixes", "hosts")
ZONE_MODES = ("tags", "everything")
MAX_ITEMS_PER_REQUEST = 100
DEFAULT_FILES_PER_REQUEST = 30
# The Free plan's purge rate and bucket: what every account allows.
DEFAULT_RATE = 5 / 60
DEFAULT_BURST = 25
# Scannable credential prefixes (developers.cloudflare.com/fundamentals/api/get-started/
# token-formats): user and account API tokens, and the Global API Key.
TOKEN_PREFIXES = ("cfut_", "cfat_", "cfk_")
GLOBAL_API_KEY_PREFIX = "cfk_"

# The purge body's key per mode.
_BODY_KEY = {
    "files": "files",
    "prefixes": "prefixes",
    "hosts": "hosts",
    "tags": "tags",
    "everything": "purge_everything",
}
_ZONE_ID = re.compile(r"^[0-9a-f]{32}$")
# Throttled: 971 (purge), 10429 and 10013 (the API's global limit) besides HTTP 429.
_THROTTLE_CODES = frozenset({971, 10013, 10429})
# The Authorization header's format refused (6003 with 6111 in its chain), or missing (9106).
_FORMAT_CODES = frozenset({6003, 6100, 6101, 6102, 6103, 6111, 9106})
_AUTH_CODES = frozenset({1000, 9109, 10000})
_ZONE_CODES = frozenset({1001, 1003, 7003, 7000})
_TOO_LARGE = re.compile(
    r"more than \d+|at most \d+|up to \d+|too (many|large)|maximum|exceed|\blimit", re.I
)
_SECRET = re.compile(r"\b(cfut_|cfat_|cfk_)[A-Za-z0-9_\-]+")
# A legacy Global API Key: 37 hex characters.
_LEGACY_GLOBAL_KEY = re.compile(r"^[0-9a-f]{37}$")
# Not in any error: `purge` resolves it by halving the batch.
BATCH_TOO_LARGE = "BatchTooLarge"

log = get_logger(NAME)


# -- the per-account bucket -------------------------------------------------------------------


class TokenBucket:
    """Cloudflare's purge limit, mirrored: `rate` requests per second, at most `burst` at
    once. `take` reserves a token and waits for it (stop and deadline respected); `hold`
    stops it for a while (after a 429, for every purge of the account)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1; got {rate}, {burst}")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._last = clock()
        self._blocked_until = 0.0

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def take(self, deadline: float, stop: threading.Event) -> float:
        """Wait for a token; returns the seconds waited. PurgeError (retryable) when the
        token would come after `deadline`, or `stop` is set meanwhile."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            self._tokens -= 1  # reserved: later callers queue behind this one
            wait = max(0.0, -self._tokens / self.rate, self._blocked_until - now)
            if now + wait > deadline:
                self._tokens += 1
                raise PurgeError(
                    "Timeout",
                    f"the account's purge rate limit ({self.rate:g}/s) leaves no request before "
                    f"the deadline (next in {wait:.1f} s)",
                    retryable=True,
                )
        if wait > 0 and stop.wait(wait):
            with self._lock:
                self._tokens += 1
            raise PurgeError(
                "Stopped", "stopped while waiting for the purge rate limit", retryable=True
            )
        return wait

    def hold(self, seconds: float) -> None:
        """No request before `seconds` from now (the API's Retry-After is authoritative: the
        tokens are left as they are)."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + seconds)


# -- plans ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Zone:
    id: str
    name: str
    account_id: str | None


@dataclass(frozen=True)
class _Group:
    """One zone's share of a purge: its hosts (empty for a zone-wide mode)."""

    zone_id: str
    hosts: tuple[str, ...]

    @property
    def targets(self) -> tuple[str, ...]:
        if not self.hosts:
            return (self.zone_id,)
        return tuple(f"{self.zone_id}/{h}" for h in self.hosts)


@dataclass
class _Operation:
    """One list of one mode in one zone (or purge_everything), sent in batches."""

    zone_id: str
    mode: str  # a body key: files, prefixes, hosts, tags, purge_everything
    items: list[str]
    size: int


@dataclass
class _Done:
    zone_id: str
    purge_ids: list[str] = field(default_factory=list)
    requests: int = 0
    items: int = 0


def _targets_of(groups: Iterable[_Group]) -> tuple[str, ...]:
    return tuple(sorted(t for g in groups for t in g.targets))


def _normalize_host(domain: str) -> str:
    return domain.strip().lower().rstrip(".")


def _candidates(host: str) -> list[str]:
    """The host, then each parent down to two labels: a subdomain zone is found first."""
    labels = host.removeprefix("*.").split(".")
    return [".".join(labels[i:]) for i in range(max(1, len(labels) - 1))]


def _operations(
    request: PurgeRequest,
    groups: Iterable[_Group],
    *,
    files_per_request: int,
    purge_everything: bool,
) -> list[_Operation]:
    """What each zone gets, in order: the list modes' items (deduplicated) and their batch
    size. Raises PurgeError when the request cannot be purged as asked."""
    ops: list[_Operation] = []
    for group in groups:
        if not group.hosts:
            ops.extend(_zone_wide(request, group.zone_id, purge_everything))
            continue
        mode = request.purge_mode if request.purge_mode in HOST_MODES else None
        if not request.paths and mode != "hosts":
            raise PurgeError("InvalidPaths", "no paths to purge", retryable=False)
        wild = [h for h in group.hosts if h.startswith("*.")]
        if wild:
            raise PurgeError(
                "WildcardDomain",
                f"{', '.join(wild)}: a wildcard host cannot be purged by URL, prefix or host; "
                "list the hosts in cache-buster.io/domains, or use cache-buster.io/"
                "cloudflare-purge: tags (or everything)",
                retryable=False,
            )
        lists: dict[str, list[str]] = {"files": [], "prefixes": [], "hosts": []}
        for host in group.hosts:
            if mode == "hosts":
                lists["hosts"].append(host)
                continue
            for path in request.paths:
                wildcard = path.endswith("*")
                if mode == "files":
                    if "*" in path:
                        raise PurgeError(
                            "InvalidPaths",
                            f'{path}: cloudflare-purge "files" takes exact paths only (use '
                            '"prefixes", or leave cloudflare-purge unset)',
                            retryable=False,
                        )
                    lists["files"].append(f"https://{host}{path}")
                elif mode == "prefixes":
                    lists["prefixes"].append(host + (path[:-1] if wildcard else path))
                elif path == "/*":
                    lists["hosts"].append(host)
                elif wildcard:
                    lists["prefixes"].append(host + path[:-1])
                else:
                    lists["files"].append(f"https://{host}{path}")
        for key, items in lists.items():
            if items:
                size = files_per_request if key == "files" else MAX_ITEMS_PER_REQUEST
                ops.append(_Operation(group.zone_id, key, list(dict.fromkeys(items)), size))
    return ops


def _zone_wide(request: PurgeRequest, zone_id: str, allowed: bool) -> list[_Operation]:
    mode = request.purge_mode
    if mode not in ZONE_MODES and request.tags:
        mode = "tags"
    if mode == "tags":
        if not request.tags:
            raise PurgeError(
                "NoTags",
                "cloudflare-purge is tags but no cache tags are given (cache-buster.io/"
                "cloudflare-tags)",
                retryable=False,
            )
        tags = list(dict.fromkeys(request.tags))
        return [_Operation(zone_id, "tags", tags, MAX_ITEMS_PER_REQUEST)]
    if mode == "everything":
        if not allowed:
            raise PurgeError(
                "PurgeEverythingDisabled",
                f"cloudflare-purge is everything, which would empty zone {zone_id}'s whole "
                "cache; set CLOUDFLARE_PURGE_EVERYTHING=true to allow it",
                retryable=False,
            )
        return [_Operation(zone_id, "purge_everything", [], 1)]
    raise PurgeError(
        "InvalidTarget",
        f"target {zone_id} names a whole zone, but the purge mode is {mode or 'unset'} (tags "
        "or everything expected: did cache-buster.io/cloudflare-purge change since the plan?)",
        retryable=False,
    )


# -- the provider -----------------------------------------------------------------------------


class CloudflareProvider:
    name = NAME

    def __init__(
        self,
        token: str | Callable[[], str | None],
        *,
        api_url: str = DEFAULT_API_URL,
        files_per_request: int = DEFAULT_FILES_PER_REQUEST,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        purge_everything: bool = False,
        zone_cache_ttl: float = 3600.0,
        miss_ttl: float = 60.0,
        backoff_base: float = PROVIDER_THROTTLE.base,
        backoff_cap: float = PROVIDER_THROTTLE.cap,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        """`token`: the API token, or a callable returning it (read at every plan/purge).
        `rate` (requests per second) and `burst`: each account's purge bucket (default: the
        Free plan's 5 per minute, 25). `zone_cache_ttl`/`miss_ttl`: how long a zone lookup's
        answer (found / not found) is kept."""
        if not 1 <= files_per_request <= 500:
            raise ValueError(f"files_per_request must be 1 to 500, not {files_per_request}")
        self._token = token if callable(token) else (lambda: token)
        self.api_url = api_url.rstrip("/")
        self.files_per_request = files_per_request
        self.rate = rate
        self.burst = burst
        self.purge_everything = purge_everything
        self.zone_cache_ttl = zone_cache_ttl
        self.miss_ttl = miss_ttl
        # The throttling pace: PROVIDER_THROTTLE unless a test or the simulation speeds it up.
        self.backoff = BackoffPolicy(base=backoff_base, cap=backoff_cap)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        # host -> (expires at, its zone); zone name -> (expires at, zone or None: no such zone)
        self._hosts: dict[str, tuple[float, Zone]] = {}
        self._names: dict[str, tuple[float, Zone | None]] = {}
        # zone id -> account id (None: unreadable, the shared bucket)
        self._accounts: dict[str, str | None] = {}
        self._buckets: dict[str, TokenBucket] = {}
        # (zone id, mode) -> the batch size the API accepted after refusing a larger one
        self._sizes: dict[tuple[str, str], int] = {}

    def __repr__(self) -> str:
        return f"CloudflareProvider(api_url={self.api_url!r})"

    # -- the interface ----------------------------------------------------------------------

    def plan(
        self, request: PurgeRequest, *, timeout: float = 30.0, stop: threading.Event | None = None
    ) -> tuple[str, ...]:
        """The targets `purge(request)` would purge, sorted. Reads only: the zone lookups
        (cached), none with `request.zone` or `request.targets`. Raises PurgeError as `purge`
        does (NoDomains, NoZoneForDomain, AccessDenied, ...)."""
        deadline = self._clock() + timeout
        plog = _plog(request)
        token = self._read_token()
        with self._session(token) as session:
            groups = self._groups(
                request, session, token, deadline, stop or threading.Event(), plog
            )
        # The modes are checked now too: a plan that purge() must refuse is no plan.
        _operations(
            request,
            groups,
            files_per_request=self.files_per_request,
            purge_everything=self.purge_everything,
        )
        return _targets_of(groups)

    def purge(
        self,
        request: PurgeRequest,
        *,
        timeout: float,
        stop: threading.Event | None = None,
        on_requested: OnRequested | None = None,
    ) -> PurgeResult:
        requested_at = time.time()
        deadline = self._clock() + timeout
        stop = stop or threading.Event()
        plog = _plog(request)
        token = self._read_token()
        done: dict[str, _Done] = {}
        with self._session(token) as session:
            groups = self._groups(request, session, token, deadline, stop, plog)
            ops = _operations(
                request,
                groups,
                files_per_request=self.files_per_request,
                purge_everything=self.purge_everything,
            )
            for group in groups:
                zone_ops = [op for op in ops if op.zone_id == group.zone_id]
                bucket = self._bucket(session, token, group.zone_id, deadline, stop, plog)
                zone_done = done.setdefault(group.zone_id, _Done(group.zone_id))
                for op in zone_ops:
                    try:
                        self._send(session, token, op, bucket, zone_done, deadline, stop, plog)
                    except PurgeError as err:
                        raise _with_progress(err, done) from err
                ids = ",".join(dict.fromkeys(zone_done.purge_ids))
                for target in group.targets:
                    _report(on_requested, target, ids, plog)
        finished_at = time.time()
        zones = [d.zone_id for d in done.values()]
        purge_ids = list(dict.fromkeys(i for d in done.values() for i in d.purge_ids))
        modes = list(dict.fromkeys(op.mode for op in ops))
        extra = {
            "zones": ",".join(zones),
            "modes": ",".join(modes),
            "requests": str(sum(d.requests for d in done.values())),
            "items": str(sum(d.items for d in done.values())),
        }
        plog.info(
            "cloudflare.purge.finished",
            zone=extra["zones"],
            modes=extra["modes"],
            requests=int(extra["requests"]),
            items=int(extra["items"]),
            purge_id=",".join(purge_ids),
            seconds=round(finished_at - requested_at, 3),
        )
        return PurgeResult(
            provider=NAME,
            target=",".join(zones),
            request_id=",".join(purge_ids),
            # Accepted means done: Cloudflare's Instant Purge has nothing to wait for.
            status=PurgeStatus.COMPLETED,
            paths=tuple(request.paths),
            requested_at=requested_at,
            finished_at=finished_at,
            reused=False,
            extra=extra,
        )

    def preview(self, request: PurgeRequest) -> tuple[PlannedCall, ...]:
        """Every purge_cache request `purge` would send for the planned targets, batch by
        batch at the sizes it would use (a size halved before is kept), token masked."""
        groups = _groups_of_targets(request.targets)
        ops = _operations(
            request,
            groups,
            files_per_request=self.files_per_request,
            purge_everything=self.purge_everything,
        )
        headers = (("Authorization", "Bearer ****"), ("Content-Type", "application/json"))
        calls: list[PlannedCall] = []
        for op in ops:
            url = f"{self.api_url}/zones/{op.zone_id}/purge_cache"
            if op.mode == "purge_everything":
                calls.append(PlannedCall("POST", url, {"purge_everything": True}, headers))
                continue
            with self._lock:
                size = min(op.size, self._sizes.get((op.zone_id, op.mode), op.size))
            for start in range(0, len(op.items), size):
                body = {op.mode: op.items[start : start + size]}
                calls.append(PlannedCall("POST", url, body, headers))
        return tuple(calls)

    def find(
        self, request: PurgeRequest, *, timeout: float, stop: threading.Event | None = None
    ) -> PurgeResult | None:
        """Always None: Cloudflare has no record of past purges to find one by key, so a
        resumed purge is sent again (a duplicate purge is harmless, and rate limited)."""
        return None

    # -- targets ----------------------------------------------------------------------------

    def _groups(
        self,
        request: PurgeRequest,
        session: requests.Session,
        token: str,
        deadline: float,
        stop: threading.Event,
        plog: EventLogger,
    ) -> list[_Group]:
        if request.purge_mode is not None and request.purge_mode not in MODES:
            raise PurgeError(
                "InvalidMode",
                f"purge mode {request.purge_mode!r} is not one of {', '.join(MODES)}",
                retryable=False,
            )
        recorded = [t.strip() for t in request.targets if t.strip()]
        if recorded and not request.domains:
            return _groups_of_targets(recorded)
        zone_wide = request.purge_mode in ZONE_MODES
        hosts = sorted(dict.fromkeys(_normalize_host(d) for d in request.domains if d.strip()))
        if request.zone:
            if not hosts and not zone_wide:
                raise PurgeError(
                    NO_DOMAINS,
                    "a files, prefixes or hosts purge needs the app's domains (the zone alone "
                    "names no URL)",
                    retryable=False,
                )
            return [_Group(request.zone, () if zone_wide else tuple(hosts))]
        if not hosts:
            raise PurgeError(
                NO_DOMAINS, "no domains to look up and no zone annotation", retryable=False
            )
        by_zone: dict[str, list[str]] = {}
        for host in hosts:
            zone = self._zone_for_host(session, token, host, deadline, stop, plog)
            by_zone.setdefault(zone.id, []).append(host)
        return [
            _Group(zid, () if zone_wide else tuple(sorted(hs)))
            for zid, hs in sorted(by_zone.items())
        ]

    def _zone_for_host(
        self,
        session: requests.Session,
        token: str,
        host: str,
        deadline: float,
        stop: threading.Event,
        plog: EventLogger,
    ) -> Zone:
        with self._lock:
            cached = self._hosts.get(host)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        names = _candidates(host)
        for name in names:
            zone = self._zone_named(session, token, name, deadline, stop, plog)
            if zone is not None:
                with self._lock:
                    self._hosts[host] = (self._clock() + self.zone_cache_ttl, zone)
                return zone
        raise PurgeError(
            "NoZoneForDomain",
            f"no Cloudflare zone named {' or '.join(names)} is visible to the API token (it "
            f"lists only zones it has {ZONE_READ_PERMISSION} on); add the zone, grant the "
            "permission, or set the cache-buster.io/zone annotation (or ZONE_ID)",
            retryable=False,
        )

    def _zone_named(
        self,
        session: requests.Session,
        token: str,
        name: str,
        deadline: float,
        stop: threading.Event,
        plog: EventLogger,
    ) -> Zone | None:
        now = self._clock()
        with self._lock:
            cached = self._names.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        envelope = self._call(
            session,
            token,
            "GET",
            "/zones",
            operation="zones.list",
            zone_id=None,
            params={"name": name, "per_page": "50"},
            deadline=deadline,
            stop=stop,
            plog=plog,
        )
        found = [
            z
            for z in envelope.get("result") or []
            if isinstance(z, Mapping) and str(z.get("name", "")).lower() == name
        ]
        # A name in two accounts the token sees: the active zone serves the traffic.
        found.sort(key=lambda z: z.get("status") != "active")
        zone = None
        if found:
            doc = found[0]
            account = doc.get("account")
            account_id = account.get("id") if isinstance(account, Mapping) else None
            zone = Zone(str(doc.get("id")), name, str(account_id) if account_id else None)
        ttl = self.zone_cache_ttl if zone else self.miss_ttl
        with self._lock:
            self._names[name] = (self._clock() + ttl, zone)
            if zone is not None:
                self._accounts[zone.id] = zone.account_id
        plog.info(
            "cloudflare.zone.lookup",
            name=name,
            zone=zone.id if zone else None,
            account=zone.account_id if zone else None,
        )
        return zone

    def _bucket(
        self,
        session: requests.Session,
        token: str,
        zone_id: str,
        deadline: float,
        stop: threading.Event,
        plog: EventLogger,
    ) -> TokenBucket:
        """The bucket of the zone's account (its id read once with `GET /zones/{id}` when no
        lookup gave it)."""
        with self._lock:
            known = zone_id in self._accounts
            account = self._accounts.get(zone_id)
        if not known:
            try:
                envelope = self._call(
                    session,
                    token,
                    "GET",
                    f"/zones/{zone_id}",
                    operation="zones.get",
                    zone_id=zone_id,
                    deadline=deadline,
                    stop=stop,
                    plog=plog,
                )
            except PurgeError as err:
                if err.code != "AccessDenied":
                    raise
                # A purge-only token: the purge may still work; its account stays unknown.
                plog.warning(
                    "cloudflare.zone.account_unknown", zone=zone_id, error=err.message[:300]
                )
            else:
                result = envelope.get("result")
                acc = result.get("account") if isinstance(result, Mapping) else None
                raw = acc.get("id") if isinstance(acc, Mapping) else None
                account = str(raw) if raw else None
            with self._lock:
                self._accounts[zone_id] = account
        key = account or "(unknown account)"
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self._clock)
            return bucket

    # -- requests ---------------------------------------------------------------------------

    def _send(
        self,
        session: requests.Session,
        token: str,
        op: _Operation,
        bucket: TokenBucket,
        done: _Done,
        deadline: float,
        stop: threading.Event,
        plog: EventLogger,
    ) -> None:
        """Every batch of `op`, halving one the API refuses as too large (the smaller size is
        kept for the zone's later purges)."""
        if op.mode == "purge_everything":
            body: dict[str, Any] = {"purge_everything": True}
            self._purge_once(session, token, op, body, 0, 1, bucket, done, deadline, stop, plog)
            return
        with self._lock:
            op.size = min(op.size, self._sizes.get((op.zone_id, op.mode), op.size))
        queue = list(op.items)
        batch_no = 0
        while queue:
            batch = queue[: op.size]
            batch_no += 1
            try:
                self._purge_once(
                    session,
                    token,
                    op,
                    {op.mode: batch},
                    len(batch),
                    batch_no,
                    bucket,
                    done,
                    deadline,
                    stop,
                    plog,
                )
            except PurgeError as err:
                if err.code != BATCH_TOO_LARGE:
                    raise
                if len(batch) == 1:
                    raise PurgeError("CloudflareRefused", err.message, retryable=False) from None
                op.size = max(1, len(batch) // 2)
                with self._lock:
                    self._sizes[(op.zone_id, op.mode)] = op.size
                batch_no -= 1
                plog.warning(
                    "cloudflare.batch.halved",
                    zone=op.zone_id,
                    mode=op.mode,
                    items=len(batch),
                    size=op.size,
                    error=err.message[:300],
                )
                continue
            del queue[: len(batch)]

    def _purge_once(
        self,
        session: requests.Session,
        token: str,
        op: _Operation,
        body: dict[str, Any],
        items: int,
        batch_no: int,
        bucket: TokenBucket,
        done: _Done,
        deadline: float,
        stop: threading.Event,
        plog: EventLogger,
    ) -> None:
        envelope = self._call(
            session,
            token,
            "POST",
            f"/zones/{op.zone_id}/purge_cache",
            operation="purge",
            zone_id=op.zone_id,
            json_body=body,
            bucket=bucket,
            deadline=deadline,
            stop=stop,
            plog=plog,
        )
        result = envelope.get("result")
        purge_id = str(result.get("id") or "") if isinstance(result, Mapping) else ""
        if purge_id:
            done.purge_ids.append(purge_id)
        done.requests += 1
        done.items += items
        plog.info(
            "cloudflare.purge",
            zone=op.zone_id,
            mode=op.mode,
            items=items,
            batch=batch_no,
            purge_id=purge_id,
        )

    def _call(
        self,
        session: requests.Session,
        token: str,
        method: str,
        path: str,
        *,
        operation: str,
        zone_id: str | None,
        deadline: float,
        stop: threading.Event,
        plog: EventLogger,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        bucket: TokenBucket | None = None,
    ) -> dict[str, Any]:
        """One API call, retried (throttling, 5xx, network) until the deadline; the envelope
        of a success, else PurgeError."""
        attempt = 0
        while True:
            if bucket is not None:
                bucket.take(deadline, stop)
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise PurgeError(
                    "Timeout", f"{_describe(operation, zone_id)}: past the deadline", retryable=True
                )
            retry_after: float | None = None
            try:
                response = session.request(
                    method,
                    self.api_url + path,
                    params=dict(params) if params else None,
                    json=json_body,
                    timeout=(
                        min(self._connect_timeout, remaining),
                        min(self._read_timeout, remaining),
                    ),
                )
            except requests.RequestException as err:
                failure = PurgeError(
                    "ConnectionError",
                    f"{_describe(operation, zone_id)}: {type(err).__name__}: "
                    f"{_scrub(str(err), token)[:300]}",
                    retryable=True,
                )
            else:
                envelope = _envelope(response)
                if response.ok and envelope.get("success") is not False:
                    return envelope
                failure = failure_of(response.status_code, envelope, operation, zone_id, token)
                retry_after = _retry_after(response.headers.get("Retry-After"))
            if not failure.retryable:
                raise failure
            attempt += 1
            delay = self.backoff.honour(retry_after, attempt, self._rng)
            if failure.code == "Throttled" and bucket is not None:
                bucket.hold(delay)  # the account's other purges wait too
            if self._clock() + delay >= deadline:
                raise PurgeError(
                    failure.code,
                    f"still failing after {attempt} attempts, giving up at the deadline: "
                    f"{failure.message}",
                    retryable=True,
                )
            plog.warning(
                "cloudflare.backoff",
                operation=operation,
                zone=zone_id,
                code=failure.code,
                attempt=attempt,
                delay=round(delay, 3),
                retry_after=retry_after,
            )
            if stop.wait(delay):
                raise PurgeError(
                    "Stopped",
                    f"stopped while retrying {_describe(operation, zone_id)}",
                    retryable=True,
                )

    def _read_token(self) -> str:
        try:
            token = (self._token() or "").strip()
        except ValueError as err:  # an unreadable token file: maybe mid-rotation
            raise PurgeError("TokenUnavailable", str(err), retryable=True) from None
        token = token[7:].strip() if token[:7].lower() == "bearer " else token
        if not token:
            raise PurgeError(
                "NoToken", f"no Cloudflare API token: {UNAVAILABLE_HINT}", retryable=False
            )
        if token.startswith(GLOBAL_API_KEY_PREFIX):
            raise PurgeError("InvalidToken", _global_key_hint(), retryable=False)
        return token

    def _session(self, token: str) -> requests.Session:
        session = requests.Session()
        session.headers.update(
            {
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "User-Agent": "cache-buster",
            }
        )
        return session


# -- helpers ----------------------------------------------------------------------------------


def _groups_of_targets(targets: Iterable[str]) -> list[_Group]:
    """A replay's groups: exactly the recorded targets, whatever the domains say now."""
    by_zone: dict[str, list[str]] = {}
    for target in targets:
        zone_id, _, host = target.partition("/")
        if not _ZONE_ID.match(zone_id):
            raise PurgeError(
                "InvalidTarget", f"recorded target {target!r} names no zone id", retryable=False
            )
        hosts = by_zone.setdefault(zone_id, [])
        if host:
            hosts.append(_normalize_host(host))
    return [_Group(z, tuple(sorted(dict.fromkeys(hs)))) for z, hs in sorted(by_zone.items())]


def _envelope(response: requests.Response) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _errors(envelope: Mapping[str, Any]) -> list[tuple[int, str]]:
    """(code, message) of every error, their `error_chain`s flattened."""
    out: list[tuple[int, str]] = []

    def walk(items: Any) -> None:
        for e in items if isinstance(items, list) else []:
            if not isinstance(e, Mapping):
                continue
            try:
                code = int(e.get("code") or 0)
            except (TypeError, ValueError):
                code = 0
            out.append((code, str(e.get("message") or "")))
            walk(e.get("error_chain"))

    walk(envelope.get("errors"))
    return out


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the policy's own delay then


def _describe(operation: str, zone_id: str | None) -> str:
    if operation == "purge":
        return f"purge_cache on zone {zone_id}"
    if operation == "zones.get":
        return f"GET /zones/{zone_id}"
    return "GET /zones"


def _global_key_hint() -> str:
    return (
        f'the token is a Global API Key ("{GLOBAL_API_KEY_PREFIX}..."), which Cloudflare refuses '
        f"as a Bearer token; create an API token with {PURGE_PERMISSION} and "
        f"{ZONE_READ_PERMISSION}"
    )


def failure_of(
    status: int,
    envelope: Mapping[str, Any],
    operation: str,
    zone_id: str | None,
    token: str = "",
) -> PurgeError:
    """The one mapping of a Cloudflare error answer to a PurgeError: what it means, and whether
    the same request may succeed later. The API's messages are kept (the token never)."""
    errors = _errors(envelope)
    codes = {c for c, _ in errors}
    said = _scrub("; ".join(f"{c}: {m}" for c, m in errors) or f"HTTP {status}", token)[:500]
    what = _describe(operation, zone_id)
    if status == 429 or codes & _THROTTLE_CODES:
        return PurgeError("Throttled", f"{what}: rate limited ({said})", retryable=True)
    if status >= 500:
        return PurgeError(f"HTTP{status}", f"{what}: {said}", retryable=True)
    permission = PURGE_PERMISSION if operation == "purge" else ZONE_READ_PERMISSION
    if codes & _FORMAT_CODES:
        if token.startswith(GLOBAL_API_KEY_PREFIX) or _LEGACY_GLOBAL_KEY.match(token):
            hint = _global_key_hint()
        else:
            hint = (
                "Cloudflare refused the Authorization header's format; the setting must hold an "
                f"API token (a Global API Key is refused as a Bearer token) with {permission}"
            )
        return PurgeError("InvalidToken", f"{what}: {hint} ({said})", retryable=False)
    if codes & _ZONE_CODES or status == 404:
        return PurgeError(
            "UnknownZone",
            f"zone {zone_id} does not exist or is not reachable with this token (check ZONE_ID "
            f"or the cache-buster.io/zone annotation) ({said})",
            retryable=False,
        )
    if status in (401, 403) or codes & _AUTH_CODES:
        hint = f"; {_global_key_hint()}" if token.startswith(GLOBAL_API_KEY_PREFIX) else ""
        if operation != "purge":
            hint += " (or set the cache-buster.io/zone annotation, or ZONE_ID)"
        return PurgeError(
            "AccessDenied",
            f"Cloudflare refused {what} ({said}); the API token needs {permission} on the "
            f"zone{hint}",
            retryable=False,
        )
    if status in (400, 413) and any(_TOO_LARGE.search(m) for _, m in errors):
        return PurgeError(BATCH_TOO_LARGE, f"{what}: {said}", retryable=False)
    code = f"Cloudflare{min(codes)}" if codes else f"HTTP{status}"
    return PurgeError(code, f"{what}: {said}", retryable=False)


def _scrub(text: str, token: str) -> str:
    """`text` without the token, nor anything shaped like a Cloudflare credential."""
    if token:
        text = text.replace(token, "[redacted]")
    return _SECRET.sub(lambda m: m.group(1) + "[redacted]", text)


def _with_progress(err: PurgeError, done: Mapping[str, _Done]) -> PurgeError:
    sent = [d for d in done.values() if d.requests]
    if not sent:
        return err
    summary = ", ".join(f"zone {d.zone_id}: {d.requests} requests" for d in sent)
    # A retry sends those again: harmless (Cloudflare has no idempotency to honour anyway).
    return PurgeError(
        err.code, f"{err.message} (already purged: {summary})", retryable=err.retryable
    )


def _plog(request: PurgeRequest) -> EventLogger:
    return log.bind(app=request.app, namespace=request.namespace, rollout_id=request.rollout_id)


def _report(on_requested: OnRequested | None, target: str, ids: str, plog: EventLogger) -> None:
    """Hand the purge ids to the caller; its failure does not undo nor fail the purge."""
    if on_requested is None or not ids:
        return
    try:
        on_requested(target, ids)
    except Exception as exc:
        plog.error("cloudflare.on_requested.failed", target=target, error=repr(exc)[:300])
