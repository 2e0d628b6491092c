"""A loopback TCP proxy that can be cut: partitions between an aggregator and a peer's Redis
without privileges (no iptables, no tc), switched at runtime and deterministic.

    with TcpProxy("127.0.0.1", server.port) as proxy:
        peer = redis.Redis.from_url(proxy.url, socket_timeout=0.5)
        proxy.blackhole()   # what a partitioned network looks like: silence, then timeouts
        proxy.refuse()      # what a peer whose Redis is down looks like: refused, reset
        proxy.pass_through()

One thread runs a selector loop over every socket. `set_mode` hands the new mode to that
thread and returns once it is applied, so a test's next line already sees it.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import selectors
import socket
import struct
import threading
from dataclasses import dataclass, field

from sidecar.sim.lifecycle import Service

__all__ = ["ProxyMode", "TcpProxy"]

HOST = "127.0.0.1"
_CHUNK = 65536
# A direction stops reading once this much waits for a slow receiver (backpressure).
_BUFFER_LIMIT = 1 << 20
_APPLY_TIMEOUT = 5.0
_JOIN_TIMEOUT = 5.0


class ProxyMode(enum.Enum):
    PASS = "pass"  # forward both ways
    REFUSE = "refuse"  # no listener (ECONNREFUSED); existing connections reset
    BLACKHOLE = "blackhole"  # accept, read, drop, never answer; existing connections silent


@dataclass(eq=False)
class _Link:
    """One client connection and, in PASS mode, its upstream connection."""

    client: socket.socket
    upstream: socket.socket | None = None
    connecting: bool = False  # the upstream connect is still in progress
    silent: bool = False  # blackholed: read and drop, forward nothing
    closing: bool = False  # one side ended: close once the other side's bytes are out
    to_client: bytearray = field(default_factory=bytearray)
    to_upstream: bytearray = field(default_factory=bytearray)


class TcpProxy(Service):
    def __init__(self, target_host: str, target_port: int, *, listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._port = listen_port
        self._mode = ProxyMode.PASS
        self.connections_accepted = 0
        self.bytes_forwarded = 0
        self._listener: socket.socket | None = None
        self._selector: selectors.DefaultSelector | None = None
        self._links: set[_Link] = set()
        self._thread: threading.Thread | None = None
        self._stopping = False
        # set_mode -> loop thread: the wanted mode and an event set once it is applied.
        self._control = threading.Lock()
        self._wanted: ProxyMode | None = None
        self._applied = threading.Event()
        self._apply_error: OSError | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    # -- public -----------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("start the proxy first")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def mode(self) -> ProxyMode:
        return self._mode

    def start(self) -> TcpProxy:
        if self._thread is not None:
            return self
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        # Bound even when starting refused: the port is known, and stays the same.
        self._listen()
        if self._mode is ProxyMode.REFUSE:
            self._unlisten()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"tcp-proxy-{self._port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        with self._control:
            self._stopping = True
            self._wake()
        thread.join(_JOIN_TIMEOUT)
        if thread.is_alive():  # the loop is stuck: free the sockets from here
            self._close_all(reset=True)
            self._unlisten()
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_r = self._wake_w = None

    def set_mode(self, mode: ProxyMode) -> None:
        """Switch, and return once the switch is applied (existing connections included)."""
        with self._control:
            if self._thread is None:
                self._mode = mode  # applied by start()
                return
            self._applied.clear()
            self._apply_error = None
            self._wanted = mode
            self._wake()
            if not self._applied.wait(_APPLY_TIMEOUT):
                raise RuntimeError(f"tcp proxy on port {self._port}: mode {mode.value} not applied")
            if self._apply_error is not None:
                raise self._apply_error  # e.g. the port was taken while refusing

    def pass_through(self) -> None:
        self.set_mode(ProxyMode.PASS)

    def refuse(self) -> None:
        self.set_mode(ProxyMode.REFUSE)

    def blackhole(self) -> None:
        self.set_mode(ProxyMode.BLACKHOLE)

    def __repr__(self) -> str:
        port = self._port or "?"
        return f"TcpProxy({HOST}:{port} -> {self.target[0]}:{self.target[1]}, {self._mode.value})"

    # -- the loop thread --------------------------------------------------------------------
    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(BlockingIOError):
                self._wake_w.send(b"x")

    def _run(self) -> None:
        selector = self._selector
        assert selector is not None
        try:
            while not self._stopping:
                for key, events in selector.select(timeout=1.0):
                    if key.data is None:
                        if key.fileobj is self._wake_r:
                            self._drain_wake()
                        elif key.fileobj is self._listener:  # not closed earlier this round
                            self._accept()
                        continue
                    link, side = key.data
                    if link in self._links:  # not closed by an earlier event of this round
                        self._handle(link, side, events)
        finally:
            self._close_all(reset=True)
            self._unlisten()

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        wanted, self._wanted = self._wanted, None
        if wanted is not None:
            try:
                self._apply(wanted)
            except OSError as err:
                self._apply_error = err
            finally:
                self._applied.set()

    def _apply(self, mode: ProxyMode) -> None:
        previous, self._mode = self._mode, mode
        if mode is ProxyMode.REFUSE:
            self._unlisten()
            self._close_all(reset=True)  # what a client of a dead server gets
            return
        if self._listener is None:
            self._listen()
        if mode is ProxyMode.BLACKHOLE:
            for link in list(self._links):
                self._silence(link)
        elif previous is ProxyMode.BLACKHOLE:
            # Silent connections never come back: a client notices the close and reconnects.
            self._close_all(reset=False)

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # The same port again after a REFUSE, even with connections in TIME_WAIT.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((HOST, self._port))
            listener.listen(128)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._port = listener.getsockname()[1]
        self._listener = listener
        assert self._selector is not None
        self._selector.register(listener, selectors.EVENT_READ, None)

    def _unlisten(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(listener)
        listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. the client already reset it; the listener is fine
            self.connections_accepted += 1
            client.setblocking(False)
            link = _Link(client=client, silent=self._mode is ProxyMode.BLACKHOLE)
            self._links.add(link)
            if not link.silent:
                try:
                    self._connect_upstream(link)
                except OSError:
                    self._close(link, reset=True)
                    continue
            self._update(link)

    def _connect_upstream(self, link: _Link) -> None:
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        link.upstream = upstream
        code = upstream.connect_ex(self.target)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            raise OSError(code, errno.errorcode.get(code, "connect failed"))
        link.connecting = code != 0

    def _client_events(self, link: _Link) -> int:
        events = 0
        if link.silent or (not link.closing and len(link.to_upstream) < _BUFFER_LIMIT):
            events |= selectors.EVENT_READ
        if link.to_client and not link.silent:
            events |= selectors.EVENT_WRITE
        return events

    def _upstream_events(self, link: _Link) -> int:
        if link.connecting:
            return selectors.EVENT_WRITE
        events = 0
        if link.silent or (not link.closing and len(link.to_client) < _BUFFER_LIMIT):
            events |= selectors.EVENT_READ
        if link.to_upstream and not link.silent:
            events |= selectors.EVENT_WRITE
        return events

    def _update(self, link: _Link) -> None:
        if link.closing and not (link.to_client or link.to_upstream):
            self._close(link, reset=False)
            return
        assert self._selector is not None
        self._watch(link.client, self._client_events(link), (link, "client"))
        if link.upstream is not None:
            self._watch(link.upstream, self._upstream_events(link), (link, "upstream"))

    def _watch(self, sock: socket.socket, events: int, data: tuple[_Link, str]) -> None:
        assert self._selector is not None
        try:
            self._selector.get_key(sock)
        except KeyError:
            if events:
                self._selector.register(sock, events, data)
            return
        if events:
            self._selector.modify(sock, events, data)
        else:
            # Nothing to wait for on this socket right now (backpressure): park it.
            self._selector.unregister(sock)

    def _handle(self, link: _Link, side: str, events: int) -> None:
        try:
            if side == "upstream" and link.connecting:
                assert link.upstream is not None
                if link.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    # The target refused: the client sees a reset, as from a dead server.
                    self._close(link, reset=True)
                    return
                link.connecting = False
            else:
                if events & selectors.EVENT_WRITE:
                    self._send(link, side)
                if events & selectors.EVENT_READ:
                    self._receive(link, side)
        except OSError:
            self._close(link, reset=True)
            return
        if link in self._links:
            self._update(link)

    def _receive(self, link: _Link, side: str) -> None:
        sock = link.client if side == "client" else link.upstream
        assert sock is not None
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            if link.silent:
                self._close(link, reset=False)
            else:
                link.closing = True  # deliver what the other side still has, then close
            return
        if link.silent:
            return  # dropped: nothing answers in a blackhole
        (link.to_upstream if side == "client" else link.to_client).extend(data)

    def _send(self, link: _Link, side: str) -> None:
        sock, buffer = (
            (link.client, link.to_client) if side == "client" else (link.upstream, link.to_upstream)
        )
        if sock is None or not buffer or link.silent:
            return
        try:
            sent = sock.send(buffer)
        except (BlockingIOError, InterruptedError):
            return
        del buffer[:sent]
        self.bytes_forwarded += sent

    def _silence(self, link: _Link) -> None:
        link.silent = True
        link.to_client.clear()
        link.to_upstream.clear()
        if link.closing:
            self._close(link, reset=False)
        else:
            self._update(link)

    def _close(self, link: _Link, *, reset: bool) -> None:
        self._links.discard(link)
        for sock in (link.client, link.upstream):
            if sock is None:
                continue
            if self._selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
            if reset:
                # Linger 0: close sends RST, as a host whose process died does.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

    def _close_all(self, *, reset: bool) -> None:
        for link in list(self._links):
            self._close(link, reset=reset)
