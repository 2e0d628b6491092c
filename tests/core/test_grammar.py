"""One grammar per value: `sidecar.core.grammar`, and every reader of a value agrees on it.

Each test feeds the same text to every place that reads it (the aggregator's settings, the
Deployment annotations, the per-pod reporter's configuration) and checks they give the same
answer.
"""

from __future__ import annotations

from typing import Any

import pytest

from sidecar import config as settings_module
from sidecar.config import ConfigError, Settings
from sidecar.core import annotations
from sidecar.core.annotations import AnnotationError, app_config
from sidecar.core.grammar import (
    ANNOTATION_PREFIX,
    Probe,
    RedisEndpoint,
    parse_domain,
    parse_duration,
    parse_port,
    parse_probe,
    parse_redis_url,
    parse_version_url,
    parse_zone_id,
)
from sidecar.reporter.config import ConfigError as ReporterConfigError
from sidecar.reporter.config import load_config

POD_ENV = {"POD_NAME": "web-1", "POD_NAMESPACE": "shop", "REDIS_HOST": "redis"}


def settings(**env: str) -> Settings:
    return Settings.from_env(env, namespace_file="/nonexistent", hostname="pod-0")


def deployment(
    annotations: dict[str, str] | None = None, template: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "shop", "annotations": annotations or {}},
        "spec": {
            "template": {
                "metadata": {"annotations": template or {}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/web:2"}]},
            }
        },
    }


def annotation_probe(value: str) -> Probe | None:
    return app_config(deployment(template={"cache-buster.io/probe": value})).probe


def reporter_probe(value: str) -> Probe | None:
    return load_config({**POD_ENV, "CB_PROBE": value}).probe


# --- probes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A bare port: TCP connect to 127.0.0.1 (the aggregator used to accept it and every
        # reporter to refuse it, so such an app could never purge in sidecar mode).
        ("8080", Probe("tcp", "127.0.0.1", 8080)),
        ("tcp:8080", Probe("tcp", "127.0.0.1", 8080)),
        ("tcp://db.local:5432", Probe("tcp", "db.local", 5432)),
        ("http://127.0.0.1:8080/healthz", Probe("http", "127.0.0.1", 8080, "/healthz")),
        ("https://localhost/ready?full=1", Probe("https", "localhost", 443, "/ready?full=1")),
        ("http://[::1]:81", Probe("http", "::1", 81, "/")),
        ("", None),
        ("  ", None),
    ],
)
def test_a_probe_means_the_same_to_the_annotations_and_the_reporter(
    text: str, expected: Probe | None
) -> None:
    assert parse_probe(text) == expected
    assert annotation_probe(text) == expected
    assert reporter_probe(text) == expected


@pytest.mark.parametrize(
    "text",
    ["0", "65536", "tcp:", "tcp:0", "tcp://host", "tcp://host:1/path", "ftp://h/", "http://",
     "http://h:x/", "http://bad host/", "localhost:8080"],
)  # fmt: skip
def test_a_bad_probe_is_refused_by_both(text: str) -> None:
    with pytest.raises(ValueError):
        parse_probe(text)
    with pytest.raises(AnnotationError, match=r"cache-buster\.io/probe"):
        annotation_probe(text)
    with pytest.raises(ReporterConfigError) as raised:
        reporter_probe(text)
    assert set(raised.value.problems) == {"CB_PROBE"}


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("http://127.0.0.1:8080/version", True),
        ("https://localhost/v?x=1", True),
        ("tcp://127.0.0.1:8080", False),
        ("8080", False),
        ("localhost:8080/version", False),
        ("http://h:port/", False),
    ],
)
def test_a_version_url_means_the_same_to_both(text: str, ok: bool) -> None:
    env = {**POD_ENV, "CB_VERSION_URL": text}
    d = deployment(template={"cache-buster.io/version-url": text})
    if ok:
        url = parse_version_url(text)
        assert url is not None and load_config(env).version_url == url
        assert app_config(d).version_url == text
    else:
        with pytest.raises(ValueError):
            parse_version_url(text)
        with pytest.raises(ReporterConfigError):
            load_config(env)
        with pytest.raises(AnnotationError):
            app_config(d)


