"""boto3 against the CloudFront emulator: every modelled behaviour, over real HTTP."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError, ConnectionClosedError

from sidecar.sim.cloudfront import (
    INVALID_PATHS_MESSAGE,
    REUSED_REFERENCE_MESSAGE,
    TEST_ACCESS_KEY_ID,
    CloudFrontEmulator,
    ReplayRejection,
)


@pytest.fixture
def emu() -> Iterator[CloudFrontEmulator]:
    with CloudFrontEmulator() as emulator:
        yield emulator


@pytest.fixture
def client(emu: CloudFrontEmulator) -> Any:
    return emu.boto3_client()


def batch(reference: str, *paths: str) -> Any:
    return {"CallerReference": reference, "Paths": {"Quantity": len(paths), "Items": list(paths)}}


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    response: Any = exc.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"].get("Type", ""),
    )


# -- distributions ----------------------------------------------------------------------------


def test_list_distributions_paginates_over_three_pages_with_aliases(
    emu: CloudFrontEmulator, client: Any
) -> None:
    ids = [emu.add_distribution([f"site{i}.example.com", f"alt{i}.example.com"]) for i in range(7)]
    seen: list[str] = []
    markers: list[str] = []
    marker = ""
    while True:
        kwargs = {"MaxItems": "3", **({"Marker": marker} if marker else {})}
        page = client.list_distributions(**kwargs)["DistributionList"]
        assert page["Marker"] == marker
        assert page["MaxItems"] == 3
        items = page.get("Items", [])
        assert page["Quantity"] == len(items)
        for item in items:
            n = ids.index(item["Id"])
            assert item["Aliases"] == {
                "Quantity": 2,
                "Items": [f"site{n}.example.com", f"alt{n}.example.com"],
            }
            assert item["DomainName"].endswith(".cloudfront.net")
            seen.append(item["Id"])
        markers.append(marker)
        if not page["IsTruncated"]:
            assert "NextMarker" not in page
            break
        # NextMarker is the id of the page's last distribution, as AWS documents.
        assert page["NextMarker"] == items[-1]["Id"]
        marker = page["NextMarker"]
    assert len(markers) == 3
    assert seen == ids


def test_boto3_paginator_and_default_page_size(emu: CloudFrontEmulator, client: Any) -> None:
    for i in range(150):
        emu.add_distribution([f"s{i}.example.com"])
    first = client.list_distributions()["DistributionList"]
    assert first["MaxItems"] == 100
    assert first["Quantity"] == 100
    assert first["IsTruncated"] is True
    pages = list(client.get_paginator("list_distributions").paginate())
    assert [p["DistributionList"]["Quantity"] for p in pages] == [100, 50]


def test_list_distributions_empty_and_bad_marker(emu: CloudFrontEmulator, client: Any) -> None:
    page = client.list_distributions()["DistributionList"]
    assert page["Quantity"] == 0
    assert page["IsTruncated"] is False
    assert "Items" not in page
    emu.add_distribution([])
    item = client.list_distributions()["DistributionList"]["Items"][0]
    assert item["Aliases"] == {"Quantity": 0}
    with pytest.raises(ClientError) as exc:
        client.list_distributions(Marker="ENOSUCHMARKER")
    assert error_of(exc)[:2] == ("InvalidArgument", 400)


def test_get_distribution_and_no_such_distribution(emu: CloudFrontEmulator, client: Any) -> None:
    dist = emu.add_distribution(["www.example.com"], "E1EXAMPLE", "d1.cloudfront.net")
    got = client.get_distribution(Id=dist)
    assert got["Distribution"]["Id"] == "E1EXAMPLE"
    assert got["Distribution"]["DomainName"] == "d1.cloudfront.net"
    assert got["Distribution"]["DistributionConfig"]["Aliases"]["Items"] == ["www.example.com"]
    assert got["ETag"]
    with pytest.raises(ClientError) as exc:
        client.get_distribution(Id="ENOPE")
    assert error_of(exc) == ("NoSuchDistribution", 404, "Sender")
    with pytest.raises(ValueError):
        emu.add_distribution(["other.example.com"], "E1EXAMPLE")


# -- invalidations ----------------------------------------------------------------------------


def test_create_invalidation_answers_201_with_location_and_aws_like_id(
    emu: CloudFrontEmulator, client: Any
) -> None:
    dist = emu.add_distribution(["www.example.com"])
    response = client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("r1", "/*"))
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 201
    inv = response["Invalidation"]
    assert re.fullmatch(r"I[A-Z0-9]{13}", inv["Id"])
    assert inv["Status"] == "InProgress"
    assert inv["InvalidationBatch"]["CallerReference"] == "r1"
    assert inv["InvalidationBatch"]["Paths"]["Items"] == ["/*"]
    assert (
        response["Location"] == f"{emu.url}/2020-05-31/distribution/{dist}/invalidation/{inv['Id']}"
    )


def test_same_reference_and_paths_returns_the_existing_invalidation_once(
    emu: CloudFrontEmulator, client: Any
) -> None:
    dist = emu.add_distribution(["www.example.com"])
    first = client.create_invalidation(
        DistributionId=dist, InvalidationBatch=batch("rollout-1", "/a", "/b")
    )
    again = client.create_invalidation(
        DistributionId=dist, InvalidationBatch=batch("rollout-1", "/a", "/b")
    )
    reordered = client.create_invalidation(
        DistributionId=dist, InvalidationBatch=batch("rollout-1", "/b", "/a")
    )
    assert again["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert first["Invalidation"]["Id"] == again["Invalidation"]["Id"]
    assert reordered["Invalidation"]["Id"] == first["Invalidation"]["Id"]
    assert len(emu.invalidations()) == 1
    assert emu.count_by_caller_reference() == {"rollout-1": 1}
    assert len(emu.calls("CreateInvalidation", status=201)) == 3


@pytest.mark.parametrize(
    ("configured", "status"), [("InvalidationBatchAlreadyExists", 409), ("InvalidArgument", 400)]
)
def test_same_reference_with_other_paths_is_an_error(configured: str, status: int) -> None:
    with CloudFrontEmulator(duplicate_reference_error=configured) as emu:
        client = emu.boto3_client()
        dist = emu.add_distribution(["www.example.com"])
        client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("k", "/*"))
        with pytest.raises(ClientError) as exc:
            client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("k", "/x"))
        assert error_of(exc) == (configured, status, "Sender")
        assert exc.value.response["Error"]["Message"] == REUSED_REFERENCE_MESSAGE
        assert emu.count_by_caller_reference() == {"k": 1}
    with pytest.raises(ValueError):
        CloudFrontEmulator(duplicate_reference_error="Nope")


def test_replay_rejection_switch_answers_same_path_replays_as_configured() -> None:
    with CloudFrontEmulator(completion_delay=float("inf")) as emu:
        client = emu.boto3_client()
        dist = emu.add_distribution(["www.example.com"])
        original = client.create_invalidation(
            DistributionId=dist, InvalidationBatch=batch("k", "/*")
        )
        inv_id = original["Invalidation"]["Id"]

        def replay() -> str:
            again = client.create_invalidation(
                DistributionId=dist, InvalidationBatch=batch("k", "/*")
            )
            return str(again["Invalidation"]["Id"])

        def refused() -> None:
            with pytest.raises(ClientError) as exc:
                replay()
            assert error_of(exc) == ("InvalidArgument", 400, "Sender")
            assert exc.value.response["Error"]["Message"] == REUSED_REFERENCE_MESSAGE

        assert emu.replay_rejection is ReplayRejection.OFF  # AWS's documented answer by default
        assert replay() == inv_id
        emu.replay_rejection = ReplayRejection.ALWAYS
        refused()  # even while the original is in progress
        emu.replay_rejection = "after_complete"  # the plain value works too
        assert emu.replay_rejection is ReplayRejection.AFTER_COMPLETE
        assert replay() == inv_id  # still in progress: the original
        emu.complete(inv_id)
        refused()
        emu.replay_rejection = ReplayRejection.OFF
        assert replay() == inv_id
        assert emu.count_by_caller_reference() == {"k": 1}
        with pytest.raises(ValueError):
            emu.replay_rejection = "sometimes"
    with pytest.raises(ValueError):
        CloudFrontEmulator(replay_rejection="sometimes")
    with CloudFrontEmulator(replay_rejection="always") as emu:
        assert emu.replay_rejection is ReplayRejection.ALWAYS


def test_caller_reference_is_scoped_per_distribution(emu: CloudFrontEmulator, client: Any) -> None:
    a = emu.add_distribution(["a.example.com"])
    b = emu.add_distribution(["b.example.com"])
    ia = client.create_invalidation(DistributionId=a, InvalidationBatch=batch("k", "/*"))
    ib = client.create_invalidation(DistributionId=b, InvalidationBatch=batch("k", "/x"))
    assert ia["Invalidation"]["Id"] != ib["Invalidation"]["Id"]
    assert [i.id for i in emu.invalidations(a)] == [ia["Invalidation"]["Id"]]
    # Same reference on two distributions: two invalidations, which the helper reports.
    assert emu.count_by_caller_reference() == {"k": 2}


def test_create_invalidation_validates_the_batch(emu: CloudFrontEmulator, client: Any) -> None:
    dist = emu.add_distribution(["www.example.com"])
    cases = [
        (
            {"CallerReference": "q", "Paths": {"Quantity": 2, "Items": ["/a"]}},
            "InconsistentQuantities",
        ),
        (batch("p", "no-slash"), "InvalidArgument"),
        ({"CallerReference": "e", "Paths": {"Quantity": 0}}, "InvalidArgument"),
    ]
    for body, code in cases:
        with pytest.raises(ClientError) as exc:
            client.create_invalidation(DistributionId=dist, InvalidationBatch=body)
        assert error_of(exc)[:2] == (code, 400)
    with pytest.raises(ClientError) as exc:
        client.create_invalidation(DistributionId="ENOPE", InvalidationBatch=batch("z", "/*"))
    assert error_of(exc)[:2] == ("NoSuchDistribution", 404)
    assert emu.invalidations() == []


def test_a_wildcard_only_as_the_last_character_of_a_path(
    emu: CloudFrontEmulator, client: Any
) -> None:
    dist = emu.add_distribution(["www.example.com"])
    for path in ("/a*b", "/*/index.html", "/img/**", "/*.js"):
        with pytest.raises(ClientError) as exc:
            client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("r", path))
        assert error_of(exc)[:2] == ("InvalidArgument", 400)
        assert exc.value.response["Error"]["Message"] == INVALID_PATHS_MESSAGE
    assert emu.invalidations() == []
    for i, path in enumerate(("/*", "/images/*", "/images/image*", "/index.html")):
        client.create_invalidation(DistributionId=dist, InvalidationBatch=batch(f"ok{i}", path))
    assert len(emu.invalidations(dist)) == 4


def test_in_progress_then_completed_after_the_delay() -> None:
    with CloudFrontEmulator(completion_delay=0.05) as emu:
        client = emu.boto3_client()
        dist = emu.add_distribution(["www.example.com"])
        inv = client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("k", "/*"))
        inv_id = inv["Invalidation"]["Id"]
        assert inv["Invalidation"]["Status"] == "InProgress"

        def status() -> str:
            got = client.get_invalidation(DistributionId=dist, Id=inv_id)
            return str(got["Invalidation"]["Status"])

        emu.wait_for(lambda _: status() == "Completed", timeout=5)
        assert emu.invalidations()[0].status == "Completed"
        # A replay of a finished batch reports it as it is now.
        replay = client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("k", "/*"))
        assert replay["Invalidation"]["Status"] == "Completed"


def test_completion_delay_per_distribution_and_manual_completion(
    emu: CloudFrontEmulator, client: Any
) -> None:
    fast = emu.add_distribution(["fast.example.com"])
    slow = emu.add_distribution(["slow.example.com"], completion_delay=float("inf"))
    f = client.create_invalidation(DistributionId=fast, InvalidationBatch=batch("f", "/*"))
    s = client.create_invalidation(DistributionId=slow, InvalidationBatch=batch("s", "/*"))
    get = client.get_invalidation
    assert get(DistributionId=fast, Id=f["Invalidation"]["Id"])["Invalidation"]["Status"] == (
        "Completed"
    )
    assert get(DistributionId=slow, Id=s["Invalidation"]["Id"])["Invalidation"]["Status"] == (
        "InProgress"
    )
    assert client.get_distribution(Id=slow)["Distribution"]["InProgressInvalidationBatches"] == 1
    emu.complete(s["Invalidation"]["Id"])
    assert get(DistributionId=slow, Id=s["Invalidation"]["Id"])["Invalidation"]["Status"] == (
        "Completed"
    )


def test_get_invalidation_unknown_and_other_distribution(
    emu: CloudFrontEmulator, client: Any
) -> None:
    a = emu.add_distribution(["a.example.com"])
    b = emu.add_distribution(["b.example.com"])
    inv = client.create_invalidation(DistributionId=a, InvalidationBatch=batch("k", "/*"))
    with pytest.raises(ClientError) as exc:
        client.get_invalidation(DistributionId=a, Id="INOSUCHINVALID")
    assert error_of(exc)[:2] == ("NoSuchInvalidation", 404)
    with pytest.raises(ClientError) as exc:
        client.get_invalidation(DistributionId=b, Id=inv["Invalidation"]["Id"])
    assert error_of(exc)[:2] == ("NoSuchInvalidation", 404)


def test_list_invalidations_paginates_newest_first(emu: CloudFrontEmulator, client: Any) -> None:
    dist = emu.add_distribution(["www.example.com"])
    created = [
        client.create_invalidation(DistributionId=dist, InvalidationBatch=batch(f"k{i}", "/*"))[
            "Invalidation"
        ]["Id"]
        for i in range(5)
    ]
    pages = list(
        client.get_paginator("list_invalidations").paginate(
            DistributionId=dist, PaginationConfig={"PageSize": 2}
        )
    )
    assert [p["InvalidationList"]["Quantity"] for p in pages] == [2, 2, 1]
    listed = [i["Id"] for p in pages for i in p["InvalidationList"]["Items"]]
    assert listed == list(reversed(created))
    assert pages[0]["InvalidationList"]["NextMarker"] == listed[1]
    assert {i["Status"] for p in pages for i in p["InvalidationList"]["Items"]} == {"Completed"}
    times = [i["CreateTime"] for p in pages for i in p["InvalidationList"]["Items"]]
    assert times == sorted(times, reverse=True)
    last = pages[-1]["InvalidationList"]
    assert (last["IsTruncated"], "NextMarker" in last, last["MaxItems"]) == (False, False, 2)
    # GetInvalidation gives back the batch, CallerReference included (the replay lookup's key).
    got = client.get_invalidation(DistributionId=dist, Id=listed[0])["Invalidation"]
    assert got["InvalidationBatch"]["CallerReference"] == "k4"
    assert got["InvalidationBatch"]["Paths"] == {"Quantity": 1, "Items": ["/*"]}
    empty = emu.add_distribution(["empty.example.com"])
    none = client.list_invalidations(DistributionId=empty)["InvalidationList"]
    assert (none["Quantity"], "Items" in none, none["IsTruncated"]) == (0, False, False)


# -- limits, faults, auth ---------------------------------------------------------------------


def test_too_many_invalidations_in_progress_at_the_limits() -> None:
    with CloudFrontEmulator(
        completion_delay=float("inf"), max_in_progress_paths=3, max_in_progress_wildcards=2
    ) as emu:
        client = emu.boto3_client()
        dist = emu.add_distribution(["www.example.com"])
        other = emu.add_distribution(["other.example.com"])
        client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("w1", "/*"))
        client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("w2", "/img/*"))
        with pytest.raises(ClientError) as exc:
            client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("w3", "/a/*"))
        assert error_of(exc) == ("TooManyInvalidationsInProgress", 400, "Sender")
        # File paths have their own budget, and other distributions theirs.
        client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("f1", "/a", "/b"))
        with pytest.raises(ClientError) as exc:
            client.create_invalidation(
                DistributionId=dist, InvalidationBatch=batch("f2", "/c", "/d")
            )
        assert error_of(exc)[0] == "TooManyInvalidationsInProgress"
        client.create_invalidation(DistributionId=other, InvalidationBatch=batch("o", "/*"))
        # A replay of an in-flight batch is not a new one: no limit applies.
        client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("w1", "/*"))
        with pytest.raises(ClientError) as exc:
            client.create_invalidation(
                DistributionId=dist, InvalidationBatch=batch("big", "/1", "/2", "/3", "/4")
            )
        assert error_of(exc)[:2] == ("BatchTooLarge", 413)
        emu.complete()
        client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("w3", "/a/*"))
        assert len(emu.invalidations(dist)) == 4


def test_injected_throttling_per_operation(emu: CloudFrontEmulator, client: Any) -> None:
    dist = emu.add_distribution(["www.example.com"])
    emu.throttle_next(2, operation="CreateInvalidation")
    client.list_distributions()  # other operations are not throttled
    for _ in range(2):
        with pytest.raises(ClientError) as exc:
            client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("k", "/*"))
        assert error_of(exc) == ("Throttling", 400, "Sender")
        assert exc.value.response["ResponseMetadata"].get("RetryAttempts", 0) == 0
    client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("k", "/*"))
    assert [r.error_code for r in emu.calls("CreateInvalidation")] == [
        "Throttling",
        "Throttling",
        None,
    ]
    emu.throttle_next(1)
    with pytest.raises(ClientError) as exc:
        client.get_distribution(Id=dist)
    assert error_of(exc)[0] == "Throttling"
    emu.fail_next(1, "ServiceUnavailable", status=503, operation="ListDistributions")
    with pytest.raises(ClientError) as exc:
        client.list_distributions()
    assert error_of(exc) == ("ServiceUnavailable", 503, "Receiver")
    with pytest.raises(ValueError):
        emu.throttle_next(1, operation="DeleteEverything")


def test_throttling_error_body_is_aws_error_response_xml(emu: CloudFrontEmulator) -> None:
    emu.throttle_next(1)
    scope = "20240101/us-east-1/cloudfront/aws4_request"
    auth = f"AWS4-HMAC-SHA256 Credential={TEST_ACCESS_KEY_ID}/{scope}, Signature=00"
    response = requests.get(
        f"{emu.url}/2020-05-31/distribution", headers={"Authorization": auth}, timeout=5
    )
    assert response.status_code == 400
    assert re.search(
        r"<ErrorResponse[^>]*><Error><Type>Sender</Type><Code>Throttling</Code>"
        r"<Message>[^<]+</Message></Error><RequestId>[0-9a-f]+</RequestId></ErrorResponse>",
        response.text,
    )


def test_unknown_access_key_is_denied_and_recorded(emu: CloudFrontEmulator) -> None:
    emu.add_distribution(["www.example.com"])
    stranger = emu.boto3_client(aws_access_key_id="AKIDSTRANGER", aws_secret_access_key="s3cr3t")
    with pytest.raises(ClientError) as exc:
        stranger.list_distributions()
    assert error_of(exc) == ("AccessDenied", 403, "Sender")
    assert "s3cr3t" not in str(exc.value)
    record = emu.requests[-1]
    assert (record.access_key, record.status, record.operation) == (
        "AKIDSTRANGER",
        403,
        "ListDistributions",
    )
    unsigned = requests.get(f"{emu.url}/2020-05-31/distribution", timeout=5)
    assert unsigned.status_code == 403
    assert "<Code>MissingAuthenticationToken</Code>" in unsigned.text


def test_accepted_access_keys_are_configurable() -> None:
    with CloudFrontEmulator(access_keys=["AKIDPROD"]) as emu:
        with pytest.raises(ClientError) as exc:
            emu.boto3_client().list_distributions()
        assert error_of(exc)[0] == "AccessDenied"
        emu.boto3_client(aws_access_key_id="AKIDPROD").list_distributions()


def test_dropped_response_after_the_write(emu: CloudFrontEmulator, client: Any) -> None:
    dist = emu.add_distribution(["www.example.com"])
    emu.drop_next(1, operation="CreateInvalidation")
    with pytest.raises(ConnectionClosedError):
        client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("k", "/*"))
    assert len(emu.invalidations()) == 1  # it happened, the client just never heard
    retry = client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("k", "/*"))
    assert retry["Invalidation"]["Id"] == emu.invalidations()[0].id
    assert emu.count_by_caller_reference() == {"k": 1}


def test_requests_are_recorded_with_their_details(emu: CloudFrontEmulator, client: Any) -> None:
    dist = emu.add_distribution(["www.example.com"])
    inv = client.create_invalidation(DistributionId=dist, InvalidationBatch=batch("k", "/a", "/b"))
    client.get_invalidation(DistributionId=dist, Id=inv["Invalidation"]["Id"])
    create, get = emu.requests
    assert (create.method, create.operation, create.distribution_id) == (
        "POST",
        "CreateInvalidation",
        dist,
    )
    assert (create.caller_reference, create.paths, create.status) == ("k", ("/a", "/b"), 201)
    assert create.access_key == TEST_ACCESS_KEY_ID
    assert create.invalidation_id == inv["Invalidation"]["Id"]
    assert get.operation == "GetInvalidation"
    assert get.invalidation_id == inv["Invalidation"]["Id"]
    assert create.monotonic <= get.monotonic
    emu.clear_requests()
    assert emu.requests == []


def test_wait_for_fails_loudly(emu: CloudFrontEmulator) -> None:
    with pytest.raises(AssertionError):
        emu.wait_for(lambda e: len(e.invalidations()) > 0, timeout=0.05)


def test_url_requires_start() -> None:
    emulator = CloudFrontEmulator()
    with pytest.raises(RuntimeError):
        _ = emulator.url
    emulator.start()
    try:
        assert emulator.url.startswith("http://127.0.0.1:")
    finally:
        emulator.stop()
