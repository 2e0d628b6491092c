"""Real `redis-server` processes for the tests, the demo's clusters and the simulator.

Each server runs without persistence (`--save '' --appendonly no`) in its own temporary
directory on a loopback port, so `restart()` loses every key: exactly what a Redis pod
restart without a volume does. Processes never outlive the Python process that started them:
`stop()` in finalizers, an `atexit` hook, and (Linux, main thread) a parent-death signal.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sidecar.sim.lifecycle import Service

if TYPE_CHECKING:
    import redis

__all__ = [
    "RedisServer",
    "RedisServerError",
    "free_port",
    "redis_server_binary",
    "reporter_acl",
    "start_servers",
]

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_PORT_ATTEMPTS = 5

# Strong references: a server dropped without stop() must still be stopped at exit.
_live: set[RedisServer] = set()
_live_lock = threading.Lock()


def reporter_acl(namespace: str, user: str = "reporter", password: str = "pw") -> str:
    """The ACL line of one namespace's reporter user: SET and DEL its own namespace's report
    keys (write-only, `%W~`), PUBLISH on its namespace's channel, nothing else. A pod holding
    it cannot write another namespace's reports. Spelled out here, not imported from the
    product's wire format, so a test with it checks the product's key names."""
    return (
        f"{user} on >{password} resetchannels &cache-buster:reports:{namespace} "
        f"%W~cache-buster:report:{namespace}:* -@all +set +del +publish"
    )


class RedisServerError(RuntimeError):
    """The server did not start (binary missing, port taken, bad ACL line)."""


def redis_server_binary() -> str:
    """`REDIS_SERVER_BIN`, else `redis-server` on PATH, else Debian's path."""
    return (
        os.environ.get("REDIS_SERVER_BIN")
        or shutil.which("redis-server")
        or "/usr/bin/redis-server"
    )


