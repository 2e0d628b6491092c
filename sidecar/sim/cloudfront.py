"""A CloudFront REST-XML emulator that boto3 reaches through `endpoint_url`.

Modelled on the AWS CloudFront API reference (2020-05-31) and on the XML shapes of botocore's
service model, for the operations cache-buster uses: ListDistributions, GetDistribution,
CreateInvalidation, GetInvalidation, ListInvalidations. What it models, because moto does not:

- Aliases in every distribution summary; Marker/MaxItems/NextMarker/IsTruncated pagination
  (default and maximum MaxItems 100; NextMarker is the id of the page's last item).
- CallerReference idempotency, scoped per distribution as AWS does: the same reference with the
  same paths answers 201 with the existing invalidation; other paths answer
  `InvalidationBatchAlreadyExists` (documented) or `InvalidArgument` (seen in practice).
  `replay_rejection` (a `ReplayRejection`, at construction or assigned at any time) models what
  users report for a same-path replay: `off` (the documented answer, the default), `always`
  (`InvalidArgument` with the caller-reference message), `after_complete` (that, once the
  original invalidation completed; the earlier invalidation before).
- Paths as CloudFront validates them: a leading `/`, and `*` only as the last character
  (`InvalidArgument` otherwise).
- ListInvalidations newest first, paged like ListDistributions; GetInvalidation with the
  batch's CallerReference.
- `InProgress`, then `Completed` after `completion_delay` seconds (per distribution too).
- `TooManyInvalidationsInProgress` at the in-flight limits (3,000 file paths and, separately,
  15 wildcard paths in progress per distribution).
- Injected `Throttling` and other errors, dropped responses (a lost reply after the write).
- `AccessDenied` for an access key id it does not know. The key id is read from the SigV4
  `Authorization` header; the signature itself is NOT verified.

Every request is recorded for assertions. Stdlib HTTP server, loopback only, port 0.
"""

from __future__ import annotations

import re
import secrets
import string
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

from sidecar.sim.lifecycle import QuietHTTPServer, Service, serve, shut
from sidecar.sim.simlog import get_logger

if TYPE_CHECKING:
    import boto3
    from mypy_boto3_cloudfront import CloudFrontClient

API_VERSION = "2020-05-31"
XMLNS = f"http://cloudfront.amazonaws.com/doc/{API_VERSION}/"
TEST_ACCESS_KEY_ID = "AKIDCACHEBUSTER"
# Not a secret: the emulator never verifies signatures; any value signs requests it accepts.
TEST_SECRET_ACCESS_KEY = "cache-buster-emulator-test-secret"
DEFAULT_MAX_ITEMS = 100
# The message AWS is seen to answer with, for either error code, when a reference is reused.
REUSED_REFERENCE_MESSAGE = (
    "Your request contains a caller reference that was used for a previous invalidation batch "
    "for the same distribution."
)

# What AWS answers for a malformed path (no leading "/", a "*" before the end): it names none.
INVALID_PATHS_MESSAGE = "Your request contains one or more invalid invalidation paths."


class ReplayRejection(StrEnum):
    """How a same-reference, same-paths CreateInvalidation is answered."""

    # The documented behaviour: 201 with the earlier invalidation.
    OFF = "off"
    # InvalidArgument with REUSED_REFERENCE_MESSAGE, as users report.
    ALWAYS = "always"
    # InvalidArgument once the earlier invalidation completed; before, the earlier one.
    AFTER_COMPLETE = "after_complete"


OPERATIONS = (
    "ListDistributions",
    "GetDistribution",
    "CreateInvalidation",
    "GetInvalidation",
    "ListInvalidations",
)

_ALNUM_UPPER = string.ascii_uppercase + string.digits
_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/")
_PREFIX = f"/{API_VERSION}/distribution"
_T = TypeVar("_T")
_session_lock = threading.Lock()
_shared_session: boto3.session.Session | None = None
log = get_logger("cloudfront")