# --- Redis URLs -------------------------------------------------------------------------------

TLS_URL = "rediss://cb:s3cret@redis.internal:6380/2?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca.pem"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # Stopped `aggregate` before (no query options), worked for `report`.
        ("redis://h:6379/0?ssl_cert_reqs=none", RedisEndpoint("h", 6379, tls_verify=False)),
        ("redis://h?db=3", RedisEndpoint("h", db=3)),
        (
            TLS_URL,
            RedisEndpoint(
                "redis.internal", 6380, "cb", "s3cret", tls=True, db=2, tls_verify=False,
                tls_ca_file="/etc/ca.pem",
            ),
        ),
    ],
)  # fmt: skip
def test_a_redis_url_means_the_same_to_report_and_aggregate(
    url: str, expected: RedisEndpoint
) -> None:
    assert parse_redis_url(url) == expected
    assert settings(REDIS_URL=url).redis == expected
    assert load_config({**POD_ENV, "REDIS_URL": url}).redis == expected


@pytest.mark.parametrize(
    "url",
    ["http://h", "redis://", "redis://h:0", "redis://h:x", "redis://h/x", "redis://h?timeout=1",
     "rediss://h?ssl_cert_reqs=maybe", "redis://h#frag"],
)  # fmt: skip
def test_a_bad_redis_url_is_refused_by_both(url: str) -> None:
    with pytest.raises(ValueError):
        parse_redis_url(url)
    with pytest.raises(ConfigError, match=r"^REDIS_URL: "):
        settings(REDIS_URL=url)
    with pytest.raises(ReporterConfigError) as raised:
        load_config({**POD_ENV, "REDIS_URL": url})
    assert set(raised.value.problems) == {"REDIS_URL"}


def test_an_endpoint_url_parses_back_to_the_same_endpoint_and_logs_no_secret() -> None:
    endpoint = parse_redis_url(TLS_URL)
    assert parse_redis_url(endpoint.url) == endpoint
    for text in (endpoint.display_url, endpoint.describe(), str(endpoint), repr(endpoint)):
        assert "s3cret" not in text
    assert endpoint.display_url.startswith("rediss://cb:***@redis.internal:6380/2?")


def test_redis_credentials_in_the_url_win_and_the_variables_fill_in_for_both() -> None:
    creds = {"REDIS_USERNAME": "env-user", "REDIS_PASSWORD": "env-pw"}
    for url, user, password in [
        ("redis://u:x@r:1", "u", "x"),
        ("redis://:x@r:1", "env-user", "x"),
        ("redis://r:1", "env-user", "env-pw"),
    ]:
        aggregate = settings(REDIS_URL=url, **creds).redis
        report = load_config({**POD_ENV, "REDIS_URL": url, **creds}).redis
        assert aggregate == report
        assert (report.username, report.password) == (user, password)


# --- ports, hosts, durations, names, zone ids ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "ok"),
    [("1", True), ("65535", True), ("0", False), ("65536", False), ("x", False), ("-1", False)],
)
def test_a_port_means_the_same_everywhere(text: str, ok: bool) -> None:
    readers: list[Any] = [
        lambda: parse_port(text),
        lambda: settings(REDIS_PORT=text),
        lambda: load_config({**POD_ENV, "REDIS_PORT": text}),
        lambda: parse_redis_url(f"redis://h:{text}"),
    ]
    for read in readers:
        if ok:
            read()
        else:
            with pytest.raises(ValueError):
                read()


