"""The Cloudflare API emulator's contract, over real HTTP with `requests`: zones, tokens and
their permissions, the purge body as the API checks it, per-request limits, the per-account
rate limit and injected 429 storms, and the record tests count."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sidecar.sim.cloudflare import (
    CACHE_PURGE,
    FOREIGN_HOST_CODE,
    PLAN_RATE,
    TEST_TOKEN,
    TOO_MANY_ITEMS_CODE,
    ZONE_READ,
    CloudflareEmulator,
    account_id_for,
)


@pytest.fixture
def cf() -> Iterator[CloudflareEmulator]:
    with CloudflareEmulator() as emulator:
        yield emulator


def call(
    cf: CloudflareEmulator,
    method: str,
    path: str,
    *,
    token: str | None = TEST_TOKEN,
    authorization: str | None = None,
    **kw: Any,
) -> requests.Response:
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, cf.url + path, headers=headers, timeout=5, **kw)


def purge(
    cf: CloudflareEmulator, zone_id: str, body: Any, token: str = TEST_TOKEN
) -> requests.Response:
    return call(cf, "POST", f"/zones/{zone_id}/purge_cache", token=token, json=body)


def codes(response: requests.Response) -> list[int]:
    return [e["code"] for e in response.json()["errors"]]


def test_zones_by_exact_name_with_account_and_envelope(cf: CloudflareEmulator) -> None:
    parent = cf.add_zone("example.com", account="acme")
    child = cf.add_zone("shop.example.com", account="acme", plan="enterprise")
    cf.add_zone("example.org", account="other")
    r = call(cf, "GET", "/zones", params={"name": "shop.example.com"})
    assert r.status_code == 200
    doc = r.json()
    assert doc["success"] is True and doc["errors"] == [] and doc["messages"] == []
    (zone,) = doc["result"]
    assert zone["id"] == child
    assert zone["name"] == "shop.example.com"
    assert zone["account"] == {"id": account_id_for("acme"), "name": "acme"}
    assert zone["status"] == "active"
    assert doc["result_info"]["total_count"] == 1
    # An exact match: the parent's name does not list the subdomain zone, nor the reverse.
    (only,) = call(cf, "GET", "/zones", params={"name": "example.com"}).json()["result"]
    assert only["id"] == parent
    assert call(cf, "GET", "/zones", params={"name": "www.example.com"}).json()["result"] == []
    assert call(cf, "GET", "/zones", params={"name": "EXAMPLE.COM"}).json()["result"][0]["id"] == (
        parent
    )


def test_zone_list_pages(cf: CloudflareEmulator) -> None:
    ids = [cf.add_zone(f"site{i}.example") for i in range(7)]
    first = call(cf, "GET", "/zones", params={"per_page": "5"}).json()
    second = call(cf, "GET", "/zones", params={"per_page": "5", "page": "2"}).json()
    assert [z["id"] for z in first["result"] + second["result"]] == ids
    assert first["result_info"] == {
        "page": 1,
        "per_page": 5,
        "count": 5,
        "total_count": 7,
        "total_pages": 2,
    }
    assert call(cf, "GET", "/zones", params={"per_page": "51"}).status_code == 400


def test_zone_by_id_and_unknown_ids(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com", account="acme")
    r = call(cf, "GET", f"/zones/{zid}")
    assert r.status_code == 200
    assert r.json()["result"]["account"]["id"] == account_id_for("acme")
    for bad in ("0" * 32, "example.com"):
        r = call(cf, "GET", f"/zones/{bad}")
        assert r.status_code == 400
        assert codes(r) == [7003, 7000]
        assert "perhaps your object identifier is invalid" in r.json()["errors"][0]["message"]
        assert r.json()["success"] is False and r.json()["result"] is None
    assert codes(purge(cf, "f" * 32, {"purge_everything": True})) == [7003, 7000]


def test_authentication_errors(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    assert codes(call(cf, "GET", "/zones", token=None)) == [9106]
    for header in ("Basic abc", "Bearer two words", "Bearer cfk_" + "a" * 40, "Bearer " + "a" * 37):
        r = call(cf, "GET", "/zones", authorization=header)
        assert r.status_code == 400, header
        (err,) = r.json()["errors"]
        assert err["code"] == 6003
        assert err["error_chain"] == [
            {"code": 6111, "message": "Invalid format for Authorization header"}
        ]
    r = purge(cf, zid, {"purge_everything": True}, token="cfut_unknown")
    assert (r.status_code, codes(r)) == (403, [9109])
    assert cf.purges() == []


def test_permissions_per_token_and_zone(cf: CloudflareEmulator) -> None:
    a = cf.add_zone("a.example")
    b = cf.add_zone("b.example")
    purge_only = cf.add_token([CACHE_PURGE])
    read_only = cf.add_token([ZONE_READ])
    scoped = cf.add_token([ZONE_READ, CACHE_PURGE], zones=[a])
    # Listing needs Zone Read; a token sees only the zones it may read.
    r = call(cf, "GET", "/zones", token=purge_only)
    assert (r.status_code, codes(r)) == (403, [9109])
    assert [z["id"] for z in call(cf, "GET", "/zones", token=scoped).json()["result"]] == [a]
    assert call(cf, "GET", f"/zones/{b}", token=scoped).status_code == 403
    # Purging needs Cache Purge on that zone.
    r = purge(cf, a, {"hosts": ["a.example"]}, token=read_only)
    assert (r.status_code, codes(r)) == (403, [10000])
    assert r.json()["errors"][0]["message"] == "Authentication error"
    assert purge(cf, b, {"hosts": ["b.example"]}, token=scoped).status_code == 403
    assert purge(cf, a, {"hosts": ["a.example"]}, token=purge_only).status_code == 200
    cf.revoke_token(purge_only)
    assert purge(cf, a, {"hosts": ["a.example"]}, token=purge_only).status_code == 403
    assert [(p.zone_id, p.token) for p in cf.purges()] == [(a, purge_only)]


def test_every_mode_is_accepted_and_recorded(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com", account="acme")
    bodies = [
        {
            "files": [
                "https://www.example.com/a.css",
                {"url": "https://example.com/b", "headers": {}},
            ]
        },
        {"prefixes": ["www.example.com/assets/", "example.com/img"]},
        {"hosts": ["www.example.com", "example.com"]},
        {"tags": ["release-42", "Product:Shoes"]},
        {"purge_everything": True},
    ]
    ids = []
    for body in bodies:
        r = purge(cf, zid, body)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["success"] is True and doc["errors"] == []
        ids.append(doc["result"]["id"])
    assert len(set(ids)) == 5  # a fresh id per purge
    records = cf.purges(zid)
    assert [p.mode for p in records] == ["files", "prefixes", "hosts", "tags", "purge_everything"]
    assert records[0].items == ("https://www.example.com/a.css", "https://example.com/b")
    assert records[4].items == ()
    assert {p.account_id for p in records} == {account_id_for("acme")}
    assert [p.purge_id for p in records] == ids
    assert all(p.token == TEST_TOKEN for p in records)
    assert cf.purged_items(zid)[:2] == list(records[0].items)
    assert len(cf.calls("purge", status=200)) == 5


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, 1012),
        ({"files": ["https://example.com/a"], "hosts": ["example.com"]}, 1012),
        ({"purge_everything": False}, 1012),
        ({"files": []}, 1012),
        ({"files": "https://example.com/a"}, 1014),
        ({"tags": "t"}, 1014),
        ({"files": ["example.com/a"]}, 1012),  # no scheme
        ({"files": [7]}, 1012),
        ({"prefixes": ["https://example.com/a"]}, 1012),
        ({"prefixes": ["example.com/a?x=1"]}, 1012),
        ({"prefixes": ["example.com/a#top"]}, 1012),
        ({"prefixes": ["example.com" + "/a" * 32]}, 1012),  # 32 separators
        ({"hosts": ["example.com/a"]}, 1012),
        ({"tags": ["x" * 1025]}, 1012),
        ({"hosts": ["example.org"]}, FOREIGN_HOST_CODE),
        ({"files": ["https://shop.example.com/a"]}, FOREIGN_HOST_CODE),  # the subdomain zone's
    ],
)
def test_purge_body_is_checked(cf: CloudflareEmulator, body: Any, code: int) -> None:
    zid = cf.add_zone("example.com")
    cf.add_zone("shop.example.com")
    r = purge(cf, zid, body)
    assert r.status_code == 400
    assert codes(r) == [code]
    assert cf.purges() == []


def test_malformed_json(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    r = call(cf, "POST", f"/zones/{zid}/purge_cache", data=b"{not json")
    assert (r.status_code, codes(r)) == (400, [6007])


def test_items_in_a_subdomain_zone_are_its_own(cf: CloudflareEmulator) -> None:
    cf.add_zone("example.com")
    shop = cf.add_zone("shop.example.com")
    assert purge(cf, shop, {"files": ["https://shop.example.com/a"]}).status_code == 200
    assert purge(cf, shop, {"prefixes": ["eu.shop.example.com/x/"]}).status_code == 200
    lax = CloudflareEmulator(strict_hosts=False).start()
    try:
        zid = lax.add_zone("example.com")
        assert purge(lax, zid, {"hosts": ["example.org"]}).status_code == 200
    finally:
        lax.stop()


def test_per_request_limits_follow_the_plan(cf: CloudflareEmulator) -> None:
    free = cf.add_zone("free.example")
    ent = cf.add_zone("ent.example", plan="enterprise")

    def urls(host: str, n: int) -> list[str]:
        return [f"https://{host}/{i}" for i in range(n)]

    assert purge(cf, free, {"files": urls("free.example", 30)}).status_code == 200
    r = purge(cf, free, {"files": urls("free.example", 31)})
    assert (r.status_code, codes(r)) == (400, [TOO_MANY_ITEMS_CODE])
    assert "30" in r.json()["errors"][0]["message"]
    assert purge(cf, ent, {"files": urls("ent.example", 500)}).status_code == 200
    assert purge(cf, ent, {"files": urls("ent.example", 501)}).status_code == 400
    tags = [f"t{i}" for i in range(101)]
    assert purge(cf, ent, {"tags": tags[:100]}).status_code == 200
    r = purge(cf, ent, {"tags": tags})
    assert "more than 100" in r.json()["errors"][0]["message"]
    cf.set_limits(free, files=5, lists=2)
    assert purge(cf, free, {"files": urls("free.example", 6)}).status_code == 400
    assert (
        purge(cf, free, {"hosts": ["free.example", "a.free.example", "b.free.example"]}).status_code
        == 400
    )
    # A refused batch is recorded with its items, not as a purge.
    assert cf.requests[-1].items == ("free.example", "a.free.example", "b.free.example")
    assert len(cf.purges(free)) == 1


def test_rate_limit_per_account(cf: CloudflareEmulator) -> None:
    a = cf.add_zone("a.example", account="acme")
    b = cf.add_zone("b.example", account="acme")
    other = cf.add_zone("other.example", account="other")
    cf.set_rate_limit("acme", 2.0, burst=2)
    assert purge(cf, a, {"hosts": ["a.example"]}).status_code == 200
    assert purge(cf, b, {"hosts": ["b.example"]}).status_code == 200
    # The bucket is the account's: the third request, on either zone, waits.
    r = purge(cf, a, {"hosts": ["a.example"]})
    assert (r.status_code, codes(r)) == (429, [971])
    assert 0 < float(r.headers["Retry-After"]) <= 0.5
    assert purge(cf, other, {"hosts": ["other.example"]}).status_code == 200
    time.sleep(float(r.headers["Retry-After"]) + 0.05)
    assert purge(cf, b, {"hosts": ["b.example"]}).status_code == 200
    cf.set_rate_limit("acme", None)
    for _ in range(5):
        assert purge(cf, a, {"hosts": ["a.example"]}).status_code == 200
    assert PLAN_RATE["free"] == (5 / 60, 25)
    cf.plan_rate_limit("other", "free")
    assert all(purge(cf, other, {"hosts": ["other.example"]}).status_code == 200 for _ in range(25))
    r = purge(cf, other, {"hosts": ["other.example"]})
    assert r.status_code == 429
    assert 11 < float(r.headers["Retry-After"]) <= 12  # a token every 12 s


def test_injected_storm_and_errors(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    cf.throttle_next(2, retry_after=3)
    for _ in range(2):
        r = purge(cf, zid, {"hosts": ["example.com"]})
        assert (r.status_code, codes(r), r.headers["Retry-After"]) == (429, [971], "3")
        assert "consider throttling" in r.json()["errors"][0]["message"]
    # Zone lookups are not in the purge storm.
    assert call(cf, "GET", "/zones").status_code == 200
    assert purge(cf, zid, {"hosts": ["example.com"]}).status_code == 200
    cf.throttle_next(1, retry_after=0.25, operation=None)
    assert call(cf, "GET", "/zones").headers["Retry-After"] == "0.250"
    cf.fail_next(1, status=503, code=10001, message="service unavailable", operation="purge")
    r = purge(cf, zid, {"hosts": ["example.com"]})
    assert (r.status_code, codes(r)) == (503, [10001])
    cf.fail_next(5, status=500)
    cf.clear_injections()
    assert purge(cf, zid, {"hosts": ["example.com"]}).status_code == 200
    assert len(cf.purges()) == 2
    assert [r.status for r in cf.calls("purge")] == [429, 429, 200, 503, 200]
    with pytest.raises(ValueError, match="unknown operation"):
        cf.throttle_next(1, operation="nope")


def test_injections_come_after_authentication(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    cf.throttle_next(1)
    assert purge(cf, zid, {"hosts": ["example.com"]}, token="cfut_unknown").status_code == 403
    assert purge(cf, zid, {"hosts": ["example.com"]}).status_code == 429


def test_requests_are_recorded(cf: CloudflareEmulator) -> None:
    zid = cf.add_zone("example.com")
    call(cf, "GET", "/zones", params={"name": "example.com"})
    purge(cf, zid, {"tags": ["a"]})
    purge(cf, zid, {"tags": []})
    listed, ok, bad = cf.requests
    assert (listed.operation, listed.query, listed.status) == (
        "zones.list",
        {"name": "example.com"},
        200,
    )
    assert (ok.operation, ok.zone_id, ok.mode, ok.items, ok.token) == (
        "purge",
        zid,
        "tags",
        ("a",),
        TEST_TOKEN,
    )
    assert (bad.status, bad.error_codes) == (400, (1012,))
    cf.wait_for(lambda e: len(e.calls("purge")) == 2)
    cf.clear_requests()
    assert cf.requests == [] and cf.purges() == []


def test_unknown_routes(cf: CloudflareEmulator) -> None:
    assert call(cf, "GET", "/accounts").status_code == 400
    r = requests.get(cf.url.removesuffix("/client/v4") + "/other", timeout=5)
    assert r.status_code == 404


def test_setup_is_checked(cf: CloudflareEmulator) -> None:
    cf.add_zone("example.com")
    with pytest.raises(ValueError, match="already exists"):
        cf.add_zone("example.com")
    with pytest.raises(ValueError, match="plan"):
        cf.add_zone("x.example", plan="gold")
    with pytest.raises(ValueError, match="permissions"):
        cf.add_token(["dns.edit"])