def _random_id(prefix: str, alphabet: str = _ALNUM_UPPER, length: int = 13) -> str:
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{int(ts * 1000) % 1000:03d}Z"
    )


def _is_wildcard(path: str) -> bool:
    return "*" in path


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the emulator saw it (after it answered)."""

    method: str
    path: str
    operation: str
    distribution_id: str | None
    caller_reference: str | None
    paths: tuple[str, ...]
    access_key: str | None
    status: int
    error_code: str | None
    invalidation_id: str | None
    # Wall-clock and monotonic receive times (monotonic for intervals inside one process).
    time: float
    monotonic: float


@dataclass(frozen=True)
class InvalidationRecord:
    """A snapshot of one created invalidation: what AWS would bill."""

    id: str
    distribution_id: str
    caller_reference: str
    paths: tuple[str, ...]
    status: str
    create_time: float


@dataclass
class _Invalidation:
    id: str
    distribution_id: str
    caller_reference: str
    paths: tuple[str, ...]
    create_time: float
    completes_at: float  # monotonic; inf: only `complete()` finishes it

    def status(self, now: float) -> str:
        return "Completed" if now >= self.completes_at else "InProgress"


@dataclass
class _Distribution:
    id: str
    domain_name: str
    aliases: tuple[str, ...]
    completion_delay: float | None
    created: float
    invalidations: list[_Invalidation] = field(default_factory=list)
    by_reference: dict[str, _Invalidation] = field(default_factory=dict)


@dataclass
class _Injection:
    kind: str  # "error" | "drop"
    remaining: int
    operation: str | None
    code: str = ""
    status: int = 400
    message: str = ""
    fault: str = "Sender"


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, fault: str = "Sender") -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fault = fault


@dataclass
class _Response:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)
    invalidation_id: str | None = None


@dataclass
class _Call:
    """What the router learnt about a request, for the record."""

    operation: str = "Unknown"
    distribution_id: str | None = None
    caller_reference: str | None = None
    paths: tuple[str, ...] = ()
    invalidation_id: str | None = None


class CloudFrontEmulator(Service):
    """A local CloudFront endpoint. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        *,
        completion_delay: float = 0.0,
        access_keys: Iterable[str] = (TEST_ACCESS_KEY_ID,),
        max_in_progress_paths: int = 3000,
        max_in_progress_wildcards: int = 15,
        duplicate_reference_error: str = "InvalidationBatchAlreadyExists",
        replay_rejection: ReplayRejection | str = ReplayRejection.OFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if duplicate_reference_error not in ("InvalidationBatchAlreadyExists", "InvalidArgument"):
            raise ValueError(
                "duplicate_reference_error must be InvalidationBatchAlreadyExists or "
                f"InvalidArgument, not {duplicate_reference_error!r}"
            )
        self.completion_delay = completion_delay
        self.access_keys = frozenset(access_keys)
        self.max_in_progress_paths = max_in_progress_paths
        self.max_in_progress_wildcards = max_in_progress_wildcards
        self.duplicate_reference_error = duplicate_reference_error
        self.replay_rejection = replay_rejection  # validated by the property
        self._clock = clock
        self._lock = threading.Lock()
        self._distributions: dict[str, _Distribution] = {}  # insertion order = list order
        self._invalidations: dict[str, _Invalidation] = {}
        self._requests: list[RecordedRequest] = []
        self._injections: list[_Injection] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def replay_rejection(self) -> ReplayRejection:
        return self._replay_rejection

    @replay_rejection.setter
    def replay_rejection(self, mode: ReplayRejection | str) -> None:
        """Switchable at any time (a plain attribute write is atomic for the server threads)."""
        try:
            self._replay_rejection = ReplayRejection(mode)
        except ValueError:
            choices = ", ".join(m.value for m in ReplayRejection)
            raise ValueError(f"replay_rejection must be one of {choices}, not {mode!r}") from None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> CloudFrontEmulator:
        if self._server is not None:
            return self
        emulator = self

        class Handler(_Handler):
            pass

        Handler.emulator = emulator
        server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        server.name = "cloudfront"
        self._server = server
        self._thread = serve(server, "cloudfront-emulator")
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        shut(server, thread)

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("CloudFrontEmulator is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def boto3_client(self, **kw: Any) -> CloudFrontClient:
        """A boto3 CloudFront client for this emulator with the test credentials. botocore's
        own retries are off unless `config` says otherwise, so tests see every error (in the
        `retries` dict `max_attempts` counts retries; `total_max_attempts` counts the first
        call too: 1 means exactly one HTTP request)."""
        import boto3
        from botocore.config import Config

        kw.setdefault("endpoint_url", self.url)
        kw.setdefault("region_name", "us-east-1")
        kw.setdefault("aws_access_key_id", TEST_ACCESS_KEY_ID)
        kw.setdefault("aws_secret_access_key", TEST_SECRET_ACCESS_KEY)
        kw.setdefault("config", Config(retries={"mode": "standard", "total_max_attempts": 1}))
        global _shared_session
        # One session for every helper client: loading the service model costs ~0.1 s per
        # session. Sessions are not thread-safe, hence the lock; the clients are.
        with _session_lock:
            if _shared_session is None:
                _shared_session = boto3.session.Session()
            return _shared_session.client("cloudfront", **kw)

    # -- world setup ----------------------------------------------------------------------

    def add_distribution(
        self,
        aliases: Sequence[str],
        distribution_id: str | None = None,
        domain_name: str | None = None,
        *,
        completion_delay: float | None = None,
    ) -> str:
        """Create a distribution; returns its id. `completion_delay` overrides the default."""
        dist_id = distribution_id or _random_id("E")
        domain = domain_name or (
            _random_id("d", string.ascii_lowercase + string.digits) + ".cloudfront.net"
        )
        with self._lock:
            if dist_id in self._distributions:
                raise ValueError(f"distribution {dist_id} already exists")
            self._distributions[dist_id] = _Distribution(
                id=dist_id,
                domain_name=domain,
                aliases=tuple(aliases),
                completion_delay=completion_delay,
                created=time.time(),
            )
        return dist_id

    def set_aliases(self, distribution_id: str, aliases: Sequence[str]) -> None:
        with self._lock:
            self._distributions[distribution_id].aliases = tuple(aliases)

    def set_completion_delay(self, distribution_id: str | None, delay: float | None) -> None:
        """Per distribution (None: back to the default), or the default when id is None.
        Applies to invalidations created afterwards."""
        with self._lock:
            if distribution_id is None:
                self.completion_delay = 0.0 if delay is None else delay
            else:
                self._distributions[distribution_id].completion_delay = delay

    def complete(self, invalidation_id: str | None = None) -> None:
        """Finish one invalidation now (all of them when id is None)."""
        now = self._clock()
        with self._lock:
            targets = (
                self._invalidations.values()
                if invalidation_id is None
                else [self._invalidations[invalidation_id]]
            )
            for inv in targets:
                inv.completes_at = min(inv.completes_at, now)

    # -- fault injection ------------------------------------------------------------------

    def throttle_next(self, n: int, operation: str | None = None) -> None:
        """Answer the next n requests (of `operation`, or any) with HTTP 400 Throttling."""
        self.fail_next(n, "Throttling", status=400, operation=operation, message="Rate exceeded")

    def fail_next(
        self,
        n: int,
        code: str,
        *,
        status: int = 400,
        operation: str | None = None,
        message: str = "injected error",
    ) -> None:
        """Answer the next n matching requests with an error (e.g. 503 ServiceUnavailable)."""
        self._check_operation(operation)
        fault = "Receiver" if status >= 500 else "Sender"
        with self._lock:
            self._injections.append(_Injection("error", n, operation, code, status, message, fault))

    def drop_next(self, n: int, operation: str | None = None) -> None:
        """Process the next n matching requests, then close the connection without an answer:
        the write happened but the client never learns it (a lost reply, a crash mid-call)."""
        self._check_operation(operation)
        with self._lock:
            self._injections.append(_Injection("drop", n, operation))

    def clear_injections(self) -> None:
        """Cancel every pending injected throttle, error and drop: CloudFront recovers."""
        with self._lock:
            self._injections = []

    @staticmethod
    def _check_operation(operation: str | None) -> None:
        if operation is not None and operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; one of {OPERATIONS}")

    def _take_injection(self, operation: str) -> _Injection | None:
        with self._lock:
            for inj in self._injections:
                if inj.remaining > 0 and inj.operation in (None, operation):
                    inj.remaining -= 1
                    return inj
            self._injections = [i for i in self._injections if i.remaining > 0]
        return None

    # -- assertions -----------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def calls(self, operation: str, *, status: int | None = None) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if r.operation == operation and (status is None or r.status == status)
        ]

    def invalidations(self, distribution_id: str | None = None) -> list[InvalidationRecord]:
        """Every invalidation created (each once, however often it was requested), in
        creation order."""
        now = self._clock()
        with self._lock:
            return [
                InvalidationRecord(
                    id=inv.id,
                    distribution_id=inv.distribution_id,
                    caller_reference=inv.caller_reference,
                    paths=inv.paths,
                    status=inv.status(now),
                    create_time=inv.create_time,
                )
                for inv in self._invalidations.values()
                if distribution_id is None or inv.distribution_id == distribution_id
            ]

    def count_by_caller_reference(self) -> dict[str, int]:
        """How many distinct invalidations each CallerReference produced (over every
        distribution). cache-buster's invariant: every value is 1."""
        counts: dict[str, int] = {}
        with self._lock:
            for inv in self._invalidations.values():
                counts[inv.caller_reference] = counts.get(inv.caller_reference, 0) + 1
        return counts

    def wait_for(
        self,
        predicate: Callable[[CloudFrontEmulator], bool],
        timeout: float = 5.0,
        interval: float = 0.01,
    ) -> None:
        """Block until predicate(self) holds; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() >= deadline:
                raise AssertionError(f"CloudFrontEmulator: condition not met in {timeout}s")
            time.sleep(interval)

    # -- request handling (called from server threads) ------------------------------------

    def _handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[_Response, _Call, bool]:
        """Returns the response, what was learnt, and whether to drop the answer."""
        call = _Call()
        try:
            route = self._route(method, urlsplit(raw_path).path, call)
            access_key = _access_key(headers.get("authorization", ""))
            if access_key is None:
                raise _ApiError(
                    403,
                    "MissingAuthenticationToken",
                    "Request is missing a SigV4 Authorization header.",
                )
            if access_key not in self.access_keys:
                # AWS answers unknown keys with InvalidClientTokenId; the brief and the provider
                # treat every 403 alike, and AccessDenied is what an IAM gap looks like.
                raise _ApiError(
                    403,
                    "AccessDenied",
                    f"User is not authorized to perform: cloudfront:{call.operation}",
                )
            injection = self._take_injection(call.operation)
            if injection is not None and injection.kind == "error":
                raise _ApiError(
                    injection.status, injection.code, injection.message, injection.fault
                )
            query = {k: v[-1] for k, v in parse_qs(urlsplit(raw_path).query).items()}
            response = route(query, body, call)
            return response, call, injection is not None and injection.kind == "drop"
        except _ApiError as err:
            return _error_response(err), call, False

    def _route(
        self, method: str, path: str, call: _Call
    ) -> Callable[[dict[str, str], bytes, _Call], _Response]:
        parts = (
            path.removeprefix(_PREFIX).strip("/").split("/") if path.startswith(_PREFIX) else None
        )
        if parts is None:
            raise _ApiError(404, "UnknownOperation", f"No such resource: {path}")
        parts = [p for p in parts if p]
        if method == "GET" and not parts:
            call.operation = "ListDistributions"
            return self._list_distributions
        if parts:
            call.distribution_id = parts[0]
        if method == "GET" and len(parts) == 1:
            call.operation = "GetDistribution"
            return self._get_distribution
        if len(parts) == 2 and parts[1] == "invalidation":
            if method == "POST":
                call.operation = "CreateInvalidation"
                return self._create_invalidation
            if method == "GET":
                call.operation = "ListInvalidations"
                return self._list_invalidations
        if method == "GET" and len(parts) == 3 and parts[1] == "invalidation":
            call.operation = "GetInvalidation"
            call.invalidation_id = parts[2]
            return self._get_invalidation
        raise _ApiError(404, "UnknownOperation", f"Not emulated: {method} {path}")

    def _distribution(self, call: _Call) -> _Distribution:
        dist = self._distributions.get(call.distribution_id or "")
        if dist is None:
            raise _ApiError(404, "NoSuchDistribution", "The specified distribution does not exist.")
        return dist

    def _delay_for(self, dist: _Distribution) -> float:
        return self.completion_delay if dist.completion_delay is None else dist.completion_delay

    def _list_distributions(self, query: dict[str, str], body: bytes, call: _Call) -> _Response:
        with self._lock:
            items = list(self._distributions.values())
        page, marker, max_items, next_marker = _paginate(items, query, lambda d: d.id)
        entries = "".join(_distribution_summary_xml(d) for d in page)
        xml = (
            f'<DistributionList xmlns="{XMLNS}">'
            f"<Marker>{escape(marker)}</Marker>"
            + (f"<NextMarker>{escape(next_marker)}</NextMarker>" if next_marker else "")
            + f"<MaxItems>{max_items}</MaxItems>"
            f"<IsTruncated>{'true' if next_marker else 'false'}</IsTruncated>"
            f"<Quantity>{len(page)}</Quantity>"
            + (f"<Items>{entries}</Items>" if page else "")
            + "</DistributionList>"
        )
        return _Response(200, xml)

    def _get_distribution(self, query: dict[str, str], body: bytes, call: _Call) -> _Response:
        now = self._clock()
        with self._lock:
            dist = self._distribution(call)
            in_progress = sum(1 for i in dist.invalidations if i.status(now) == "InProgress")
            xml = (
                f'<Distribution xmlns="{XMLNS}">'
                f"<Id>{escape(dist.id)}</Id>"
                f"<ARN>arn:aws:cloudfront::123456789012:distribution/{escape(dist.id)}</ARN>"
                "<Status>Deployed</Status>"
                f"<LastModifiedTime>{_iso(dist.created)}</LastModifiedTime>"
                f"<InProgressInvalidationBatches>{in_progress}</InProgressInvalidationBatches>"
                f"<DomainName>{escape(dist.domain_name)}</DomainName>"
                "<DistributionConfig>"
                f"<CallerReference>cache-buster-sim-{escape(dist.id)}</CallerReference>"
                f"{_aliases_xml(dist.aliases)}"
                f"{_ORIGINS_XML}{_DEFAULT_BEHAVIOR_XML}"
                "<Comment></Comment><Enabled>true</Enabled>"
                "</DistributionConfig>"
                "</Distribution>"
            )
            etag = "E" + dist.id[-10:]
        return _Response(200, xml, {"ETag": etag})

    def _create_invalidation(self, query: dict[str, str], body: bytes, call: _Call) -> _Response:
        reference, paths = _parse_invalidation_batch(body)
        call.caller_reference, call.paths = reference, paths
        now = self._clock()
        with self._lock:
            dist = self._distribution(call)
            existing = dist.by_reference.get(reference)
            if existing is not None:
                if sorted(existing.paths) != sorted(paths):
                    code = self.duplicate_reference_error
                    http = 409 if code == "InvalidationBatchAlreadyExists" else 400
                    raise _ApiError(http, code, REUSED_REFERENCE_MESSAGE)
                # Same batch (order aside) is a replay: the existing one, 201, as AWS documents,
                # unless the switch models the refusal users report.
                mode = self.replay_rejection
                if mode is ReplayRejection.ALWAYS or (
                    mode is ReplayRejection.AFTER_COMPLETE and existing.status(now) == "Completed"
                ):
                    raise _ApiError(400, "InvalidArgument", REUSED_REFERENCE_MESSAGE)
                inv = existing
            else:
                self._check_limits(dist, paths, now)
                inv = _Invalidation(
                    id=self._new_invalidation_id(),
                    distribution_id=dist.id,
                    caller_reference=reference,
                    paths=paths,
                    create_time=time.time(),
                    completes_at=now + self._delay_for(dist),
                )
                dist.invalidations.append(inv)
                dist.by_reference[reference] = inv
                self._invalidations[inv.id] = inv
            # A fresh invalidation is always reported InProgress at creation, as AWS does.
            status = "InProgress" if existing is None else inv.status(now)
            xml = _invalidation_xml(inv, status)
        location = f"{self.url}{_PREFIX}/{dist.id}/invalidation/{inv.id}"
        return _Response(201, xml, {"Location": location}, invalidation_id=inv.id)

    def _check_limits(self, dist: _Distribution, paths: tuple[str, ...], now: float) -> None:
        new_wild = sum(1 for p in paths if _is_wildcard(p))
        new_files = len(paths) - new_wild
        if len(paths) > self.max_in_progress_paths:
            raise _ApiError(413, "BatchTooLarge", "Invalidation batch specified is too large.")
        busy = [p for i in dist.invalidations if i.status(now) == "InProgress" for p in i.paths]
        busy_wild = sum(1 for p in busy if _is_wildcard(p))
        busy_files = len(busy) - busy_wild
        if (
            busy_files + new_files > self.max_in_progress_paths
            or busy_wild + new_wild > self.max_in_progress_wildcards
        ):
            raise _ApiError(
                400,
                "TooManyInvalidationsInProgress",
                "You have exceeded the maximum number of allowable InProgress invalidation "
                "batch requests, or invalidation objects.",
            )

    def _new_invalidation_id(self) -> str:
        while True:
            candidate = _random_id("I")
            if candidate not in self._invalidations:
                return candidate

    def _find_invalidation(self, call: _Call, invalidation_id: str) -> _Invalidation:
        inv = self._invalidations.get(invalidation_id)
        if inv is None or inv.distribution_id != call.distribution_id:
            raise _ApiError(404, "NoSuchInvalidation", "The specified invalidation does not exist.")
        return inv

    def _get_invalidation(self, query: dict[str, str], body: bytes, call: _Call) -> _Response:
        with self._lock:
            self._distribution(call)
            inv = self._find_invalidation(call, call.invalidation_id or "")
            xml = _invalidation_xml(inv, inv.status(self._clock()))
        return _Response(200, xml, invalidation_id=inv.id)

    def _list_invalidations(self, query: dict[str, str], body: bytes, call: _Call) -> _Response:
        now = self._clock()
        with self._lock:
            dist = self._distribution(call)
            # Most recent first, as AWS lists them.
            items = list(reversed(dist.invalidations))
            page, marker, max_items, next_marker = _paginate(items, query, lambda i: i.id)
            entries = "".join(
                "<InvalidationSummary>"
                f"<Id>{i.id}</Id><CreateTime>{_iso(i.create_time)}</CreateTime>"
                f"<Status>{i.status(now)}</Status>"
                "</InvalidationSummary>"
                for i in page
            )
        xml = (
            f'<InvalidationList xmlns="{XMLNS}">'
            f"<Marker>{escape(marker)}</Marker>"
            + (f"<NextMarker>{escape(next_marker)}</NextMarker>" if next_marker else "")
            + f"<MaxItems>{max_items}</MaxItems>"
            f"<IsTruncated>{'true' if next_marker else 'false'}</IsTruncated>"
            f"<Quantity>{len(page)}</Quantity>"
            + (f"<Items>{entries}</Items>" if page else "")
            + "</InvalidationList>"
        )
        return _Response(200, xml)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)


def _access_key(authorization: str) -> str | None:
    match = _CREDENTIAL_RE.search(authorization)
    return match.group(1) if match else None


def _paginate(
    items: list[_T], query: dict[str, str], key: Callable[[_T], str]
) -> tuple[list[_T], str, int, str | None]:
    marker = query.get("Marker", "")
    raw_max = query.get("MaxItems", str(DEFAULT_MAX_ITEMS))
    try:
        max_items = int(raw_max)
    except ValueError:
        raise _ApiError(400, "InvalidArgument", f"MaxItems must be an integer: {raw_max}") from None
    if max_items < 1:
        raise _ApiError(400, "InvalidArgument", "MaxItems must be at least 1.")
    max_items = min(max_items, DEFAULT_MAX_ITEMS)
    start = 0
    if marker:
        keys = [key(i) for i in items]
        if marker not in keys:
            raise _ApiError(400, "InvalidArgument", f"Invalid Marker: {marker}")
        start = keys.index(marker) + 1
    page = items[start : start + max_items]
    truncated = start + max_items < len(items)
    return page, marker, max_items, key(page[-1]) if truncated and page else None


def _strip_ns(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(node: ET.Element, name: str) -> ET.Element | None:
    for c in node:
        if _strip_ns(c.tag) == name:
            return c
    return None


def _parse_invalidation_batch(body: bytes) -> tuple[str, tuple[str, ...]]:
    if not body.strip():
        raise _ApiError(400, "MissingBody", "This operation requires a body.")
    try:
        root = ET.fromstring(body)  # loopback test tool: input comes from our own tests
    except ET.ParseError as err:
        raise _ApiError(400, "MalformedXML", f"Malformed XML: {err}") from None
    if _strip_ns(root.tag) != "InvalidationBatch":
        raise _ApiError(400, "MalformedXML", "Expected an InvalidationBatch element.")
    ref_node = _child(root, "CallerReference")
    reference = (ref_node.text or "") if ref_node is not None else ""
    if not reference:
        raise _ApiError(400, "InvalidArgument", "CallerReference is required.")
    paths_node = _child(root, "Paths")
    if paths_node is None:
        raise _ApiError(400, "InvalidArgument", "Paths is required.")
    quantity_node = _child(paths_node, "Quantity")
    items_node = _child(paths_node, "Items")
    paths = tuple(
        (p.text or "")
        for p in (items_node if items_node is not None else [])
        if _strip_ns(p.tag) == "Path"
    )
    try:
        quantity = int((quantity_node.text or "") if quantity_node is not None else "")
    except ValueError:
        raise _ApiError(400, "InvalidArgument", "Paths/Quantity must be an integer.") from None
    if quantity != len(paths):
        raise _ApiError(
            400,
            "InconsistentQuantities",
            "The value of Quantity and the size of Items don't match.",
        )
    if not paths:
        raise _ApiError(400, "InvalidArgument", "At least one path is required.")
    for p in paths:
        # CloudFront's rules: a leading "/", and a "*" wildcard only as the last character.
        if not p.startswith("/") or "*" in p[:-1]:
            raise _ApiError(400, "InvalidArgument", INVALID_PATHS_MESSAGE)
    return reference, paths


def _aliases_xml(aliases: Sequence[str]) -> str:
    items = "".join(f"<CNAME>{escape(a)}</CNAME>" for a in aliases)
    return (
        f"<Aliases><Quantity>{len(aliases)}</Quantity>"
        + (f"<Items>{items}</Items>" if aliases else "")
        + "</Aliases>"
    )


_ORIGINS_XML = (
    "<Origins><Quantity>1</Quantity><Items><Origin><Id>origin</Id>"
    "<DomainName>origin.example.invalid</DomainName><OriginPath></OriginPath>"
    "</Origin></Items></Origins>"
)
_DEFAULT_BEHAVIOR_XML = (
    "<DefaultCacheBehavior><TargetOriginId>origin</TargetOriginId>"
    "<ViewerProtocolPolicy>redirect-to-https</ViewerProtocolPolicy></DefaultCacheBehavior>"
)


def _distribution_summary_xml(dist: _Distribution) -> str:
    return (
        "<DistributionSummary>"
        f"<Id>{escape(dist.id)}</Id>"
        f"<ARN>arn:aws:cloudfront::123456789012:distribution/{escape(dist.id)}</ARN>"
        "<Status>Deployed</Status>"
        f"<LastModifiedTime>{_iso(dist.created)}</LastModifiedTime>"
        f"<DomainName>{escape(dist.domain_name)}</DomainName>"
        f"{_aliases_xml(dist.aliases)}"
        f"{_ORIGINS_XML}{_DEFAULT_BEHAVIOR_XML}"
        "<CacheBehaviors><Quantity>0</Quantity></CacheBehaviors>"
        "<CustomErrorResponses><Quantity>0</Quantity></CustomErrorResponses>"
        "<Comment></Comment><PriceClass>PriceClass_All</PriceClass><Enabled>true</Enabled>"
        "<WebACLId></WebACLId><HttpVersion>http2</HttpVersion>"
        "<IsIPV6Enabled>true</IsIPV6Enabled><Staging>false</Staging>"
        "</DistributionSummary>"
    )


def _invalidation_xml(inv: _Invalidation, status: str) -> str:
    items = "".join(f"<Path>{escape(p)}</Path>" for p in inv.paths)
    return (
        f'<Invalidation xmlns="{XMLNS}">'
        f"<Id>{inv.id}</Id><Status>{status}</Status>"
        f"<CreateTime>{_iso(inv.create_time)}</CreateTime>"
        "<InvalidationBatch>"
        f"<Paths><Quantity>{len(inv.paths)}</Quantity><Items>{items}</Items></Paths>"
        f"<CallerReference>{escape(inv.caller_reference)}</CallerReference>"
        "</InvalidationBatch></Invalidation>"
    )


def _error_response(err: _ApiError) -> _Response:
    request_id = secrets.token_hex(16)
    xml = (
        f'<ErrorResponse xmlns="{XMLNS}"><Error>'
        f"<Type>{err.fault}</Type><Code>{escape(err.code)}</Code>"
        f"<Message>{escape(err.message)}</Message>"
        f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return _Response(err.status, xml, {"x-amzn-RequestId": request_id})


class _Handler(BaseHTTPRequestHandler):
    emulator: CloudFrontEmulator
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects
    # Headers and body go out in two writes: without TCP_NODELAY each answer waits ~40 ms
    # for the client's delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the emulator records requests itself; stderr noise helps nobody

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        started_wall, started = time.time(), time.monotonic()
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = urlsplit(self.path).path
        emulator = self.emulator
        response, call, drop = emulator._handle(self.command, self.path, headers, body)
        error_code = None
        if response.status >= 300:
            match = re.search(r"<Code>([^<]*)</Code>", response.body)
            error_code = match.group(1) if match else None
        emulator._record(
            RecordedRequest(
                method=self.command,
                path=path,
                operation=call.operation,
                distribution_id=call.distribution_id,
                caller_reference=call.caller_reference,
                paths=call.paths,
                access_key=_access_key(headers.get("authorization", "")),
                status=0 if drop else response.status,
                error_code=error_code,
                invalidation_id=response.invalidation_id or call.invalidation_id,
                time=started_wall,
                monotonic=started,
            )
        )
        if drop:
            self.close_connection = True
            return
        payload = response.body.encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _serve
    do_POST = _serve
    do_PUT = _serve
    do_DELETE = _serve
