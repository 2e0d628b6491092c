"""The guard's rules (sidecar/core/guard.py): allow-list grammar and matching, the path cap, and
what a provider's planned targets may hold."""

from __future__ import annotations

import pytest

from sidecar.core.annotations import MAX_PATHS, AppConfig
from sidecar.core.domains import wildcards_covering
from sidecar.core.guard import (
    Guard,
    domain_allowed,
    parse_allowed_distributions,
    parse_allowed_domains,
    parse_allowed_zones,
)

ZONE_A = "0123456789abcdef0123456789abcdef"
ZONE_B = "fedcba9876543210fedcba9876543210"


def cfg(**kw: object) -> AppConfig:
    base: dict[str, object] = {
        "namespace": "shop",
        "deployment": "web",
        "app": "web",
        "container": "web",
        "image": "shop/web:1",
    }
    return AppConfig(**{**base, **kw})  # type: ignore[arg-type]


# -- the lists' grammar -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("example.com", ("example.com",)),
        ("Example.COM.", ("example.com",)),  # case-blind, trailing dot dropped
        (" example.com , *.Shop.example.com ", ("example.com", "*.shop.example.com")),
        ("a.com,,b.com,", ("a.com", "b.com")),  # empty items skipped
        ("a.com,A.com.,a.com", ("a.com",)),  # repeats dropped, order kept
        ("xn--bcher-kva.example", ("xn--bcher-kva.example",)),  # an IDN in its ASCII form
        ("*.com", ("*.com",)),
    ],
)
def test_allowed_domains_parse(text: str, parsed: tuple[str, ...]) -> None:
    assert parse_allowed_domains(text) == parsed


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (",", "lists no domain"),
        ("example", "not a fully qualified host name"),
        ("a.*.example.com", "not a valid host name"),
        ("ex ample.com", "not a valid host name"),
        ("bücher.example", "not a valid host name"),  # Unicode: write the xn-- form
        ("10.0.0.1", "an address"),
        ("example.com,https://x.example.com", "not a valid host name"),
    ],
)
def test_bad_allowed_domains(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_allowed_domains(text)


def test_distribution_and_zone_lists() -> None:
    assert parse_allowed_distributions("E2QWRUHAPOMQZL, EDFDVBD6EXAMPLE") == (
        "E2QWRUHAPOMQZL",
        "EDFDVBD6EXAMPLE",
    )
    for bad in ("e2qwruhapomqzl", "E1", "E2QWRUHAPOMQZL-1"):
        with pytest.raises(ValueError, match="is not a CloudFront distribution id"):
            parse_allowed_distributions(bad)
    with pytest.raises(ValueError, match="lists no distribution id"):
        parse_allowed_distributions(" , ")
    assert parse_allowed_zones(f"{ZONE_A.upper()},{ZONE_B}") == (ZONE_A, ZONE_B)
    with pytest.raises(ValueError, match='"nope" is not a Cloudflare zone id'):
        parse_allowed_zones("nope")


# -- matching ---------------------------------------------------------------------------------

SUFFIX = parse_allowed_domains("example.com")
WILDCARD = parse_allowed_domains("*.shop.example.com")


@pytest.mark.parametrize(
    ("allowed", "domain", "expected"),
    [
        # A suffix: the name itself and every name under it.
        (SUFFIX, "example.com", True),
        (SUFFIX, "www.example.com", True),
        (SUFFIX, "a.b.example.com", True),
        (SUFFIX, "*.example.com", True),
        (SUFFIX, "*.shop.example.com", True),
        (SUFFIX, "WWW.Example.COM.", True),
        (SUFFIX, "notexample.com", False),  # a label boundary, not a string suffix
        (SUFFIX, "example.com.evil.net", False),
        (SUFFIX, "www.example.org", False),
        (SUFFIX, "com", False),
        (SUFFIX, "*.com", False),
        # A wildcard: one or more labels in front of its parent, not the parent itself.
        (WILDCARD, "a.shop.example.com", True),
        (WILDCARD, "a.b.shop.example.com", True),
        (WILDCARD, "*.shop.example.com", True),
        (WILDCARD, "*.a.shop.example.com", True),
        (WILDCARD, "A.Shop.Example.com.", True),
        (WILDCARD, "shop.example.com", False),
        (WILDCARD, "xshop.example.com", False),
        (WILDCARD, "*.example.com", False),  # covers more than the entry allows
        (WILDCARD, "example.com", False),
        (WILDCARD, "a..shop.example.com", False),  # no name CloudFront would route
        # Several entries: any one allows.
        (SUFFIX + WILDCARD, "a.shop.example.com", True),
        (parse_allowed_domains("a.test,*.b.test"), "x.b.test", True),
        (parse_allowed_domains("a.test,*.b.test"), "b.test", False),
    ],
)
def test_domain_matching(allowed: tuple[str, ...], domain: str, expected: bool) -> None:
    assert domain_allowed(allowed, domain) is expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("a.b.example.com", ["*.b.example.com", "*.example.com", "*.com"]),
        ("example.com", ["*.com"]),
        ("*.example.com", ["*.example.com", "*.com"]),
        ("a..example.com", []),
    ],
)
def test_the_wildcard_rule_shared_with_cloudfront_lookup(host: str, expected: list[str]) -> None:
    assert wildcards_covering(host) == expected


# -- check_app --------------------------------------------------------------------------------


