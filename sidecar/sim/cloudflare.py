"""A Cloudflare API v4 emulator (real HTTP, JSON) for the calls cache-buster makes.

Written from Cloudflare's API reference and docs: `GET /zones?name=`, `GET /zones/{id}` and
`POST /zones/{id}/purge_cache`, under `/client/v4` like api.cloudflare.com. What it models:

- Zones with their account and plan, subdomain zones included (`shop.example.com` next to
  `example.com`). `GET /zones` lists only the zones the token may read, paged
  (`page`, `per_page` 5 to 50, default 20), filtered by an exact `name`.
- Every answer in Cloudflare's envelope: `{"success", "errors": [{"code", "message"}],
  "messages", "result"}` (plus `result_info` on lists).
- API tokens with permissions on all zones or some (`ZONE_READ` is the dashboard's
  Zone > Zone > Read, `CACHE_PURGE` its Zone > Cache Purge > Purge). No Authorization header:
  400, code 9106. A header that is not `Bearer <token>`, or a Global API Key (`cfk_...`) sent as
  a Bearer token: 400, code 6003 with 6111 ("Invalid format for Authorization header") in its
  `error_chain`, as users report (so does a 37-hex Global API Key of the older format). An
  unknown token: 403, code 9109. A token without the
  permission: 403, code 10000 ("Authentication error").
- An unknown or malformed zone id: 400, codes 7003 ("Could not route to ..., perhaps your
  object identifier is invalid?") and 7000.
- The purge body checked like the API does: exactly one of `files`, `prefixes`, `hosts`,
  `tags`, `purge_everything: true` (else code 1012, the API's message); a list where a list is
  due (code 1014); `files` as URLs or `{"url", "headers"}`; `prefixes` without scheme, query
  or fragment and at most 31 path separators (the prefix-purge docs); every URL, prefix and host
  inside the zone and not inside a more specific zone of the emulator (`strict_hosts`).
- Per-request limits per zone: `files` 30 (500 on Enterprise), the other lists 100 (the
  purge docs' "Availability and limits"); a larger list is refused with HTTP 400 and a message
  naming the limit. Cloudflare documents no code for that refusal: `TOO_MANY_ITEMS_CODE` is the
  emulator's own.
- An optional token bucket per account (`set_rate_limit`, or `plan_rate_limit` with the
  documented plan figures): past it, 429 with code 971 ("Please wait and consider throttling
  your request speed") and `Retry-After`. `throttle_next` injects such 429s (a storm) and
  `fail_next` any other error (e.g. 503).
- Every request recorded (`requests`), and every purge Cloudflare accepted (`purges`: zone,
  mode, items, token, time) for tests to count. Each accepted purge answers a fresh
  `result.id`.

Stdlib HTTP server, loopback only, port 0. The emulator imports nothing of the product.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from sidecar.sim.lifecycle import QuietHTTPServer, Service, serve, shut
from sidecar.sim.simlog import get_logger

if TYPE_CHECKING:
    pass

API_PREFIX = "/client/v4"
# Not a secret: the emulator's own credential, accepted with every permission on every zone.
TEST_TOKEN = "cfut_cachebusteremulatortesttoken00000000000000"
ZONE_READ = "zone.read"  # Zone > Zone > Read
CACHE_PURGE = "cache.purge"  # Zone > Cache Purge > Purge
PERMISSIONS = (ZONE_READ, CACHE_PURGE)
GLOBAL_API_KEY_PREFIX = "cfk_"

MODES = ("files", "prefixes", "hosts", "tags", "purge_everything")
LIST_MODES = MODES[:4]
OPERATIONS = ("zones.list", "zones.get", "purge")

# Per request: URLs 30 on Free, Pro and Business zones, 500 on Enterprise; hosts, prefixes
# and tags 100 on every plan.
PLAN_FILES_LIMIT = {"free": 30, "pro": 30, "business": 30, "enterprise": 500}
LIST_LIMIT = 100
# Purge requests per account (rate per second, bucket): Free 5 per minute (25), Pro 5/s
# (25), Business 10/s (50), Enterprise 50/s (500).
PLAN_RATE = {
    "free": (5 / 60, 25),
    "pro": (5.0, 25),
    "business": (10.0, 50),
    "enterprise": (50.0, 500),
}
# Prefix purges allow at most 31 path separators.
MAX_PREFIX_SEPARATORS = 31

TOO_MANY_ITEMS_CODE = 1019  # the emulator's own: the docs name none
FOREIGN_HOST_CODE = 1016  # the emulator's own: an item outside the zone
THROTTLED_CODE = 971
THROTTLED_MESSAGE = "Please wait and consider throttling your request speed"
ONE_MODE_MESSAGE = (
    'Request must contain one of "purge_everything", "files", "tags", "hosts" or "prefixes"'
)

_ZONE_ID = re.compile(r"^[0-9a-f]{32}$")
# A Global API Key of the format before the `cfk_` prefix: 37 hex characters.
_LEGACY_GLOBAL_KEY = re.compile(r"^[0-9a-f]{37}$")
_HOST = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
log = get_logger("cloudflare")


def account_id_for(name: str) -> str:
    """The account id the emulator gives the account `name` (stable: derived from the name)."""
    return hashlib.sha256(f"account:{name}".encode()).hexdigest()[:32]


# -- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the emulator answered it."""

    method: str
    path: str
    query: dict[str, str]
    operation: str  # one of OPERATIONS, or "unknown"
    zone_id: str | None
    token: str | None
    status: int
    error_codes: tuple[int, ...]
    # The purge body's mode and items, when it had one mode.
    mode: str | None
    items: tuple[str, ...]
    time: float
    monotonic: float


