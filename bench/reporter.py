"""The reporter (`cache-buster report`) as the image runs it: memory and CPU, idle and reporting.

The sidecar component's resources (kustomize/components/sidecar) are sized from this. With
`--image-venv` the venv is built by docker/build-venv.sh (the image's own build step) with the
system Python 3.11 and the reporter runs as uid 65532, as in the image; without it, the
project's venv runs as the current user. Each case runs against a real redis-server for
`--seconds` after a 2 s start: RSS and private (anonymous) memory from /proc (budget 40 MiB /
24 MiB, docs/architecture.md "Budgets"), start-up CPU, and steady CPU in millicores.

    .venv/bin/python bench/reporter.py [--seconds 10] [--image-venv]

Prints a table and writes bench/results/reporter.json. Needs redis-server.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.memory import proc_memory  # noqa: E402
from sidecar.sim.redis_servers import RedisServer, free_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
IMAGE_UID = 65532


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


class App(http.server.BaseHTTPRequestHandler):
    """The app the reporter probes: 200 on every path, a version document."""

    def do_GET(self) -> None:
        body = b'{"version": "2.4.1"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def measure(exe: str, env: dict[str, str], seconds: float, uid: int | None) -> dict[str, Any]:
    def drop() -> None:
        if uid is not None:
            os.setgid(uid)
            os.setuid(uid)

    base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG")}
    base |= {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}  # the image's ENV
    health = free_port()
    proc = subprocess.Popen(
        [exe, "report"],
        env=base | env | {"HEALTH_PORT": str(health), "HEALTH_BIND": "127.0.0.1"},
        stderr=subprocess.DEVNULL,
        preexec_fn=drop if uid is not None else None,  # noqa: PLW1509 (no threads yet)
    )
    try:
        time.sleep(2.0)
        start = cpu_seconds(proc.pid)
        time.sleep(seconds)
        if proc.poll() is not None:
            raise SystemExit(f"the reporter exited ({proc.returncode})")
        end = cpu_seconds(proc.pid)
        mem = proc_memory(proc.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2) as reply:
            healthy = reply.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    return {
        "rss_mib": mem["VmRSS"],
        "anon_mib": mem["RssAnon"],
        "startup_cpu_s": round(start, 2),
        "steady_millicores": round(1000 * (end - start) / seconds, 2),
        "healthz_ok": healthy,
        "exit": proc.returncode,
    }


def image_venv(work: Path) -> str:
    # The system interpreter: uid 65532 cannot reach one under /root (pyenv).
    python = "/usr/bin/python3.11" if Path("/usr/bin/python3.11").exists() else "python3.11"
    venv = work / "venv"
    subprocess.run(
        ["sh", str(ROOT / "docker" / "build-venv.sh"), str(ROOT), str(venv)],
        env={**os.environ, "PYTHON": python, "PIP_PYTHON": sys.executable},
        check=True,
        capture_output=True,
        umask=0o022,  # readable by uid 65532, as in the image
    )
    return str(venv / "bin" / "cache-buster")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--image-venv", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cb-bench-reporter-"))
    work.chmod(0o755)  # uid 65532 must reach the venv
    try:
        exe = image_venv(work) if args.image_venv else str(ROOT / ".venv" / "bin" / "cache-buster")
        uid = IMAGE_UID if args.image_venv and os.geteuid() == 0 else None
        app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), App)
        threading.Thread(target=app.serve_forever, daemon=True).start()
        port = app.server_address[1]
        pod = {"POD_NAME": "web-1", "POD_NAMESPACE": "shop", "POD_UID": "u-1"}
        pod["POD_TEMPLATE_HASH"] = "abc123"
        rows: dict[str, dict[str, Any]] = {}
        with RedisServer() as redis:
            cases = {
                "idle (no REDIS_URL: one config line)": {},
                "reporting every 5 s, http probe + version URL": {
                    "REDIS_URL": redis.url,
                    "CB_PROBE": f"http://127.0.0.1:{port}/healthz",
                    "CB_VERSION_URL": f"http://127.0.0.1:{port}/version",
                },
                "reporting every 1 s, failing probe": {
                    "REDIS_URL": redis.url,
                    "CB_PROBE": "tcp:1",
                    "REPORT_INTERVAL": "1",
                },
            }
            for name, extra in cases.items():
                rows[name] = measure(exe, pod | extra, args.seconds, uid)
        app.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    who = f"uid {uid}" if uid is not None else "this user"
    source = "image venv (docker/build-venv.sh)" if args.image_venv else "project venv"
    print(f"reporter, {source}, {who}, {args.seconds:g} s per case")
    print(f"{'case':50} {'RSS MiB':>8} {'anon MiB':>9} {'start CPU s':>12} {'steady mCPU':>12}")
    for name, r in rows.items():
        print(
            f"{name:50} {r['rss_mib']:>8.1f} {r['anon_mib']:>9.1f} {r['startup_cpu_s']:>12.2f} "
            f"{r['steady_millicores']:>12.2f}"
        )
    out = ROOT / "bench" / "results" / "reporter.json"
    out.write_text(json.dumps({"source": source, "user": who, "cases": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
