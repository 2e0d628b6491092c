"""`cache-buster wait` against the Kubernetes API emulator and its controller: a `World`
(namespace `shop`) with pods ready only on command and object durations 50x faster, and
`start_wait(...)`, which runs a `Waiter` in a thread and captures its lines."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from initwait.options import parse_options
from initwait.result import WaitResult
from initwait.wait import Waiter
from sidecar.sim.world import World

NS = "shop"
# progressDeadlineSeconds and minReadySeconds run 50x faster: 10 s of deadline is 0.2 s.
TIME_SCALE = 0.02
# A liveness bound on a loaded machine, never a timing assertion.
JOIN = 10.0


class Lines:
    """A text stream that keeps its lines and lets a test wait for one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._partial = ""
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        with self._cond:
            self._partial += text
            *done, self._partial = self._partial.split("\n")
            self.lines.extend(done)
            self._cond.notify_all()
        return len(text)

    def flush(self) -> None:
        pass

    def wait_for(self, pattern: str, timeout: float = JOIN) -> str:
        """The first line matching `pattern` (a regex searched in each line)."""
        found: list[str] = []

        def match() -> bool:
            found[:] = [line for line in self.lines if re.search(pattern, line)]
            return bool(found)

        with self._cond:
            if not self._cond.wait_for(match, timeout):
                raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))
        return found[0]

    def snapshot(self) -> list[str]:
        with self._cond:
            return list(self.lines)


class Running:
    def __init__(self, waiter: Waiter, out: Lines) -> None:
        self.waiter = waiter
        self.out = out
        self._result: WaitResult | None = None
        self.thread = threading.Thread(target=self._run, name="test-wait", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self._result = self.waiter.run()

    def result(self, timeout: float = JOIN) -> WaitResult:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the wait did not end:\n" + "\n".join(self.out.lines)
        assert self._result is not None
        return self._result


@pytest.fixture
def world() -> Iterator[World]:
    """Overrides the suite's `world` (which needs Redis): `wait` reads only the API."""
    with World(namespace=NS, time_scale=TIME_SCALE) as w:
        yield w


@pytest.fixture
def start_wait(world: World) -> Iterator[Callable[..., Running]]:
    """`start_wait(image="nginx:1.27", timeout="5s", ...)`: flags as `parse_options` takes
    them (deployment `web` in `shop` unless given); `knobs` go to Waiter."""
    running: list[Running] = []

    def start(
        knobs: dict[str, Any] | None = None, env: dict[str, str] | None = None, **flags: Any
    ) -> Running:
        flags.setdefault("deployment", "web")
        flags.setdefault("namespace", NS)
        flags.setdefault("timeout", "10s")
        options = parse_options(env=env or {}, namespace_file="/nonexistent", **flags)
        out = Lines()
        run = Running(Waiter(world.kube.api_client(), options, out=out, **(knobs or {})), out)
        running.append(run)
        return run

    yield start
    for run in running:
        run.waiter.stop("the end of the test")
        run.thread.join(5)
