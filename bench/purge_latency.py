"""Purge latency and API load, measured on the emulated world (docs/architecture.md, "Budgets").

Latency: from the moment the last pod of a rollout became ready to the CDN's
CreateInvalidation request (as the CloudFront emulator received it). Sidecar mode includes the
reporter's probe cadence (a failing probe is re-checked every PROBE_RETRY_INTERVAL).
API load: requests the aggregator made to the Kubernetes API during an idle window.

    .venv/bin/python bench/purge_latency.py [--rollouts 30] [--apps 3]

Prints a table and writes bench/results/purge_latency.json. One cluster for now (groups are
not built yet).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from sidecar.sim.world import World

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _creates(world: World) -> list[Any]:
    return world.cloudfront.calls("CreateInvalidation", status=201)


def run_mode(mode: str, rollouts: int, apps: int, redis_url: str | None) -> dict[str, Any]:
    latencies: list[float] = []
    with World(redis_url=redis_url, time_scale=0.05, completion_delay=0.05) as world:
        names = [f"app{i}" for i in range(apps)]
        for name in names:
            world.cloudfront.add_distribution([f"{name}.example.com"])
        if mode == "sidecar":
            world.start_sidecars()
        world.aggregator("aggregator-0", mode=mode)
        world.aggregator("aggregator-1", mode=mode)
        for name in names:
            world.deploy(
                name, f"shop/{name}:0", domains=f"{name}.example.com", sidecar=mode == "sidecar"
            )
            world.ready_all(name)
        world.wait_for(lambda: all(n in world.ledger() for n in names), timeout=15)

        done = 0
        version = 0
        while done < rollouts:
            version += 1
            batch = names[: min(apps, rollouts - done)]
            seen = {r.caller_reference for r in _creates(world)}
            for name in batch:
                world.set_image(name, f"shop/{name}:{version}")
            last_ready: dict[str, float] = {}
            for name in batch:
                world.ready_all(name)
                last_ready[name] = time.time()
            # One new CallerReference per rollout; its first request is the purge (retries of
            # the same rollout reuse the reference and are not counted again).
            deadline = time.monotonic() + 15
            first: dict[str, float] = {}
            while time.monotonic() < deadline:
                first = {}
                for call in _creates(world):
                    if call.caller_reference not in seen and call.caller_reference not in first:
                        first[str(call.caller_reference)] = call.time
                if len(first) >= len(batch):
                    break
                time.sleep(0.01)
            by_app: dict[str, float] = {}
            for call in _creates(world):
                if call.caller_reference in first:
                    for name in batch:
                        if call.distribution_id in _dist_ids(world, name):
                            by_app.setdefault(name, first[str(call.caller_reference)])
            for name, at in by_app.items():
                latencies.append(at - last_ready[name])
            done += len(batch)

        # API load in steady state: what the aggregators ask of the API while nothing happens.
        idle_start = len(world.kube.requests)
        time.sleep(5.0)
        idle = world.kube.requests[idle_start:]
        lists = [
            r for r in idle if r[0] == "GET" and "watch=" not in r[1] and "/leases/" not in r[1]
        ]
        lease_calls = [r for r in idle if "/leases/" in r[1]]
        duplicates = sum(n - 1 for n in world.cloudfront.count_by_caller_reference().values())
    return {
        "mode": mode,
        "rollouts": len(latencies),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p90_ms": round(1000 * percentile(latencies, 0.90), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "max_ms": round(1000 * max(latencies), 1),
        "idle_lists_5s": len(lists),
        "idle_lease_calls_5s": len(lease_calls),
        "duplicate_invalidations": duplicates,
    }


_DIST_CACHE: dict[str, set[str]] = {}


def _dist_ids(world: World, name: str) -> set[str]:
    if name not in _DIST_CACHE:
        client = world.cloudfront.boto3_client()
        items = client.list_distributions()["DistributionList"].get("Items", [])
        for item in items:
            for alias in item.get("Aliases", {}).get("Items", []):
                _DIST_CACHE.setdefault(alias.split(".")[0], set()).add(item["Id"])
    return _DIST_CACHE.get(name, set())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rollouts", type=int, default=30)
    parser.add_argument("--apps", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("cache_buster").setLevel(logging.WARNING)

    server = None
    redis_url = None
    if shutil.which("redis-server"):
        from sidecar.sim.redis_servers import RedisServer

        server = RedisServer().start()
        redis_url = server.url
    rows = []
    try:
        for mode in ("watcher", "sidecar"):
            _DIST_CACHE.clear()
            rows.append(run_mode(mode, args.rollouts, args.apps, redis_url))
    finally:
        if server is not None:
            server.stop()

    header = ["mode", "rollouts", "p50_ms", "p90_ms", "p99_ms", "max_ms", "idle_lists_5s",
              "idle_lease_calls_5s", "duplicate_invalidations"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")
    print("\nbudget: p99 < 1000 ms (docs/architecture.md), no LIST in steady state, no duplicate")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "purge_latency.json").write_text(
        json.dumps(
            {"at": time.time(), "redis": "redis-server" if server else "fakeredis", "rows": rows},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
