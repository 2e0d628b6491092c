"""Process settings: the Go worker's and the Flux Job pattern's environments keep working; bad
values name the setting."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator, Mapping

import pytest

from sidecar.config import SETTINGS_REFERENCE, ConfigError, Settings, parse_remote_hosts
from sidecar.core.grammar import RedisEndpoint, parse_duration, parse_label_selector

NO_FILE = "/nonexistent/namespace"


def load(env: Mapping[str, str], **kw: str) -> Settings:
    kw.setdefault("namespace_file", NO_FILE)
    return Settings.from_env(env, hostname="pod-0", **kw)


class RecordingEnv(Mapping[str, str]):
    """Records every variable read, through any Mapping method."""

    def __init__(self, data: Mapping[str, str]) -> None:
        self._data = dict(data)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self._data[key]

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.read.add(key)
        return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("from_env must read settings by name, not iterate the environment")

    def __len__(self) -> int:
        return len(self._data)


def test_defaults() -> None:
    s = load({})
    assert s.mode == "watcher"
    assert s.namespace == "default"
    assert s.redis == RedisEndpoint(host="localhost", port=6379)
    assert s.remote_redis == ()
    assert s.log_level == "info"
    assert s.webhooks.hooks == () and s.webhooks.scope == "group"
    assert s.cluster_group == "default" and s.cluster_name is None
    assert s.group_timeout == 900
    assert (s.lease_duration, s.lease_renew_deadline, s.lease_retry_period) == (15, 10, 2)
    assert s.pod_name == "pod-0"
    assert s.leader_lease_name == "cache-buster-leader"
    assert s.ledger_configmap == "cache-buster-ledger"
    assert s.invalidation_timeout == 600 and s.invalidation_poll_interval == 30
    assert s.distribution_cache_ttl == 6 * 3600
    assert s.rollout_timeout == 600 and s.report_stale_after == 15
    assert s.metrics_port == 9102
    assert s.webhook_timeout == 10 and s.webhook_retries == 3
    assert s.effective_selector == ""


def test_namespace_defaults_to_the_service_account_file(tmp_path: pathlib.Path) -> None:
    ns = tmp_path / "namespace"
    ns.write_text("shop\n")
    assert load({}, namespace_file=str(ns)).namespace == "shop"
    assert load({"NAMESPACE": "sites"}, namespace_file=str(ns)).namespace == "sites"


def test_the_go_workers_environment_works_unchanged(tmp_path: pathlib.Path) -> None:
    hooks = tmp_path / "webhook.json"
    hooks.write_text(
        json.dumps(
            {
                "webhooks": [
                    {
                        "name": "podinfo",
                        "url": "https://webhook.com/",
                        "method": "POST",
                        "headers": {},
                        "parameters": {},
                    }
                ]
            }
        )
    )
    env = {
        # The Go worker's Dockerfile values, plus the optional ones.
        "NAMESPACE": "sites",
        "REDIS_HOST": "localhost",
        "REDIS_PORT": "6379",
        "LOGLEVEL": "INFO",
        "AWS_ACCESS_KEY_ID": "AKIASECRETKEYID",
        "AWS_SECRET_ACCESS_KEY": "SECRETSECRET",
        "REMOTE_REDIS_HOSTS": "redis.eu-2.internal__6379,redis.us-1.internal__6380",
        "WEBHOOKS_CONFIG": str(hooks),
    }
    s = load(env)
    assert s.mode == "watcher"
    assert s.namespace == "sites"
    assert s.redis.host == "localhost" and s.redis.port == 6379
    assert [(p.host, p.port) for p in s.remote_redis] == [
        ("redis.eu-2.internal", 6379),
        ("redis.us-1.internal", 6380),
    ]
    assert s.log_level == "info"
    assert s.webhooks.names() == ("podinfo",)
    # AWS credentials are boto3's: not read, so not in the settings or their description.
    assert "SECRET" not in repr(s) and "SECRET" not in json.dumps(s.describe())


def test_the_flux_job_patterns_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "APP_IMAGE": "europe-west4-docker.pkg.dev/my-project/sites/siebjee:0.14.0",
        "ZONE_ID": "023E105F4ECEF8AD9CA31A8372D0C353",
        "TOKEN": "Bearer abcDEF123tok",
    }
    s = load(env)
    assert s.app_image == env["APP_IMAGE"]
    assert s.zone_id == "023e105f4ecef8ad9ca31a8372d0c353"
    assert s.authorization_header == "Bearer abcDEF123tok"
    assert load({"TOKEN": "abcDEF123tok"}).authorization_header == "Bearer abcDEF123tok"
    assert load({"TOKEN": "bearer abcDEF123tok"}).authorization_header == "Bearer abcDEF123tok"
    assert "abcDEF123tok" not in repr(s)
    assert "abcDEF123tok" not in str(s)
    assert s.describe()["TOKEN"] == "***"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("600", 600),
        ("0.5", 0.5),
        ("90s", 90),
        ("15m", 900),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("1.5h", 5400),
        ("2m3s", 123),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["soon", "", "1e3", "inf", "-5s", "5 m", "m", "1h30", "1d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_bad_duration_names_the_setting() -> None:
    with pytest.raises(ConfigError) as info:
        load({"GROUP_TIMEOUT": "soon"})
    assert str(info.value) == (
        'GROUP_TIMEOUT: expected a duration like 900, 90s, 15m, 1h30m; got "soon"'
    )
    assert info.value.setting == "GROUP_TIMEOUT"
    with pytest.raises(ConfigError, match=r"^ROLLOUT_TIMEOUT: .*more than 0"):
        load({"ROLLOUT_TIMEOUT": "0"})


def test_redis_url_wins_and_credentials_stay_secret() -> None:
    s = load(
        {
            "REDIS_URL": "rediss://cb:p%40ss@redis.internal:6380/2",
            "REDIS_HOST": "ignored",
            "REDIS_PORT": "1",
        }
    )
    r = s.redis
    assert (r.host, r.port, r.username, r.password, r.tls, r.db) == (
        "redis.internal",
        6380,
        "cb",
        "p@ss",
        True,
        2,
    )
    assert r.display_url == "rediss://cb:***@redis.internal:6380/2"
    assert r.url == "rediss://cb:p%40ss@redis.internal:6380/2"
    assert "p@ss" not in repr(s) and "p%40ss" not in repr(s)
    assert s.describe()["REDIS"] == "rediss://cb:***@redis.internal:6380/2"


def test_redis_username_and_password_apply_to_host_and_port() -> None:
    s = load({"REDIS_HOST": "10.0.0.7", "REDIS_USERNAME": "agg", "REDIS_PASSWORD": "pw"})
    assert (s.redis.host, s.redis.username, s.redis.password) == ("10.0.0.7", "agg", "pw")
    assert "pw" not in repr(s.redis)
    assert str(s.redis) == "redis://agg:***@10.0.0.7:6379/0"


def test_remote_hosts_accept_every_form_and_tolerate_whitespace() -> None:
    peers = parse_remote_hosts(
        " a.example:6379 , b.example__6380,, redis://u:pw@c.example/1 ,rediss://d.example, "
        "[::1]:7000, e.example"
    )
    assert [(p.host, p.port, p.tls, p.db) for p in peers] == [
        ("a.example", 6379, False, 0),
        ("b.example", 6380, False, 0),
        ("c.example", 6379, False, 1),
        ("d.example", 6379, True, 0),
        ("::1", 7000, False, 0),
        ("e.example", 6379, False, 0),
    ]
    assert peers[2].password == "pw"
    assert parse_remote_hosts("  ") == ()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("a.example:notaport", "a.example:notaport"),
        ("a.example__70000", "a.example__70000"),
        ("http://a.example", "http://a.example"),
        ("redis://u:hunter2@a.example:abc", "redis://u:***@a.example:abc"),
        ("a.example:6379,A.EXAMPLE__6379", "repeats"),
        ("bad host:1", "bad host:1"),
    ],
)
def test_bad_remote_entries_name_the_entry_and_mask_passwords(value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"REMOTE_REDIS_HOSTS": value})
    assert info.value.setting == "REMOTE_REDIS_HOSTS"
    assert fragment in str(info.value)
    assert "hunter2" not in str(info.value)


def test_log_levels_accept_the_go_workers_values() -> None:
    for text, level in [
        ("debug", "debug"),
        ("DEBUG", "debug"),
        ("Info", "info"),
        ("warn", "warning"),
        ("WARNING", "warning"),
        ("error", "error"),
    ]:
        assert load({"LOGLEVEL": text}).log_level == level
    with pytest.raises(ConfigError, match=r"^LOGLEVEL: "):
        load({"LOGLEVEL": "verbose"})


def test_mode_and_sidecar_selector() -> None:
    assert load({"MODE": "SIDECAR"}).effective_selector == "cache-buster.io/enabled=true"
    s = load({"MODE": "sidecar", "WATCH_SELECTOR": "tier in (web, api),!legacy"})
    assert s.effective_selector == "tier in (web, api),!legacy,cache-buster.io/enabled=true"
    s = load({"MODE": "sidecar", "WATCH_SELECTOR": "cache-buster.io/enabled=true,team=a"})
    assert s.effective_selector == "cache-buster.io/enabled=true,team=a"
    assert load({"WATCH_SELECTOR": "team=a"}).effective_selector == "team=a"
    with pytest.raises(ConfigError, match=r"^MODE: "):
        load({"MODE": "job"})
    with pytest.raises(ConfigError, match=r"^WATCH_SELECTOR: contradicts"):
        load({"MODE": "sidecar", "WATCH_SELECTOR": "cache-buster.io/enabled=false"})
    with pytest.raises(ConfigError, match=r"^WATCH_SELECTOR: contradicts"):
        load({"MODE": "sidecar", "WATCH_SELECTOR": "!cache-buster.io/enabled"})


@pytest.mark.parametrize(
    "selector",
    [
        "app",
        "!app",
        "app=web",
        "app==web",
        "app!=web",
        "example.com/team in (a,b)",
        "env notin (dev)",
        "a=1,b=2",
        "replicas>2",
        "x=",
    ],
)
def test_valid_label_selectors(selector: str) -> None:
    assert parse_label_selector(selector)


@pytest.mark.parametrize(
    "selector",
    ["app=web,", "=web", "app=we b", "app in (a", "app in ()", "-bad=1", "a=b=c", "x>y", "A/b=1"],
)
def test_invalid_label_selectors(selector: str) -> None:
    with pytest.raises(ValueError):
        parse_label_selector(selector)
    with pytest.raises(ConfigError, match=r"^WATCH_SELECTOR: expected a label selector"):
        load({"WATCH_SELECTOR": selector})


def test_lease_timings_are_ordered() -> None:
    s = load({"LEASE_DURATION": "3s", "LEASE_RENEW_DEADLINE": "2s", "LEASE_RETRY_PERIOD": "500ms"})
    assert (s.lease_duration, s.lease_renew_deadline, s.lease_retry_period) == (3, 2, 0.5)
    with pytest.raises(ConfigError, match=r"^LEASE_RENEW_DEADLINE: must be shorter"):
        load({"LEASE_DURATION": "10s"})
    with pytest.raises(ConfigError, match=r"^LEASE_RETRY_PERIOD: must be shorter"):
        load({"LEASE_RETRY_PERIOD": "10s"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_PORT", "http"),
        ("REDIS_PORT", "0"),
        ("REDIS_URL", "http://x"),
        ("METRICS_PORT", "-1"),
        ("METRICS_PORT", "70000"),
        ("WEBHOOK_RETRIES", "11"),
        ("WEBHOOK_TIMEOUT", "0"),
        ("ZONE_ID", "not-a-zone"),
        ("TOKEN", "Bearer "),
        ("TOKEN", "Bearer two words"),
        ("CLUSTER_GROUP", "-bad-"),
        ("CLUSTER_NAME", "has space"),
        ("LEADER_LEASE_NAME", "Upper"),
        ("LEDGER_CONFIGMAP", "under_score"),
        ("NAMESPACE", "Shop"),
        ("WEBHOOKS_CONFIG", "/nonexistent/hooks.json"),
        ("ALLOWED_DOMAINS", "example"),
        ("ALLOWED_DOMAINS", ","),
        ("ALLOWED_DISTRIBUTIONS", "e2qwruhapomqzl"),
        ("ALLOWED_ZONES", "not-a-zone"),
        ("MAX_PATHS", "0"),
        ("MAX_PATHS", "3001"),
    ],
)
def test_bad_values_name_the_setting(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({name: value})
    assert info.value.setting == name
    assert str(info.value).startswith(f"{name}: ")


def test_guard_settings() -> None:
    from sidecar.aggregator.wiring import options
    from sidecar.core.guard import Guard

    assert load({}).guard == Guard()  # unset: no restriction, CloudFront's path limit
    assert load({}).max_paths == 3000
    s = load(
        {
            "ALLOWED_DOMAINS": "Example.com., *.shop.example.net",
            "ALLOWED_DISTRIBUTIONS": "E2QWRUHAPOMQZL",
            "ALLOWED_ZONES": "0123456789ABCDEF0123456789ABCDEF",
            "MAX_PATHS": "100",
        }
    )
    assert s.guard == Guard(
        allowed_domains=("example.com", "*.shop.example.net"),
        allowed_distributions=("E2QWRUHAPOMQZL",),
        allowed_zones=("0123456789abcdef0123456789abcdef",),
        max_paths=100,
    )
    assert options(s, "c1", "i1").guard == s.guard  # what `aggregate` hands the aggregator
    shown = s.describe()
    assert shown["ALLOWED_DOMAINS"] == "example.com,*.shop.example.net"
    assert (shown["ALLOWED_ZONES"], shown["MAX_PATHS"]) == (
        "0123456789abcdef0123456789abcdef",
        "100",
    )
    with pytest.raises(ConfigError) as info:
        load({"ALLOWED_DOMAINS": "example.com,shop_example.com"})
    assert str(info.value) == (
        "ALLOWED_DOMAINS: expected domains like example.com or *.example.com: "
        '"shop_example.com" is not a valid host name'
    )


def test_metrics_port_zero_disables_and_names_are_kept() -> None:
    s = load({"METRICS_PORT": "0", "CLUSTER_NAME": "eu-1", "CLUSTER_GROUP": "prod.web"})
    assert (s.metrics_port, s.cluster_name, s.cluster_group) == (0, "eu-1", "prod.web")


def test_webhook_errors_name_the_file_and_json_path(tmp_path: pathlib.Path) -> None:
    hooks = tmp_path / "hooks.json"
    hooks.write_text('{"webhooks": [{"name": "a", "url": "http://h/", "events": ["nope"]}]}')
    with pytest.raises(ConfigError) as info:
        load({"WEBHOOKS_CONFIG": str(hooks)})
    text = str(info.value)
    assert text.startswith(f"WEBHOOKS_CONFIG: {hooks}: $.webhooks[0].events: ")
    assert '"nope"' in text


def test_webhook_secret_env_is_resolved_from_the_same_environment(tmp_path: pathlib.Path) -> None:
    hooks = tmp_path / "hooks.json"
    hooks.write_text('{"webhooks": [{"name": "a", "url": "http://h/", "secret_env": "HOOK_KEY"}]}')
    s = load({"WEBHOOKS_CONFIG": str(hooks), "HOOK_KEY": "topsecret"})
    assert s.webhooks.hooks[0].secret == b"topsecret"
    assert "topsecret" not in repr(s) and "topsecret" not in json.dumps(s.describe())


def test_describe_lists_every_setting_with_secrets_masked() -> None:
    s = load(
        {
            "TOKEN": "tok123",
            "REDIS_PASSWORD": "pw123",
            "REMOTE_REDIS_HOSTS": "redis://:peerpw@peer:6379",
        }
    )
    d = s.describe()
    text = json.dumps(d)
    for secret in ("tok123", "pw123", "peerpw"):
        assert secret not in text
    assert d["REMOTE_REDIS_HOSTS"] == "redis://:***@peer:6379/0"
    reference = {name for name, _, _ in SETTINGS_REFERENCE}
    # Every setting of the reference appears (the local Redis as one line).
    expected = (reference - {"REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_USERNAME"}) - {
        "REDIS_PASSWORD"
    }
    assert expected <= set(d)
    assert "REDIS" in d


def test_settings_reference_matches_what_from_env_reads(tmp_path: pathlib.Path) -> None:
    hooks = tmp_path / "hooks.json"
    hooks.write_text('{"webhooks": []}')
    read: set[str] = set()
    for data in (
        {},
        {"REDIS_URL": "redis://r:6379", "MODE": "sidecar", "WEBHOOKS_CONFIG": str(hooks)},
        {"TOKEN": "t", "CLUSTER_NAME": "c", "REDIS_PASSWORD": "p", "REDIS_USERNAME": "u"},
    ):
        env = RecordingEnv(data)
        load(env)
        read |= env.read
    names = [name for name, _, _ in SETTINGS_REFERENCE]
    assert len(names) == len(set(names))
    assert read == set(names)
    assert not any(name.startswith("AWS_") for name in read)


# -- Cloudflare ------------------------------------------------------------------------------


def test_cloudflare_defaults() -> None:
    s = load({})
    assert s.cloudflare_api_token is None and s.cloudflare_api_token_file is None
    assert s.cloudflare_api_url == "https://api.cloudflare.com/client/v4"
    assert s.cloudflare_files_per_request == 30
    # The Free plan's documented purge limit: 5 requests per minute, a bucket of 25.
    assert str(s.cloudflare_rate_limit) == "5/m"
    assert s.cloudflare_rate_limit.per_second == pytest.approx(5 / 60)
    assert s.cloudflare_rate_limit.burst == 25
    assert s.cloudflare_purge_everything is False
    assert not s.has_cloudflare_token and s.cloudflare_token() is None
    d = s.describe()
    assert (d["CLOUDFLARE_RATE_LIMIT"], d["CLOUDFLARE_PURGE_EVERYTHING"]) == ("5/m", "false")
    assert d["CLOUDFLARE_API_TOKEN"] == ""


def test_cloudflare_settings_parse() -> None:
    s = load(
        {
            "CLOUDFLARE_API_URL": "http://127.0.0.1:8080/client/v4/",
            "CLOUDFLARE_FILES_PER_REQUEST": "500",
            "CLOUDFLARE_RATE_LIMIT": "10/s",
            "CLOUDFLARE_PURGE_EVERYTHING": "TRUE",
        }
    )
    assert s.cloudflare_api_url == "http://127.0.0.1:8080/client/v4"
    assert s.cloudflare_files_per_request == 500
    assert (s.cloudflare_rate_limit.per_second, s.cloudflare_rate_limit.burst) == (10.0, 50)
    assert s.cloudflare_purge_everything is True
    assert load({"CLOUDFLARE_RATE_LIMIT": "1000 / h"}).cloudflare_rate_limit.per_second == (
        pytest.approx(1000 / 3600)
    )


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("CLOUDFLARE_FILES_PER_REQUEST", "0", "from 1 to 500"),
        ("CLOUDFLARE_FILES_PER_REQUEST", "501", "from 1 to 500"),
        ("CLOUDFLARE_RATE_LIMIT", "5", "a rate like 5/m"),
        ("CLOUDFLARE_RATE_LIMIT", "0/s", "a rate like"),
        ("CLOUDFLARE_RATE_LIMIT", "5/d", "a rate like"),
        ("CLOUDFLARE_PURGE_EVERYTHING", "yes", "true or false"),
        ("CLOUDFLARE_API_URL", "api.cloudflare.com", "http(s)://"),
        ("CLOUDFLARE_API_URL", "https://u:pw@h/?x=1", "http(s)://"),
        ("CLOUDFLARE_API_TOKEN", "two words", "an API token"),
        ("CLOUDFLARE_API_TOKEN_FILE", "/nonexistent/token", "cannot read /nonexistent/token"),
    ],
)
def test_bad_cloudflare_values(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({name: value})
    assert info.value.setting == name
    assert fragment in str(info.value)
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("name", ["CLOUDFLARE_API_TOKEN", "TOKEN"])
def test_a_global_api_key_is_refused_at_start_without_echoing_it(name: str) -> None:
    key = "cfk_" + "S3cr3t" * 7
    with pytest.raises(ConfigError) as info:
        load({name: f"Bearer {key}"})
    assert info.value.setting == name
    assert "Global API Key" in str(info.value)
    assert "Zone > Cache Purge > Purge" in str(info.value)
    assert key not in str(info.value) and "S3cr3t" not in str(info.value)


def test_cloudflare_token_precedence_and_masking(tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("cfut_fromfile\n")
    both = {
        "CLOUDFLARE_API_TOKEN": "Bearer cfut_explicit",
        "TOKEN": "cfut_flux",
        "CLOUDFLARE_API_TOKEN_FILE": str(token_file),
    }
    s = load(both)
    assert s.cloudflare_token() == "cfut_explicit"
    assert load(
        {k: v for k, v in both.items() if k != "CLOUDFLARE_API_TOKEN"}
    ).cloudflare_token() == ("cfut_flux")
    from_file = load({"CLOUDFLARE_API_TOKEN_FILE": str(token_file)})
    assert from_file.has_cloudflare_token
    assert from_file.cloudflare_token() == "cfut_fromfile"
    token_file.write_text("cfut_rotated")  # read at every use
    assert from_file.cloudflare_token() == "cfut_rotated"
    token_file.write_text("cfk_" + "x" * 40)
    with pytest.raises(ValueError, match="Global API Key") as info:
        from_file.cloudflare_token()
    assert "xxxx" not in str(info.value)
    d = s.describe()
    assert d["CLOUDFLARE_API_TOKEN"] == "***" and d["TOKEN"] == "***"
    assert d["CLOUDFLARE_API_TOKEN_FILE"] == str(token_file)
    for text in (repr(s), str(s), json.dumps(d)):
        assert "cfut_explicit" not in text and "cfut_flux" not in text


def test_a_token_file_holding_a_global_api_key_is_refused_at_start(
    tmp_path: pathlib.Path,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("cfk_" + "q" * 40)
    with pytest.raises(ConfigError) as info:
        load({"CLOUDFLARE_API_TOKEN_FILE": str(token_file)})
    assert info.value.setting == "CLOUDFLARE_API_TOKEN_FILE"
    assert "Global API Key" in str(info.value) and "qqqq" not in str(info.value)