def test_empty_lists_restrict_nothing() -> None:
    guard = Guard()
    assert guard.max_paths == MAX_PATHS == 3000
    app = cfg(
        domains=("www.anything.net",),
        distribution_id="E2QWRUHAPOMQZL",
        zone=ZONE_A,
        paths=tuple(f"/{i}" for i in range(MAX_PATHS)),
    )
    assert guard.check_app(app, app.domains) is None
    assert guard.check_targets("cloudfront", ("EANY1234567",)) is None
    assert guard.check_targets("cloudflare", (f"{ZONE_B}/www.anything.net", ZONE_B)) is None


def test_domains_outside_are_named_with_the_setting() -> None:
    guard = Guard(allowed_domains=parse_allowed_domains("example.com,*.shop.example.com"))
    app = cfg(domains=("www.example.com", "www.other.net", "shop.example.com"))
    # shop.example.com is under the suffix example.com: only the other name is refused.
    assert guard.check_app(app, app.domains) == (
        "domain www.other.net is outside ALLOWED_DOMAINS (example.com, *.shop.example.com)"
    )
    two = guard.check_app(cfg(), ["a.other.net", "b.other.net"])
    assert two == (
        "domains a.other.net, b.other.net are outside ALLOWED_DOMAINS "
        "(example.com, *.shop.example.com)"
    )
    # The domains judged are the ones passed (derived from an Ingress), not only annotated.
    assert guard.check_app(cfg(), ["api.example.com"]) is None
    assert guard.check_app(cfg(), ["api.other.net"]) is not None


def test_distribution_zone_and_paths() -> None:
    guard = Guard(
        allowed_distributions=parse_allowed_distributions("E2QWRUHAPOMQZL"),
        allowed_zones=parse_allowed_zones(ZONE_A),
        max_paths=2,
    )
    assert guard.check_app(cfg(distribution_id="E2QWRUHAPOMQZL", zone=ZONE_A), ()) is None
    assert guard.check_app(cfg(paths=("/a", "/b")), ()) is None
    assert guard.check_app(cfg(distribution_id="EOTHER1234567"), ()) == (
        "CloudFront distribution EOTHER1234567 (cache-buster.io/distribution-id) is not in "
        "ALLOWED_DISTRIBUTIONS (E2QWRUHAPOMQZL)"
    )
    assert guard.check_app(cfg(zone=ZONE_B), ()) == (
        f"Cloudflare zone {ZONE_B} (cache-buster.io/zone) is not in ALLOWED_ZONES ({ZONE_A})"
    )
    assert guard.check_app(cfg(paths=("/a", "/b", "/c")), ()) == (
        "3 paths (cache-buster.io/paths) exceed MAX_PATHS (2)"
    )
    # Every problem in one line.
    both = guard.check_app(cfg(distribution_id="EOTHER1234567", paths=("/a", "/b", "/c")), ())
    assert both is not None and both.count("; ") == 1
    assert "ALLOWED_DISTRIBUTIONS" in both and "MAX_PATHS" in both
    # An unset distribution or zone is not judged here (a lookup finds it: check_targets).
    assert guard.check_app(cfg(domains=("www.example.com",)), ("www.example.com",)) is None


# -- check_targets ----------------------------------------------------------------------------


def test_cloudfront_targets_found_by_alias() -> None:
    guard = Guard(allowed_distributions=parse_allowed_distributions("E2QWRUHAPOMQZL"))
    assert guard.check_targets("cloudfront", ("E2QWRUHAPOMQZL",)) is None
    assert guard.check_targets("cloudfront", ("E2QWRUHAPOMQZL", "EOTHER1234567")) == (
        "CloudFront distribution EOTHER1234567 (found by alias) is not in "
        "ALLOWED_DISTRIBUTIONS (E2QWRUHAPOMQZL)"
    )
    # Zones and domains do not restrict CloudFront's targets.
    zones_only = Guard(allowed_zones=(ZONE_A,), allowed_domains=("example.com",))
    assert zones_only.check_targets("cloudfront", ("EOTHER1234567",)) is None


def test_cloudflare_targets_found_by_lookup() -> None:
    guard = Guard(allowed_zones=parse_allowed_zones(ZONE_A))
    assert guard.check_targets("cloudflare", (f"{ZONE_A}/www.example.com", ZONE_A)) is None
    assert guard.check_targets("cloudflare", (f"{ZONE_A}/a.test", f"{ZONE_B}/b.test")) == (
        f"Cloudflare zone {ZONE_B} (found by lookup) is not in ALLOWED_ZONES ({ZONE_A})"
    )
    # A target's host is judged by ALLOWED_DOMAINS too; a zone-wide target has none.
    hosts = Guard(allowed_domains=("example.com",))
    assert hosts.check_targets("cloudflare", (f"{ZONE_B}/www.example.com", ZONE_B)) is None
    refused = hosts.check_targets("cloudflare", (f"{ZONE_B}/www.other.net",))
    assert refused == "domain www.other.net is outside ALLOWED_DOMAINS (example.com)"
    # Distribution ids do not restrict Cloudflare; other providers' targets are not judged.
    ids_only = Guard(allowed_distributions=("E2QWRUHAPOMQZL",))
    assert ids_only.check_targets("cloudflare", (ZONE_B,)) is None
    assert guard.check_targets("fastly", ("anything",)) is None
