"""The group latency benchmark runs end to end at a tiny size and writes its results file
(what it measures is printed by `bench/`, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_group_latency_bench_runs_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "group_latency.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "group_latency.py"),
            "--rollouts",
            "2",
            "--clusters",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["clusters"] for r in rows] == [2] and rows[0]["n"] == 2
    assert "p99 ms" in done.stdout
