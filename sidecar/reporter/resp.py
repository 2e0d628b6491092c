"""A minimal RESP2 Redis client over `socket`, for the per-pod reporter.

redis-py 8 imports asyncio (about 30 MiB RSS, 20 MiB anonymous memory), more than the
reporter's whole budget, and the reporter needs six commands. This client speaks RESP2 to one
server: AUTH (ACL user or legacy password), SELECT, then any command, pipelined when asked.
`ssl` is imported only for `rediss://`. Not thread-safe: one client per thread. The server and
its options are a `sidecar.core.grammar.RedisEndpoint`, the aggregator's type too.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias

from sidecar.core.grammar import RedisEndpoint

if TYPE_CHECKING:
    import ssl

__all__ = [
    "RespClient",
    "RespConnectionError",
    "RespError",
]

Arg: TypeAlias = str | bytes | int | float
# Nested arrays come back as lists; nil as None; error replies inside a pipeline as RespError.
Reply: TypeAlias = "bytes | int | list[Reply] | RespError | None"

_MAX_BULK = 512 * 1024 * 1024
_READ_CHUNK = 65536


class RespError(Exception):
    """An error reply from the server (`-ERR ...`, `-NOPERM ...`, `-WRONGPASS ...`)."""

    @property
    def code(self) -> str:
        """The error's first word: ERR, NOPERM, WRONGPASS, NOAUTH, READONLY, LOADING..."""
        text = str(self)
        return text.split(" ", 1)[0] if text else "ERR"


class RespConnectionError(ConnectionError):
    """Could not connect, the connection broke, timed out, or the reply was not RESP."""


def _encode(args: Sequence[Arg]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = repr(arg).encode() if isinstance(arg, float) else str(arg).encode()
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


class RespClient:
    """One connection to one Redis server, opened lazily and reopened after any failure.

    A command that fails on a connection that was idle (the server restarted, a proxy dropped
    it) is retried once on a fresh connection when `retry_stale` is true: the reporter's
    commands (SET, DEL, PUBLISH) are safe to repeat."""

    def __init__(
        self,
        address: RedisEndpoint,
        *,
        timeout: float = 2.0,
        connect_timeout: float | None = None,
        retry_stale: bool = True,
        client_name: str | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.connect_timeout = connect_timeout if connect_timeout is not None else timeout
        self.retry_stale = retry_stale
        self.client_name = client_name
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    # --- connection -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        """Open, authenticate and select the database. Raises RespConnectionError or
        RespError (a rejected AUTH or SELECT); either way the client is left closed."""
        self.close()
        address = self.address
        try:
            sock = socket.create_connection(
                (address.host, address.port), timeout=self.connect_timeout
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if address.tls:
                sock = self._wrap_tls(sock)
            sock.settimeout(self.timeout)
        except OSError as error:
            raise RespConnectionError(f"connect to {address.describe()}: {error}") from error
        self._sock = sock
        handshake: list[list[Arg]] = []
        names: list[str] = []
        if address.password is not None:
            names.append("AUTH")
            if address.username:
                handshake.append(["AUTH", address.username, address.password])
            else:
                handshake.append(["AUTH", address.password])
        if address.db:
            names.append("SELECT")
            handshake.append(["SELECT", address.db])
        if self.client_name:
            names.append("CLIENT SETNAME")
            handshake.append(["CLIENT", "SETNAME", self.client_name])
        if not handshake:
            return
        try:
            replies = self._roundtrip(handshake)
        except BaseException:
            self.close()
            raise
        for name, reply in zip(names, replies, strict=True):
            if isinstance(reply, RespError):
                # CLIENT SETNAME is cosmetic: a restricted ACL user may not have it.
                if name == "CLIENT SETNAME":
                    continue
                self.close()
                raise RespError(f"{reply} (during {name})")

    def _wrap_tls(self, sock: socket.socket) -> ssl.SSLSocket:
        import ssl  # only for rediss://: it costs memory the plain reporter does not need

        context = ssl.create_default_context(cafile=self.address.tls_ca_file)
        if not self.address.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            return context.wrap_socket(sock, server_hostname=self.address.host)
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._buf.clear()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> RespClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- commands ---------------------------------------------------------------------------

    def execute(self, *args: Arg) -> Reply:
        """Run one command; an error reply raises RespError."""
        (reply,) = self.pipeline([args])
        if isinstance(reply, RespError):
            raise reply
        return reply

    def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Reply]:
        """Send every command in one write, read every reply; error replies are returned in
        place as RespError instances. Connection trouble raises RespConnectionError."""
        if not commands:
            return []
        reused = self._sock is not None
        if not reused:
            self.connect()
        try:
            return self._roundtrip(commands)
        except RespConnectionError:
            if not (reused and self.retry_stale):
                raise
        self.connect()
        return self._roundtrip(commands)

    def ping(self) -> bool:
        return self.execute("PING") == b"PONG"

    def set(
        self,
        key: str,
        value: str | bytes,
        *,
        ex: int | None = None,
        px: int | None = None,
        nx: bool = False,
        xx: bool = False,
    ) -> bool:
        """True when set; False when NX/XX prevented it."""
        return self.execute(*self.set_args(key, value, ex=ex, px=px, nx=nx, xx=xx)) == b"OK"

    @staticmethod
    def set_args(
        key: str,
        value: str | bytes,
        *,
        ex: int | None = None,
        px: int | None = None,
        nx: bool = False,
        xx: bool = False,
    ) -> list[Arg]:
        args: list[Arg] = ["SET", key, value]
        if ex is not None:
            args += ["EX", ex]
        if px is not None:
            args += ["PX", px]
        if nx:
            args.append("NX")
        if xx:
            args.append("XX")
        return args

    def delete(self, *keys: str) -> int:
        reply = self.execute("DEL", *keys)
        return reply if isinstance(reply, int) else 0

    def publish(self, channel: str, message: str | bytes) -> int:
        """Returns the number of subscribers that received it."""
        reply = self.execute("PUBLISH", channel, message)
        return reply if isinstance(reply, int) else 0

    # --- wire -------------------------------------------------------------------------------

    def _roundtrip(self, commands: Sequence[Sequence[Arg]]) -> list[Reply]:
        sock = self._sock
        if sock is None:
            raise RespConnectionError("not connected")
        try:
            sock.sendall(b"".join(_encode(command) for command in commands))
            return [self._read_reply() for _ in commands]
        except RespConnectionError:
            self.close()
            raise
        except (OSError, ValueError) as error:
            self.close()
            raise RespConnectionError(f"{self.address.describe()}: {error or 'timed out'}") from (
                error
            )

    def _fill(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(_READ_CHUNK)
        if not chunk:
            raise RespConnectionError(f"{self.address.describe()}: connection closed by server")
        self._buf += chunk

    def _read_line(self) -> bytes:
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 2]
                return line
            self._fill()

    def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n + 2:
            self._fill()
        data = bytes(self._buf[:n])
        del self._buf[: n + 2]
        return data

    def _read_reply(self) -> Reply:
        line = self._read_line()
        if not line:
            raise RespConnectionError("empty reply line")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            if size > _MAX_BULK:
                raise RespConnectionError(f"bulk reply of {size} bytes")
            return self._read_exact(size)
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._read_reply() for _ in range(count)]
        raise RespConnectionError(f"not a RESP2 reply: {line[:40]!r}")
