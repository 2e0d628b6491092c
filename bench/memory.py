"""Memory of the two long-running processes (docs/architecture.md, "Budgets"), as separate
real processes.

- reporter: `cache-buster report` with a probe, idle after its first reports: RSS and private
  (anonymous) memory; budget 40 MiB / 24 MiB.
- aggregator: `cache-buster aggregate` (sidecar mode, so with the pod watch: a report counts
  only for a live pod) against the emulator holding N Deployments x P pods, each pod reported
  to Redis through the reporter's own write path (one shared connection, not N*P processes);
  RSS once every app is settled, and the ledger's bytes per app; budget 200 MiB for
  1,000 x 10.

    .venv/bin/python bench/memory.py [--deployments 1000] [--pods 10]

Prints a table and writes bench/results/memory.json. Needs redis-server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sidecar.core.grammar import parse_redis_url
from sidecar.reporter.config import ReporterConfig
from sidecar.reporter.loop import Observation, Reporter
from sidecar.reporter.resp import RespClient
from sidecar.sim.kube import KubeEmulator, deployment_manifest
from sidecar.sim.redis_servers import RedisServer

RESULTS = Path(__file__).resolve().parent / "results"
NS = "bench"


def proc_memory(pid: int) -> dict[str, float]:
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmHWM"):
                fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k in keep}


def reporter_memory(redis: RedisServer) -> dict[str, Any]:
    env = base_env() | {
        "POD_NAME": "web-1",
        "POD_NAMESPACE": NS,
        "POD_TEMPLATE_HASH": "abc",
        "REDIS_URL": redis.url,
        "CB_PROBE": "tcp:1",  # a failing probe: the busiest steady state (fast re-checks)
        "REPORT_INTERVAL": "1",
        "HEALTH_PORT": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "report"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(3.0)
        mem = proc_memory(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    return {"process": "reporter", "rss_mib": mem["VmRSS"], "anon_mib": mem["RssAnon"],
            "budget": "RSS < 40, anon < 24"}  # fmt: skip


def aggregator_memory(redis: RedisServer, deployments: int, pods: int) -> dict[str, Any]:
    with (
        KubeEmulator(ready_after=0.0, time_scale=0.01) as kube,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for i in range(deployments):
            kube.create(
                "deployments",
                NS,
                deployment_manifest(
                    f"app{i}",
                    f"shop/app{i}:1",
                    replicas=pods,
                    labels={"cache-buster.io/enabled": "true"},
                    annotations={"cache-buster.io/domains": f"app{i}.example.com"},
                ),
            )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            ready = sum(1 for p in kube.pods(NS) if not p["metadata"].get("deletionTimestamp"))
            if ready >= deployments * pods and kube.settled():
                break
            time.sleep(0.5)
        # Every pod reports through the reporter's own write path, over one connection, and
        # keeps its heartbeat (REPORT_INTERVAL 5 s, as a real sidecar): the aggregator ignores
        # a report whose heartbeat is older than REPORT_STALE_AFTER.
        client = RespClient(parse_redis_url(redis.url), timeout=5)
        reporters = []
        for pod in kube.pods(NS):
            meta = pod["metadata"]
            config = ReporterConfig(
                pod=meta["name"],
                namespace=NS,
                redis=parse_redis_url(redis.url),
                uid=meta.get("uid", ""),
                template_hash=meta["labels"].get("pod-template-hash", ""),
                interval=5,
            )
            reporters.append(Reporter(config, client))
        beating = threading.Event()

        def heartbeat() -> None:
            while not beating.is_set():
                for reporter in reporters:
                    reporter.write(Observation(probe_ok=True))
                beating.wait(5)

        beat = threading.Thread(target=heartbeat, daemon=True)
        beat.start()

        kubeconfig = os.path.join(tmp, "kubeconfig")
        kube.write_kubeconfig(kubeconfig, namespace=NS)
        env = base_env() | {
            "KUBECONFIG": kubeconfig,
            "MODE": "sidecar",
            "NAMESPACE": NS,
            "REDIS_URL": redis.url,
            "CLUSTER_NAME": "bench",
            "METRICS_PORT": "0",
            "LOGLEVEL": os.environ.get("BENCH_LOGLEVEL", "warning"),
            "POD_NAME": "bench-aggregator",
        }
        started = time.monotonic()
        # BENCH_AGGREGATOR_LOG=path keeps the aggregator's log (BENCH_LOGLEVEL=info for all).
        log_path = os.environ.get("BENCH_AGGREGATOR_LOG")
        log_file = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "aggregate"], env=env, stderr=log_file
        )
        try:
            settled_after = None
            while time.monotonic() - started < 300:
                cm = kube.get("configmaps", NS, "cache-buster-ledger")
                if cm and len(cm.get("data") or {}) >= deployments:
                    settled_after = time.monotonic() - started
                    break
                time.sleep(0.5)
            time.sleep(2.0)
            mem = proc_memory(proc.pid)
            cm = kube.get("configmaps", NS, "cache-buster-ledger") or {}
            data = cm.get("data") or {}
            ledger_bytes = sum(len(k) + len(v.encode()) for k, v in data.items())
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            beating.set()
            beat.join(timeout=30)
            client.close()
    return {
        "process": f"aggregator ({deployments} x {pods} pods)",
        "rss_mib": mem["VmRSS"],
        "anon_mib": mem["RssAnon"],
        "peak_rss_mib": mem["VmHWM"],
        "all_settled_s": None if settled_after is None else round(settled_after, 1),
        "ledger_bytes_per_app": round(ledger_bytes / max(1, len(data))),
        "budget": "RSS < 200",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=10)
    args = parser.parse_args()
    logging.getLogger("cache_buster").setLevel(logging.WARNING)
    with RedisServer() as redis:
        rows = [reporter_memory(redis), aggregator_memory(redis, args.deployments, args.pods)]
    header = [
        "process",
        "rss_mib",
        "anon_mib",
        "peak_rss_mib",
        "all_settled_s",
        "ledger_bytes_per_app",
        "budget",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row.get(h, "")) for h in header) + " |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps({"at": time.time(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
