"""The ledger: one ConfigMap per namespace, a key per app holding its `AppRecord` as JSON.

Durable memory of what was purged (Redis is only a cache and meeting point): first sight,
restarts and rollbacks decide from it. Writes are compare-and-set per app on top of the
ConfigMap's resourceVersion, so two writers (a leader during a hand-over, a purge Job) never
silently overwrite each other's record for an app: the loser re-reads and re-decides.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from sidecar.config import Settings
from sidecar.core.records import AppRecord
from sidecar.kube.reflector import read_json
from sidecar.logs import get_logger

log = get_logger("ledger")

_DEFAULTS = Settings()

MANAGED_BY = {"app.kubernetes.io/managed-by": "cache-buster"}


class LedgerError(Exception):
    pass


class Ledger:
    def __init__(
        self,
        core_api: Any,
        namespace: str,
        name: str = _DEFAULTS.ledger_configmap,
        request_timeout: float = 10.0,
    ) -> None:
        self._api = core_api
        # A hung API call must never hang the evaluator: every call has a deadline.
        self.request_timeout = request_timeout
        self.namespace = namespace
        self.name = name
        self._lock = threading.Lock()
        self._records: dict[str, AppRecord] = {}
        self._annotations: dict[str, str] = {}
        self._labels: dict[str, str] = {}  # kept as found: people label ConfigMaps too
        self._resource_version: str | None = None
        self._exists = False
        self.corrupt: dict[str, str] = {}  # app -> error, for entries we could not parse
        # The raw text of those entries: written back untouched, so a write for another app
        # never erases what a person may still want to repair.
        self._corrupt_raw: dict[str, str] = {}

    # -- reading ----------------------------------------------------------------------------
    def load(self) -> dict[str, AppRecord]:
        """Read the ConfigMap (a missing one is an empty ledger)."""
        with self._lock:
            self._load_locked()
            return dict(self._records)

    def _load_locked(self) -> None:
        try:
            cm = read_json(
                self._api.read_namespaced_config_map(
                    self.name,
                    self.namespace,
                    _preload_content=False,
                    _request_timeout=self.request_timeout,
                )
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            self._records, self._annotations, self._labels = {}, {}, {}
            self.corrupt, self._corrupt_raw = {}, {}
            self._resource_version, self._exists = None, False
            return
        records: dict[str, AppRecord] = {}
        corrupt: dict[str, str] = {}
        corrupt_raw: dict[str, str] = {}
        for app, text in (cm.get("data") or {}).items():
            try:
                records[app] = AppRecord.from_json(text)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                # A hand-edited entry must not stop the other apps; it is reported and the
                # app is treated as first sight until a write replaces the entry.
                # (AttributeError: valid JSON that is not an object, e.g. `[]` or `"x"`.)
                corrupt[app] = f"{type(exc).__name__}: {exc}"
                corrupt_raw[app] = str(text)
                log.error("ledger.corrupt_entry", app=app, error=corrupt[app][:200])
        self.corrupt, self._corrupt_raw = corrupt, corrupt_raw
        self._records = records
        self._annotations = dict((cm.get("metadata") or {}).get("annotations") or {})
        self._labels = dict((cm.get("metadata") or {}).get("labels") or {})
        self._resource_version = (cm.get("metadata") or {}).get("resourceVersion")
        self._exists = True

    def get(self, app: str) -> AppRecord:
        with self._lock:
            return self._records.get(app, AppRecord())

    # -- writing ----------------------------------------------------------------------------
    def compare_and_set(self, app: str, expected: AppRecord, new: AppRecord) -> bool:
        """Write `new` for `app` if the stored record is still `expected`. False when somebody
        else changed it first (the caller re-reads with `get` and re-decides)."""
        return app in self.compare_and_set_many({app: (expected, new)})

    def compare_and_set_many(self, changes: Mapping[str, tuple[AppRecord, AppRecord]]) -> set[str]:
        """Write, in one ConfigMap update, every app's new record whose stored record is still
        the expected one; returns the apps written. The others were changed by somebody else
        first: their callers re-read and re-decide. One write for many apps keeps the start of
        a namespace with a thousand apps at one update instead of a thousand."""
        with self._lock:
            for _ in range(5):
                fresh: dict[str, AppRecord] = {}
                for app, (expected, new) in changes.items():
                    stored = self._records.get(app, AppRecord())
                    if stored == expected:
                        fresh[app] = new
                    else:
                        log.debug(
                            "ledger.cas_mismatch",
                            app=app,
                            stored=stored.to_json(),
                            expected=expected.to_json(),
                        )
                if not fresh:
                    return set()
                try:
                    self._write_locked({**self._records, **fresh})
                except ApiException as exc:
                    if exc.status not in (409, 404):
                        raise
                    self._load_locked()  # stale resourceVersion: re-read, compare again
                    continue
                self._records.update(fresh)
                for app in fresh:
                    self.corrupt.pop(app, None)
                    self._corrupt_raw.pop(app, None)
                return set(fresh)
            raise LedgerError(f"ledger {self.namespace}/{self.name}: too many conflicting writes")

    def _body(self, records: dict[str, AppRecord]) -> dict[str, Any]:
        kept = {app: raw for app, raw in self._corrupt_raw.items() if app not in records}
        meta: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "labels": {**self._labels, **MANAGED_BY},
            "annotations": dict(self._annotations),
        }
        if self._resource_version:
            meta["resourceVersion"] = self._resource_version
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta,
            "data": dict(sorted({**kept, **{a: r.to_json() for a, r in records.items()}}.items())),
        }

    def _write_locked(self, records: dict[str, AppRecord]) -> None:
        body = self._body(records)
        if self._exists:
            resp = self._api.replace_namespaced_config_map(
                self.name,
                self.namespace,
                body,
                _preload_content=False,
                _request_timeout=self.request_timeout,
            )
        else:
            body["metadata"].pop("resourceVersion", None)
            resp = self._api.create_namespaced_config_map(
                self.namespace, body, _preload_content=False, _request_timeout=self.request_timeout
            )
        written = read_json(resp)
        self._resource_version = written["metadata"]["resourceVersion"]
        self._exists = True

    # -- annotations ----------------------------------------------------------------------------
    def annotation(self, key: str) -> str | None:
        """One of the ledger ConfigMap's annotations as last read (`load`)."""
        with self._lock:
            return self._annotations.get(key)

    def set_annotation(self, key: str, value: str) -> None:
        """Write one annotation (compare-and-set on the resourceVersion, re-read on a
        conflict): the cluster group's learned member names live here."""
        with self._lock:
            for _ in range(5):
                if self._annotations.get(key) == value and self._exists:
                    return
                self._annotations[key] = value
                try:
                    self._write_locked(dict(self._records))
                    return
                except ApiException as exc:
                    if exc.status not in (409, 404):
                        raise
                    self._load_locked()
            raise LedgerError(f"ledger {self.namespace}/{self.name}: too many conflicting writes")
