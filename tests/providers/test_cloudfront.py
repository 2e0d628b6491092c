"""The CloudFront provider against the emulator (real HTTP), plus pure alias matching."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sidecar.providers.base import PurgeError, PurgeRequest
from sidecar.providers.cloudfront import CloudFrontProvider, caller_reference
from sidecar.providers.cloudfront_index import match_distribution
from sidecar.sim.cloudfront import (
    TEST_ACCESS_KEY_ID,
    TEST_SECRET_ACCESS_KEY,
    CloudFrontEmulator,
    ReplayRejection,
)

ALIASES = {
    "E1": ["www.example.com", "example.com"],
    "E2": ["*.example.com"],
    "E3": ["api.example.com"],
    "E4": ["*.Shop.Example.org."],
}


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("www.example.com", "E1"),  # exact beats the wildcard on E2
        ("example.com", "E1"),
        ("WWW.Example.COM.", "E1"),  # case and trailing dot do not matter
        ("api.example.com", "E3"),
        ("blog.example.com", "E2"),  # one label under the wildcard
        ("a.b.example.com", "E2"),  # two labels: covered too, as CloudFront routes them
        ("marketing.product-name.example.com", "E2"),  # AWS's own example
        ("shop.example.org", None),  # the wildcard's parent itself: not covered
        ("eu.shop.example.org", "E4"),
        ("example.net", None),
        ("", None),
        ("*.example.com", "E2"),  # an Ingress may name the wildcard itself
    ],
)
def test_match_distribution(domain: str, expected: str | None) -> None:
    assert match_distribution(ALIASES, domain) == expected


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("x.b.example.com", "EC"),  # an exact alias beats every wildcard
        ("a.b.example.com", "EB"),  # the most specific wildcard wins
        ("deep.a.b.example.com", "EB"),
        ("b.example.com", "EA"),  # *.b.example.com does not cover its parent
        ("a.c.example.com", "EA"),
        ("example.com", None),
        ("a..example.com", None),  # an empty label is no routable name
    ],
)
def test_wildcards_exact_first_then_most_specific(domain: str, expected: str | None) -> None:
    aliases = {"EA": ["*.example.com"], "EB": ["*.b.example.com"], "EC": ["x.b.example.com"]}
    assert match_distribution(aliases, domain) == expected
    # Neither the ids nor the listing order decide: the specificity does.
    renamed = {"EZ": ["*.example.com"], "EB": ["*.b.example.com"]}
    assert match_distribution(dict(reversed(renamed.items())), "a.b.example.com") == "EB"


def test_match_distribution_is_deterministic_on_duplicates() -> None:
    assert match_distribution({"EB": ["x.io"], "EA": ["x.io"]}, "x.io") == "EA"
    assert match_distribution({"EB": ["*.x.io"], "EA": ["*.x.io"]}, "a.x.io") == "EA"


def test_caller_reference_per_distribution() -> None:
    assert caller_reference("key", "E1", several=False) == "key"
    assert caller_reference("key", "E1", several=True) == "key/E1"


# -- against the emulator ---------------------------------------------------------------------


@pytest.fixture
def emu() -> Iterator[CloudFrontEmulator]:
    with CloudFrontEmulator() as emulator:
        yield emulator


def provider(emu: CloudFrontEmulator, **kw: Any) -> CloudFrontProvider:
    kw.setdefault("poll_interval", 0.01)
    kw.setdefault("backoff_base", 0.001)
    kw.setdefault("backoff_cap", 0.02)
    kw.setdefault("miss_refresh_interval", 0.0)
    return CloudFrontProvider(emu.boto3_client, **kw)


def request(key: str = "rollout-1-key", **kw: Any) -> PurgeRequest:
    kw.setdefault("domains", ("www.example.com",))
    return PurgeRequest(
        app="web", namespace="shop", rollout_id="rollout-1", idempotency_key=key, **kw
    )


def fill(emu: CloudFrontEmulator, n: int) -> list[str]:
    return [emu.add_distribution([f"filler{i}.example.net"]) for i in range(n)]


def test_purge_by_alias_on_the_last_of_several_pages(emu: CloudFrontEmulator) -> None:
    fill(emu, 6)
    target = emu.add_distribution(["www.example.com"])
    result = provider(emu, page_size=2).purge(request(), timeout=5)
    assert result.status == "completed"
    assert result.target == target
    assert result.provider == "cloudfront"
    assert result.paths == ("/*",)
    assert not result.reused
    (inv,) = emu.invalidations()
    assert (inv.id, inv.distribution_id, inv.caller_reference) == (
        result.request_id,
        target,
        "rollout-1-key",
    )
    assert len(emu.calls("ListDistributions", status=200)) == 4  # 7 distributions, 2 per page


def test_purge_by_wildcard_alias_across_pages(emu: CloudFrontEmulator) -> None:
    fill(emu, 5)
    wildcard = emu.add_distribution(["*.example.com"])
    fill(emu, 3)
    result = provider(emu, page_size=3).purge(
        request(domains=("blog.example.com",), paths=("/index.html", "/assets/*")), timeout=5
    )
    assert result.target == wildcard
    assert emu.invalidations()[0].paths == ("/index.html", "/assets/*")


def test_lookup_is_cached_then_refreshed_once_on_a_miss(emu: CloudFrontEmulator) -> None:
    emu.add_distribution(["www.example.com"])
    api = emu.add_distribution(["api.example.com"])
    cf = provider(emu)
    cf.purge(request("k1"), timeout=5)
    cf.purge(request("k2", domains=("api.example.com",)), timeout=5)
    assert len(emu.calls("ListDistributions")) == 1  # second lookup: cache hit
    late = emu.add_distribution(["late.example.com"])
    result = cf.purge(request("k3", domains=("late.example.com",)), timeout=5)
    assert result.target == late  # found without waiting for the 6 h TTL
    assert len(emu.calls("ListDistributions")) == 2
    assert cf.purge(request("k4", domains=("api.example.com",)), timeout=5).target == api
    assert len(emu.calls("ListDistributions")) == 2


def test_unknown_domain_is_a_clear_error_after_one_refresh(emu: CloudFrontEmulator) -> None:
    emu.add_distribution(["www.example.com"])
    cf = provider(emu)
    cf.purge(request("k1"), timeout=5)
    with pytest.raises(PurgeError) as exc:
        cf.purge(request("k2", domains=("nowhere.example.org",)), timeout=5)
    assert exc.value.code == "NoDistributionForDomain"
    assert not exc.value.retryable
    assert "nowhere.example.org" in exc.value.message
    assert len(emu.calls("ListDistributions")) == 2
    assert len(emu.invalidations()) == 1


def test_miss_refresh_is_rate_limited(emu: CloudFrontEmulator) -> None:
    emu.add_distribution(["www.example.com"])
    cf = provider(emu, miss_refresh_interval=3600)
    cf.purge(request("k1"), timeout=5)
    for key in ("k2", "k3"):
        with pytest.raises(PurgeError):
            cf.purge(request(key, domains=("nowhere.example.org",)), timeout=5)
    assert len(emu.calls("ListDistributions")) == 1


def test_expired_ttl_lists_again(emu: CloudFrontEmulator) -> None:
    emu.add_distribution(["www.example.com"])
    cf = provider(emu, distribution_cache_ttl=0)
    cf.purge(request("k1"), timeout=5)
    cf.purge(request("k2"), timeout=5)
    assert len(emu.calls("ListDistributions")) == 2


def test_concurrent_purges_share_one_listing(emu: CloudFrontEmulator) -> None:
    apps = [f"app{i}.example.com" for i in range(8)]
    for domain in apps:
        emu.add_distribution([domain])
    cf = provider(emu)
    cf.client()  # build the shared client before the race
    barrier = threading.Barrier(len(apps))
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def run(domain: str) -> None:
        try:
            barrier.wait()
            results[domain] = cf.purge(
                request(f"key-{domain}", domains=(domain,)), timeout=10
            ).target
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(d,)) for d in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert len(results) == len(apps)
    assert len(emu.calls("ListDistributions")) == 1
    assert all(v == 1 for v in emu.count_by_caller_reference().values())


def test_distribution_id_override_skips_the_lookup(emu: CloudFrontEmulator) -> None:
    emu.add_distribution(["www.example.com"])
    other = emu.add_distribution(["other.example.com"])
    result = provider(emu).purge(request(distribution_id=other), timeout=5)
    assert result.target == other
    assert emu.calls("ListDistributions") == []
    assert emu.invalidations()[0].distribution_id == other


def test_unknown_distribution_id_is_not_retryable(emu: CloudFrontEmulator) -> None:
    with pytest.raises(PurgeError) as exc:
        provider(emu).purge(request(distribution_id="ENOSUCHDIST"), timeout=5)
    assert exc.value.code == "NoSuchDistribution"
    assert not exc.value.retryable
    assert "ENOSUCHDIST" in exc.value.message


def test_domains_on_several_distributions_purge_each(emu: CloudFrontEmulator) -> None:
    www = emu.add_distribution(["www.example.com"])
    api = emu.add_distribution(["api.example.com"])
    req = request(domains=("www.example.com", "api.example.com", "direct.example.org"))
    result = provider(emu).purge(req, timeout=5)
    first, second = sorted([www, api])
    assert result.target == f"{first},{second}"
    by_dist = {i.distribution_id: i for i in emu.invalidations()}
    assert result.request_id == f"{by_dist[first].id},{by_dist[second].id}"
    assert by_dist[www].caller_reference == f"rollout-1-key/{www}"
    assert result.extra["unmatched_domains"] == "direct.example.org"
    assert result.extra["invalidations"] == (
        f"{first}={by_dist[first].id},{second}={by_dist[second].id}"
    )
    # Retrying the whole purge creates nothing new.
    again = provider(emu).purge(req, timeout=5)
    assert again.request_id == result.request_id
    assert emu.count_by_caller_reference() == {
        f"rollout-1-key/{www}": 1,
        f"rollout-1-key/{api}": 1,
    }


def test_idempotent_retry_after_a_crash(emu: CloudFrontEmulator) -> None:
    dist = emu.add_distribution(["www.example.com"], completion_delay=float("inf"))
    first = provider(emu, clock_skew=0.01).purge(request(), timeout=0.05)
    assert first.status == "timeout"  # requested; the "crash" comes before Completed
    time.sleep(0.05)  # a gap larger than clock_skew, so `reused` is decidable
    emu.complete()
    # A fresh process (no cache, no memory) retries the rollout with the same key.
    second = provider(emu, clock_skew=0.01).purge(request(), timeout=5)
    assert second.request_id == first.request_id
    assert second.reused
    assert second.status == "completed"
    assert [i.id for i in emu.invalidations(dist)] == [first.request_id]
    assert emu.count_by_caller_reference() == {"rollout-1-key": 1}


def test_lost_create_response_is_retried_without_a_second_invalidation(
    emu: CloudFrontEmulator,
) -> None:
    emu.add_distribution(["www.example.com"])
    emu.drop_next(1, operation="CreateInvalidation")
    result = provider(emu).purge(request(), timeout=5)
    assert result.status == "completed"
    assert len(emu.calls("CreateInvalidation")) == 2
    assert emu.count_by_caller_reference() == {"rollout-1-key": 1}


def test_purge_by_a_wildcard_two_labels_up(emu: CloudFrontEmulator) -> None:
    emu.add_distribution(["*.example.com"])
    specific = emu.add_distribution(["*.b.example.com"])
    result = provider(emu).purge(request(domains=("a.b.example.com",)), timeout=5)
    assert result.target == specific
    assert result.status == "completed"


def test_a_wildcard_inside_a_path_is_refused(emu: CloudFrontEmulator) -> None:
    emu.add_distribution(["www.example.com"])
    with pytest.raises(PurgeError) as exc:
        provider(emu).purge(request(paths=("/a*b",)), timeout=5)
    assert exc.value.code == "InvalidArgument"
    assert not exc.value.retryable
    assert emu.invalidations() == []


# -- replays ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(ReplayRejection))
def test_same_path_replay_is_reused_under_every_replay_rejection(mode: ReplayRejection) -> None:
    with CloudFrontEmulator(replay_rejection=mode) as emu:
        dist = emu.add_distribution(["www.example.com"])
        not_before = time.time()
        first = provider(emu).purge(request(not_before=not_before), timeout=5)
        assert first.status == "completed"
        assert not first.reused
        time.sleep(0.05)  # a gap larger than clock_skew, so `reused` is decidable without a refusal
        # A fresh process resumes the rollout (same key, same paths).
        again = provider(emu, clock_skew=0.01).purge(request(not_before=not_before), timeout=5)
        assert again.reused
        assert again.status == "completed"
        assert again.request_id == first.request_id
        assert [i.id for i in emu.invalidations(dist)] == [first.request_id]
        replay = emu.calls("CreateInvalidation")[-1]
        expected = None if mode is ReplayRejection.OFF else "InvalidArgument"
        assert replay.error_code == expected  # the refusal really was answered


@pytest.mark.parametrize("code", ["InvalidationBatchAlreadyExists", "InvalidArgument"])
def test_replay_with_other_paths_finds_the_earlier_invalidation(code: str) -> None:
    with CloudFrontEmulator(duplicate_reference_error=code) as emu:
        emu.add_distribution(["www.example.com"])
        cf = provider(emu)
        not_before = time.time()
        first = cf.purge(request(not_before=not_before), timeout=5)
        # The paths annotation changed between the crash and the resume.
        again = cf.purge(request(paths=("/other",), not_before=not_before), timeout=5)
        assert again.reused
        assert again.status == "completed"
        assert again.request_id == first.request_id
        # What was purged is what CloudFront invalidated, not what the replay asked for.
        assert again.paths == ("/*",)
        assert again.extra["requested_paths"] == "/other"
        assert [r.error_code for r in emu.calls("CreateInvalidation")] == [None, code]
        assert len(emu.calls("ListInvalidations")) == 1
        assert emu.count_by_caller_reference() == {"rollout-1-key": 1}


def test_recorded_request_is_confirmed_without_listing(emu: CloudFrontEmulator) -> None:
    dist = emu.add_distribution(["www.example.com"])
    cf = provider(emu)
    recorded: list[tuple[str, str]] = []
    first = cf.purge(request(), timeout=5, on_requested=lambda d, i: recorded.append((d, i)))
    assert recorded == [(dist, first.request_id)]
    emu.replay_rejection = ReplayRejection.ALWAYS  # switched at run time
    again = cf.purge(
        request(known_requests=tuple(recorded)),
        timeout=5,
        on_requested=lambda d, i: recorded.append((d, i)),
    )
    assert again.reused
    assert again.request_id == first.request_id
    assert recorded == [(dist, first.request_id)] * 2
    assert emu.calls("ListInvalidations") == []
    assert [r.invalidation_id for r in emu.calls("GetInvalidation")][-1] == first.request_id
    assert len(emu.invalidations()) == 1


def test_a_recorded_id_of_another_reference_falls_back_to_the_lookup(
    emu: CloudFrontEmulator,
) -> None:
    dist = emu.add_distribution(["www.example.com"])
    other = emu.boto3_client().create_invalidation(
        DistributionId=dist,
        InvalidationBatch={"CallerReference": "other", "Paths": {"Quantity": 1, "Items": ["/*"]}},
    )["Invalidation"]["Id"]
    cf = provider(emu)
    first = cf.purge(request(), timeout=5)
    again = cf.purge(request(paths=("/x",), known_requests=((dist, other),)), timeout=5)
    assert again.reused
    assert again.request_id == first.request_id
    assert len(emu.calls("ListInvalidations")) == 1


def test_lookup_pages_newest_first_and_tolerates_clock_skew(emu: CloudFrontEmulator) -> None:
    dist = emu.add_distribution(["www.example.com"])
    client = emu.boto3_client()
    cf = provider(emu, page_size=2)
    first = cf.purge(request(), timeout=5)
    # Other apps' invalidations after ours: ours is on the second page.
    newer = [create(client, dist, f"other-{i}") for i in range(3)]
    emu.clear_requests()
    # The aggregator's clock ran 2 s ahead of CloudFront's: within the default skew.
    again = cf.purge(request(paths=("/x",), not_before=time.time() + 2), timeout=5)
    assert again.reused
    assert again.request_id == first.request_id
    assert len(emu.calls("ListInvalidations")) == 2
    read = [r.invalidation_id for r in emu.calls("GetInvalidation")]
    assert read[:4] == [*reversed(newer), first.request_id]  # newest first, then found


def test_lookup_stops_at_the_first_invalidation_older_than_the_intent(
    emu: CloudFrontEmulator,
) -> None:
    dist = emu.add_distribution(["www.example.com"])
    client = emu.boto3_client()
    # This rollout's reference used before its intent was recorded: not ours to claim.
    create(client, dist, "rollout-1-key", "/old")
    create(client, dist, "older")
    time.sleep(0.05)
    not_before = time.time()
    time.sleep(0.01)  # CreateTime has millisecond resolution: keep the newer ones clearly newer
    newer = [create(client, dist, f"newer-{i}") for i in range(3)]
    emu.clear_requests()
    cf = provider(emu, page_size=2, replay_skew=0.0)
    with pytest.raises(PurgeError) as exc:
        cf.purge(request(not_before=not_before), timeout=5)
    assert exc.value.code == "CallerReferenceNotFound"
    assert not exc.value.retryable
    assert dist in exc.value.message
    # newer-2, newer-1 | newer-0, older: stopped there, older ones never read back.
    assert len(emu.calls("ListInvalidations")) == 2
    assert [r.invalidation_id for r in emu.calls("GetInvalidation")] == list(reversed(newer))
    assert len(emu.invalidations(dist)) == 5


def test_find_confirms_an_earlier_purge_without_making_one(emu: CloudFrontEmulator) -> None:
    dist = emu.add_distribution(["www.example.com"], completion_delay=float("inf"))
    cf = provider(emu)
    not_before = time.time()
    req = request(targets=(dist,), not_before=not_before)
    assert cf.find(req, timeout=5) is None  # never made: nothing to confirm, nothing made
    assert emu.calls("CreateInvalidation") == []
    first = cf.purge(req, timeout=0.05)  # requested, then "killed" before Completed
    assert first.status == "timeout"
    emu.clear_requests()
    emu.complete()
    found = cf.find(req, timeout=5)
    assert found is not None
    assert (found.request_id, found.status, found.reused) == (first.request_id, "completed", True)
    assert emu.calls("CreateInvalidation") == []
    assert len(emu.calls("ListInvalidations")) == 1
    emu.clear_requests()
    recorded = request(targets=(dist,), known_requests=((dist, first.request_id),))
    assert cf.find(recorded, timeout=5) is not None
    assert {r.operation for r in emu.requests} == {"GetInvalidation"}


def test_find_on_several_targets_needs_every_one(emu: CloudFrontEmulator) -> None:
    a = emu.add_distribution(["a.example.com"])
    b = emu.add_distribution(["b.example.com"])
    # The earlier attempt died between its two CreateInvalidations.
    create(emu.boto3_client(), a, f"rollout-1-key/{a}")
    assert provider(emu).find(request(targets=(a, b)), timeout=5) is None
    create(emu.boto3_client(), b, f"rollout-1-key/{b}")
    found = provider(emu).find(request(targets=(a, b)), timeout=5)
    assert found is not None
    assert found.target == f"{a},{b}"
    assert len(emu.calls("CreateInvalidation", status=201)) == 2  # only the test's own


def test_plan_names_the_targets_without_creating_anything(emu: CloudFrontEmulator) -> None:
    www = emu.add_distribution(["www.example.com"])
    api = emu.add_distribution(["*.api.example.com"])
    cf = provider(emu)
    req = request(domains=("www.example.com", "v1.api.example.com"))
    planned = cf.plan(req)
    assert planned == tuple(sorted([www, api]))
    assert {r.operation for r in emu.requests} == {"ListDistributions"}
    assert emu.invalidations() == []
    emu.clear_requests()
    assert cf.plan(request(distribution_id="EDIRECT")) == ("EDIRECT",)
    assert cf.plan(request(targets=("E9", "E8"))) == ("E9", "E8")
    assert emu.requests == []
    with pytest.raises(PurgeError) as exc:
        cf.plan(request(domains=("nowhere.example.org",)))
    assert exc.value.code == "NoDistributionForDomain"
    with pytest.raises(PurgeError) as exc:
        cf.plan(request(domains=()))
    assert exc.value.code == "NoDomains"
    assert emu.invalidations() == []
    assert cf.purge(req, timeout=5).target == ",".join(planned)


def test_recorded_targets_bypass_domain_resolution(emu: CloudFrontEmulator) -> None:
    www = emu.add_distribution(["www.example.com"])
    recorded = emu.add_distribution(["moved.example.com"])
    # The request's domain now resolves to www; the first attempt planned `recorded`.
    result = provider(emu).purge(request(targets=(recorded,)), timeout=5)
    assert result.target == recorded
    assert emu.calls("ListDistributions") == []
    assert [(i.distribution_id, i.caller_reference) for i in emu.invalidations()] == [
        (recorded, "rollout-1-key")
    ]
    both = provider(emu).purge(request("k2", targets=(www, recorded)), timeout=5)
    assert both.target == f"{www},{recorded}"
    assert emu.count_by_caller_reference()[f"k2/{www}"] == 1
    assert emu.count_by_caller_reference()[f"k2/{recorded}"] == 1


def test_on_requested_is_called_before_the_wait(emu: CloudFrontEmulator) -> None:
    dist = emu.add_distribution(["www.example.com"], completion_delay=float("inf"))
    seen: list[tuple[str, str, str]] = []

    def record(dist_id: str, invalidation_id: str) -> None:
        seen.append((dist_id, invalidation_id, emu.invalidations()[0].status))
        emu.complete(invalidation_id)  # only reachable by a call made before the wait ends

    result = provider(emu).purge(request(), timeout=5, on_requested=record)
    assert seen == [(dist, result.request_id, "InProgress")]
    assert result.status == "completed"


def test_a_failing_on_requested_does_not_fail_the_purge(emu: CloudFrontEmulator) -> None:
    emu.add_distribution(["www.example.com"])

    def broken(dist_id: str, invalidation_id: str) -> None:
        raise RuntimeError("ledger unavailable")

    result = provider(emu).purge(request(), timeout=5, on_requested=broken)
    assert result.status == "completed"
    assert len(emu.invalidations()) == 1


def create(client: Any, dist: str, reference: str, path: str = "/*") -> str:
    batch: Any = {"CallerReference": reference, "Paths": {"Quantity": 1, "Items": [path]}}
    response = client.create_invalidation(DistributionId=dist, InvalidationBatch=batch)
    return str(response["Invalidation"]["Id"])


def test_backs_off_through_throttling_then_succeeds(emu: CloudFrontEmulator) -> None:
    emu.add_distribution(["www.example.com"])
    emu.throttle_next(2, operation="ListDistributions")
    emu.throttle_next(3, operation="CreateInvalidation")
    emu.fail_next(1, "ServiceUnavailable", status=503, operation="CreateInvalidation")
    result = provider(emu).purge(request(), timeout=5)
    assert result.status == "completed"
    assert [r.error_code for r in emu.calls("CreateInvalidation")] == [
        "Throttling",
        "Throttling",
        "Throttling",
        "ServiceUnavailable",
        None,
    ]
    assert len(emu.calls("ListDistributions")) == 3
    assert emu.count_by_caller_reference() == {"rollout-1-key": 1}


def test_backs_off_while_too_many_invalidations_are_in_progress() -> None:
    with CloudFrontEmulator(max_in_progress_wildcards=1) as emu:
        dist = emu.add_distribution(["www.example.com"], completion_delay=float("inf"))
        busy = emu.boto3_client().create_invalidation(
            DistributionId=dist,
            InvalidationBatch={
                "CallerReference": "other",
                "Paths": {"Quantity": 1, "Items": ["/*"]},
            },
        )
        emu.set_completion_delay(dist, 0.0)

        # Free the slot once the provider has been refused at least twice.
        def free_the_slot() -> None:
            emu.wait_for(lambda e: len(e.calls("CreateInvalidation", status=400)) >= 2)
            emu.complete(busy["Invalidation"]["Id"])

        freer = threading.Thread(target=free_the_slot)
        freer.start()
        result = provider(emu).purge(request(), timeout=10)
        freer.join(5)
        assert result.status == "completed"
        refused = emu.calls("CreateInvalidation", status=400)
        assert {r.error_code for r in refused} == {"TooManyInvalidationsInProgress"}


def test_throttled_past_the_deadline_is_retryable(emu: CloudFrontEmulator) -> None:
    emu.add_distribution(["www.example.com"])
    emu.throttle_next(10_000, operation="CreateInvalidation")
    with pytest.raises(PurgeError) as exc:
        provider(emu, backoff_base=0.01, backoff_cap=0.05).purge(request(), timeout=0.3)
    assert exc.value.code == "Throttling"
    assert exc.value.retryable
    assert emu.invalidations() == []


def test_access_denied_names_the_permission_and_hides_the_secret(
    emu: CloudFrontEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    emu.add_distribution(["www.example.com"])
    secret = "wJalrXUtnFEMI-very-secret"
    cf = CloudFrontProvider(
        lambda: emu.boto3_client(aws_access_key_id="AKIDSTRANGER", aws_secret_access_key=secret),
        poll_interval=0.01,
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PurgeError) as exc:
        cf.purge(request(), timeout=5)
    assert exc.value.code == "AccessDenied"
    assert not exc.value.retryable
    assert "cloudfront:ListDistributions" in exc.value.message
    assert secret not in str(exc.value)
    with pytest.raises(PurgeError) as exc:
        cf.purge(request(distribution_id="E123"), timeout=5)
    assert exc.value.code == "AccessDenied"
    assert "grant cloudfront:CreateInvalidation" in exc.value.message
    assert secret not in caplog.text
    assert len(emu.calls("CreateInvalidation")) == 1  # never retried


def test_get_invalidation_denied_reports_requested_but_unconfirmed(
    emu: CloudFrontEmulator,
) -> None:
    emu.add_distribution(["www.example.com"], completion_delay=float("inf"))
    emu.fail_next(1, "AccessDenied", status=403, operation="GetInvalidation", message="denied")
    result = provider(emu).purge(request(), timeout=5)
    assert result.status == "timeout"
    assert result.extra["reason"] == "error"
    assert "cloudfront:GetInvalidation" in result.extra["error"]
    assert result.request_id == emu.invalidations()[0].id


def test_throttled_polls_keep_polling(emu: CloudFrontEmulator) -> None:
    emu.add_distribution(["www.example.com"], completion_delay=float("inf"))
    emu.throttle_next(2, operation="GetInvalidation")

    def complete_after_the_throttled_polls() -> None:
        emu.wait_for(lambda e: len(e.calls("GetInvalidation", status=400)) == 2)
        emu.complete()

    completer = threading.Thread(target=complete_after_the_throttled_polls)
    completer.start()
    result = provider(emu).purge(request(), timeout=5)
    completer.join(5)
    assert result.status == "completed"
    assert len(emu.calls("GetInvalidation", status=400)) == 2


def test_timeout_waiting_for_completed(emu: CloudFrontEmulator) -> None:
    emu.add_distribution(["www.example.com"], completion_delay=float("inf"))
    result = provider(emu).purge(request(), timeout=1.0)  # room for a poll even on a loaded machine
    assert result.status == "timeout"
    assert result.extra["reason"] == "deadline"
    assert result.request_id == emu.invalidations()[0].id
    assert emu.invalidations()[0].status == "InProgress"
    assert len(emu.calls("GetInvalidation")) >= 1


def test_stop_event_returns_early(emu: CloudFrontEmulator) -> None:
    emu.add_distribution(["www.example.com"], completion_delay=float("inf"))
    stop = threading.Event()

    def stop_once_requested() -> None:
        emu.wait_for(lambda e: len(e.invalidations()) == 1)
        stop.set()

    emu_requested = threading.Thread(target=stop_once_requested)
    emu_requested.start()
    result = provider(emu, poll_interval=60).purge(request(), timeout=120, stop=stop)
    emu_requested.join(5)
    assert result.status == "timeout"
    assert result.extra["reason"] == "stopped"
    assert result.request_id == emu.invalidations()[0].id


def test_stop_during_backoff_raises_retryable(emu: CloudFrontEmulator) -> None:
    emu.add_distribution(["www.example.com"])
    emu.throttle_next(10_000, operation="ListDistributions")
    stop = threading.Event()
    stop.set()
    with pytest.raises(PurgeError) as exc:
        provider(emu, backoff_base=30, backoff_cap=30).purge(request(), timeout=120, stop=stop)
    assert exc.value.code == "Stopped"
    assert exc.value.retryable


def test_default_chain_credentials_and_endpoint_env(
    emu: CloudFrontEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    isolate_aws_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDFRONT", emu.url)
    emu.add_distribution(["www.example.com"])
    cf = CloudFrontProvider(poll_interval=0.01)
    config: Any = cf.client().meta.config
    retries = config.retries
    assert retries["total_max_attempts"] == 1  # botocore's own retries are off
    assert cf.purge(request(), timeout=5).status == "completed"
    assert {r.access_key for r in emu.requests} == {TEST_ACCESS_KEY_ID}
    # The constructor's endpoint wins over nothing else being set.
    monkeypatch.delenv("AWS_ENDPOINT_URL_CLOUDFRONT")
    explicit = CloudFrontProvider(endpoint_url=emu.url, poll_interval=0.01)
    assert explicit.purge(request("k2"), timeout=5).status == "completed"


def test_missing_credentials_are_a_clear_error(
    emu: CloudFrontEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    isolate_aws_env(monkeypatch, tmp_path)
    with pytest.raises(PurgeError) as exc:
        CloudFrontProvider(endpoint_url=emu.url).purge(request(distribution_id="E1"), timeout=5)
    assert exc.value.code == "NoCredentials"
    assert not exc.value.retryable
    assert emu.requests == []


def test_structured_logs_carry_app_rollout_distribution_invalidation(
    emu: CloudFrontEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    dist = emu.add_distribution(["www.example.com"])
    caplog.set_level(logging.INFO, logger="cache_buster.cloudfront")
    result = provider(emu).purge(request(), timeout=5)
    events = {r.getMessage(): getattr(r, "fields", {}) for r in caplog.records}
    created = events["cloudfront.invalidation.created"]
    assert created["app"] == "web"
    assert created["rollout_id"] == "rollout-1"
    assert created["distribution"] == dist
    assert created["invalidation_id"] == result.request_id
    assert "cloudfront.invalidation.completed" in events


def test_empty_paths_and_domains_are_rejected(emu: CloudFrontEmulator) -> None:
    cf = provider(emu)
    with pytest.raises(PurgeError) as exc:
        cf.purge(request(paths=()), timeout=5)
    assert exc.value.code == "InvalidPaths"
    with pytest.raises(PurgeError) as exc:
        cf.purge(request(domains=()), timeout=5)
    assert exc.value.code == "NoDomains"
    assert emu.requests == []


def isolate_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No credentials from the machine: only what the test sets (and no IMDS wait)."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_CLOUDFRONT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
