"""The Redis wire format between the reporter and the aggregator: one encoder, one decoder."""

from __future__ import annotations

import json

import pytest

from sidecar.core.wire import (
    Event,
    Message,
    Report,
    ReportRecord,
    decode_message,
    decode_report,
    encode_message,
    encode_report,
    report_channel,
    report_key,
    report_pattern,
)

RECORD = ReportRecord(
    pod="web-7d9f8b6c5d-abcde",
    namespace="shop",
    uid="0b9c1f2e",
    template_hash="7d9f8b6c5d",
    probe_ok=False,
    probe_error="HTTP 503",
    version="1.2.3",
    terminating=False,
    started_at=1700000000.25,
    updated_at=1700000005.5,
)
# The bytes the reporter has always written: compact JSON, keys in this order.
RECORD_JSON = (
    '{"v":1,"pod":"web-7d9f8b6c5d-abcde","namespace":"shop","uid":"0b9c1f2e",'
    '"template_hash":"7d9f8b6c5d","probe_ok":false,"probe_error":"HTTP 503","version":"1.2.3",'
    '"terminating":false,"started_at":1700000000.25,"updated_at":1700000005.5}'
)


def test_key_and_channel_names() -> None:
    assert report_key("shop", "web-1") == "cache-buster:report:shop:web-1"
    assert report_pattern("shop") == "cache-buster:report:shop:*"
    assert report_channel("shop") == "cache-buster:reports:shop"


def test_the_record_encodes_to_todays_bytes() -> None:
    assert encode_report(RECORD) == RECORD_JSON


def test_encode_then_decode_round_trips() -> None:
    report = decode_report(encode_report(RECORD))
    assert report == RECORD.report
    assert report == Report(
        pod=RECORD.pod,
        template_hash="7d9f8b6c5d",
        probe_ok=False,
        version="1.2.3",
        terminating=False,
        uid="0b9c1f2e",
    )
    assert report is not None and report.updated_at == 1700000005.5
    assert decode_report(RECORD_JSON.encode()) == report  # bytes, as redis-py may return


@pytest.mark.parametrize(
    "raw",
    [None, "", "not json", "[]", '"text"', '{"probe_ok": true}', '{"pod": "p", "updated_at": "x"}'],
)
def test_a_record_that_does_not_parse_is_none(raw: str | None) -> None:
    assert decode_report(raw) is None


def test_a_minimal_record_has_defaults() -> None:
    report = decode_report('{"pod": "p"}')
    assert report == Report("p", "", probe_ok=False, version=None, terminating=False)


def test_channel_messages() -> None:
    assert encode_message(Message("web-1", Event.UPDATE)) == '{"pod":"web-1","event":"update"}'
    assert encode_message(Message("web-1", Event.DELETE)) == '{"pod":"web-1","event":"delete"}'
    for event in Event:
        assert decode_message(encode_message(Message("web-1", event))) == Message("web-1", event)
    # Anything else that names a pod means "re-read its record".
    assert decode_message(json.dumps({"pod": "web-1", "event": "later"})) == Message(
        "web-1", Event.UPDATE
    )
    for bad in (None, "nope", "{}", "[1]"):
        assert decode_message(bad) is None
