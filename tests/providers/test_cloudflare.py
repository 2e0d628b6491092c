"""The Cloudflare provider against the emulator (real HTTP): zone lookup and its cache, every
purge mode, batching and halving, the per-account rate limit, 429 storms, errors, replays,
and a token that never shows."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sidecar.aggregator.wiring import providers
from sidecar.config import Settings
from sidecar.providers.base import PurgeError, PurgeRequest
from sidecar.providers.cloudflare import (
    MAX_ITEMS_PER_REQUEST,
    PURGE_PERMISSION,
    ZONE_READ_PERMISSION,
    CloudflareProvider,
    TokenBucket,
    failure_of,
)
from sidecar.sim.cloudflare import (
    CACHE_PURGE,
    TEST_TOKEN,
    ZONE_READ,
    CloudflareEmulator,
    PurgeRecord,
    account_id_for,
)


@pytest.fixture
def cf() -> Iterator[CloudflareEmulator]:
    with CloudflareEmulator() as emulator:
        yield emulator


def provider(cf: CloudflareEmulator, token: Any = TEST_TOKEN, **kw: Any) -> CloudflareProvider:
    kw.setdefault("backoff_base", 0.001)
    kw.setdefault("backoff_cap", 0.05)
    kw.setdefault("rate", 1000.0)
    kw.setdefault("burst", 1000)
    return CloudflareProvider(token, api_url=cf.url, **kw)


def request(**kw: Any) -> PurgeRequest:
    kw.setdefault("domains", ("www.example.com",))
    return PurgeRequest(
        app="web", namespace="shop", rollout_id="rollout-1", idempotency_key="key-1", **kw
    )


def sent(cf: CloudflareEmulator) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(p.zone_id, p.mode, p.items) for p in cf.purges()]


# -- zones ------------------------------------------------------------------------------------


def test_zone_found_from_the_host_up_and_cached(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    p = provider(cf)
    result = p.purge(request(domains=("a.b.example.com",)), timeout=5)
    assert result.target == zid
    names = [r.query["name"] for r in cf.calls("zones.list")]
    assert names == ["a.b.example.com", "b.example.com", "example.com"]
    assert sent(cf) == [(zid, "hosts", ("a.b.example.com",))]
    # Cached: neither the plan nor the purge of the same host lists again.
    assert p.plan(request(domains=("a.b.example.com",))) == (f"{zid}/a.b.example.com",)
    p.purge(request(domains=("a.b.example.com",)), timeout=5)
    assert len(cf.calls("zones.list")) == 3
    # A sibling host under the same zone re-asks only the names not seen yet.
    p.plan(request(domains=("c.b.example.com",)))
    assert [r.query["name"] for r in cf.calls("zones.list")][3:] == ["c.b.example.com"]


def test_a_subdomain_zone_wins_over_its_parent(cf: CloudflareEmulator) -> None:
    parent = cf.add_zone("example.com")
    shop = cf.add_zone("shop.example.com")
    targets = provider(cf).plan(
        request(domains=("eu.shop.example.com", "www.example.com", "shop.example.com"))
    )
    assert targets == tuple(
        sorted(
            [
                f"{shop}/eu.shop.example.com",
                f"{shop}/shop.example.com",
                f"{parent}/www.example.com",
            ]
        )
    )
    assert cf.purges() == []  # a plan purges nothing


def test_cache_expires_and_misses_are_kept_shortly(cf: CloudflareEmulator) -> None:
    now = [0.0]
    p = provider(cf, zone_cache_ttl=100, miss_ttl=10, clock=lambda: now[0])
    with pytest.raises(PurgeError) as exc:
        p.plan(request(domains=("www.example.com",)))
    assert exc.value.code == "NoZoneForDomain"
    assert not exc.value.retryable
    assert "www.example.com or example.com" in exc.value.message
    assert ZONE_READ_PERMISSION in exc.value.message
    assert len(cf.calls("zones.list")) == 2
    zid = cf.add_zone("example.com")
    with pytest.raises(PurgeError):
        p.plan(request())  # the miss is still cached
    assert len(cf.calls("zones.list")) == 2
    now[0] = 11
    assert p.plan(request()) == (f"{zid}/www.example.com",)
    assert len(cf.calls("zones.list")) == 4
    now[0] = 50
    p.plan(request())
    assert len(cf.calls("zones.list")) == 4
    now[0] = 200  # past the ttl: asked again
    p.plan(request())
    assert len(cf.calls("zones.list")) == 6


def test_hosts_are_grouped_one_purge_per_zone(cf: CloudflareEmulator) -> None:
    a = cf.add_zone("a.example")
    b = cf.add_zone("b.example")
    domains = ("www.b.example", "a.example", "b.example", "www.a.example")
    result = provider(cf).purge(request(domains=domains, paths=("/x",)), timeout=5)
    first, second = sorted([a, b])
    assert result.target == f"{first},{second}"
    assert result.status == "completed"
    assert not result.reused
    assert sent(cf) == sorted(
        [
            (a, "files", ("https://a.example/x", "https://www.a.example/x")),
            (b, "files", ("https://b.example/x", "https://www.b.example/x")),
        ]
    )
    assert result.request_id == ",".join(p.purge_id for p in cf.purges())
    assert result.extra["requests"] == "2"


def test_explicit_zone_skips_the_lookup_and_reads_the_account_once(
    cf: CloudflareEmulator,
) -> None:
    zid = cf.add_zone("example.com", account="acme")
    p = provider(cf)
    assert p.plan(request(zone=zid)) == (f"{zid}/www.example.com",)
    assert cf.requests == []  # the plan needs no call at all
    p.purge(request(zone=zid), timeout=5)
    p.purge(request(zone=zid, domains=("example.com",)), timeout=5)
    assert [r.operation for r in cf.requests] == ["zones.get", "purge", "purge"]


def test_unknown_zone_is_not_retryable(cf: CloudflareEmulator) -> None:
    bad = "0123456789abcdef0123456789abcdef"
    with pytest.raises(PurgeError) as exc:
        provider(cf).purge(request(zone=bad), timeout=5)
    assert exc.value.code == "UnknownZone"
    assert not exc.value.retryable
    assert bad in exc.value.message
    assert cf.calls("purge") == []


def test_refused_lookup_names_zone_read(cf: CloudflareEmulator) -> None:
    cf.add_zone("example.com")
    token = cf.add_token([CACHE_PURGE])
    with pytest.raises(PurgeError) as exc:
        provider(cf, token).plan(request())
    assert exc.value.code == "AccessDenied"
    assert not exc.value.retryable
    assert ZONE_READ_PERMISSION in exc.value.message
    assert "cache-buster.io/zone" in exc.value.message


def test_a_purge_only_token_still_purges_an_explicit_zone(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    token = cf.add_token([CACHE_PURGE])
    result = provider(cf, token).purge(request(zone=zid), timeout=5)
    assert result.status == "completed"
    assert [r.status for r in cf.requests] == [403, 200]  # the account could not be read


# -- modes ------------------------------------------------------------------------------------


def test_default_mode_follows_each_path(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    paths = ("/index.html", "/assets/*", "/*", "/app.js", "/img*")
    provider(cf).purge(request(domains=("www.example.com", "example.com"), paths=paths), timeout=5)
    assert sent(cf) == [
        (
            zid,
            "files",
            (
                "https://example.com/index.html",
                "https://example.com/app.js",
                "https://www.example.com/index.html",
                "https://www.example.com/app.js",
            ),
        ),
        (
            zid,
            "prefixes",
            (
                "example.com/assets/",
                "example.com/img",
                "www.example.com/assets/",
                "www.example.com/img",
            ),
        ),
        (zid, "hosts", ("example.com", "www.example.com")),
    ]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("files", ("files", ("https://www.example.com/a", "https://www.example.com/b/c"))),
        ("prefixes", ("prefixes", ("www.example.com/a", "www.example.com/b/c"))),
        ("hosts", ("hosts", ("www.example.com",))),
    ],
)
def test_explicit_host_modes(cf: CloudflareEmulator, mode: str, expected: Any) -> None:
    zid = cf.add_zone("example.com")
    provider(cf).purge(request(paths=("/a", "/b/c"), purge_mode=mode), timeout=5)
    assert sent(cf) == [(zid, *expected)]


def test_prefixes_of_wildcard_paths(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    provider(cf).purge(request(paths=("/*", "/static/*"), purge_mode="prefixes"), timeout=5)
    assert sent(cf) == [(zid, "prefixes", ("www.example.com/", "www.example.com/static/"))]


def test_files_mode_refuses_wildcards(cf: CloudflareEmulator) -> None:
    cf.add_zone("example.com")
    with pytest.raises(PurgeError) as exc:
        provider(cf).plan(request(purge_mode="files"))  # the default paths: /*
    assert exc.value.code == "InvalidPaths"
    assert not exc.value.retryable


def test_tags_purge_the_zones_of_the_domains(cf: CloudflareEmulator) -> None:
    a = cf.add_zone("a.example")
    b = cf.add_zone("b.example")
    tags = tuple(f"t{i}" for i in range(150))
    p = provider(cf)
    req = request(
        domains=("www.a.example", "a.example", "*.b.example"), purge_mode="tags", tags=tags
    )
    assert p.plan(req) == tuple(sorted([a, b]))
    result = p.purge(req, timeout=5)
    assert set(result.target.split(",")) == {a, b}
    for zid in (a, b):
        batches = [p.items for p in cf.purges(zid)]
        assert [len(x) for x in batches] == [MAX_ITEMS_PER_REQUEST, 50]
        assert sum(batches, ()) == tags


def test_tags_without_tags_and_unknown_mode(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    with pytest.raises(PurgeError) as exc:
        provider(cf).purge(request(zone=zid, purge_mode="tags"), timeout=5)
    assert exc.value.code == "NoTags"
    with pytest.raises(PurgeError) as exc:
        provider(cf).purge(request(zone=zid, purge_mode="urls"), timeout=5)
    assert exc.value.code == "InvalidMode"
    assert cf.requests == []


def test_purge_everything_needs_the_setting(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    req = request(zone=zid, domains=(), purge_mode="everything")
    with pytest.raises(PurgeError) as exc:
        provider(cf).plan(req)
    assert exc.value.code == "PurgeEverythingDisabled"
    assert "CLOUDFLARE_PURGE_EVERYTHING" in exc.value.message
    assert not exc.value.retryable
    with pytest.raises(PurgeError):
        provider(cf).purge(req, timeout=5)
    assert cf.purges() == []
    allowed = provider(cf, purge_everything=True)
    assert allowed.plan(req) == (zid,)
    allowed.purge(req, timeout=5)
    assert sent(cf) == [(zid, "purge_everything", ())]


def test_wildcard_domains_cannot_be_purged_by_url(cf: CloudflareEmulator) -> None:
    cf.add_zone("example.com")
    with pytest.raises(PurgeError) as exc:
        provider(cf).plan(request(domains=("*.example.com",)))
    assert exc.value.code == "WildcardDomain"


def test_no_domains_and_no_paths(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    with pytest.raises(PurgeError) as exc:
        provider(cf).purge(request(domains=()), timeout=5)
    assert exc.value.code == "NoDomains"
    with pytest.raises(PurgeError) as exc:
        provider(cf).purge(request(domains=(), zone=zid), timeout=5)
    assert exc.value.code == "NoDomains"
    with pytest.raises(PurgeError) as exc:
        provider(cf).purge(request(zone=zid, paths=()), timeout=5)
    assert exc.value.code == "InvalidPaths"
    assert cf.purges() == []


# -- batches ----------------------------------------------------------------------------------


def hundred_paths() -> tuple[str, ...]:
    return tuple(f"/page/{i}" for i in range(100))


def test_hundred_urls_in_batches_of_thirty(cf: CloudflareEmulator, caplog: Any) -> None:
    zid = cf.add_zone("example.com")
    caplog.set_level(logging.INFO, logger="cache_buster.cloudflare")
    result = provider(cf).purge(request(zone=zid, paths=hundred_paths()), timeout=5)
    assert [len(p.items) for p in cf.purges()] == [30, 30, 30, 10]
    assert cf.purged_items() == [f"https://www.example.com/page/{i}" for i in range(100)]
    assert result.extra["items"] == "100"
    lines = [
        getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "cloudflare.purge"
    ]
    assert [(f["zone"], f["mode"], f["items"], f["batch"]) for f in lines] == [
        (zid, "files", 30, 1),
        (zid, "files", 30, 2),
        (zid, "files", 30, 3),
        (zid, "files", 10, 4),
    ]
    assert [f["purge_id"] for f in lines] == [p.purge_id for p in cf.purges()]
    assert {f["app"] for f in lines} == {"web"}


def test_enterprise_batches_of_five_hundred(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com", plan="enterprise")
    provider(cf, files_per_request=500).purge(request(zone=zid, paths=hundred_paths()), timeout=5)
    assert [len(p.items) for p in cf.purges()] == [100]


def test_a_batch_too_large_is_halved(cf: CloudflareEmulator, caplog: Any) -> None:
    zid = cf.add_zone("example.com", files_limit=10)
    caplog.set_level(logging.INFO, logger="cache_buster.cloudflare")
    p = provider(cf)
    p.purge(request(zone=zid, paths=hundred_paths()), timeout=5)
    refused = [len(r.items) for r in cf.calls("purge", status=400)]
    assert refused == [30, 15]
    sizes = [len(p.items) for p in cf.purges()]
    assert set(sizes[:-1]) == {7} and sum(sizes) == 100  # the rest at the smaller size
    assert len(cf.purged_items()) == len(set(cf.purged_items())) == 100
    halved = [r for r in caplog.records if r.getMessage() == "cloudflare.batch.halved"]
    assert [getattr(r, "fields", {})["size"] for r in halved] == [15, 7]
    # The zone's next purge starts at the size that worked: nothing refused again.
    cf.clear_requests()
    p.purge(request(zone=zid, paths=hundred_paths()[:20]), timeout=5)
    assert [len(r.items) for r in cf.calls("purge")] == [7, 7, 6]


def test_a_single_item_refused_as_too_large_fails(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    cf.set_limits(zid, lists=0)  # not even one host per request
    with pytest.raises(PurgeError) as exc:
        provider(cf).purge(request(zone=zid, purge_mode="hosts"), timeout=5)
    assert exc.value.code == "CloudflareRefused"
    assert not exc.value.retryable


# -- rate -------------------------------------------------------------------------------------


def test_429_storm_delays_but_completes(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    cf.throttle_next(4, retry_after=0.1)
    started = time.monotonic()
    result = provider(cf, backoff_cap=5).purge(request(zone=zid), timeout=10)
    elapsed = time.monotonic() - started
    assert result.status == "completed"
    assert [r.status for r in cf.calls("purge")] == [429, 429, 429, 429, 200]
    # Retry-After (0.1 s) wins over the policy's tiny base (1 ms).
    assert elapsed >= 0.4


def test_retry_after_holds_the_whole_account(cf: CloudflareEmulator) -> None:
    a = cf.add_zone("a.example", account="acme")
    b = cf.add_zone("b.example", account="acme")
    p = provider(cf, backoff_cap=5)
    cf.throttle_next(1, retry_after=0.5)
    done: dict[str, float] = {}

    def purge_b() -> None:
        # Starts while purge a backs off after its 429: b waits for the same Retry-After.
        cf.wait_for(lambda e: len(e.calls("purge", status=429)) == 1)
        p.purge(request(zone=b, domains=("b.example",)), timeout=10)
        done["b"] = time.monotonic()

    thread = threading.Thread(target=purge_b)
    started = time.monotonic()
    thread.start()
    p.purge(request(zone=a, domains=("a.example",)), timeout=10)
    thread.join(10)
    assert done["b"] - started >= 0.45
    assert len(cf.purges()) == 2


def test_one_bucket_per_account_shared_by_its_zones(cf: CloudflareEmulator) -> None:
    a = cf.add_zone("a.example", account="acme")
    b = cf.add_zone("b.example", account="acme")
    other = cf.add_zone("c.example", account="other")
    # The emulator enforces a limit: a provider that paces itself below it never sees a 429.
    cf.set_rate_limit("acme", 10.0, burst=1)
    p = provider(cf, rate=8.0, burst=1)
    p.purge(request(domains=("a.example", "b.example")), timeout=10)
    p.purge(request(domains=("a.example", "b.example")), timeout=10)
    acme = [r for r in cf.purges() if r.account_id == account_id_for("acme")]
    assert {r.zone_id for r in acme} == {a, b}
    assert len(acme) == 4
    gaps = [y.monotonic - x.monotonic for x, y in itertools.pairwise(acme)]
    assert min(gaps) >= 0.1
    assert cf.calls("purge", status=429) == []
    # Another account has its own bucket: no wait behind acme's.
    started = time.monotonic()
    p.purge(request(domains=("c.example",)), timeout=10)
    assert time.monotonic() - started < 0.1
    assert cf.purges()[-1].zone_id == other


def test_the_bucket_bounds_the_purge_by_its_deadline(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    p = provider(cf, rate=0.1, burst=1)
    p.purge(request(zone=zid), timeout=5)
    with pytest.raises(PurgeError) as exc:
        p.purge(request(zone=zid), timeout=1)
    assert exc.value.code == "Timeout"
    assert exc.value.retryable
    assert len(cf.purges()) == 1


def test_throttled_past_the_deadline_is_retryable(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    cf.throttle_next(100, retry_after=0.2)
    with pytest.raises(PurgeError) as exc:
        provider(cf).purge(request(zone=zid), timeout=0.5)
    assert exc.value.code == "Throttled"
    assert exc.value.retryable
    assert cf.purges() == []


def test_stop_is_honoured_while_throttled(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    cf.throttle_next(100, retry_after=30)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(PurgeError) as exc:
        provider(cf, backoff_cap=60).purge(request(zone=zid), timeout=120, stop=stop)
    assert exc.value.code == "Stopped"
    assert exc.value.retryable
    assert time.monotonic() - started < 5


def test_stop_is_honoured_waiting_for_the_bucket() -> None:
    bucket = TokenBucket(0.01, 1, time.monotonic)
    bucket.take(time.monotonic() + 1, threading.Event())
    stop = threading.Event()
    stop.set()
    with pytest.raises(PurgeError) as exc:
        bucket.take(time.monotonic() + 1000, stop)
    assert exc.value.code == "Stopped"


def test_server_errors_are_retried_then_succeed(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    cf.fail_next(2, status=503, operation="purge")
    cf.fail_next(1, status=502, operation="zones.list")
    result = provider(cf).purge(request(), timeout=5)
    assert result.target == zid
    assert [r.status for r in cf.calls("purge")] == [503, 503, 200]


def test_network_errors_are_retryable() -> None:
    with CloudflareEmulator() as gone:
        url = gone.url
    p = CloudflareProvider(TEST_TOKEN, api_url=url, backoff_base=0.01, backoff_cap=0.05)
    with pytest.raises(PurgeError) as exc:
        p.purge(request(zone="0" * 32), timeout=0.5)
    assert exc.value.code == "ConnectionError"
    assert exc.value.retryable


# -- errors -----------------------------------------------------------------------------------


def test_bad_token_names_the_purge_permission(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    for token in ("cfut_notatokenweknow", cf.add_token([ZONE_READ])):
        with pytest.raises(PurgeError) as exc:
            provider(cf, token).purge(request(zone=zid), timeout=5)
        assert exc.value.code == "AccessDenied"
        assert not exc.value.retryable
        assert PURGE_PERMISSION in exc.value.message
        assert token not in str(exc.value)
    assert len(cf.calls("purge")) == 2  # never retried


def test_a_global_api_key_is_refused_before_any_call(cf: CloudflareEmulator) -> None:
    key = "cfk_" + "k" * 40
    with pytest.raises(PurgeError) as exc:
        provider(cf, key).purge(request(zone="0" * 32), timeout=5)
    assert exc.value.code == "InvalidToken"
    assert "Global API Key" in exc.value.message
    assert key not in str(exc.value)
    assert cf.requests == []


def test_a_legacy_global_api_key_is_named_when_the_api_refuses_it(
    cf: CloudflareEmulator,
) -> None:
    key = "0123456789abcdef0123456789abcdef01234"  # 37 hex: the Global API Key's old format
    zid = cf.add_zone("example.com")
    with pytest.raises(PurgeError) as exc:
        provider(cf, key).purge(request(zone=zid), timeout=5)
    assert exc.value.code == "InvalidToken"
    assert "Global API Key" in exc.value.message
    assert key not in str(exc.value)


def test_other_refusals_keep_cloudflares_messages(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    cf.fail_next(1, status=400, code=1234, message="something odd", operation="purge")
    with pytest.raises(PurgeError) as exc:
        provider(cf).purge(request(zone=zid), timeout=5)
    assert exc.value.code == "Cloudflare1234"
    assert not exc.value.retryable
    assert "1234: something odd" in exc.value.message


def test_failure_of_scrubs_credentials() -> None:
    token = "cfut_SeCrEt0123456789"
    envelope = {"errors": [{"code": 9999, "message": f"bad {token} and cfat_OtherSecret9"}]}
    err = failure_of(400, envelope, "purge", "z" * 32, token)
    assert token not in err.message and "OtherSecret" not in err.message
    assert "cfat_[redacted]" in err.message


def test_a_later_batch_failure_says_what_was_purged(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    cf.fail_next(
        1, status=403, code=10000, message="Authentication error", operation="purge", skip=1
    )
    with pytest.raises(PurgeError) as exc:
        provider(cf).purge(request(zone=zid, paths=hundred_paths()), timeout=5)
    assert exc.value.code == "AccessDenied"
    assert f"already purged: zone {zid}: 1 requests" in exc.value.message
    assert [len(p.items) for p in cf.purges()] == [30]


# -- replays, find, callbacks -----------------------------------------------------------------


def test_replay_from_the_plan_sends_the_same_requests(cf: CloudflareEmulator) -> None:
    a = cf.add_zone("example.com")
    b = cf.add_zone("shop.example.com")
    paths = ("/index.html", "/assets/*", "/*")
    fresh = request(domains=("www.example.com", "eu.shop.example.com"), paths=paths)
    first = provider(cf)
    targets = first.plan(fresh)
    assert targets == tuple(sorted([f"{a}/www.example.com", f"{b}/eu.shop.example.com"]))
    first.purge(fresh, timeout=5)
    original = sent(cf)
    cf.clear_requests()
    # A successor (another provider, a cold cache) with only what the plan recorded, and a
    # token that cannot even list zones: the replay looks nothing up.
    purge_only = cf.add_token([CACHE_PURGE])
    replay = request(domains=(), targets=targets, paths=paths)
    result = provider(cf, purge_only).purge(replay, timeout=5)
    assert sent(cf) == original
    assert cf.calls("zones.list") == []
    assert result.target == ",".join(sorted([a, b]))
    assert provider(cf, purge_only).plan(replay) == targets


def test_replay_of_a_zone_wide_plan(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    fresh = request(purge_mode="tags", tags=("a", "b"))
    targets = provider(cf).plan(fresh)
    assert targets == (zid,)
    provider(cf).purge(
        request(domains=(), targets=targets, purge_mode="tags", tags=("a", "b")), timeout=5
    )
    assert sent(cf) == [(zid, "tags", ("a", "b"))]
    with pytest.raises(PurgeError) as exc:
        provider(cf).purge(request(domains=(), targets=targets), timeout=5)
    assert exc.value.code == "InvalidTarget"
    with pytest.raises(PurgeError) as exc:
        provider(cf).purge(request(domains=(), targets=("not-a-zone/x",)), timeout=5)
    assert exc.value.code == "InvalidTarget"


def test_find_is_always_none(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    p = provider(cf)
    p.purge(request(zone=zid), timeout=5)
    assert p.find(request(zone=zid, targets=(f"{zid}/www.example.com",)), timeout=5) is None


def test_on_requested_names_each_target(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    seen: list[tuple[str, str]] = []
    result = provider(cf).purge(
        request(domains=("www.example.com", "example.com"), paths=hundred_paths()[:40]),
        timeout=5,
        on_requested=lambda t, rid: seen.append((t, rid)),
    )
    assert seen == [
        (f"{zid}/example.com", result.request_id),
        (f"{zid}/www.example.com", result.request_id),
    ]
    assert len(result.request_id.split(",")) == 3  # 80 URLs: 3 requests

    def boom(target: str, rid: str) -> None:
        raise RuntimeError("ledger down")

    assert provider(cf).purge(request(zone=zid), timeout=5, on_requested=boom).status == "completed"


# -- the token --------------------------------------------------------------------------------


def test_the_token_never_shows(cf: CloudflareEmulator, caplog: Any) -> None:
    secret = cf.add_token(value="cfut_TopSecretValue0123456789abcdefABCDEF")
    zid = cf.add_zone("example.com")
    caplog.set_level(logging.DEBUG)
    p = provider(cf, secret)
    errors: list[str] = [repr(p)]
    cf.throttle_next(2, retry_after=0.01)
    cf.fail_next(1, status=500, operation="zones.list")
    p.purge(request(paths=hundred_paths()), timeout=5)
    cf.fail_next(1, status=400, code=1, message=f"echo {secret}", operation="purge")
    for req in (request(zone=zid), request(zone="0" * 32)):
        with pytest.raises(PurgeError) as exc:
            p.purge(req, timeout=5)
        errors.append(str(exc.value))
    cf.revoke_token(secret)
    with pytest.raises(PurgeError) as exc:
        p.purge(request(zone=zid), timeout=5)
    errors.append(str(exc.value))
    assert exc.value.code == "AccessDenied"
    fields = json.dumps([getattr(r, "fields", None) for r in caplog.records], default=str)
    for text in (caplog.text, fields, *errors):
        assert secret not in text
        assert "TopSecretValue" not in text
    assert {r.token for r in cf.purges()} == {secret}  # it was the one used


def test_the_token_is_read_at_every_call(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    second = cf.add_token()
    tokens = iter([TEST_TOKEN, second])
    p = provider(cf, lambda: next(tokens))
    p.purge(request(zone=zid), timeout=5)
    p.purge(request(zone=zid), timeout=5)
    assert [r.token for r in cf.purges()] == [TEST_TOKEN, second]
    missing = provider(cf, lambda: None)
    with pytest.raises(PurgeError) as exc:
        missing.purge(request(zone=zid), timeout=5)
    assert exc.value.code == "NoToken"
    assert "CLOUDFLARE_API_TOKEN" in exc.value.message


def test_wiring_registers_cloudflare_only_with_a_token(
    cf: CloudflareEmulator, tmp_path: Any, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="cache_buster.runtime")
    assert "cloudflare" not in providers(Settings())
    (line,) = [r for r in caplog.records if r.getMessage() == "provider.unavailable"]
    assert "CLOUDFLARE_API_TOKEN" in getattr(line, "fields", {})["hint"]
    token_file = tmp_path / "token"
    token_file.write_text(TEST_TOKEN + "\n")
    settings = Settings.from_env(
        {
            "CLOUDFLARE_API_TOKEN_FILE": str(token_file),
            "CLOUDFLARE_API_URL": cf.url,
            "CLOUDFLARE_RATE_LIMIT": "20/s",
            "CLOUDFLARE_FILES_PER_REQUEST": "25",
        },
        namespace_file=str(tmp_path / "none"),
        hostname="h",
    )
    built = providers(settings)
    p = built["cloudflare"]
    assert isinstance(p, CloudflareProvider)
    assert (p.rate, p.burst, p.files_per_request, p.purge_everything) == (20.0, 100, 25, False)
    zid = cf.add_zone("example.com")
    p.purge(request(zone=zid, paths=hundred_paths()[:26]), timeout=5)
    assert [len(r.items) for r in cf.purges()] == [25, 1]
    # The file is read at every purge: a rotated Secret is used at once.
    rotated = cf.add_token()
    token_file.write_text(rotated)
    p.purge(request(zone=zid), timeout=5)
    assert cf.purges()[-1].token == rotated
    token_file.unlink()
    with pytest.raises(PurgeError) as exc:
        p.purge(request(zone=zid), timeout=5)
    assert exc.value.code == "TokenUnavailable"
    assert exc.value.retryable


def test_purge_records_are_what_tests_count(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    provider(cf).purge(request(zone=zid), timeout=5)
    (record,) = cf.purges()
    assert isinstance(record, PurgeRecord)
    assert (record.zone_name, record.mode, record.items) == (
        "example.com",
        "hosts",
        ("www.example.com",),
    )
