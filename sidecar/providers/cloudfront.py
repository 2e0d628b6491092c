"""CloudFront: invalidate the distribution(s) serving the app's domains, wait for Completed.

- Target: `request.targets` when a replay recorded them (`plan()` gives them before the first
  attempt, with no mutating call), else `request.distribution_id` when given (its existence is
  checked by CreateInvalidation itself, which answers NoSuchDistribution: no extra call and no
  cloudfront:GetDistribution permission needed), else the distributions whose aliases match
  `request.domains` (`cloudfront_index.py`: alias matching and the shared distribution cache).
  Several domains on several distributions: each is invalidated; `PurgeResult.target` and
  `request_id` are comma-joined, in the same order.
- Idempotency: the CallerReference is derived from the rollout id alone, through
  `request.idempotency_key` (never from the paths nor the attempt), so every replay of one
  rollout sends the same reference; with several distributions each gets
  `<key>/<distribution id>`, so no reference is ever on two distributions.
- Replays: CloudFront documents that the same reference with the same paths returns the earlier
  invalidation, and answers `InvalidationBatchAlreadyExists` when the paths differ (the paths
  annotation changed between a crash and the resume); users also report `InvalidArgument`
  ("caller reference that was used for a previous invalidation batch") for a same-path replay.
  Either refusal means our own rollout already requested it (the reference is ours), so it is
  looked up, not failed: the id in `request.known_requests` first (GetInvalidation, reference
  checked), else ListInvalidations newest first, GetInvalidation of each until the reference
  matches, stopping at the first one created before `request.not_before` (less
  `replay_skew`). Found: waited for like a fresh one, `reused`. Not found:
  `CallerReferenceNotFound`, not retryable.
- Each invalidation id goes to `on_requested` as soon as it is known, before the wait, so the
  caller can record it for a later replay.
- Retries: botocore's own are OFF (`total_max_attempts: 1`): this module owns the one loop,
  paced by `sidecar.core.backoff.PROVIDER_THROTTLE` (equal jitter) and bounded by the caller's
  deadline, so two retry layers never multiply and a throttled app never waits past its
  timeout. Throttling, TooManyInvalidationsInProgress, 5xx and connection errors are retried;
  retrying a CreateInvalidation is safe because of the CallerReference.
- Credentials: boto3's default chain (env `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, IRSA,
  EKS Pod Identity, ...). Endpoint: the constructor or boto3's `AWS_ENDPOINT_URL_CLOUDFRONT`.
- IAM: cloudfront:ListDistributions (unless every app sets `distribution-id`),
  cloudfront:CreateInvalidation, cloudfront:GetInvalidation, cloudfront:ListInvalidations
  (the replay lookup).
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import (
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from sidecar.core.backoff import PROVIDER_THROTTLE, BackoffPolicy
from sidecar.core.domains import normalize_host
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
from sidecar.providers.cloudfront_index import Aliases, DistributionCache, list_distributions

if TYPE_CHECKING:
    import boto3
    from mypy_boto3_cloudfront import CloudFrontClient
    from mypy_boto3_cloudfront.type_defs import InvalidationTypeDef

_T = TypeVar("_T")

NAME = "cloudfront"
PERMISSIONS = (
    "cloudfront:ListDistributions",
    "cloudfront:CreateInvalidation",
    "cloudfront:GetInvalidation",
    "cloudfront:ListInvalidations",
)
# Worth another try after a pause: the same request may succeed later.
RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "TooManyInvalidationsInProgress",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
    }
)
# 403s that are about the credential's age, not its permissions (IRSA tokens rotate).
_EXPIRED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired"})
# What a GetInvalidation poll tolerates (a credential error propagates, as it always has) and
# what the retrying call maps to a PurgeError.
_POLL_ERRORS = (ClientError, HTTPClientError, BotoConnectionError)
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)
_CALL_ERRORS = (*_POLL_ERRORS, *_CREDENTIAL_ERRORS)
# An invalidation's Status on the wire: "InProgress" until this.
_COMPLETED = "Completed"
# failure_of's code for CloudFront refusing a CallerReference it has seen on the distribution
# (InvalidationBatchAlreadyExists, or InvalidArgument naming the caller reference). Ours always:
# `purge` resolves it by looking the earlier invalidation up, it never reaches the caller.
REFERENCE_USED = "CallerReferenceUsed"
# How much earlier than `not_before` an invalidation may be dated and still be this rollout's:
# `not_before` is the aggregator's clock, CreateTime CloudFront's. NTP keeps them within
# seconds; 5 minutes is generous and costs at most a few more GetInvalidation calls.
REPLAY_SKEW = 300.0
# Without `not_before` the lookup has no floor: it reads back at most this many invalidations.
LOOKUP_LIMIT = 100

log = get_logger(NAME)


def caller_reference(idempotency_key: str, distribution_id: str, *, several: bool) -> str:
    """The CallerReference for one distribution of one rollout (stable across retries)."""
    return f"{idempotency_key}/{distribution_id}" if several else idempotency_key


# -- the provider -----------------------------------------------------------------------------


@dataclass
class _Requested:
    distribution_id: str
    caller_reference: str
    invalidation_id: str
    status: str
    reused: bool
    # What CloudFront says the invalidation covers (a found earlier one may differ from ours).
    paths: tuple[str, ...]


@dataclass(frozen=True)
class _Lookup:
    """What the replay lookup read on one distribution."""

    found: InvalidationTypeDef | None
    read: int  # invalidations read back with GetInvalidation
    pages: int
    floor_reached: bool  # stopped at an invalidation older than `not_before`


class CloudFrontProvider:
    name = NAME

    def __init__(
        self,
        client_factory: Callable[[], CloudFrontClient] | None = None,
        *,
        distribution_cache_ttl: float = 6 * 3600,
        poll_interval: float = 30.0,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        session: boto3.session.Session | None = None,
        page_size: int | None = None,
        miss_refresh_interval: float = 1.0,
        backoff_base: float = PROVIDER_THROTTLE.base,
        backoff_cap: float = PROVIDER_THROTTLE.cap,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        clock_skew: float = 1.0,
        replay_skew: float = REPLAY_SKEW,
        lookup_limit: int = LOOKUP_LIMIT,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        """`client_factory` returns a CloudFront client (tests, custom sessions); it should
        disable botocore's retries like the default does. Without it, a client is built from
        `session` (default: boto3's default credential chain) with `endpoint_url`/
        `region_name`. `page_size` is ListDistributions' and ListInvalidations' MaxItems (None:
        AWS's 100). `clock_skew`: how much older than this call an invalidation's CreateTime
        must be for the result to say `reused`. `replay_skew` and `lookup_limit` bound the
        replay lookup (REPLAY_SKEW, LOOKUP_LIMIT)."""
        self._client_factory = client_factory
        self._session = session
        self._endpoint_url = endpoint_url
        self._region_name = region_name
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self.poll_interval = poll_interval
        self.page_size = page_size
        # The throttling pace: PROVIDER_THROTTLE unless a test or the simulation speeds it up.
        self.backoff = BackoffPolicy(base=backoff_base, cap=backoff_cap)
        self.clock_skew = clock_skew
        self.replay_skew = replay_skew
        self.lookup_limit = lookup_limit
        self._clock = clock
        self._rng = rng or random.Random()
        self._cache = DistributionCache(distribution_cache_ttl, miss_refresh_interval, clock)
        self._client_lock = threading.Lock()
        self._client: CloudFrontClient | None = None

    def client(self) -> CloudFrontClient:
        """The shared client (botocore clients are thread-safe; sessions are not, hence the
        lock around creation)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> CloudFrontClient:
        if self._client_factory is not None:
            return self._client_factory()
        import boto3
        from botocore.config import Config

        session = self._session or boto3.session.Session()
        config = Config(
            # One HTTP request per call: the backoff loop below is the only retry layer.
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            user_agent_extra="cache-buster",
        )
        try:
            return session.client(
                "cloudfront",
                endpoint_url=self._endpoint_url,
                # CloudFront is global; its API is signed for us-east-1.
                region_name=self._region_name or session.region_name or "us-east-1",
                config=config,
            )
        except ValueError as err:  # e.g. a malformed endpoint URL
            raise PurgeError("InvalidConfiguration", str(err), retryable=False) from None

    def plan(
        self, request: PurgeRequest, *, timeout: float = 30.0, stop: threading.Event | None = None
    ) -> tuple[str, ...]:
        """The distribution ids `purge(request)` would invalidate, in its order. Reads only
        (ListDistributions through the shared cache, none at all with `targets` or
        `distribution_id`). Raises PurgeError (NoDomains, NoDistributionForDomain, ...) as
        `purge` does."""
        deadline = self._clock() + timeout
        targets, _ = self._targets(request, deadline, stop or threading.Event(), _plog(request))
        return tuple(targets)

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
        if not request.paths:
            raise PurgeError("InvalidPaths", "no paths to invalidate", retryable=False)
        client = self.client()

        targets, unmatched = self._targets(request, deadline, stop, plog)
        several = len(targets) > 1
        requested: list[_Requested] = []
        for dist_id in targets:
            ref = caller_reference(request.idempotency_key, dist_id, several=several)
            try:
                req = self._request_one(
                    client, request, dist_id, ref, requested_at, deadline, stop, plog
                )
            except PurgeError as err:
                if requested:
                    # The earlier ones happened; a retry with the same key will not repeat them.
                    done = ", ".join(
                        f"{r.distribution_id} ({r.invalidation_id})" for r in requested
                    )
                    raise PurgeError(
                        err.code,
                        f"{err.message} (already requested on {done})",
                        retryable=err.retryable,
                    ) from err
                raise
            requested.append(req)
            _report(on_requested, req, plog)

        return self._finish(request, requested, unmatched, requested_at, deadline, stop, plog)

    def preview(self, request: PurgeRequest) -> tuple[PlannedCall, ...]:
        """One CreateInvalidation per planned distribution, as `purge` sends it (boto3 signs
        the request: no credential is part of it)."""
        several = len(request.targets) > 1
        return tuple(
            PlannedCall(
                "CreateInvalidation",
                f"https://cloudfront.amazonaws.com/2020-05-31/distribution/{dist_id}/invalidation",
                {
                    "DistributionId": dist_id,
                    "InvalidationBatch": {
                        "CallerReference": caller_reference(
                            request.idempotency_key, dist_id, several=several
                        ),
                        "Paths": {"Quantity": len(request.paths), "Items": list(request.paths)},
                    },
                },
            )
            for dist_id in request.targets
        )

    def find(
        self, request: PurgeRequest, *, timeout: float, stop: threading.Event | None = None
    ) -> PurgeResult | None:
        """The purge an earlier attempt of this rollout made, never making one: on every
        target the invalidation carrying the rollout's CallerReference (the recorded id, else
        the lookup), waited for like `purge` does, `reused`. None when a target has none (the
        purge was never made, or not on every distribution): then nothing is known done."""
        requested_at = time.time()
        deadline = self._clock() + timeout
        stop = stop or threading.Event()
        plog = _plog(request)
        client = self.client()
        targets, unmatched = self._targets(request, deadline, stop, plog)
        several = len(targets) > 1
        requested: list[_Requested] = []
        for dist_id in targets:
            ref = caller_reference(request.idempotency_key, dist_id, several=several)
            found, _ = self._search(client, request, dist_id, ref, deadline, stop, plog)
            if found is None:
                plog.info(
                    "cloudfront.invalidation.not_found", distribution=dist_id, caller_reference=ref
                )
                return None
            requested.append(found)
        return self._finish(request, requested, unmatched, requested_at, deadline, stop, plog)

    def _finish(
        self,
        request: PurgeRequest,
        requested: list[_Requested],
        unmatched: list[str],
        requested_at: float,
        deadline: float,
        stop: threading.Event,
        plog: EventLogger,
    ) -> PurgeResult:
        """Wait for the requested invalidations and say what was purged."""
        client = self.client()
        status, extra = self._wait(client, requested, deadline, stop, plog)
        extra["distributions"] = ",".join(r.distribution_id for r in requested)
        extra["invalidations"] = ",".join(
            f"{r.distribution_id}={r.invalidation_id}" for r in requested
        )
        extra["caller_references"] = ",".join(r.caller_reference for r in requested)
        if unmatched:
            extra["unmatched_domains"] = ",".join(unmatched)
        # What was invalidated, which a replay found with other paths may not be what we asked.
        paths = tuple(dict.fromkeys(p for r in requested for p in r.paths))
        if set(paths) == set(request.paths):
            paths = tuple(request.paths)
        else:
            extra["requested_paths"] = ",".join(request.paths)
            plog.warning(
                "cloudfront.invalidation.other_paths",
                distribution=extra["distributions"],
                paths=",".join(paths),
                requested_paths=extra["requested_paths"],
            )
        finished_at = time.time()
        reused = all(r.reused for r in requested)
        plog.info(
            "cloudfront.purge.finished",
            status=status,
            distribution=extra["distributions"],
            invalidation_id=",".join(r.invalidation_id for r in requested),
            reused=reused,
            seconds=round(finished_at - requested_at, 3),
        )
        return PurgeResult(
            provider=NAME,
            target=extra["distributions"],
            request_id=",".join(r.invalidation_id for r in requested),
            status=status,
            paths=paths,
            requested_at=requested_at,
            finished_at=finished_at,
            reused=reused,
            extra=extra,
        )

    def _targets(
        self,
        request: PurgeRequest,
        deadline: float,
        stop: threading.Event,
        plog: EventLogger,
    ) -> tuple[list[str], list[str]]:
        recorded = list(dict.fromkeys(t.strip() for t in request.targets if t.strip()))
        if recorded:
            # A replay: exactly what the first attempt planned, whatever the aliases say now.
            return recorded, []
        if request.distribution_id:
            return [request.distribution_id], []
        domains = list(dict.fromkeys(normalize_host(d) for d in request.domains if d.strip()))
        if not domains:
            raise PurgeError(
                NO_DOMAINS,
                "no domains to look up and no distribution-id annotation",
                retryable=False,
            )

        def call(operation: str, fn: Callable[[], _T]) -> _T:
            return self._call(operation, None, fn, deadline, stop, plog)

        def fetch() -> Aliases:
            return list_distributions(self.client(), call, page_size=self.page_size, plog=plog)

        return self._cache.resolve(
            domains, fetch, remaining=lambda: deadline - self._clock(), plog=plog
        )

    def _request_one(
        self,
        client: CloudFrontClient,
        request: PurgeRequest,
        dist_id: str,
        ref: str,
        requested_at: float,
        deadline: float,
        stop: threading.Event,
        plog: EventLogger,
    ) -> _Requested:
        """CreateInvalidation; when CloudFront refuses the reference as used, the earlier
        invalidation it names (our own rollout's: the reference is derived from its id)."""
        try:
            return self._create(
                client, dist_id, ref, request.paths, requested_at, deadline, stop, plog
            )
        except PurgeError as err:
            if err.code != REFERENCE_USED:
                raise
            refusal = err
        plog.info(
            "cloudfront.invalidation.replay_refused",
            distribution=dist_id,
            caller_reference=ref,
            error=refusal.message,
        )
        return self._find_earlier(client, request, dist_id, ref, deadline, stop, plog)

    def _create(
        self,
        client: CloudFrontClient,
        dist_id: str,
        ref: str,
        paths: Sequence[str],
        requested_at: float,
        deadline: float,
        stop: threading.Event,
        plog: EventLogger,
    ) -> _Requested:
        batch: Any = {
            "CallerReference": ref,
            "Paths": {"Quantity": len(paths), "Items": list(paths)},
        }
        response = self._call(
            "CreateInvalidation",
            dist_id,
            lambda: client.create_invalidation(DistributionId=dist_id, InvalidationBatch=batch),
            deadline,
            stop,
            plog,
        )
        inv = response["Invalidation"]
        created: datetime = inv["CreateTime"]
        reused = created.timestamp() < requested_at - self.clock_skew
        plog.info(
            "cloudfront.invalidation.reused" if reused else "cloudfront.invalidation.created",
            distribution=dist_id,
            invalidation_id=inv["Id"],
            caller_reference=ref,
            status=inv["Status"],
            paths=len(paths),
        )
        return _Requested(dist_id, ref, inv["Id"], inv["Status"], reused, _paths_of(inv))

    def _find_earlier(
        self,
        client: CloudFrontClient,
        request: PurgeRequest,
        dist_id: str,
        ref: str,
        deadline: float,
        stop: threading.Event,
        plog: EventLogger,
    ) -> _Requested:
        """The invalidation CloudFront refused to repeat; CallerReferenceNotFound without it."""
        found, lookup = self._search(client, request, dist_id, ref, deadline, stop, plog)
        if found is not None:
            return found
        if lookup.floor_reached:
            since = f"created since {_utc(request.not_before)} (less {self.replay_skew:g} s)"
        else:
            since = f"among the {lookup.read} most recent"
        raise PurgeError(
            "CallerReferenceNotFound",
            f"CloudFront refused CallerReference {ref} on distribution {dist_id} as already "
            f"used, but none of its invalidations {since} has it ({lookup.read} read back); "
            "the rollout's earlier invalidation cannot be confirmed, check the distribution's "
            "invalidations in the console",
            retryable=False,
        )

    def _search(
        self,
        client: CloudFrontClient,
        request: PurgeRequest,
        dist_id: str,
        ref: str,
        deadline: float,
        stop: threading.Event,
        plog: EventLogger,
    ) -> tuple[_Requested | None, _Lookup]:
        """The invalidation carrying `ref` on `dist_id`: the recorded id when it has `ref`,
        else the lookup's find (None: not found; the lookup says how far it read)."""

        def get(invalidation_id: str) -> InvalidationTypeDef:
            return self._call(
                "GetInvalidation",
                dist_id,
                lambda: client.get_invalidation(DistributionId=dist_id, Id=invalidation_id),
                deadline,
                stop,
                plog,
            )["Invalidation"]

        known = request.known_request(dist_id)
        if known:
            try:
                inv = get(known)
            except PurgeError as err:
                if err.code != "NoSuchInvalidation":
                    raise
                inv = None
            if inv is not None and inv["InvalidationBatch"]["CallerReference"] == ref:
                return _reused(dist_id, ref, inv, "recorded", plog), _Lookup(None, 1, 0, False)
            # A recorded id that is not this reference's: the lookup below decides.
            plog.warning(
                "cloudfront.invalidation.recorded_mismatch",
                distribution=dist_id,
                invalidation_id=known,
                caller_reference=ref,
            )
        lookup = self._lookup(client, dist_id, ref, request.not_before, get, deadline, stop, plog)
        if lookup.found is None:
            return None, lookup
        return _reused(dist_id, ref, lookup.found, "lookup", plog), lookup

    def _lookup(
        self,
        client: CloudFrontClient,
        dist_id: str,
        ref: str,
        not_before: float | None,
        get: Callable[[str], InvalidationTypeDef],
        deadline: float,
        stop: threading.Event,
        plog: EventLogger,
    ) -> _Lookup:
        """ListInvalidations (newest first, every page) and GetInvalidation of each summary
        until one carries `ref`. Stops at the first summary older than `not_before` less the
        skew (older ones are not this rollout's), or after `lookup_limit` without a floor."""
        floor = None if not_before is None else not_before - self.replay_skew
        marker = ""
        seen_markers: set[str] = set()
        read = pages = 0

        def done(found: InvalidationTypeDef | None, floor_reached: bool) -> _Lookup:
            plog.info(
                "cloudfront.invalidation.lookup",
                distribution=dist_id,
                caller_reference=ref,
                found=found["Id"] if found else None,
                read=read,
                pages=pages,
                floor_reached=floor_reached,
            )
            return _Lookup(found, read, pages, floor_reached)

        while True:
            kwargs: dict[str, Any] = {"DistributionId": dist_id}
            if marker:
                kwargs["Marker"] = marker
            if self.page_size:
                kwargs["MaxItems"] = str(self.page_size)
            response = self._call(
                "ListInvalidations",
                dist_id,
                functools.partial(client.list_invalidations, **kwargs),
                deadline,
                stop,
                plog,
            )
            pages += 1
            page = response["InvalidationList"]
            for summary in page.get("Items", []):
                if floor is not None and summary["CreateTime"].timestamp() < floor:
                    return done(None, True)
                if floor is None and read >= self.lookup_limit:
                    return done(None, False)
                inv = get(summary["Id"])
                read += 1
                if inv["InvalidationBatch"]["CallerReference"] == ref:
                    return done(inv, False)
            marker = page.get("NextMarker", "") if page.get("IsTruncated") else ""
            if not marker or marker in seen_markers:  # a repeated marker would loop forever
                return done(None, False)
            seen_markers.add(marker)

    def _wait(
        self,
        client: CloudFrontClient,
        requested: Iterable[_Requested],
        deadline: float,
        stop: threading.Event,
        plog: EventLogger,
    ) -> tuple[PurgeStatus, dict[str, str]]:
        pending = {r.distribution_id: r for r in requested if r.status != _COMPLETED}
        while pending:
            remaining = deadline - self._clock()
            if remaining <= 0:
                plog.warning(
                    "cloudfront.invalidation.timeout",
                    distribution=",".join(pending),
                    invalidation_id=",".join(r.invalidation_id for r in pending.values()),
                )
                return PurgeStatus.TIMEOUT, {"reason": "deadline"}
            if stop.wait(min(self.poll_interval, remaining)):
                plog.info("cloudfront.invalidation.stopped", distribution=",".join(pending))
                return PurgeStatus.TIMEOUT, {"reason": "stopped"}
            for dist_id, req in list(pending.items()):
                try:
                    response = client.get_invalidation(
                        DistributionId=dist_id, Id=req.invalidation_id
                    )
                except _POLL_ERRORS as err:
                    failure = failure_of(err, "GetInvalidation", dist_id)
                    if failure.retryable:
                        plog.warning(
                            "cloudfront.poll.retry", distribution=dist_id, code=failure.code
                        )
                        continue
                    # Requested but unconfirmable (e.g. no cloudfront:GetInvalidation): say so
                    # without pretending the purge did not happen.
                    plog.error(
                        "cloudfront.poll.failed",
                        distribution=dist_id,
                        invalidation_id=req.invalidation_id,
                        code=failure.code,
                        error=failure.message,
                    )
                    return PurgeStatus.TIMEOUT, {"reason": "error", "error": str(failure)}
                if response["Invalidation"]["Status"] == _COMPLETED:
                    del pending[dist_id]
                    plog.info(
                        "cloudfront.invalidation.completed",
                        distribution=dist_id,
                        invalidation_id=req.invalidation_id,
                    )
        return PurgeStatus.COMPLETED, {}

    def _call(
        self,
        operation: str,
        dist_id: str | None,
        fn: Callable[[], _T],
        deadline: float,
        stop: threading.Event,
        plog: EventLogger,
    ) -> _T:
        attempt = 0
        while True:
            try:
                return fn()
            except _CALL_ERRORS as err:
                failure = failure_of(err, operation, dist_id)
            if not failure.retryable:
                raise failure
            attempt += 1
            delay = self.backoff.delay(attempt, self._rng)
            if self._clock() + delay >= deadline:
                raise PurgeError(
                    failure.code,
                    f"{operation} still failing after {attempt} attempts, giving up at the "
                    f"deadline: {failure.message}",
                    retryable=True,
                )
            plog.warning(
                "cloudfront.backoff",
                operation=operation,
                distribution=dist_id,
                code=failure.code,
                attempt=attempt,
                delay=round(delay, 3),
            )
            if stop.wait(delay):
                raise PurgeError("Stopped", f"stopped while retrying {operation}", retryable=True)


def failure_of(err: Exception, operation: str, dist_id: str | None) -> PurgeError:
    """The one mapping of a botocore error to a PurgeError: what it means, and whether the
    same request may succeed later (`retryable`)."""
    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return PurgeError(
            "NoCredentials",
            f"{type(err).__name__}: no usable AWS credentials; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or use IRSA / EKS Pod Identity",
            retryable=False,
        )
    if isinstance(err, CredentialRetrievalError):  # e.g. STS unreachable for IRSA
        return PurgeError("CredentialRetrieval", str(err), retryable=True)
    if not isinstance(err, ClientError):  # connection errors
        return PurgeError("ConnectionError", str(err), retryable=True)
    error = err.response.get("Error", {})
    code = str(error.get("Code", "") or "")
    message = str(error.get("Message", "") or "")
    http = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    where = f" on distribution {dist_id}" if dist_id else ""
    if code in RETRYABLE_CODES or http >= 500:
        return PurgeError(code or f"HTTP{http}", f"{operation}{where}: {message}", retryable=True)
    if code in _EXPIRED_CODES:
        return PurgeError(code, f"{operation}: credentials expired: {message}", retryable=True)
    if http == 403 or code == "AccessDenied":
        return PurgeError(
            "AccessDenied",
            f"CloudFront refused {operation}{where} ({code}: {message}); grant "
            f"cloudfront:{operation} to the aggregator's AWS identity (cache-buster needs "
            f"{', '.join(PERMISSIONS)})",
            retryable=False,
        )
    if code == "NoSuchDistribution":
        return PurgeError(
            "NoSuchDistribution",
            f"distribution {dist_id} does not exist (check the distribution-id annotation)",
            retryable=False,
        )
    if code == "InvalidationBatchAlreadyExists" or (
        code == "InvalidArgument" and "caller reference" in message.lower()
    ):
        # Not a failure of ours to report: `purge` looks the earlier invalidation up.
        return PurgeError(
            REFERENCE_USED,
            f"{operation}{where}: CallerReference already used ({code}: {message})",
            retryable=False,
        )
    return PurgeError(code or f"HTTP{http}", f"{operation}{where}: {message}", retryable=False)


def _plog(request: PurgeRequest) -> EventLogger:
    return log.bind(app=request.app, namespace=request.namespace, rollout_id=request.rollout_id)


def _reused(
    dist_id: str, ref: str, inv: InvalidationTypeDef, found_by: str, plog: EventLogger
) -> _Requested:
    plog.info(
        "cloudfront.invalidation.reused",
        distribution=dist_id,
        invalidation_id=inv["Id"],
        caller_reference=ref,
        status=inv["Status"],
        found_by=found_by,
    )
    return _Requested(dist_id, ref, inv["Id"], inv["Status"], True, _paths_of(inv))


def _paths_of(inv: InvalidationTypeDef) -> tuple[str, ...]:
    return tuple(inv["InvalidationBatch"]["Paths"].get("Items", []))


def _report(on_requested: OnRequested | None, req: _Requested, plog: EventLogger) -> None:
    """Hand the id to the caller. Its failure does not undo nor fail the purge: the invalidation
    exists, and a replay finds it by the lookup anyway."""
    if on_requested is None:
        return
    try:
        on_requested(req.distribution_id, req.invalidation_id)
    except Exception as exc:
        plog.error(
            "cloudfront.on_requested.failed",
            distribution=req.distribution_id,
            invalidation_id=req.invalidation_id,
            error=repr(exc)[:300],
        )


def _utc(ts: float | None) -> str:
    return "?" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
