"""CloudFront lookup: which distribution serves a domain (pure matching plus a shared cache).

- Matching, as CloudFront routes a request: an exact alias first, then the most specific
  (longest) wildcard alias. `*.example.com` covers every name with one or more labels in front
  of `example.com` (`www.example.com`, `marketing.product-name.example.com`: AWS's own
  example), not `example.com` itself; `*.b.example.com` beats it for `a.b.example.com`. Hosts
  compare case-blind and without a trailing dot. One alias on two distributions (CloudFront
  refuses it, an emulator may not): the lowest id wins, so the answer is determinate.
- Listing: every page of ListDistributions (`list_distributions`, given the client and the
  caller's retrying call), guarded against a repeated marker.
- Cache: the last listing, shared by every purge of the process, kept `ttl` seconds and listed
  again once on a miss (so a new distribution is found at once) but at most once every
  `miss_refresh_interval`; one listing at a time for every thread, and a thread that waited
  for someone else's listing uses its result. A stale list beats none while CloudFront
  throttles the listing.

The invalidation client (create, wait, errors, retries) is `cloudfront.py`.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sidecar.core.domains import normalize_host, wildcards_covering
from sidecar.logs import EventLogger
from sidecar.providers.base import PurgeError

if TYPE_CHECKING:
    from mypy_boto3_cloudfront import CloudFrontClient

_T = TypeVar("_T")

Aliases = dict[str, tuple[str, ...]]


class AliasIndex:
    """Aliases of every distribution, indexed for exact and wildcard lookups."""

    def __init__(self, aliases_by_id: Mapping[str, Sequence[str]]) -> None:
        self.aliases_by_id = {k: tuple(v) for k, v in aliases_by_id.items()}
        index: dict[str, list[str]] = {}
        for dist_id in sorted(aliases_by_id):
            for alias in aliases_by_id[dist_id]:
                ids = index.setdefault(normalize_host(alias), [])
                if dist_id not in ids:
                    ids.append(dist_id)
        self._index = index

    def __len__(self) -> int:
        return len(self.aliases_by_id)

    def match(self, domain: str) -> str | None:
        host = normalize_host(domain)
        if not host:
            return None
        exact = self._index.get(host)
        if exact:
            # CloudFront refuses one alias on two distributions; lowest id keeps it determinate.
            return exact[0]
        # Nearest parent first, so the most specific wildcard wins (*.b.example.com before
        # *.example.com).
        for wildcard in wildcards_covering(host):
            ids = self._index.get(wildcard)
            if ids:
                return ids[0]
        return None


def match_distribution(aliases_by_id: Mapping[str, Sequence[str]], domain: str) -> str | None:
    """The id of the distribution serving `domain`: exact alias first, then the most specific
    wildcard alias."""
    return AliasIndex(aliases_by_id).match(domain)


# -- listing ----------------------------------------------------------------------------------


class RetryingCall(Protocol):
    """The invalidation client's retry loop for one API call (`operation` names it in logs)."""

    def __call__(self, operation: str, fn: Callable[[], _T]) -> _T: ...


def list_distributions(
    client: CloudFrontClient, call: RetryingCall, *, page_size: int | None, plog: EventLogger
) -> Aliases:
    """Every distribution's aliases, all pages. `page_size` is MaxItems (None: AWS's 100)."""
    aliases: Aliases = {}
    marker = ""
    seen_markers: set[str] = set()
    pages = 0
    while True:
        kwargs: dict[str, Any] = {}
        if marker:
            kwargs["Marker"] = marker
        if page_size:
            kwargs["MaxItems"] = str(page_size)
        response = call("ListDistributions", functools.partial(client.list_distributions, **kwargs))
        pages += 1
        page = response["DistributionList"]
        for item in page.get("Items", []):
            aliases[item["Id"]] = tuple(item.get("Aliases", {}).get("Items", []))
        marker = page.get("NextMarker", "") if page.get("IsTruncated") else ""
        if not marker or marker in seen_markers:  # a repeated marker would loop forever
            break
        seen_markers.add(marker)
    plog.info("cloudfront.distributions.listed", distributions=len(aliases), pages=pages)
    return aliases