@dataclass(frozen=True)
class PurgeRecord:
    """One purge Cloudflare accepted: what it removed and for whom."""

    zone_id: str
    zone_name: str
    account_id: str
    mode: str  # one of MODES
    items: tuple[str, ...]  # () for purge_everything
    token: str
    purge_id: str
    time: float
    monotonic: float


# -- state ------------------------------------------------------------------------------------


@dataclass
class _Zone:
    id: str
    name: str
    account_id: str
    account_name: str
    plan: str
    status: str
    files_limit: int
    list_limit: int
    created: float


@dataclass
class _Token:
    value: str
    permissions: frozenset[str]
    zones: frozenset[str] | None  # None: every zone

    def may(self, permission: str, zone_id: str) -> bool:
        return permission in self.permissions and (self.zones is None or zone_id in self.zones)


@dataclass
class _Bucket:
    rate: float  # tokens per second
    burst: float
    tokens: float
    last: float

    def take(self, now: float) -> float | None:
        """Take one; None when taken, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.rate


@dataclass
class _Injection:
    remaining: int
    operation: str | None
    status: int
    code: int
    message: str
    retry_after: float | None
    skip: int = 0  # matching requests let through first


class _ApiError(Exception):
    def __init__(
        self,
        status: int,
        errors: list[dict[str, Any]],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(errors[0]["message"] if errors else str(status))
        self.status = status
        self.errors = errors
        self.headers = dict(headers or {})


def _error(code: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **extra}


@dataclass
class _Call:
    """What the router learnt about a request, for the record."""

    operation: str = "unknown"
    zone_id: str | None = None
    token: str | None = None
    mode: str | None = None
    items: tuple[str, ...] = ()
    purge: PurgeRecord | None = None


@dataclass
class _Response:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class CloudflareEmulator(Service):
    """A local Cloudflare API. Use as a context manager or call start()/stop(); `url` is the
    API base (`.../client/v4`), what the provider's `api_url` takes."""

    def __init__(
        self,
        *,
        tokens: Iterable[str] = (TEST_TOKEN,),
        strict_hosts: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.strict_hosts = strict_hosts
        self._clock = clock
        self._lock = threading.Lock()
        self._zones: dict[str, _Zone] = {}  # insertion order = list order
        self._tokens: dict[str, _Token] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._requests: list[RecordedRequest] = []
        self._purges: list[PurgeRecord] = []
        self._injections: list[_Injection] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for value in tokens:
            self.add_token(PERMISSIONS, value=value)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> CloudflareEmulator:
        if self._server is not None:
            return self
        emulator = self

        class Handler(_Handler):
            pass

        Handler.emulator = emulator
        server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        server.name = "cloudflare"
        self._server = server
        self._thread = serve(server, "cloudflare-emulator")
        log.info("sim.cloudflare.started", url=self.url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        shut(server, thread)

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("CloudflareEmulator is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{API_PREFIX}"

    # -- world setup ----------------------------------------------------------------------

    def add_zone(
        self,
        name: str,
        account: str = "default",
        *,
        zone_id: str | None = None,
        plan: str = "free",
        files_limit: int | None = None,
        list_limit: int | None = None,
        status: str = "active",
    ) -> str:
        """Create a zone (a subdomain zone too: `shop.example.com` next to `example.com`) in
        the account named `account`; returns its id. The limits default to the plan's."""
        if plan not in PLAN_FILES_LIMIT:
            raise ValueError(f"plan must be one of {', '.join(PLAN_FILES_LIMIT)}, not {plan!r}")
        zid = zone_id or secrets.token_hex(16)
        if not _ZONE_ID.match(zid):
            raise ValueError(f"a zone id is 32 lower-case hex characters, not {zid!r}")
        zone = _Zone(
            id=zid,
            name=name.lower().rstrip("."),
            account_id=account_id_for(account),
            account_name=account,
            plan=plan,
            status=status,
            files_limit=PLAN_FILES_LIMIT[plan] if files_limit is None else files_limit,
            list_limit=LIST_LIMIT if list_limit is None else list_limit,
            created=time.time(),
        )
        with self._lock:
            if zid in self._zones:
                raise ValueError(f"zone {zid} already exists")
            if any(z.name == zone.name for z in self._zones.values()):
                raise ValueError(f"a zone named {zone.name} already exists")
            self._zones[zid] = zone
        return zid

    def set_limits(
        self, zone_id: str, *, files: int | None = None, lists: int | None = None
    ) -> None:
        """Change a zone's per-request limits (None: leave as is)."""
        with self._lock:
            zone = self._zones[zone_id]
            if files is not None:
                zone.files_limit = files
            if lists is not None:
                zone.list_limit = lists

    def add_token(
        self,
        permissions: Iterable[str] = PERMISSIONS,
        *,
        zones: Iterable[str] | None = None,
        value: str | None = None,
    ) -> str:
        """Register an API token with `permissions` (ZONE_READ, CACHE_PURGE) on `zones` (ids;
        None: every zone, present and future); returns its value."""
        perms = frozenset(permissions)
        unknown = perms - set(PERMISSIONS)
        if unknown:
            raise ValueError(f"unknown permissions {sorted(unknown)}; use {PERMISSIONS}")
        token = value or "cfut_" + secrets.token_urlsafe(30).replace("-", "a").replace("_", "b")
        with self._lock:
            self._tokens[token] = _Token(token, perms, None if zones is None else frozenset(zones))
        return token

    def revoke_token(self, value: str) -> None:
        with self._lock:
            self._tokens.pop(value, None)

    def account_id(self, account: str = "default") -> str:
        return account_id_for(account)

    def set_rate_limit(self, account: str, rate: float | None, burst: float = 1.0) -> None:
        """Enforce a token bucket on the account's purge requests: `rate` per second, `burst`
        at most (None: no limit, the default). The bucket starts full."""
        key = account_id_for(account)
        with self._lock:
            if rate is None:
                self._buckets.pop(key, None)
            else:
                self._buckets[key] = _Bucket(rate, burst, burst, self._clock())

    def plan_rate_limit(self, account: str, plan: str) -> None:
        """The documented purge rate limit of `plan` on the account."""
        rate, burst = PLAN_RATE[plan]
        self.set_rate_limit(account, rate, burst)

    # -- fault injection ------------------------------------------------------------------

    def throttle_next(
        self,
        n: int,
        *,
        retry_after: float | None = 1.0,
        operation: str | None = "purge",
        skip: int = 0,
    ) -> None:
        """Answer the next n matching requests (after `skip` of them) 429, code 971, with
        `Retry-After` (seconds; a fraction is the emulator's liberty for fast tests; None: no
        header)."""
        self._inject(n, operation, 429, THROTTLED_CODE, THROTTLED_MESSAGE, retry_after, skip)

    def fail_next(
        self,
        n: int,
        *,
        status: int = 500,
        code: int = 10001,
        message: str = "injected error",
        operation: str | None = None,
        skip: int = 0,
    ) -> None:
        """Answer the next n matching requests (after `skip` of them; after authentication)
        with this error."""
        self._inject(n, operation, status, code, message, None, skip)

    def clear_injections(self) -> None:
        with self._lock:
            self._injections = []

    def _inject(
        self,
        n: int,
        operation: str | None,
        status: int,
        code: int,
        message: str,
        retry_after: float | None,
        skip: int,
    ) -> None:
        if operation is not None and operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; one of {OPERATIONS}")
        with self._lock:
            self._injections.append(
                _Injection(n, operation, status, code, message, retry_after, skip)
            )

    def _take_injection(self, operation: str) -> _Injection | None:
        with self._lock:
            for inj in self._injections:
                if inj.remaining > 0 and inj.operation in (None, operation):
                    if inj.skip > 0:
                        inj.skip -= 1
                        return None
                    inj.remaining -= 1
                    return inj
            self._injections = [i for i in self._injections if i.remaining > 0]
        return None

    # -- assertions -----------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def calls(self, operation: str, *, status: int | None = None) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if r.operation == operation and (status is None or r.status == status)
        ]

    def purges(self, zone_id: str | None = None) -> list[PurgeRecord]:
        """Every purge accepted, in order (of one zone when given)."""
        with self._lock:
            return [p for p in self._purges if zone_id is None or p.zone_id == zone_id]

    def purged_items(self, zone_id: str | None = None) -> list[str]:
        return [item for p in self.purges(zone_id) for item in p.items]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
            self._purges.clear()

    def wait_for(
        self,
        predicate: Callable[[CloudflareEmulator], bool],
        timeout: float = 5.0,
        interval: float = 0.01,
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() >= deadline:
                raise AssertionError(f"CloudflareEmulator: condition not met in {timeout}s")
            time.sleep(interval)

    # -- request handling (server threads) ------------------------------------------------

    def _handle(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[_Response, _Call]:
        call = _Call()
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            route = self._route(method, parts.path, call)
            token = self._authenticate(headers.get("authorization"), call)
            injection = self._take_injection(call.operation)
            if injection is not None:
                extra = {}
                if injection.retry_after is not None:
                    extra["Retry-After"] = _seconds(injection.retry_after)
                raise _ApiError(
                    injection.status, [_error(injection.code, injection.message)], extra
                )
            return route(token, query, body, call), call
        except _ApiError as err:
            envelope = {"success": False, "errors": err.errors, "messages": [], "result": None}
            return _Response(err.status, envelope, err.headers), call

    def _route(
        self, method: str, path: str, call: _Call
    ) -> Callable[[_Token, dict[str, str], bytes, _Call], _Response]:
        if not path.startswith(API_PREFIX + "/"):
            raise _ApiError(404, [_error(7000, "No route for that URI")])
        segments = [s for s in path.removeprefix(API_PREFIX).split("/") if s]
        if segments[:1] == ["zones"]:
            if method == "GET" and len(segments) == 1:
                call.operation = "zones.list"
                return self._list_zones
            if len(segments) >= 2:
                call.zone_id = segments[1]
            if method == "GET" and len(segments) == 2:
                call.operation = "zones.get"
                return self._get_zone
            if method == "POST" and segments[2:] == ["purge_cache"]:
                call.operation = "purge"
                return self._purge
        raise _ApiError(
            400,
            [
                _error(
                    7003, f"Could not route to {path}, perhaps your object identifier is invalid?"
                ),
                _error(7000, "No route for that URI"),
            ],
        )

    def _authenticate(self, header: str | None, call: _Call) -> _Token:
        if not header:
            raise _ApiError(
                400, [_error(9106, "Missing X-Auth-Key, X-Auth-Email or Authorization headers")]
            )
        scheme, _, value = header.partition(" ")
        value = value.strip()
        call.token = value or None
        if (
            scheme.lower() != "bearer"
            or not value
            or not re.fullmatch(r"[A-Za-z0-9_\-]+", value)
            or value.startswith(GLOBAL_API_KEY_PREFIX)
            or (value not in self._tokens and _LEGACY_GLOBAL_KEY.match(value))
        ):
            raise _ApiError(
                400,
                [
                    _error(
                        6003,
                        "Invalid request headers",
                        error_chain=[_error(6111, "Invalid format for Authorization header")],
                    )
                ],
            )
        with self._lock:
            token = self._tokens.get(value)
        if token is None:
            raise _ApiError(403, [_error(9109, "Invalid access token")])
        return token

    def _zone_for(self, call: _Call) -> _Zone:
        zid = call.zone_id or ""
        with self._lock:
            zone = self._zones.get(zid)
        if zone is None:
            path = f"{API_PREFIX}/zones/{zid}"
            if call.operation == "purge":
                path += "/purge_cache"
            raise _ApiError(
                400,
                [
                    _error(
                        7003,
                        f"Could not route to {path}, perhaps your object identifier is invalid?",
                    ),
                    _error(7000, "No route for that URI"),
                ],
            )
        return zone

    def _list_zones(
        self, token: _Token, query: dict[str, str], body: bytes, call: _Call
    ) -> _Response:
        if ZONE_READ not in token.permissions:
            raise _ApiError(403, [_error(9109, "Unauthorized to access requested resource")])
        try:
            page = int(query.get("page", "1"))
            per_page = int(query.get("per_page", "20"))
        except ValueError:
            raise _ApiError(400, [_error(1001, "page and per_page must be integers")]) from None
        if page < 1 or not 5 <= per_page <= 50:
            raise _ApiError(400, [_error(1001, "page must be >= 1, per_page 5 to 50")])
        name = query.get("name", "").lower().rstrip(".")
        status = query.get("status")
        with self._lock:
            zones = [
                z
                for z in self._zones.values()
                if token.may(ZONE_READ, z.id)
                and (not name or z.name == name)
                and (not status or z.status == status)
            ]
        total_pages = max(1, -(-len(zones) // per_page))
        shown = zones[(page - 1) * per_page : page * per_page]
        return _Response(
            200,
            {
                "success": True,
                "errors": [],
                "messages": [],
                "result": [_zone_json(z) for z in shown],
                "result_info": {
                    "page": page,
                    "per_page": per_page,
                    "count": len(shown),
                    "total_count": len(zones),
                    "total_pages": total_pages,
                },
            },
        )

    def _get_zone(
        self, token: _Token, query: dict[str, str], body: bytes, call: _Call
    ) -> _Response:
        zone = self._zone_for(call)
        if not token.may(ZONE_READ, zone.id):
            raise _ApiError(403, [_error(9109, "Unauthorized to access requested resource")])
        return _Response(
            200, {"success": True, "errors": [], "messages": [], "result": _zone_json(zone)}
        )

    def _purge(self, token: _Token, query: dict[str, str], body: bytes, call: _Call) -> _Response:
        zone = self._zone_for(call)
        if not token.may(CACHE_PURGE, zone.id):
            raise _ApiError(403, [_error(10000, "Authentication error")])
        self._rate_limit(zone)
        mode, items = self._parse_purge(zone, body, call)
        now_wall, now = time.time(), self._clock()
        record = PurgeRecord(
            zone_id=zone.id,
            zone_name=zone.name,
            account_id=zone.account_id,
            mode=mode,
            items=items,
            token=token.value,
            purge_id=secrets.token_hex(16),
            time=now_wall,
            monotonic=now,
        )
        call.purge = record
        return _Response(
            200,
            {"success": True, "errors": [], "messages": [], "result": {"id": record.purge_id}},
        )

    def _rate_limit(self, zone: _Zone) -> None:
        with self._lock:
            bucket = self._buckets.get(zone.account_id)
            wait = bucket.take(self._clock()) if bucket is not None else None
        if wait is not None:
            raise _ApiError(
                429, [_error(THROTTLED_CODE, THROTTLED_MESSAGE)], {"Retry-After": _seconds(wait)}
            )

    def _parse_purge(self, zone: _Zone, body: bytes, call: _Call) -> tuple[str, tuple[str, ...]]:
        try:
            doc = json.loads(body or b"null")
        except ValueError:
            raise _ApiError(400, [_error(6007, "Malformed JSON in request body")]) from None
        if not isinstance(doc, dict):
            raise _ApiError(400, [_error(6007, "Malformed JSON in request body")])
        present = [m for m in MODES if m in doc]
        if len(present) != 1:
            raise _ApiError(400, [_error(1012, ONE_MODE_MESSAGE)])
        (mode,) = present
        call.mode = mode
        if mode == "purge_everything":
            if doc[mode] is not True:
                raise _ApiError(400, [_error(1012, ONE_MODE_MESSAGE)])
            return mode, ()
        raw = doc[mode]
        if not isinstance(raw, list):
            raise _ApiError(400, [_error(1014, f'"{mode}" must be an array')])
        if not raw:
            raise _ApiError(400, [_error(1012, ONE_MODE_MESSAGE)])
        items = tuple(self._item(mode, entry) for entry in raw)
        call.items = items
        limit = zone.files_limit if mode == "files" else zone.list_limit
        if len(items) > limit:
            raise _ApiError(
                400,
                [
                    _error(
                        TOO_MANY_ITEMS_CODE,
                        f"No more than {limit} {mode} may be purged in one request "
                        f"({len(items)} given)",
                    )
                ],
            )
        if self.strict_hosts:
            for item in items:
                self._check_host(zone, mode, item)
        return mode, items

    @staticmethod
    def _item(mode: str, entry: Any) -> str:
        if mode == "files" and isinstance(entry, dict):
            entry = entry.get("url")
        if not isinstance(entry, str) or not entry:
            raise _ApiError(400, [_error(1012, f"every entry of {mode} must be a string")])
        if mode == "files":
            parts = urlsplit(entry)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise _ApiError(400, [_error(1012, f"{entry} is not an http(s) URL")])
        elif mode == "prefixes":
            if "://" in entry or "?" in entry or "#" in entry:
                raise _ApiError(
                    400,
                    [_error(1012, f"prefix {entry} has a scheme, a query string or a fragment")],
                )
            if entry.count("/") > MAX_PREFIX_SEPARATORS:
                raise _ApiError(
                    400,
                    [_error(1012, f"prefix {entry} has more than {MAX_PREFIX_SEPARATORS} '/'")],
                )
        elif mode == "hosts":
            if not _HOST.match(entry.lower()):
                raise _ApiError(400, [_error(1012, f"{entry} is not a host name")])
        elif mode == "tags" and len(entry) > 1024:
            raise _ApiError(400, [_error(1012, "a cache tag is at most 1024 characters")])
        return entry

    def _check_host(self, zone: _Zone, mode: str, item: str) -> None:
        if mode == "tags":
            return
        if mode == "files":
            host = (urlsplit(item).hostname or "").lower()
        else:
            host = item.split("/", 1)[0].lower()
        with self._lock:
            owner = _owner(self._zones.values(), host)
        if owner is not zone:
            where = f"zone {owner.name}" if owner is not None else "no zone"
            raise _ApiError(
                400,
                [
                    _error(
                        FOREIGN_HOST_CODE,
                        f"{item} is not in zone {zone.name} (its host belongs to {where})",
                    )
                ],
            )

    def _record(self, request: RecordedRequest, purge: PurgeRecord | None) -> None:
        with self._lock:
            self._requests.append(request)
            if purge is not None and request.status == 200:
                self._purges.append(purge)


def _owner(zones: Iterable[_Zone], host: str) -> _Zone | None:
    """The most specific zone serving `host`."""
    best: _Zone | None = None
    for z in zones:
        if (host == z.name or host.endswith("." + z.name)) and (
            best is None or len(z.name) > len(best.name)
        ):
            best = z
    return best


def _zone_json(zone: _Zone) -> dict[str, Any]:
    return {
        "id": zone.id,
        "name": zone.name,
        "status": zone.status,
        "paused": False,
        "type": "full",
        "account": {"id": zone.account_id, "name": zone.account_name},
        "plan": {"id": zone.plan, "name": f"{zone.plan.capitalize()} Website"},
        "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
        "created_on": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(zone.created)),
    }


def _seconds(value: float) -> str:
    """A Retry-After value: whole seconds when it is one, else the fraction."""
    return str(int(value)) if value == int(value) else f"{value:.3f}"


class _Handler(BaseHTTPRequestHandler):
    emulator: CloudflareEmulator
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY each answer waits ~40 ms for
    # the client's delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the emulator records requests itself

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        started_wall, started = time.time(), time.monotonic()
        headers = {k.lower(): v for k, v in self.headers.items()}
        emulator = self.emulator
        response, call = emulator._handle(self.command, self.path, headers, body)
        parts = urlsplit(self.path)
        emulator._record(
            RecordedRequest(
                method=self.command,
                path=parts.path,
                query={k: v[-1] for k, v in parse_qs(parts.query).items()},
                operation=call.operation,
                zone_id=call.zone_id,
                token=call.token,
                status=response.status,
                error_codes=tuple(int(e.get("code", 0)) for e in response.body.get("errors") or []),
                mode=call.mode,
                items=call.items,
                time=started_wall,
                monotonic=started,
            ),
            call.purge,
        )
        payload = json.dumps(response.body).encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _serve
    do_POST = _serve
    do_PUT = _serve
    do_DELETE = _serve
    do_PATCH = _serve
