"""The grammars of every value cache-buster reads, written once (stdlib only).

Durations, ports, hosts, Redis endpoints and URLs, Kubernetes names, label keys, values and
selectors, probe and version URLs, CloudFront distribution ids, Cloudflare zone ids and the
annotation prefix. Settings
(`sidecar.config`), annotations (`sidecar.core.annotations`), the reporter and the CLI all parse
with these functions, so one value means the same thing for every command. Parsers raise
`ValueError` with a message that never contains a password.

Two readings are fixed here on purpose:

- A probe (`cache-buster.io/probe`) is `http(s)://HOST[:PORT]/PATH` (HTTP 200-399 passes, as the
  kubelet's), `tcp://HOST:PORT`, `tcp:PORT`, or a bare port `8080`: `tcp:PORT` and a bare port
  both mean a TCP connect to 127.0.0.1:PORT. Empty means no probe.
- A Redis URL is `redis://[[user]:password@]host[:port][/db]` (`rediss://` for TLS) with
  redis-py's query options `ssl_cert_reqs=none|optional|required`, `ssl_ca_certs=FILE` and
  `db=N`; any other option is an error. The reporter's client and the aggregator's connection
  both honour every field of the resulting `RedisEndpoint`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, quote, unquote, urlsplit

MASK = "***"
# Every annotation and label cache-buster reads starts with this.
ANNOTATION_PREFIX = "cache-buster.io/"

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
# Ports and hosts


def parse_port(text: str) -> int:
    """A TCP port, 1 to 65535. Raises ValueError."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not a number from 1 to 65535")
    return int(text)


_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")


def parse_host(text: str) -> str:
    """A host name, an IPv4 address or an IPv6 literal (brackets optional). Raises ValueError."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:  # IPv6 literal
        if not re.fullmatch(r"[0-9A-Fa-f:.]+", text):
            raise ValueError(f"host {text!r} is not a valid address")
        return text
    if not _HOST.match(text) or len(text) > 253:
        raise ValueError(f"host {text!r} is not a valid host name")
    return text


def parse_domain(domain: str) -> str:
    """A public host name a CDN serves, lower-cased; `*.example.com` allowed. Raises ValueError."""
    host = domain.strip().lower().rstrip(".")
    labels = host.split(".")
    if len(host) > 253 or len(labels) < 2:
        raise ValueError(f"{json.dumps(domain)} is not a fully qualified host name")
    for i, label in enumerate(labels):
        if label == "*" and i == 0:
            continue
        if not is_dns_label(label):
            raise ValueError(f"{json.dumps(domain)} is not a valid host name")
    if labels[-1].isdigit():
        raise ValueError(f"{json.dumps(domain)} is an address, not a host name")
    return host


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _url_port(parts_port: int | None, default: int) -> int:
    """The port of an already split URL: `default` when absent, else 1 to 65535."""
    if parts_port is None:
        return default
    return parse_port(str(parts_port))


# ---------------------------------------------------------------------------------------------
# Redis endpoints


def mask_url(text: str) -> str:
    """`redis://user:secret@host` -> `redis://user:***@host`, for error messages."""
    return re.sub(r"(://[^/@:]*:)[^/]*@", rf"\g<1>{MASK}@", text)


@dataclass(frozen=True)
class RedisEndpoint:
    """One Redis server and how to talk to it: the reporter's RESP client and the aggregator's
    redis-py connection are both built from this."""

    host: str
    port: int = 6379
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    db: int = 0
    # rediss:// only: verify the server's certificate (`ssl_cert_reqs=none` turns it off),
    # against this CA bundle instead of the system's.
    tls_verify: bool = True
    tls_ca_file: str | None = None

    @property
    def url(self) -> str:
        """Connection URL with credentials: never for a log."""
        return self._url(self.password)

    @property
    def display_url(self) -> str:
        """The secret-free form, for logs and errors: a password shows as `***`."""
        return self._url(MASK if self.password else None)

    def describe(self) -> str:
        """The short log form: scheme, user, host, port, db (and TLS options); no password."""
        return self._url(None)

    def _url(self, password: str | None) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.username or password:
            auth = quote(self.username or "", safe="")
            if password:
                auth += ":" + (password if password == MASK else quote(password, safe=""))
            auth += "@"
        options = []
        if self.tls and not self.tls_verify:
            options.append("ssl_cert_reqs=none")
        if self.tls and self.tls_ca_file:
            options.append("ssl_ca_certs=" + quote(self.tls_ca_file, safe="/"))
        query = "?" + "&".join(options) if options else ""
        return f"{scheme}://{auth}{_host_port(self.host, self.port)}/{self.db}{query}"

    def __str__(self) -> str:
        return self.display_url

    @property
    def key(self) -> tuple[str, int, int]:
        """Two endpoints with the same key are the same database."""
        return (self.host.lower(), self.port, self.db)

    def with_credentials(self, username: str | None, password: str | None) -> RedisEndpoint:
        """Credentials given in the URL win; these (REDIS_USERNAME, REDIS_PASSWORD) fill what
        the URL leaves out."""
        return replace(
            self,
            username=self.username if self.username is not None else username,
            password=self.password if self.password is not None else password,
        )


def parse_redis_endpoint(entry: str) -> RedisEndpoint:
    """One peer: `host:port`, the Go worker's `host__port`, bare `host`, or a redis(s):// URL.
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


