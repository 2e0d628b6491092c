"""What the reporter and the aggregator exchange through Redis, written once (stdlib only).

Key and channel names, the report record (one encoder for the reporter, one decoder for the
aggregator) and the channel message. Per pod, the reporter keeps

    SET cache-buster:report:{namespace}:{pod} <record JSON> EX <ttl>

and on every change of what the record says publishes `{"pod": ..., "event": "update"}` (or
`"delete"` once the record is gone) on `cache-buster:reports:{namespace}`. A message carries no
state: the subscriber re-reads the record, so a lost or reordered message costs nothing.
The JSON is compact (no spaces) with its keys in the order `ReportRecord` declares them.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any

PREFIX = "cache-buster"
# The record format's version, written as its `v` field.
RECORD_VERSION = 1


@dataclass(frozen=True)
class Report:
    """A pod's report as the aggregator reads it: what `decode_report` returns. It lives here,
    not in `rollout`, so the reporter's import path stays free of hashlib (OpenSSL adds
    megabytes to every pod's sidecar)."""

    pod: str
    template_hash: str
    probe_ok: bool
    version: str | None
    terminating: bool
    # The reporter's clock at its last heartbeat; not part of what the report says.
    updated_at: float = field(default=0.0, compare=False)
    # The pod's metadata.uid as the reporter was told it (POD_UID); a report counts only for
    # the live pod with this name and uid (docs/architecture.md, decision rule 3).
    uid: str = ""


def report_key(namespace: str, pod: str) -> str:
    return f"{PREFIX}:report:{namespace}:{pod}"


def report_pattern(namespace: str) -> str:
    return f"{PREFIX}:report:{namespace}:*"


def report_channel(namespace: str) -> str:
    return f"{PREFIX}:reports:{namespace}"


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# The report record


@dataclass(frozen=True)
class ReportRecord:
    """One pod's record as the reporter writes it. The aggregator reads the `Report` subset;
    the other fields are for people reading Redis (`probe_error`, `uid`, `started_at`)."""

    pod: str
    namespace: str
    uid: str
    template_hash: str
    probe_ok: bool
    probe_error: str | None
    version: str | None
    terminating: bool
    # The reporter's clock (Unix seconds) at start and at this write.
    started_at: float
    updated_at: float

    @property
    def report(self) -> Report:
        return Report(
            pod=self.pod,
            template_hash=self.template_hash,
            probe_ok=self.probe_ok,
            version=self.version,
            terminating=self.terminating,
            updated_at=self.updated_at,
            uid=self.uid,
        )


def encode_report(record: ReportRecord) -> str:
    return _dumps({"v": RECORD_VERSION, **asdict(record)})


def decode_report(raw: str | bytes | None) -> Report | None:
    """The record's `Report`, or None when there is none or it does not parse (a record
    written by something else is ignored, not fatal). Only `pod` is required."""
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            return None
        version = doc.get("version")
        return Report(
            pod=str(doc["pod"]),
            template_hash=str(doc.get("template_hash") or ""),
            probe_ok=bool(doc.get("probe_ok", False)),
            version=None if version is None else str(version),
            terminating=bool(doc.get("terminating", False)),
            updated_at=float(doc.get("updated_at") or 0.0),
            uid=str(doc.get("uid") or ""),
        )
    except (ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------
# The channel message


class Event(enum.Enum):
    UPDATE = "update"  # the record changed: re-read it
    DELETE = "delete"  # the record is gone (the pod terminated)


@dataclass(frozen=True)
class Message:
    pod: str
    event: Event


def encode_message(message: Message) -> str:
    return _dumps({"pod": message.pod, "event": message.event.value})


def decode_message(raw: str | bytes | None) -> Message | None:
    """None when it does not parse. An unknown event counts as an update (re-read the record),
    so a newer reporter's messages never go unnoticed."""
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        pod = str(doc["pod"])
    except (ValueError, KeyError, TypeError):
        return None
    event = Event.DELETE if doc.get("event") == Event.DELETE.value else Event.UPDATE
    return Message(pod, event)
