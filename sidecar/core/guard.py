"""The platform team's guard: which sites an app may purge, and how many paths (pure, stdlib).

In the spirit of external-dns's `--domain-filter`: the aggregator holds the CDN credentials,
so a team that can edit its own Deployment's annotations must not purge another team's site
with them. Four settings (`sidecar.config`); unset, each restricts nothing:

- `ALLOWED_DOMAINS`: `example.com` allows that name and every name under it;
  `*.shop.example.com` allows every name with one or more labels in front of
  `shop.example.com`, not that name itself (CloudFront's wildcard rule,
  `sidecar.core.domains.wildcards_covering`). An app's own wildcard domain is a name like any
  other: `*.shop.example.com` is allowed by `example.com`, `*.example.com` or
  `*.shop.example.com`, not by `*.a.shop.example.com`. Names compare case-blind and without
  a trailing dot; entries follow `sidecar.core.grammar.parse_domain`.
- `ALLOWED_DISTRIBUTIONS`: CloudFront distribution ids; `ALLOWED_ZONES`: Cloudflare zone ids.
- `MAX_PATHS`: paths per purge (the `cache-buster.io/paths` list), at most CloudFront's own
  limit per invalidation.

`check_app` judges what the app's settings name (domains, annotated or derived from its
Ingress; distribution id; zone; paths); `check_targets` judges what a provider found by
lookup before any CDN call. Each returns the problem as one line, or None.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sidecar.core.annotations import MAX_PATHS, AppConfig
from sidecar.core.domains import normalize_host, wildcards_covering
from sidecar.core.grammar import (
    DISTRIBUTION_ID_HINT,
    is_distribution_id,
    parse_domain,
    parse_zone_id,
)

# The PurgeError code of a purge the guard refuses (never retried: it needs a person).
NOT_ALLOWED = "NotAllowed"

# Provider names whose targets the guard reads (sidecar.core.annotations.PROVIDERS).
CLOUDFRONT = "cloudfront"
CLOUDFLARE = "cloudflare"


def _entries(text: str, parse: Callable[[str], str], what: str) -> tuple[str, ...]:
    """A comma list: entries stripped and parsed, repeats dropped, order kept."""
    items = [item.strip() for item in text.split(",")]
    parsed = [parse(item) for item in items if item]
    if not parsed:
        # A list of nothing is most likely a mistake; read as "no restriction" it would
        # open everything.
        raise ValueError(f"lists no {what}; unset it for no restriction")
    return tuple(dict.fromkeys(parsed))


def parse_allowed_domains(text: str) -> tuple[str, ...]:
    """ALLOWED_DOMAINS: `example.com` (it and every name under it) or `*.example.com`."""
    return _entries(text, parse_domain, "domain")


def _distribution_id(text: str) -> str:
    if not is_distribution_id(text):
        raise ValueError(
            f"{json.dumps(text)} is not a CloudFront distribution id ({DISTRIBUTION_ID_HINT})"
        )
    return text


def parse_allowed_distributions(text: str) -> tuple[str, ...]:
    """ALLOWED_DISTRIBUTIONS: CloudFront distribution ids."""
    return _entries(text, _distribution_id, "distribution id")


def _zone_id(text: str) -> str:
    try:
        return parse_zone_id(text)
    except ValueError as err:
        raise ValueError(f"{json.dumps(text)} {err}") from None


def parse_allowed_zones(text: str) -> tuple[str, ...]:
    """ALLOWED_ZONES: Cloudflare zone ids (32 hex characters, compared lower-cased)."""
    return _entries(text, _zone_id, "zone id")


def domain_allowed(allowed: Iterable[str], domain: str) -> bool:
    """Whether one of the (parsed) ALLOWED_DOMAINS entries allows `domain`."""
    host = normalize_host(domain)
    covering = wildcards_covering(host)
    for entry in allowed:
        if entry.startswith("*."):
            if entry in covering:
                return True
        elif host == entry or host.endswith("." + entry):
            return True
    return False


def _names(values: Sequence[str]) -> str:
    return ", ".join(values)


def _joined(*problems: str | None) -> str | None:
    """Every problem found, as one line."""
    return "; ".join(p for p in problems if p) or None


@dataclass(frozen=True)
class Guard:
    """The parsed settings; an empty tuple restricts nothing."""

    allowed_domains: tuple[str, ...] = ()
    allowed_distributions: tuple[str, ...] = ()
    allowed_zones: tuple[str, ...] = ()
    max_paths: int = MAX_PATHS

    def check_app(self, cfg: AppConfig, domains: Sequence[str]) -> str | None:
        """What the app's settings name that the guard refuses, as one line (every problem,
        `; `-separated), or None. `domains`: the app's, annotated or derived."""
        return _joined(
            self._domains(domains),
            self._distribution(cfg.distribution_id, "cache-buster.io/distribution-id"),
            self._zone(cfg.zone),
            self._paths(len(cfg.paths)),
        )

    def check_targets(self, provider: str, targets: Sequence[str]) -> str | None:
        """What a provider's planned targets (found by lookup) hold that the guard refuses,
        or None: CloudFront targets are distribution ids, Cloudflare's `zone_id/host` or
        `zone_id`. Another provider's targets are not judged here."""
        if provider == CLOUDFRONT:
            refused = [t for t in targets if not self._distribution_allowed(t)]
            return self._distribution_problem(refused, "found by alias")
        if provider == CLOUDFLARE:
            zones = list(dict.fromkeys(t.partition("/")[0] for t in targets))
            hosts = [h for h in (t.partition("/")[2] for t in targets) if h]
            return _joined(self._zones_problem(zones, "found by lookup"), self._domains(hosts))
        return None

    # -- the rules ------------------------------------------------------------------------
    def _domains(self, domains: Sequence[str]) -> str | None:
        if not self.allowed_domains:
            return None
        refused = [d for d in dict.fromkeys(domains) if not domain_allowed(self.allowed_domains, d)]
        if not refused:
            return None
        what = "domain" if len(refused) == 1 else "domains"
        verb = "is" if len(refused) == 1 else "are"
        return (
            f"{what} {_names(refused)} {verb} outside ALLOWED_DOMAINS "
            f"({_names(self.allowed_domains)})"
        )

    def _distribution_allowed(self, distribution_id: str) -> bool:
        return not self.allowed_distributions or distribution_id in self.allowed_distributions

    def _distribution_problem(self, refused: Sequence[str], source: str) -> str | None:
        if not refused:
            return None
        what = "distribution" if len(refused) == 1 else "distributions"
        verb = "is" if len(refused) == 1 else "are"
        return (
            f"CloudFront {what} {_names(refused)} ({source}) {verb} not in "
            f"ALLOWED_DISTRIBUTIONS ({_names(self.allowed_distributions)})"
        )

    def _distribution(self, distribution_id: str | None, source: str) -> str | None:
        if distribution_id is None or self._distribution_allowed(distribution_id):
            return None
        return self._distribution_problem([distribution_id], source)

    def _zones_problem(self, zones: Sequence[str], source: str) -> str | None:
        if not self.allowed_zones:
            return None
        refused = [z for z in zones if z.lower() not in self.allowed_zones]
        if not refused:
            return None
        what = "zone" if len(refused) == 1 else "zones"
        verb = "is" if len(refused) == 1 else "are"
        return (
            f"Cloudflare {what} {_names(refused)} ({source}) {verb} not in ALLOWED_ZONES "
            f"({_names(self.allowed_zones)})"
        )

    def _zone(self, zone: str | None) -> str | None:
        return self._zones_problem([zone], "cache-buster.io/zone") if zone is not None else None

    def _paths(self, count: int) -> str | None:
        if count <= self.max_paths:
            return None
        return f"{count} paths (cache-buster.io/paths) exceed MAX_PATHS ({self.max_paths})"