_REDIS_OPTIONS = ("db", "ssl_cert_reqs", "ssl_ca_certs")
_CERT_REQS = ("none", "optional", "required")


def parse_redis_url(url: str) -> RedisEndpoint:
    """`redis://[[user]:password@]host[:port][/db][?options]`, `rediss://` for TLS; the options
    are described in this module's docstring. Raises ValueError (never with the password)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise ValueError(f"not a valid URL ({error})") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"scheme must be redis:// or rediss://, got {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise ValueError("no host")
    if parts.fragment:
        raise ValueError("a fragment (#...) is not supported")
    try:
        query = {
            k: v[-1] for k, v in parse_qs(parts.query, strict_parsing=bool(parts.query)).items()
        }
    except ValueError:
        raise ValueError("the query is not name=value pairs") from None
    unknown = sorted(set(query) - set(_REDIS_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; supported: {', '.join(_REDIS_OPTIONS)}")
    db_text = parts.path.strip("/") or query.get("db", "0")
    if not db_text.isdigit():
        raise ValueError(f"database must be a number, got {db_text!r}")
    cert_reqs = query.get("ssl_cert_reqs", "required").lower()
    if cert_reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be none, optional or required, got {cert_reqs!r}")
    return RedisEndpoint(
        host=parse_host(parts.hostname),
        port=_url_port(port, 6379),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
        db=int(db_text),
        tls_verify=cert_reqs != "none",
        tls_ca_file=query.get("ssl_ca_certs") or None,
    )


# ---------------------------------------------------------------------------------------------
# Probe and version URLs (the pod template's annotations, read by the reporter)


@dataclass(frozen=True)
class Probe:
    """How the reporter checks its app, or where it reads the served version: `scheme` http,
    https or tcp; `path` (with its query) for HTTP only."""

    scheme: str
    host: str
    port: int
    path: str = "/"

    def __str__(self) -> str:
        if self.scheme == "tcp":
            return f"tcp://{_host_port(self.host, self.port)}"
        return f"{self.scheme}://{_host_port(self.host, self.port)}{self.path}"


PROBE_HINT = "an http(s):// URL, tcp://HOST:PORT, tcp:PORT or a port"


def parse_probe(text: str | None) -> Probe | None:
    """A probe, as this module's docstring describes; None when empty. Raises ValueError."""
    value = (text or "").strip()
    if not value:
        return None
    if value.isdigit() or (value.startswith("tcp:") and not value.startswith("tcp://")):
        return Probe("tcp", "127.0.0.1", parse_port(value.removeprefix("tcp:")))
    return _parse_url(value, ("http", "https", "tcp"), PROBE_HINT)


