"""`cache-buster sim` as a user runs it: a subprocess, its printed endpoints, real clients."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from botocore.config import Config

from sidecar.sim.cli_sim import SimUsageError, describe, parse_distributions
from sidecar.sim.cloudfront import CloudFrontEmulator
from sidecar.sim.kube import KubeEmulator, deployment_manifest

REPO = Path(__file__).resolve().parents[2]


class SimProcess:
    """`python -m sidecar sim ...` with its stdout read line by line in a thread."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "sim", *args],
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def endpoints(self, timeout: float = 20.0) -> dict[str, Any]:
        line = self.lines.get(timeout=timeout)
        if line is None:
            raise AssertionError(f"sim exited early: {self.stop_and_stderr()}")
        doc = json.loads(line)
        assert isinstance(doc, dict)
        return doc

    def signal(self, signum: int, timeout: float = 10.0) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=timeout)

    def stop_and_stderr(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        _, err = self.proc.communicate(timeout=10)
        return err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[Any]:
    started: list[SimProcess] = []

    def start(*args: str) -> SimProcess:
        sim = SimProcess(list(args), tmp_path)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.close()


def _cloudfront(endpoints: dict[str, Any]) -> Any:
    env = endpoints["env"]
    return boto3.session.Session().client(
        "cloudfront",
        endpoint_url=env["AWS_ENDPOINT_URL_CLOUDFRONT"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )


@pytest.mark.slow
def test_kubectl_rolls_out_and_boto3_sees_the_distribution(start_sim: Any, tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    sim = start_sim(
        "--kubeconfig",
        "tmp/kc",
        "--ready-after",
        "0.2",
        "--distribution",
        "www.example.com",
        "--json",
    )
    endpoints = sim.endpoints()
    kubeconfig = tmp_path / "tmp" / "kc"
    assert endpoints["kubeconfig"] == str(kubeconfig)
    assert endpoints["env"]["KUBECONFIG"] == str(kubeconfig)
    assert endpoints["kubernetes"] in kubeconfig.read_text()
    assert endpoints["redis"] is None

    # The preloaded distribution, through boto3 and the printed environment.
    [dist] = endpoints["distributions"]
    assert dist["aliases"] == ["www.example.com"]
    listed = _cloudfront(endpoints).list_distributions()["DistributionList"]
    assert [(d["Id"], d["Aliases"].get("Items")) for d in listed["Items"]] == [
        (dist["id"], ["www.example.com"])
    ]

    if shutil.which("kubectl") is None:
        pytest.skip("kubectl binary not on PATH: the rollout part needs it")
    manifest = tmp_path / "web.json"
    manifest.write_text(json.dumps(deployment_manifest("web", "nginx:1.27", replicas=2)))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", *args], env=env, capture_output=True, text=True, timeout=60
        )

    created = kubectl("create", "-f", str(manifest))
    assert created.returncode == 0, created.stderr
    assert created.stdout == "deployment.apps/web created\n"
    # Nothing readies the pods but the sim's own --ready-after.
    status = kubectl("rollout", "status", "deployment/web", "--timeout=30s")
    assert status.returncode == 0, status.stderr
    assert status.stdout.endswith('deployment "web" successfully rolled out\n')

    assert sim.signal(signal.SIGINT) == 0
    assert sim.lines.get(timeout=5) is None  # nothing printed after the endpoints
    assert "Traceback" not in sim.stop_and_stderr()


def test_redis_and_several_distributions_then_sigterm(start_sim: Any, tmp_path: Path) -> None:
    sim = start_sim(
        "--kubeconfig",
        str(tmp_path / "kc"),
        "--redis",
        "--distribution",
        "www.example.com,example.com",
        "--distribution",
        "cdn.example.com",
        "--json",
    )
    endpoints = sim.endpoints()
    assert [d["aliases"] for d in endpoints["distributions"]] == [
        ["www.example.com", "example.com"],
        ["cdn.example.com"],
    ]
    ids = {d["id"] for d in endpoints["distributions"]}
    assert len(ids) == 2
    listed = _cloudfront(endpoints).list_distributions()["DistributionList"]["Items"]
    assert {d["Id"] for d in listed} == ids

    assert endpoints["env"]["REDIS_URL"] == endpoints["redis"]
    client = redis.Redis.from_url(endpoints["redis"], socket_timeout=5)
    try:
        assert client.set("k", "v")
        assert client.get("k") == b"v"
    finally:
        client.close()

    assert sim.signal(signal.SIGTERM) == 0
    assert "Traceback" not in sim.stop_and_stderr()


def test_bad_options_exit_2_with_the_reason(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar", "sim", "--kubeconfig", "kc", "--time-scale", "0"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr == "cache-buster sim: --time-scale must be positive\n"
    assert not (tmp_path / "kc").exists()


def test_distribution_values_parse_to_alias_groups() -> None:
    assert parse_distributions(["www.example.com, Example.com", "cdn.example.com"]) == (
        ("www.example.com", "example.com"),
        ("cdn.example.com",),
    )
    with pytest.raises(SimUsageError, match="at least one alias"):
        parse_distributions([" , "])
    with pytest.raises(SimUsageError, match="two distributions"):
        parse_distributions(["a.example.com", "b.example.com,a.example.com"])


def test_human_output_lists_endpoints_and_exports() -> None:
    text = describe(
        {
            "kubernetes": "http://127.0.0.1:1",
            "kubeconfig": "/x/kc",
            "cloudfront": "http://127.0.0.1:2",
            "redis": "redis://127.0.0.1:3/0",
            "distributions": [{"id": "EABC", "aliases": ["www.example.com", "example.com"]}],
            "env": {"KUBECONFIG": "/x/kc", "AWS_ENDPOINT_URL_CLOUDFRONT": "http://127.0.0.1:2"},
        }
    )
    assert "EABC  aliases www.example.com, example.com" in text
    assert "  Redis           redis://127.0.0.1:3/0\n" in text
    assert "  export KUBECONFIG=/x/kc\n" in text
    assert "  export AWS_ENDPOINT_URL_CLOUDFRONT=http://127.0.0.1:2\n" in text


def test_emulator_servers_ignore_clients_hanging_up(capsys: pytest.CaptureFixture[str]) -> None:
    """socketserver's default handle_error prints a traceback to stderr for each of these."""
    with KubeEmulator() as kube, CloudFrontEmulator() as cloudfront:
        servers = [kube._server, cloudfront._server]
        for server in servers:
            assert server is not None
            for exc in (
                ConnectionResetError(104, "reset"),
                BrokenPipeError(32, "pipe"),
                KeyError(),
            ):
                try:
                    raise exc
                except Exception:
                    server.handle_error(None, ("127.0.0.1", 1))
    err = capsys.readouterr().err
    # Other errors go to the debug log, never as socketserver's traceback.
    assert "Traceback" not in err and "Exception occurred" not in err
