"""Image references: distribution/reference's grammar, Docker's normalization, same image."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.images import ImageRef, ImageRefError, parse_image, same_image

SHA = "a" * 64
SHA_B = "b" * 64

VALID: list[tuple[str, str, str, str | None, str | None]] = [
    # (input, registry, path, tag, digest)
    ("nginx", "docker.io", "library/nginx", None, None),
    ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
    ("library/nginx", "docker.io", "library/nginx", None, None),
    ("docker.io/nginx", "docker.io", "library/nginx", None, None),
    ("index.docker.io/nginx:latest", "docker.io", "library/nginx", "latest", None),
    ("index.docker.io/bitnami/redis", "docker.io", "bitnami/redis", None, None),
    ("bitnami/redis:7.2", "docker.io", "bitnami/redis", "7.2", None),
    # The Go worker split on ':' and broke here.
    ("registry:5000/app:1.2", "registry:5000", "app", "1.2", None),
    ("registry:5000/app", "registry:5000", "app", None, None),
    ("localhost/app", "localhost", "app", None, None),
    ("localhost:5000/team/app:v1", "localhost:5000", "team/app", "v1", None),
    ("127.0.0.1:5000/app", "127.0.0.1:5000", "app", None, None),
    ("[::1]:5000/app:dev", "[::1]:5000", "app", "dev", None),
    ("[2001:db8::1]/ns/app", "[2001:db8::1]", "ns/app", None, None),
    ("ghcr.io/org/team/sub/app:v1.2.3-rc.1", "ghcr.io", "org/team/sub/app", "v1.2.3-rc.1", None),
    ("Registry.Example.COM/app", "registry.example.com", "app", None, None),
    ("Foo/bar", "Foo", "bar", None, None),  # uppercase first component is a host (Docker)
    ("LOCALHOST/app", "localhost", "app", None, None),
    ("quay.io/a_b/c__d/e-f/g.h/i---j", "quay.io", "a_b/c__d/e-f/g.h/i---j", None, None),
    (f"nginx@sha256:{SHA}", "docker.io", "library/nginx", None, f"sha256:{SHA}"),
    (f"nginx:1.25@sha256:{SHA}", "docker.io", "library/nginx", "1.25", f"sha256:{SHA}"),
    (f"r.io:443/a/b:t@sha512:{'c' * 128}", "r.io:443", "a/b", "t", f"sha512:{'c' * 128}"),
    ("app:_underscore.Tag-1", "docker.io", "library/app", "_underscore.Tag-1", None),
    ("app:" + "t" * 128, "docker.io", "library/app", "t" * 128, None),
]

INVALID: list[tuple[str, str]] = [
    ("", "empty"),
    (" nginx", "whitespace"),
    ("Nginx", "lowercase"),
    ("docker.io/Library/nginx", "lowercase"),
    ("registry:5000/App:1", "lowercase"),
    ("app:" + "t" * 129, "longer than 128"),
    ("app:-tag", "tag"),
    ("app:", "tag"),
    ("app:tag:more", "tag"),
    (f"app@sha256:{SHA[:-1]}", "64"),
    (f"app@sha256:{SHA.upper()}", "lowercase hex"),
    ("app@sha256:xyz", "algo:hex"),
    ("app@sha256", "algo:hex"),
    (f"app@md5:{SHA}", "unsupported digest algorithm"),
    ("app@", "algo:hex"),
    ("a/-b", "path component"),
    ("a//b", "path component"),
    ("a/b/", "path component"),
    ("a/b_", "path component"),
    ("a/b___c", "path component"),
    ("-host.io/app", "registry host"),
    ("host.io:port/app", "registry host"),
    ("[::1/app", "registry host"),
    (":tag", "missing repository"),
    ("@sha256:" + SHA, "missing repository"),
    (SHA, "image id"),
    ("r.io/" + "a" * 251, "longer than 255"),
    ("a" * 250, "longer than 255"),  # docker.io/library/ prefix counts
]


@pytest.mark.parametrize(("text", "registry", "path", "tag", "digest"), VALID)
def test_valid_references(
    text: str, registry: str, path: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_image(text)
    assert ref == ImageRef(registry=registry, path=path, tag=tag, digest=digest)
    assert parse_image(str(ref)) == ref


@pytest.mark.parametrize(("text", "reason"), INVALID)
def test_invalid_references(text: str, reason: str) -> None:
    with pytest.raises(ImageRefError, match=reason):
        parse_image(text)


def test_image_ref_error_is_a_value_error() -> None:
    assert issubclass(ImageRefError, ValueError)


def test_repository_str_and_display() -> None:
    ref = parse_image("nginx")
    assert ref.repository == "docker.io/library/nginx"
    assert str(ref) == "docker.io/library/nginx"  # no implied tag in the identity
    assert ref.display == "docker.io/library/nginx:latest"
    pinned = parse_image(f"registry:5000/app:1.2@sha256:{SHA}")
    assert str(pinned) == f"registry:5000/app:1.2@sha256:{SHA}"
    assert pinned.display == str(pinned)
    assert parse_image(f"nginx@sha256:{SHA}").display == f"docker.io/library/nginx@sha256:{SHA}"


SAME: list[tuple[str, str, bool]] = [
    ("nginx", "docker.io/library/nginx", True),
    ("nginx", "nginx:latest", True),  # no tag means latest
    ("nginx", "index.docker.io/library/nginx:latest", True),
    ("nginx:1.25", "nginx:1.26", False),
    ("nginx:1.25", "ghcr.io/library/nginx:1.25", False),
    ("registry:5000/app:1.2", "registry:5000/app:1.2", True),
    ("registry:5000/app:1.2", "registry:5001/app:1.2", False),
    # Both digests known: they decide, whatever the tags say.
    (f"app:1@sha256:{SHA}", f"app:2@sha256:{SHA}", True),
    (f"app:1@sha256:{SHA}", f"app:1@sha256:{SHA_B}", False),
    # One digest unknown: the tags decide.
    (f"app:1@sha256:{SHA}", "app:1", True),
    (f"app:1@sha256:{SHA}", "app:2", False),
    (f"app@sha256:{SHA}", "app", True),  # both resolve to tag latest
    (f"app@sha256:{SHA}", "app:1", False),
    ("Registry.IO/app", "registry.io/app", True),
]


@pytest.mark.parametrize(("a", "b", "expected"), SAME)
def test_same_image(a: str, b: str, expected: bool) -> None:
    assert same_image(a, b) is expected
    assert same_image(b, a) is expected
    assert same_image(parse_image(a), b) is expected


def test_same_image_rejects_invalid_strings() -> None:
    with pytest.raises(ImageRefError):
        same_image("Nginx", "nginx")


# --- property-based: references generated from the grammar -----------------------------------

_alnum_lower = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_separator = st.sampled_from([".", "_", "__", "-", "--", "---"])


@st.composite
def _path_component(draw: st.DrawFn) -> str:
    parts = [draw(_alnum_lower)]
    for _ in range(draw(st.integers(0, 2))):
        parts.append(draw(_separator) + draw(_alnum_lower))
    return "".join(parts)


_domain_label = st.from_regex(r"\A[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?\Z")
_port = st.integers(1, 65535).map(lambda p: f":{p}")


@st.composite
def _domain(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["dotted", "localhost", "ipv4", "ipv6", "docker"]))
    if kind == "dotted":
        host = ".".join(draw(st.lists(_domain_label, min_size=2, max_size=3)))
    elif kind == "localhost":
        host = "localhost"
    elif kind == "ipv4":
        host = ".".join(str(draw(st.integers(0, 255))) for _ in range(4))
    elif kind == "ipv6":
        host = "[" + draw(st.sampled_from(["::1", "2001:db8::1", "fe80::a:B:c"])) + "]"
    else:
        host = draw(st.sampled_from(["docker.io", "index.docker.io"]))
    return host + draw(st.one_of(st.just(""), _port))


_tag = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")
_digest = st.one_of(
    st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"sha256:{h}"),
    st.text("0123456789abcdef", min_size=128, max_size=128).map(lambda h: f"sha512:{h}"),
)


@st.composite
def references(draw: st.DrawFn) -> str:
    path = "/".join(draw(st.lists(_path_component(), min_size=1, max_size=3)))
    domain = draw(st.one_of(st.none(), _domain()))
    if domain is None and "." in path.split("/")[0] and "/" in path:
        domain = "docker.io"  # a dotted first component would be read as a registry host
    name = path if domain is None else f"{domain}/{path}"
    tag = draw(st.one_of(st.none(), _tag))
    digest = draw(st.one_of(st.none(), _digest))
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


@given(references())
def test_generated_references_round_trip(text: str) -> None:
    ref = parse_image(text)
    assert parse_image(str(ref)) == ref
    assert str(parse_image(str(ref))) == str(ref)  # normalization is idempotent


@given(references())
def test_generated_references_keep_their_parts(text: str) -> None:
    ref = parse_image(text)
    if "@" in text:
        assert ref.digest == text.rsplit("@", 1)[1]
    assert ref.registry == ref.registry.lower()
    assert ref.registry != "index.docker.io"
    if ref.registry == "docker.io":
        assert "/" in ref.path


@given(references(), references())
def test_same_image_is_reflexive_and_symmetric(a: str, b: str) -> None:
    assert same_image(a, a)
    assert same_image(a, str(parse_image(a)))
    assert same_image(a, b) == same_image(b, a)


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_image_ref_error(text: str) -> None:
    try:
        ref = parse_image(text)
    except ImageRefError:
        return
    assert parse_image(str(ref)) == ref
