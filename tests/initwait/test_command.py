"""`cache-buster wait` as a command: bad flags (status 2, one line naming the flag), and the
real console script as a process against the emulator, completing and stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import cli
from sidecar.sim.world import World

REPO = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "cache-buster"
JOIN = 20.0


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("APP_IMAGE", "NAMESPACE", "KUBERNETES_SERVICE_HOST", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("args", "line"),
    [
        ([], "--deployment: is required: the name of the Deployment to wait for"),
        (["--deployment", "web", "--timeout", "soon"], "--timeout: expected a duration like"),
        (["--deployment", "web", "--match", "fuzzy"], "--match: expected exact or normalized"),
        (["--deployment", "web", "--image", "nginx:"], "--image: invalid image reference"),
        (["--deployment", "web", "--namespace", "A B"], "--namespace: 'A B' is not a namespace"),
        (["--deployment", "web", "--kubeconfig", "/nonexistent/kubeconfig"], "--kubeconfig: "),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    args: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.run(["wait", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"cache-buster wait: {line}")
    assert captured.err.count("\n") == 1


@pytest.mark.usefixtures("clean_env")
def test_bad_app_image_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APP_IMAGE", "nginx@sha256:abc")
    assert cli.run(["wait", "--deployment", "web"]) == 2
    assert capsys.readouterr().err.startswith("cache-buster wait: APP_IMAGE: invalid image")


class Process:
    """The installed console script, its output in files (a pipe nobody reads could block)."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str]) -> None:
        self.out, self.err = tmp / "stdout", tmp / "stderr"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [str(CONSOLE_SCRIPT), "wait", *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def wait_for_output(self, text: str) -> None:
        deadline = time.monotonic() + JOIN
        while text not in self.stdout:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}\n{self.stderr}"
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.stdout}"
            time.sleep(0.02)

    def events(self) -> list[str]:
        return [json.loads(line)["event"] for line in self.stderr.splitlines() if line[:1] == "{"]


@pytest.fixture
def process(world: World, tmp_path: Path) -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def _start(world: World, tmp_path: Path, started: list[Process], *args: str) -> Process:
    kubeconfig = tmp_path / "kubeconfig"
    world.kube.write_kubeconfig(kubeconfig)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "NAMESPACE": world.namespace,
        # An editable install made before initwait/ existed maps only sidecar/.
        "PYTHONPATH": str(REPO),
    }
    p = Process(tmp_path, ["--deployment", "web", "--kubeconfig", str(kubeconfig), *args], env)
    started.append(p)
    return p


def test_the_console_script_waits_for_the_image_and_the_rollout(
    world: World, tmp_path: Path, process: list[Process]
) -> None:
    world.deploy("web", "nginx:1.26", domains=None)
    world.ready_all("web")
    p = _start(world, tmp_path, process, "--image", "nginx:1.27", "--timeout", "20s")
    p.wait_for_output("waiting for the image: container web runs nginx:1.26, not nginx:1.27")
    world.set_image("web", "nginx:1.27")
    p.wait_for_output("image applied")
    world.ready_all("web", timeout=JOIN)
    assert p.proc.wait(JOIN) == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("waiting for deployment shop/web to run nginx:1.27 (--image")
    assert lines[-2].startswith("rollout complete: updated 3/3, ready 3/3, available 3/3")
    assert lines[-1].startswith("deployment shop/web rolled out nginx:1.27 in ")
    assert p.events() == ["wait.started", "wait.image_applied", "wait.finished"]


def test_sigterm_stops_the_wait_with_status_1(
    world: World, tmp_path: Path, process: list[Process]
) -> None:
    world.deploy("web", "nginx:1.26", domains=None)
    p = _start(world, tmp_path, process, "--image", "nginx:1.27", "--timeout", "0")
    p.wait_for_output("runs nginx:1.26, not nginx:1.27")
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(JOIN) == 1
    reason = [line for line in p.stderr.splitlines() if not line.startswith("{")]
    assert len(reason) == 1
    assert reason[0].startswith("cache-buster wait: stopped by SIGTERM after ")
    assert reason[0].endswith(
        "while waiting for the image nginx:1.27 (container web runs nginx:1.26)"
    )
