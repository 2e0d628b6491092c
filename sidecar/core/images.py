"""Container image references: parsing, normalization and the "same image" rule.

The grammar is distribution/reference's (what Docker, containerd and the kubelet accept):

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path-component [ "/" path-component ]*
    domain     := host [ ":" port ]     host := domain-name | IPv4 | "[" IPv6 "]"
    path-component := [a-z0-9]+ ( ( [_.] | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := algorithm ":" hex      (sha256: 64, sha384: 96, sha512: 128 lowercase hex)

Normalization follows Docker's: no domain means `docker.io`, `index.docker.io` is `docker.io`,
and a single-component path on docker.io gets `library/`. The first component is a domain only
when it contains "." or ":", is `localhost`, or has an uppercase letter (paths are lowercase).
Registry hosts are lowercased too (DNS names are case-insensitive, so `Registry.Example.com`
and `registry.example.com` are one registry), except a host recognized only by its uppercase.
Stdlib only: the reporter's import path may reach it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_REGISTRY", "ImageRef", "ImageRefError", "parse_image", "same_image"]

DEFAULT_REGISTRY = "docker.io"
_LEGACY_REGISTRIES = frozenset({"index.docker.io", "registry-1.docker.io"})
_OFFICIAL_PREFIX = "library/"
# distribution/reference's NameTotalLengthMax, checked on the normalized name as Docker does.
_NAME_MAX = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN_RE = re.compile(rf"{_HOST}(?::[0-9]+)?")
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"([A-Za-z][A-Za-z0-9]*(?:[+._-][A-Za-z][A-Za-z0-9]*)*):([0-9a-fA-F]+)")
# go-digest registers these; anything else is "unsupported digest algorithm" there too.
_DIGEST_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}
_IMAGE_ID_RE = re.compile(r"[a-f0-9]{64}")


class ImageRefError(ValueError):
    """An image reference that the container runtime would reject; the message says why."""


@dataclass(frozen=True)
class ImageRef:
    """A normalized reference: `registry` and `path` as a runtime pulls them."""

    registry: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def repository(self) -> str:
        """`docker.io/library/nginx`: the identity without tag or digest."""
        return f"{self.registry}/{self.path}"

    @property
    def effective_tag(self) -> str:
        """The tag a runtime resolves: `latest` when none is given (digest-only refs too)."""
        return self.tag if self.tag is not None else "latest"

    @property
    def display(self) -> str:
        """For humans: the normalized reference, showing the implied `:latest`."""
        if self.tag is None and self.digest is None:
            return f"{self.repository}:latest"
        return str(self)

    def __str__(self) -> str:
        out = self.repository
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def _split_domain(name: str) -> tuple[str | None, str]:
    head, sep, rest = name.partition("/")
    if not sep:
        return None, name
    if "." in head or ":" in head or head == "localhost" or head.lower() != head:
        return head, rest
    return None, name


def _normalize_domain(domain: str) -> str:
    lowered = domain.lower()
    # `Foo/bar` names registry `Foo` only because of the uppercase; lowered it would read as
    # the docker.io repository `foo/bar`, so such a host keeps its case.
    if "." in lowered or ":" in lowered or lowered == "localhost":
        return lowered
    return domain


def _parse_digest(text: str, ref: str) -> str:
    match = _DIGEST_RE.fullmatch(text)
    if match is None:
        raise ImageRefError(f"invalid image reference {ref!r}: digest {text!r} is not algo:hex")
    algorithm, hexpart = match.groups()
    expected = _DIGEST_HEX_LEN.get(algorithm)
    if expected is None:
        raise ImageRefError(
            f"invalid image reference {ref!r}: unsupported digest algorithm {algorithm!r}"
        )
    if len(hexpart) != expected or hexpart.lower() != hexpart:
        raise ImageRefError(
            f"invalid image reference {ref!r}: {algorithm} digest needs {expected} "
            f"lowercase hex characters, got {hexpart!r}"
        )
    return f"{algorithm}:{hexpart}"


def parse_image(ref: str) -> ImageRef:
    """Parse and normalize `ref`; raise ImageRefError naming the offending part."""
    if not isinstance(ref, str):
        raise ImageRefError(f"invalid image reference {ref!r}: not a string")
    if ref == "":
        raise ImageRefError("invalid image reference '': empty")
    if ref != ref.strip():
        raise ImageRefError(f"invalid image reference {ref!r}: surrounding whitespace")

    name, at, digest_text = ref.partition("@")
    digest = _parse_digest(digest_text, ref) if at else None

    # The tag separator is the last ':' after the last '/', so `host:5000/app` is no tag.
    tag: str | None = None
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            detail = "longer than 128 characters" if len(tag) > 128 else "not [\\w][\\w.-]*"
            raise ImageRefError(f"invalid image reference {ref!r}: tag {tag!r} is {detail}")
    if name == "":
        raise ImageRefError(f"invalid image reference {ref!r}: missing repository name")
    if _IMAGE_ID_RE.fullmatch(name):
        raise ImageRefError(
            f"invalid image reference {ref!r}: a 64-character hex string is an image id, "
            "not a repository name"
        )

    domain, path = _split_domain(name)
    if domain is not None and not _DOMAIN_RE.fullmatch(domain):
        raise ImageRefError(f"invalid image reference {ref!r}: invalid registry host {domain!r}")
    components = path.split("/")
    for component in components:
        if _PATH_COMPONENT_RE.fullmatch(component):
            continue
        if component.lower() != component and _PATH_COMPONENT_RE.fullmatch(component.lower()):
            raise ImageRefError(
                f"invalid image reference {ref!r}: repository name must be lowercase "
                f"({component!r})"
            )
        raise ImageRefError(
            f"invalid image reference {ref!r}: invalid path component {component!r}"
        )

    registry = DEFAULT_REGISTRY if domain is None else _normalize_domain(domain)
    if registry in _LEGACY_REGISTRIES:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and len(components) == 1:
        path = _OFFICIAL_PREFIX + path
    if len(registry) + 1 + len(path) > _NAME_MAX:
        raise ImageRefError(
            f"invalid image reference {ref!r}: repository name longer than {_NAME_MAX} characters"
        )
    return ImageRef(registry=registry, path=path, tag=tag, digest=digest)


def _as_ref(image: str | ImageRef) -> ImageRef:
    return image if isinstance(image, ImageRef) else parse_image(image)


def same_image(a: str | ImageRef, b: str | ImageRef) -> bool:
    """The "same image" rule: same repository, and the same digest when both have one, else the same
    tag (no tag means `latest`). Raises ImageRefError for an unparsable string."""
    left, right = _as_ref(a), _as_ref(b)
    if left.repository != right.repository:
        return False
    if left.digest is not None and right.digest is not None:
        return left.digest == right.digest
    return left.effective_tag == right.effective_tag
