"""The ledger's bytes per app entry (docs/architecture.md, "The ledger"), before and after the
fields added since the first format: the same logical record written by the previous release's
writer (frozen in tests/kube/previous/records_v1.py) and by this version's.

The ledger is one ConfigMap per namespace and a ConfigMap holds at most 1 MiB, so the entry
size bounds how many apps one namespace can hold.

    .venv/bin/python bench/ledger_size.py

Prints a table and writes bench/results/ledger_size.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar.core import records as now  # noqa: E402
from tests.kube.previous import records_v1 as before  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGMAP_LIMIT = 1024 * 1024
RID = "r-4640047197eac8de8673fb77"
PREV = "r-458215cfd6716f389e28fac5"
DIST, INVALIDATION = "E2QWRUHAPOMQZL", "I2J0I21PCUYOIK"
HOOKS = ("audit", "slack", "cdn-log", "deploy-bot")


def _detail(mod: Any, **more: Any) -> Any:
    return mod.PurgeDetail(
        provider="cloudfront",
        target=DIST,
        request_id=INVALIDATION,
        status="completed",
        paths=("/*", "/index.html"),
        from_image="registry.example/shop/web:1.27",
        requested_at=1764700011.123,
        finished_at=1764700042.988,
        webhooks=mod.WebhookState.DELIVERED,
        **more,
    )


def _settled(mod: Any, **more: Any) -> Any:
    return mod.Settled(
        "registry.example/shop/web:1.28",
        RID,
        mod.Outcome.PURGED,
        1764700043.0,
        _detail(mod, **more),
    )


def _intent(mod: Any, **more: Any) -> Any:
    fields = {
        "image": "registry.example/shop/web:1.29",
        "rollout_id": RID,
        "from_image": "registry.example/shop/web:1.28",
        "state": mod.IntentState.PURGING,
        "started_at": 1764701000.0,
    }
    return mod.Intent(**{**fields, **more})


def rows() -> list[dict[str, Any]]:
    plan = now.PurgePlan.of("cloudfront", (DIST,), ("/*", "/index.html")).with_request(
        DIST, INVALIDATION
    )
    hooks = {h: now.WebhookState.DELIVERED for h in HOOKS}
    cases: list[tuple[str, Any, Any]] = [
        (
            "purged, 2 paths, no hooks",
            before.AppRecord(settled=_settled(before)),
            now.AppRecord(settled=_settled(now, attempt=1)),
        ),
        (
            "purged, 2 paths, 4 hooks recorded, attempt 2",
            before.AppRecord(settled=_settled(before)),
            now.AppRecord(settled=_settled(now, hooks=hooks, attempt=2)),
        ),
        (
            "purging, plan with its invalidation id",
            before.AppRecord(settled=_settled(before), intent=_intent(before)),
            now.AppRecord(settled=_settled(now), intent=_intent(now, plan=plan, attempt=2)),
        ),
        (
            "following, a folded rollout deferred",
            before.AppRecord(settled=_settled(before), intent=_intent(before)),
            now.AppRecord(
                settled=_settled(now),
                intent=_intent(now, state=now.IntentState.FOLLOWING),
                deferred=_intent(now, rollout_id=PREV, plan=plan, folded=True),
                attempts={RID: 1},
            ),
        ),
    ]
    out = []
    for name, old, new in cases:
        b, a = len(old.to_json().encode()), len(new.to_json().encode())
        out.append(
            {
                "entry": name,
                "before_bytes": b,
                "after_bytes": a,
                "apps_per_configmap_after": CONFIGMAP_LIMIT // a,
            }
        )
    return out


def main() -> None:
    table = rows()
    header = ["entry", "before_bytes", "after_bytes", "apps_per_configmap_after"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in table:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ledger_size.json").write_text(
        json.dumps({"at": time.time(), "rows": table}, indent=2)
    )


if __name__ == "__main__":
    main()
