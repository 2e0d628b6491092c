"""Per-app settings from Deployment annotations: pure functions over raw dicts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sidecar.core.annotations import (
    DEFAULT_PATHS,
    AnnotationError,
    AppConfig,
    Probe,
    app_config,
    parse_probe,
)
from sidecar.core.rollout import container_image


def deployment(
    annotations: dict[str, Any] | None = None,
    template_annotations: dict[str, Any] | None = None,
    containers: list[dict[str, Any]] | None = None,
    name: str = "web",
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {"cache-buster.io/enabled": "true"},
            "annotations": annotations or {},
        },
        "spec": {
            "replicas": 2,
            "template": {
                "metadata": {"annotations": template_annotations or {}},
                "spec": {
                    "containers": containers
                    if containers is not None
                    else [
                        {"name": "app", "image": "registry.example/web:2"},
                        {"name": "proxy", "image": "envoyproxy/envoy:v1.30"},
                    ]
                },
            },
        },
    }


def error_for(annotations: dict[str, Any], **kw: Any) -> AnnotationError:
    with pytest.raises(AnnotationError) as info:
        app_config(deployment(annotations, **kw))
    return info.value


def test_defaults_follow_the_go_worker() -> None:
    cfg = app_config(deployment())
    assert cfg == AppConfig(
        namespace="shop",
        deployment="web",
        app="web",
        container="app",
        image="registry.example/web:2",
    )
    assert cfg.paths == DEFAULT_PATHS == ("/*",)
    assert cfg.provider == "cloudfront"
    assert cfg.domains == ()
    assert cfg.purge_on_rollback is False
    assert cfg.webhooks == () and not cfg.webhooks_disabled
    assert cfg.key == "shop/web"


def test_every_annotation() -> None:
    cfg = app_config(
        deployment(
            {
                "cache-buster.io/name": "storefront",
                "cache-buster.io/domains": " WWW.Example.com, *.cdn.example.com,www.example.com.",
                "cache-buster.io/paths": "/index.html, /assets/*,/index.html",
                "cache-buster.io/provider": "CloudFlare",
                "cache-buster.io/distribution-id": "E2QWRUHAPOMQZL",
                "cache-buster.io/zone": "023E105F4ECEF8AD9CA31A8372D0C353",
                "cache-buster.io/container": "proxy",
                "cache-buster.io/webhooks": "slack, audit",
                "cache-buster.io/purge-on-rollback": "True",
                "other.io/ignored": "x",
            },
            {
                "cache-buster.io/probe": "http://127.0.0.1:8080/healthz",
                "cache-buster.io/version-url": "http://127.0.0.1:8080/version",
            },
        )
    )
    assert cfg.app == "storefront"
    assert cfg.domains == ("www.example.com", "*.cdn.example.com")
    assert cfg.paths == ("/index.html", "/assets/*")
    assert cfg.provider == "cloudflare"
    assert cfg.distribution_id == "E2QWRUHAPOMQZL"
    assert cfg.zone == "023e105f4ecef8ad9ca31a8372d0c353"
    assert (cfg.container, cfg.image) == ("proxy", "envoyproxy/envoy:v1.30")
    assert cfg.webhooks == ("slack", "audit")
    assert cfg.purge_on_rollback is True
    assert cfg.probe == Probe("http", "127.0.0.1", 8080, "/healthz")
    assert cfg.version_url == "http://127.0.0.1:8080/version"
    assert cfg.unknown_annotations == ()


def test_error_message_names_deployment_and_annotation() -> None:
    err = error_for({"cache-buster.io/paths": "index.html"})
    assert str(err) == (
        'deployment shop/web: annotation cache-buster.io/paths: "index.html" must start with "/"'
    )
    assert err.annotation == "cache-buster.io/paths"
    assert err.deployment == "shop/web"


@pytest.mark.parametrize(
    ("annotation", "value", "fragment"),
    [
        ("name", "-web-", "1 to 63"),
        ("name", "a" * 64, "1 to 63"),
        ("domains", "", "is empty"),
        ("domains", " , ", "is empty"),
        ("domains", "localhost", "fully qualified"),
        ("domains", "exa mple.com", "not a valid host name"),
        ("domains", "foo.*.example.com", "not a valid host name"),
        ("domains", "-bad.example.com", "not a valid host name"),
        ("domains", "10.0.0.1", "address"),
        ("domains", "https://example.com", "not a valid host name"),
        ("paths", "/a,b", '"b" must start with "/"'),
        ("paths", "/a b", "whitespace"),
        ("provider", "akamai", "not one of cloudfront, cloudflare, fastly, http"),
        ("distribution-id", "e2qwruhapomqzl", "CloudFront distribution id"),
        ("distribution-id", "E2Q", "CloudFront distribution id"),
        ("zone", "xyz", "Cloudflare zone id"),
        ("container", "sidecar", 'no container "sidecar" in the pod template (app, proxy)'),
        ("container", " ", "is empty"),
        ("webhooks", "none,slack", "cannot be combined"),
        ("purge-on-rollback", "yes", 'expected "true" or "false"'),
    ],
)
def test_bad_annotations(annotation: str, value: str, fragment: str) -> None:
    err = error_for({f"cache-buster.io/{annotation}": value})
    assert err.annotation == f"cache-buster.io/{annotation}"
    assert fragment in str(err)
    assert str(err).startswith(f"deployment shop/web: annotation cache-buster.io/{annotation}: ")


def test_too_many_paths() -> None:
    many = ",".join(f"/p{i}" for i in range(3001))
    assert "at most 3000" in str(error_for({"cache-buster.io/paths": many}))
    exactly = ",".join(f"/p{i}" for i in range(3000))
    assert len(app_config(deployment({"cache-buster.io/paths": exactly})).paths) == 3000


def test_known_providers_without_an_implementation_are_accepted() -> None:
    for name in ("cloudfront", "cloudflare", "fastly", "http"):
        assert app_config(deployment({"cache-buster.io/provider": name})).provider == name


def test_webhooks_none_opts_out() -> None:
    cfg = app_config(deployment({"cache-buster.io/webhooks": "None"}))
    assert cfg.webhooks == ("none",)
    assert cfg.webhooks_disabled


def test_unknown_prefixed_annotations_are_reported_not_fatal() -> None:
    cfg = app_config(deployment({"cache-buster.io/path": "/x", "cache-buster.io/name": "web"}))
    assert cfg.unknown_annotations == ("cache-buster.io/path",)
    assert cfg.paths == ("/*",)


def test_non_string_annotation_value() -> None:
    err = error_for({"cache-buster.io/purge-on-rollback": True})
    assert "expected a string" in str(err)


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("cache-buster.io/probe", "ftp://x/"),
        ("cache-buster.io/probe", "tcp:99999"),
        ("cache-buster.io/probe", "tcp://host/path"),
        ("cache-buster.io/version-url", "localhost:8080/version"),
        ("cache-buster.io/version-url", "http://h:port/"),
    ],
)
def test_bad_pod_template_annotations(annotation: str, value: str) -> None:
    err = error_for({}, template_annotations={annotation: value})
    assert f"annotation {annotation} (pod template)" in str(err)


@pytest.mark.parametrize(
    ("value", "probe"),
    [
        ("8080", Probe("tcp", "127.0.0.1", 8080)),
        ("tcp:9000", Probe("tcp", "127.0.0.1", 9000)),
        ("tcp://localhost:9000", Probe("tcp", "localhost", 9000)),
        ("https://localhost/healthz", Probe("https", "localhost", 443, "/healthz")),
        ("http://[::1]:81/", Probe("http", "::1", 81, "/")),
    ],
)
def test_probe_forms(value: str, probe: Probe) -> None:
    assert parse_probe(value) == probe


def test_no_containers() -> None:
    err = error_for({}, containers=[])
    assert str(err) == "deployment shop/web: the pod template has no containers"


def test_watched_container_image() -> None:
    # The watched container: the annotation's (app_config), its image as rollout reads it.
    d = deployment()
    spec = d["spec"]["template"]["spec"]
    assert container_image(spec, app_config(d).container) == "registry.example/web:2"
    assert container_image(spec, "proxy") == "envoyproxy/envoy:v1.30"
    d2 = deployment({"cache-buster.io/container": "proxy"})
    assert container_image(spec, app_config(d2).container) == "envoyproxy/envoy:v1.30"
    assert container_image(spec, "app") == "registry.example/web:2"
    assert container_image(spec, "missing") is None
    with pytest.raises(AnnotationError, match="no container"):
        app_config(deployment({"cache-buster.io/container": "missing"}))


def test_app_config_does_not_mutate_its_input() -> None:
    d = deployment({"cache-buster.io/domains": "WWW.EXAMPLE.COM"})
    before = copy.deepcopy(d)
    app_config(d)
    assert d == before


def test_tolerates_missing_metadata_fields() -> None:
    d = deployment()
    del d["metadata"]["annotations"]
    del d["metadata"]["namespace"]
    cfg = app_config(d)
    assert (cfg.namespace, cfg.app) == ("default", "web")


CLOUDFLARE = {"cache-buster.io/provider": "cloudflare"}


@pytest.mark.parametrize("mode", ["files", "prefixes", "hosts", "everything", " Hosts "])
def test_cloudflare_purge_modes(mode: str) -> None:
    cfg = app_config(deployment({**CLOUDFLARE, "cache-buster.io/cloudflare-purge": mode}))
    assert cfg.cloudflare_purge == mode.strip().lower()
    assert cfg.cloudflare_tags == ()
    assert cfg.unknown_annotations == ()


def test_cloudflare_defaults_leave_the_mode_to_the_paths() -> None:
    cfg = app_config(deployment(CLOUDFLARE))
    assert (cfg.cloudflare_purge, cfg.cloudflare_tags) == (None, ())


def test_cloudflare_tags() -> None:
    cfg = app_config(
        deployment(
            {
                **CLOUDFLARE,
                "cache-buster.io/cloudflare-purge": "tags",
                "cache-buster.io/cloudflare-tags": " release, Product:Shoes ,release,v2.1",
            }
        )
    )
    assert cfg.cloudflare_purge == "tags"
    assert cfg.cloudflare_tags == ("release", "Product:Shoes", "v2.1")
    # Tags alone mean a tags purge.
    alone = app_config(deployment({**CLOUDFLARE, "cache-buster.io/cloudflare-tags": "a"}))
    assert (alone.cloudflare_purge, alone.cloudflare_tags) == ("tags", ("a",))


@pytest.mark.parametrize(
    ("annotations", "annotation", "fragment"),
    [
        ({"cache-buster.io/cloudflare-purge": "urls"}, "cloudflare-purge", "not one of files, "),
        ({"cache-buster.io/cloudflare-purge": "tags"}, "cloudflare-purge", "needs the tags"),
        ({"cache-buster.io/cloudflare-tags": " , "}, "cloudflare-tags", "is empty"),
        ({"cache-buster.io/cloudflare-tags": "a b"}, "cloudflare-tags", "no space or comma"),
        ({"cache-buster.io/cloudflare-tags": "x" * 1025}, "cloudflare-tags", "longer than 1024"),
        ({"cache-buster.io/cloudflare-tags": "é"}, "cloudflare-tags", "printable ASCII"),
        (
            {"cache-buster.io/cloudflare-purge": "files", "cache-buster.io/cloudflare-tags": "a"},
            "cloudflare-tags",
            'only with cache-buster.io/cloudflare-purge: tags (it is "files")',
        ),
    ],
)
def test_bad_cloudflare_annotations(
    annotations: dict[str, str], annotation: str, fragment: str
) -> None:
    err = error_for({**CLOUDFLARE, **annotations})
    assert err.annotation == f"cache-buster.io/{annotation}"
    assert fragment in str(err)


@pytest.mark.parametrize("annotation", ["cloudflare-purge", "cloudflare-tags"])
def test_cloudflare_annotations_need_the_cloudflare_provider(annotation: str) -> None:
    value = "tags" if annotation == "cloudflare-purge" else "a"
    err = error_for({f"cache-buster.io/{annotation}": value})
    assert err.annotation == f"cache-buster.io/{annotation}"
    assert 'applies only to provider "cloudflare"' in str(err)
    assert 'this app\'s is "cloudfront"' in str(err)
