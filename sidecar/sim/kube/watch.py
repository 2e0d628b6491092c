"""Watch streams: the events the store commits and each stream's bounded queue."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar.sim.kube.fields import FieldRequirement, fields_match
from sidecar.sim.kube.objects import Obj
from sidecar.sim.kube.resources import ResourceType
from sidecar.sim.kube.selectors import Requirement, labels_match


@dataclass
class Event:
    type: str  # ADDED, MODIFIED, DELETED
    resource: str
    namespace: str
    rv: int
    obj: Obj
    prev: Obj | None
    _encoded: dict[str, bytes] = field(default_factory=dict)

    def encoded(self, etype: str) -> bytes:
        """The JSON line a watcher sends; cached since many watchers send the same event."""
        line = self._encoded.get(etype)
        if line is None:
            line = json.dumps({"type": etype, "object": self.obj}, separators=(",", ":")).encode()
            self._encoded[etype] = line + b"\n"
            line = self._encoded[etype]
        return line


class Watcher:
    """One watch stream's queue. Bounded: a watcher that falls behind is closed, as the real
    server closes slow watchers, and the client re-lists or re-watches."""

    def __init__(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: list[Requirement],
        fields: list[FieldRequirement],
        maxsize: int,
    ) -> None:
        self.rt = rt
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.maxsize = maxsize
        self.cond = threading.Condition()
        self.items: deque[bytes] = deque()
        self.closed = False
        self.overflowed = False

    def _matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        return labels_match(self.labels, meta.get("labels")) and fields_match(self.fields, obj)

    def line_for(self, ev: Event) -> bytes | None:
        """The line this watcher sends for `ev`: an object that starts or stops matching the
        selector arrives as ADDED or DELETED, as the server's watch cache does."""
        if self.namespace is not None and ev.namespace != self.namespace:
            return None
        now = self._matches(ev.obj)
        before = ev.type == "MODIFIED" and self._matches(ev.prev)
        if ev.type == "MODIFIED":
            if now and before:
                return ev.encoded("MODIFIED")
            if now:
                return ev.encoded("ADDED")
            if before:
                return ev.encoded("DELETED")
            return None
        return ev.encoded(ev.type) if now else None

    def push(self, line: bytes) -> None:
        with self.cond:
            if self.closed:
                return
            if len(self.items) >= self.maxsize:
                self.overflowed = True
                self.closed = True
            else:
                self.items.append(line)
            self.cond.notify()

    def bookmark_line(self, rv: int) -> bytes:
        mark = {
            "type": "BOOKMARK",
            "object": {
                "kind": self.rt.kind,
                "apiVersion": self.rt.api_version,
                "metadata": {"resourceVersion": str(rv)},
            },
        }
        return json.dumps(mark, separators=(",", ":")).encode() + b"\n"

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()

    def next_batch(self, timeout: float) -> list[bytes]:
        with self.cond:
            if not self.items and not self.closed:
                self.cond.wait(timeout)
            batch = list(self.items)
            self.items.clear()
            return batch


Listener = Callable[[Event], None]
