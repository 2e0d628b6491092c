"""The grammars of every value cache-buster reads, written once (stdlib only).

Durations, host names and ports, Redis endpoints and URLs, Kubernetes names, label keys, label
values and label selectors. Settings (`sidecar.config`), annotations (`sidecar.core.annotations`),
the reporter and the CLI all parse with these functions, so one value means the same thing
everywhere. Parsers raise `ValueError` with a message that never contains a password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

MASK = "***"

# ---------------------------------------------------------------------------------------------
# Durations

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
DURATION_HINT = "a duration like 900, 90s, 15m, 1h30m"


def parse_duration(text: str) -> float:
    """Seconds from `600`, `0.5`, or Go-style `90s`, `15m`, `1h30m`, `250ms`. Raises ValueError."""
    value = text.strip()
    if not value:
        raise ValueError("empty")
    try:
        seconds = float(value)
    except ValueError:
        pos = 0
        seconds = 0.0
        while pos < len(value):
            m = _DURATION_PART.match(value, pos)
            if not m:
                raise ValueError(value) from None
            seconds += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
    else:
        # float() also takes "inf", "nan" and "1e3": plain seconds are digits only.
        if not re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", value):
            raise ValueError(value)
    return seconds


def format_duration(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:g}s"


# ---------------------------------------------------------------------------------------------
# Redis endpoints


def mask_url(text: str) -> str:
    """`redis://user:secret@host` -> `redis://user:***@host`, for error messages."""
    return re.sub(r"(://[^/@:]*:)[^/]*@", rf"\g<1>{MASK}@", text)


@dataclass(frozen=True)
class RedisEndpoint:
    host: str
    port: int = 6379
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    db: int = 0

    @property
    def url(self) -> str:
        """Connection URL with credentials: for `redis.from_url`, never for a log."""
        return self._url(self.password)

    @property
    def display_url(self) -> str:
        """The secret-free form, for logs and errors."""
        return self._url(MASK if self.password else None)

    def _url(self, password: str | None) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.username or password:
            auth = quote(self.username or "", safe="")
            if password:
                auth += ":" + (password if password == MASK else quote(password, safe=""))
            auth += "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}"

    def __str__(self) -> str:
        return self.display_url

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.host.lower(), self.port, self.db)


def parse_port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not a number from 1 to 65535")
    return int(text)


_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")


def parse_host(text: str) -> str:
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:  # IPv6 literal
        if not re.fullmatch(r"[0-9A-Fa-f:.]+", text):
            raise ValueError(f"host {text!r} is not a valid address")
        return text
    if not _HOST.match(text) or len(text) > 253:
        raise ValueError(f"host {text!r} is not a valid host name")
    return text


def parse_redis_endpoint(entry: str) -> RedisEndpoint:
    """One peer: `host:port`, seed 1's `host__port`, bare `host`, or a redis(s):// URL.
    Raises ValueError; messages never contain a password."""
    entry = entry.strip()
    if "://" in entry:
        return parse_redis_url(entry)
    if "__" in entry:
        host, _, port = entry.rpartition("__")
        return RedisEndpoint(host=parse_host(host), port=parse_port(port))
    if entry.startswith("["):  # [::1]:6380
        m = re.fullmatch(r"\[([^\]]+)\](?::(.*))?", entry)
        if not m:
            raise ValueError("bad IPv6 address")
        return RedisEndpoint(host=parse_host(m.group(1)), port=parse_port(m.group(2) or "6379"))
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return RedisEndpoint(host=parse_host(host), port=parse_port(port))
    return RedisEndpoint(host=parse_host(entry))


def parse_redis_url(url: str) -> RedisEndpoint:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("scheme must be redis:// or rediss://")
    if parts.query or parts.fragment:
        raise ValueError("query and fragment are not supported")
    host = parts.hostname
    if not host:
        raise ValueError("missing host")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("bad port") from None
    db = 0
    path = parts.path.strip("/")
    if path:
        if not path.isdigit():
            raise ValueError(f"database {path!r} is not a number")
        db = int(path)
    return RedisEndpoint(
        host=parse_host(host),
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=parts.scheme == "rediss",
        db=db,
    )


# ---------------------------------------------------------------------------------------------
# Label selectors (Kubernetes syntax, checked here so the API server never sees a bad one)

_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def is_label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and bool(_LABEL_NAME.match(value)))


def is_label_key(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_LABEL_NAME.match(name))


def is_dns_subdomain(name: str) -> bool:
    return 0 < len(name) <= 253 and bool(_DNS_SUBDOMAIN.match(name))


def is_dns_label(name: str) -> bool:
    return 0 < len(name) <= 63 and bool(_DNS_LABEL.match(name))


def _split_requirements(selector: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current = ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced parenthesis")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise ValueError("unbalanced parenthesis")
    parts.append(current)
    return parts


_SET_REQ = re.compile(r"^(\S+)\s+(in|notin)\s*\((.*)\)$")
_CMP_REQ = re.compile(r"^([^=!<>\s]+)\s*(==|=|!=|<|>)\s*(.*)$")


def parse_label_selector(selector: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """Requirements `(key, operator, values)` of a Kubernetes label selector string:
    `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k>1`, `k<1`.
    Raises ValueError with the offending requirement."""
    requirements: list[tuple[str, str, tuple[str, ...]]] = []
    if not selector.strip():
        return requirements
    for raw in _split_requirements(selector):
        req = raw.strip()
        if not req:
            raise ValueError("empty requirement")
        key: str
        op: str
        values: tuple[str, ...]
        if m := _SET_REQ.match(req):
            key, op = m.group(1), m.group(2)
            values = tuple(v.strip() for v in m.group(3).split(","))
            if values == ("",):
                raise ValueError(f"{req!r}: empty value set")
        elif m := _CMP_REQ.match(req):
            key, op, values = m.group(1), m.group(2), (m.group(3).strip(),)
            if op in ("<", ">") and not re.fullmatch(r"-?\d+", values[0]):
                raise ValueError(f"{req!r}: {op} needs an integer")
        elif req.startswith("!"):
            key, op, values = req[1:].strip(), "!", ()
        else:
            key, op, values = req, "exists", ()
        if not is_label_key(key):
            raise ValueError(f"{req!r}: {key!r} is not a valid label key")
        if op not in ("<", ">"):
            for v in values:
                if not is_label_value(v):
                    raise ValueError(f"{req!r}: {v!r} is not a valid label value")
        requirements.append((key, op, values))
    return requirements
