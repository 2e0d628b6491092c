"""Purge latency of a cluster group, measured on the emulated group (sidecar.sim.group_world):
N clusters, each with its own emulated API, real redis-server and aggregator, one CloudFront
emulator.

Latency: from the moment the last new pod became ready on the last cluster (the harness makes
the pods ready, so it knows when) to the CDN's CreateInvalidation request (as the CloudFront
emulator received it). The rollout reaches the clusters one after another; the last cluster's
readiness is what the group waits for.

    .venv/bin/python bench/group_latency.py [--rollouts 30] [--clusters 1,2,3]

Prints a table and writes bench/results/group_latency.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
from pathlib import Path
from typing import Any

from sidecar.sim.group_world import GroupWorld

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def run_group(clusters: int, rollouts: int) -> dict[str, Any]:
    latencies: list[float] = []
    with GroupWorld(clusters, completion_delay=0.05) as g:
        g.deploy("web", "shop/web:0", replicas=2)
        g.ready_all("web")
        g.aggregators_everywhere()
        ok = g.wait_for(lambda: all(g.settled(c.name, "web") for c in g.clusters), timeout=15)
        if not ok:
            raise RuntimeError("baseline not settled")
        for version in range(1, rollouts + 1):
            image = f"shop/web:{version}"
            before = len(g.create_requests())
            g.set_image("web", image)
            last = 0.0
            for c in g.clusters:  # one after another: the last cluster is the one waited for
                last = c.world.ready_until_complete("web")
            if not g.wait_for(lambda before=before: len(g.create_requests()) > before, 15):
                raise RuntimeError(f"rollout {version} was not purged")
            request = g.create_requests()[before]
            latencies.append(request.time - last)
            g.wait_for(
                lambda image=image: all(
                    (s := g.settled(c.name, "web")) is not None and s.get("image") == image
                    for c in g.clusters
                ),
                15,
            )
    return {
        "clusters": clusters,
        "n": len(latencies),
        "p50": percentile(latencies, 0.50),
        "p95": percentile(latencies, 0.95),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies),
        "mean": statistics.fmean(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rollouts", type=int, default=30)
    parser.add_argument("--clusters", default="1,2,3", help="comma-separated group sizes")
    parser.add_argument("--out", type=Path, default=RESULTS / "group_latency.json")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the table is the output
    rows = [run_group(int(n), args.rollouts) for n in args.clusters.split(",")]
    print("last new pod ready on the last cluster -> CloudFront CreateInvalidation (watcher mode)")
    print(f"{'clusters':>8} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for r in rows:
        print(
            f"{r['clusters']:>8} {r['n']:>4} {r['p50'] * 1000:>8.0f} {r['p95'] * 1000:>8.0f} "
            f"{r['p99'] * 1000:>8.0f} {r['max'] * 1000:>8.0f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "group_latency",
                "python": platform.python_version(),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