def parse_version_url(text: str | None) -> Probe | None:
    """An `http://` or `https://` URL whose answer is the served version; None when empty."""
    value = (text or "").strip()
    if not value:
        return None
    return _parse_url(value, ("http", "https"), "an http:// or https:// URL")


def _parse_url(value: str, schemes: tuple[str, ...], hint: str) -> Probe:
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"{value!r} is not a valid URL ({error})") from None
    if parts.scheme not in schemes:
        raise ValueError(f"expected {hint}; got {value!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {value!r}")
    host = parse_host(parts.hostname)
    if parts.scheme == "tcp":
        if port is None:
            raise ValueError(f"a tcp probe needs a port: {value!r}")
        if parts.path not in ("", "/"):
            raise ValueError(f"a tcp probe takes no path: {value!r}")
        return Probe("tcp", host, _url_port(port, 0))
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return Probe(parts.scheme, host, _url_port(port, 443 if parts.scheme == "https" else 80), path)


# ---------------------------------------------------------------------------------------------
# CloudFront distribution ids

# Upper-case letters and digits (AWS examples: E2QWRUHAPOMQZL).
_DISTRIBUTION_ID = re.compile(r"^[A-Z0-9]{10,20}$")
DISTRIBUTION_ID_HINT = "10 to 20 upper-case letters and digits, like E2QWRUHAPOMQZL"


def is_distribution_id(text: str) -> bool:
    """A CloudFront distribution id (DISTRIBUTION_ID_HINT)."""
    return bool(_DISTRIBUTION_ID.match(text))


# ---------------------------------------------------------------------------------------------
# Cloudflare zone ids

_ZONE_ID = re.compile(r"^[0-9a-f]{32}$")


def parse_zone_id(text: str) -> str:
    """A Cloudflare zone id: 32 hex characters, returned lower-cased. Raises ValueError."""
    zone = text.strip().lower()
    if not _ZONE_ID.match(zone):
        raise ValueError("is not a Cloudflare zone id (32 hex characters)")
    return zone


# Cloudflare's Cache-Tag values: printable ASCII, no space, no comma (the header's separator),
# at most 1,024 characters each.
CACHE_TAG_MAX = 1024


def parse_cache_tag(text: str) -> str:
    """One Cloudflare cache tag, stripped. Raises ValueError."""
    tag = text.strip()
    if not tag:
        raise ValueError("an empty cache tag")
    if len(tag) > CACHE_TAG_MAX:
        raise ValueError(f"a cache tag longer than {CACHE_TAG_MAX} characters")
    if any(not 33 <= ord(c) <= 126 or c == "," for c in tag):
        raise ValueError(
            f"{json.dumps(tag)} is not a cache tag (printable ASCII, no space or comma)"
        )
    return tag


@dataclass(frozen=True)
class RateLimit:
    """`N/s`, `N/m` or `N/h`: N requests per second, minute or hour, with a bucket of 5 x N
    (the ratio of the burst to the rate in Cloudflare's documented purge buckets)."""

    count: int
    per: str  # "s", "m" or "h"

    @property
    def per_second(self) -> float:
        return self.count / _RATE_UNITS[self.per]

    @property
    def burst(self) -> int:
        return 5 * self.count

    def __str__(self) -> str:
        return f"{self.count}/{self.per}"


_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
RATE_HINT = "a rate like 5/m, 10/s or 1000/h"


def parse_rate(text: str) -> RateLimit:
    """A request rate (RateLimit). Raises ValueError."""
    match = re.fullmatch(r"(\d+)\s*/\s*([smh])", text.strip().lower())
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"{json.dumps(text)} is not {RATE_HINT}")
    return RateLimit(int(match.group(1)), match.group(2))


# ---------------------------------------------------------------------------------------------
# Kubernetes names, label keys and values, label selectors (checked here so the API server
# never sees a bad one)

_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE_HINT = (
    "1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
)


def is_label_value(value: str) -> bool:
    """A label value; the empty value is valid (use `value and is_label_value(value)`)."""
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