# -- the cache --------------------------------------------------------------------------------


class DistributionCache:
    """The last ListDistributions, shared by every purge of the process. At most one listing
    runs at a time; a thread that waited for someone else's listing uses its result."""

    def __init__(self, ttl: float, miss_refresh_interval: float, clock: Callable[[], float]):
        self.ttl = ttl
        self.miss_refresh_interval = miss_refresh_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._index: AliasIndex | None = None
        self._fetched_at = -math.inf
        self._generation = 0

    def snapshot(self) -> tuple[AliasIndex | None, int, bool]:
        """(index, generation, fresh)."""
        with self._lock:
            fresh = self._clock() - self._fetched_at < self.ttl
            return self._index, self._generation, fresh and self._index is not None

    def invalidate(self) -> None:
        with self._lock:
            self._fetched_at = -math.inf

    def refresh(
        self,
        fetch: Callable[[], Aliases],
        *,
        seen_generation: int,
        min_age: float,
        wait: float,
    ) -> tuple[AliasIndex, int, bool]:
        """List again unless someone did since `seen_generation` or the data is younger than
        `min_age`. Returns (index, generation, listed_now)."""
        if not self._refresh_lock.acquire(timeout=max(wait, 0.0)):
            raise PurgeError(
                "LookupBusy",
                "another purge is still listing CloudFront distributions",
                retryable=True,
            )
        try:
            with self._lock:
                index = self._index
                if index is not None and (
                    self._generation != seen_generation
                    or self._clock() - self._fetched_at < min_age
                ):
                    return index, self._generation, False
            aliases = fetch()
            index = AliasIndex(aliases)
            with self._lock:
                self._index = index
                self._fetched_at = self._clock()
                self._generation += 1
                return index, self._generation, True
        finally:
            self._refresh_lock.release()

    def resolve(
        self,
        domains: Sequence[str],
        fetch: Callable[[], Aliases],
        *,
        remaining: Callable[[], float],
        plog: EventLogger,
    ) -> tuple[list[str], list[str]]:
        """(targets, unmatched) for the normalised `domains`: the sorted distribution ids that
        serve any of them, and the domains none serves. `remaining()` is the caller's time
        left, the longest wait for another thread's listing. Raises PurgeError when no
        domain has a distribution."""
        index, generation, fresh = self.snapshot()
        listed = False
        if not fresh:
            try:
                index, generation, listed = self.refresh(
                    fetch, seen_generation=generation, min_age=self.ttl, wait=remaining()
                )
            except PurgeError as err:
                if index is None or not err.retryable:
                    raise
                # A stale list beats none while CloudFront throttles us.
                plog.warning("cloudfront.lookup.stale", code=err.code, error=err.message)
        assert index is not None
        matches = {d: index.match(d) for d in domains}
        if not listed and any(m is None for m in matches.values()):
            # A miss may be a distribution created since the last listing: list once more.
            index, generation, listed = self.refresh(
                fetch,
                seen_generation=generation,
                min_age=self.miss_refresh_interval,
                wait=remaining(),
            )
            matches = {d: index.match(d) for d in domains}
        unmatched = [d for d, m in matches.items() if m is None]
        targets = sorted({m for m in matches.values() if m is not None})
        if not targets:
            raise PurgeError(
                "NoDistributionForDomain",
                f"no CloudFront distribution has an alias (exact or wildcard) for "
                f"{', '.join(domains)} among {len(index)} distributions; set the "
                "cache-buster.io/distribution-id annotation or add the alias",
                retryable=False,
            )
        if unmatched:
            plog.warning("cloudfront.lookup.unmatched", domains=",".join(unmatched))
        plog.info(
            "cloudfront.lookup",
            distribution=",".join(targets),
            domains=",".join(domains),
            listed=listed,
        )
        return targets, unmatched