@pytest.mark.parametrize("host", ["bad host", "-x", "a..b:1:2:g"])
def test_a_bad_redis_host_is_refused_by_both(host: str) -> None:
    with pytest.raises(ConfigError, match=r"^REDIS_HOST: "):
        settings(REDIS_HOST=host)
    with pytest.raises(ReporterConfigError) as raised:
        load_config({**POD_ENV, "REDIS_HOST": host})
    assert set(raised.value.problems) == {"REDIS_HOST"}


def test_durations_mean_the_same_to_the_settings_and_the_reporter() -> None:
    for text, seconds in [("5", 5.0), ("2.5", 2.5), ("1m", 60.0), ("250ms", 0.25)]:
        assert parse_duration(text) == pytest.approx(seconds)
        assert settings(REPORT_STALE_AFTER=text).report_stale_after == pytest.approx(seconds)
        config = load_config({**POD_ENV, "REPORT_INTERVAL": text})
        assert config.interval == pytest.approx(seconds)
    for bad in ("inf", "1e3", "0", "soon"):
        with pytest.raises(ConfigError):
            settings(REPORT_STALE_AFTER=bad)
        with pytest.raises(ReporterConfigError):
            load_config({**POD_ENV, "REPORT_INTERVAL": bad})


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("storefront", True),
        ("prod.web_1", True),
        ("-web-", False),
        ("a" * 64, False),
        ("a b", False),
    ],
)
def test_a_label_value_means_the_same_to_annotations_and_settings(value: str, ok: bool) -> None:
    d = deployment({"cache-buster.io/name": value})
    if ok:
        assert app_config(d).app == value
        assert settings(CLUSTER_GROUP=value).cluster_group == value
    else:
        with pytest.raises(AnnotationError, match="1 to 63"):
            app_config(d)
        with pytest.raises(ConfigError, match=r"^CLUSTER_GROUP: "):
            settings(CLUSTER_GROUP=value)


def test_a_zone_id_means_the_same_to_annotations_and_settings() -> None:
    zone = "023E105F4ECEF8AD9CA31A8372D0C353"
    assert parse_zone_id(zone) == zone.lower()
    assert app_config(deployment({"cache-buster.io/zone": zone})).zone == zone.lower()
    assert settings(ZONE_ID=zone).zone_id == zone.lower()
    for bad in ("xyz", zone + "0", "g" * 32):
        with pytest.raises(ValueError):
            parse_zone_id(bad)
        with pytest.raises(AnnotationError, match="Cloudflare zone id"):
            app_config(deployment({"cache-buster.io/zone": bad}))
        with pytest.raises(ConfigError, match=r"^ZONE_ID: .*Cloudflare zone id"):
            settings(ZONE_ID=bad)


def test_domains() -> None:
    assert parse_domain(" WWW.Example.com. ") == "www.example.com"
    assert parse_domain("*.cdn.example.com") == "*.cdn.example.com"
    for bad in ("localhost", "foo.*.example.com", "10.0.0.1", "exa mple.com"):
        with pytest.raises(ValueError):
            parse_domain(bad)


def test_one_annotation_prefix() -> None:
    assert annotations.PREFIX == ANNOTATION_PREFIX == "cache-buster.io/"
    assert settings_module.ENABLED_LABEL == ANNOTATION_PREFIX + "enabled"
    assert all(
        name.startswith(ANNOTATION_PREFIX)
        for name in annotations.DEPLOYMENT_ANNOTATIONS + annotations.POD_TEMPLATE_ANNOTATIONS
    )


def test_settings_defaults_come_from_the_one_declaration() -> None:
    from sidecar.config import DEFAULTS, SETTINGS, SETTINGS_REFERENCE

    assert Settings() == DEFAULTS
    assert DEFAULTS.lease_duration == parse_duration("15s")
    for setting in SETTINGS:
        if setting.target and setting.default:
            assert getattr(DEFAULTS, setting.target) == setting.value, setting.name
    assert [row[0] for row in SETTINGS_REFERENCE] == [s.name for s in SETTINGS]
    assert not any("seed" in row[2].lower() for row in SETTINGS_REFERENCE)