def free_port() -> int:
    """A loopback port free right now (another process may still take it: callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only set up for
    # servers started from the main thread (see RedisServer._spawn).
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except Exception:  # not Linux, or no libc: atexit still covers orderly exits
        pass


class RedisServer(Service):
    """One redis-server process. Use `start()` / `stop()` or `with RedisServer() as server:`."""

    host: str
    port: int

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        acl_lines: Sequence[str] = (),
        workdir: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.host = "127.0.0.1"
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.password = password
        self.acl_lines = tuple(acl_lines)
        # More redis-server options, e.g. `--tls-port` (the plain port stays for readiness).
        self.extra_args = tuple(extra_args)
        self._own_workdir = workdir is None
        self.workdir = workdir if workdir is not None else tempfile.mkdtemp(prefix="cb-redis-")
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> RedisServer:
        """Start (idempotent) and wait until it answers PING."""
        with self._lock:
            if self.running:
                return self
            os.makedirs(self.workdir, exist_ok=True)
            attempts = 1 if self._fixed_port else _PORT_ATTEMPTS
            last_error: RedisServerError | None = None
            for _ in range(attempts):
                try:
                    self._spawn()
                    break
                except RedisServerError as error:
                    last_error = error
                    if self._fixed_port:
                        break
                    self.port = free_port()  # lost a race for the port: pick another
            else:
                assert last_error is not None
                raise last_error
            if not self.running:
                assert last_error is not None
                raise last_error
            with _live_lock:
                _live.add(self)
            return self

    def _config_text(self) -> str:
        lines = [
            f"user {line}" if not line.startswith("user ") else line for line in self.acl_lines
        ]
        if self.password is not None:
            # requirepass is the default user's password; quote it for the config parser.
            escaped = self.password.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'requirepass "{escaped}"')
        return "\n".join(lines) + "\n"

    def _spawn(self) -> None:
        conf = os.path.join(self.workdir, "redis.conf")
        with open(conf, "w", encoding="utf-8") as handle:
            handle.write(self._config_text())
        logfile = os.path.join(self.workdir, "redis.log")
        with contextlib.suppress(FileNotFoundError):
            os.remove(logfile)  # readiness is read from this run's log only
        argv = [
            redis_server_binary(),
            conf,
            "--save", "",
            "--appendonly", "no",
            "--dir", self.workdir,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--daemonize", "no",
            "--logfile", logfile,
            *self.extra_args,
        ]  # fmt: skip
        in_main = threading.current_thread() is threading.main_thread()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=_die_with_parent if in_main else None,  # noqa: PLW1509
            )
        except OSError as error:
            raise RedisServerError(f"cannot run {argv[0]}: {error}") from error
        self._proc = proc
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            # The log line proves *this* process listens (another may own a taken port).
            if _logged_ready(logfile) and proc.poll() is None and self._ping():
                if proc.stderr is not None:
                    proc.stderr.close()
                return
            time.sleep(0.01)
        detail = self._startup_failure(proc, logfile)
        self._proc = None
        raise RedisServerError(f"redis-server on port {self.port} did not start: {detail}")

    def _startup_failure(self, proc: subprocess.Popen[bytes], logfile: str) -> str:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr is not None else ""
        if proc.stderr is not None:
            proc.stderr.close()
        with contextlib.suppress(OSError), open(logfile, encoding="utf-8", errors="replace") as f:
            err += f.read()
        tail = [line for line in err.strip().splitlines() if line.strip()][-3:]
        return " | ".join(tail) or f"exit code {proc.returncode}"

    def _ping(self) -> bool:
        """A raw PING: any reply (PONG, or NOAUTH with a password) means it is serving."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        """Graceful: SHUTDOWN NOSAVE, then SIGTERM, then SIGKILL. Removes its own temp dir."""
        with self._lock:
            self._terminate(graceful=True)
            with _live_lock:
                _live.discard(self)
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL: a crash. The temp dir stays so `restart()` can bring it back."""
        with self._lock:
            self._terminate(graceful=False)

    def restart(self) -> None:
        """Stop and start on the same port; with no persistence every key is gone."""
        with self._lock:
            self._terminate(graceful=True)
            fixed, self._fixed_port = self._fixed_port, True  # same port, or fail loudly
            try:
                self.start()
            finally:
                self._fixed_port = fixed

    def wipe(self) -> None:
        """FLUSHALL while running: all data lost, server (and connections) up."""
        with self.client() as client:
            client.flushall()

    def _terminate(self, *, graceful: bool) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.poll() is None:
            if graceful:
                with contextlib.suppress(Exception):
                    self._shutdown_command()
                    proc.wait(timeout=_STOP_TIMEOUT)
                if proc.poll() is None:
                    proc.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=_STOP_TIMEOUT)
            if proc.poll() is None:
                proc.kill()
        proc.wait()
        if proc.stderr is not None and not proc.stderr.closed:
            proc.stderr.close()

    def _shutdown_command(self) -> None:
        with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
            if self.password is not None:
                sock.sendall(_command("AUTH", self.password))
                sock.recv(64)
            sock.sendall(_command("SHUTDOWN", "NOSAVE"))
            # The server closes the connection as it exits; an error reply means it refused.
            reply = sock.recv(256)
            if reply.startswith(b"-"):
                raise RedisServerError(reply.decode(errors="replace").strip())

    # --- clients ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def client(self, **kw: Any) -> redis.Redis:
        """A redis-py client for the default user (pass username/password to override).

        No retries by default: a test that stops a server wants the error now, not after
        redis-py's backoff (pass `retry=` to get it back)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "password": self.password,
            "decode_responses": True,
            "socket_timeout": 5.0,
            "retry": Retry(NoBackoff(), 0),
        }
        options.update(kw)
        return redis.Redis(**options)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RedisServer({self.host}:{self.port}, {state})"


def _logged_ready(logfile: str) -> bool:
    try:
        with open(logfile, encoding="utf-8", errors="replace") as handle:
            return "Ready to accept connections" in handle.read()
    except FileNotFoundError:
        return False


def _command(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def start_servers(n: int, **kw: Any) -> list[RedisServer]:
    """Start `n` servers (e.g. one per simulated cluster); stops the started ones on failure."""
    servers: list[RedisServer] = []
    try:
        for _ in range(n):
            servers.append(RedisServer(**kw).start())
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()
