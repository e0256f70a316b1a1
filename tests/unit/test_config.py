"""Settings loading: defaults < YAML file < SJE_* environment < CLI flags, and clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sje._validation import parse_duration
from sje.broker.registry import open_broker
from sje.config import (
    DEFAULT_MASTER_URL,
    BrokerSettings,
    ClientSettings,
    MasterSettings,
    MonitorSettings,
    WorkerSettings,
    config_path,
    env_name,
    load_settings,
    printable,
    read_yaml,
    redact_url,
)
from sje.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_sje_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from a clean environment: no SJE_* variable of the caller leaks in."""
    for name in [n for n in os.environ if n.startswith("SJE_")]:
        monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "sje.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults and the YAML file ---------------------------------------------------------------


def test_defaults_apply_without_file_env_or_flags() -> None:
    master = load_settings(MasterSettings, None)
    assert master.broker_url is None
    assert master.bind_address == "127.0.0.1"
    assert master.port == 7070
    assert master.lease_timeout == 30.0
    assert master.max_redeliveries == 3
    assert master.key_prefix == "sje"
    worker = load_settings(WorkerSettings, None)
    assert worker.queues == ["default"]
    assert worker.concurrency == (os.cpu_count() or 1)
    assert worker.tasks == []
    client = load_settings(ClientSettings, None)
    assert client.master == DEFAULT_MASTER_URL
    assert client.token is None


def test_yaml_file_values_override_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "port: 8080\nbind-address: 0.0.0.0\nmax-redeliveries: 7\nkey_prefix: prod\n",
    )
    settings = load_settings(MasterSettings, path)
    assert settings.port == 8080
    assert settings.bind_address == "0.0.0.0"
    assert settings.max_redeliveries == 7
    assert settings.key_prefix == "prod"
    assert settings.lease_timeout == 30.0  # untouched keys keep their default


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "# only a comment\n")
    assert load_settings(MasterSettings, path) == load_settings(MasterSettings, None)


def test_file_data_is_used_instead_of_reading_the_path(tmp_path: Path) -> None:
    settings = load_settings(MasterSettings, tmp_path / "absent.yaml", file_data={"port": 9})
    assert settings.port == 9


# -- environment ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("port", "SJE_PORT"),
        ("concurrency", "SJE_CONCURRENCY"),
        ("max_queue_length", "SJE_MAX_QUEUE_LENGTH"),
        ("lease_timeout", "SJE_LEASE_TIMEOUT"),
        ("broker_url", "SJE_BROKER_URL"),
        ("master", "SJE_MASTER"),
    ],
)
def test_env_name_is_sje_plus_upper_key_with_aliases(key: str, expected: str) -> None:
    assert env_name(key) == expected


def test_env_variable_overrides_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SJE_PORT", "9999")
    monkeypatch.setenv("SJE_MAX_QUEUE_LENGTH", "42")
    settings = load_settings(MasterSettings, None)
    assert settings.port == 9999
    assert settings.max_queue_length == 42


def test_env_concurrency_overrides_worker_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SJE_CONCURRENCY", "3")
    assert load_settings(WorkerSettings, None).concurrency == 3


def test_sje_broker_url_and_sje_master_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SJE_BROKER_URL", "redis://cache.internal:6390/2")
    monkeypatch.setenv("SJE_MASTER", "http://master.internal:7000")
    assert load_settings(MasterSettings, None).broker_url == "redis://cache.internal:6390/2"
    assert load_settings(ClientSettings, None).master == "http://master.internal:7000"


def test_unrelated_sje_env_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # SJE_CONCURRENCY is a worker key: a master must not reject it as unknown
    monkeypatch.setenv("SJE_CONCURRENCY", "5")
    assert load_settings(MasterSettings, None).port == 7070


def test_config_path_comes_from_flag_then_sje_config_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert config_path(None) is None
    monkeypatch.setenv("SJE_CONFIG_FILE", "/etc/sje/env.yaml")
    assert config_path(None) == Path("/etc/sje/env.yaml")
    assert config_path("/explicit.yaml") == Path("/explicit.yaml")


# -- precedence -------------------------------------------------------------------------------


def test_precedence_defaults_then_yaml_then_env_then_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "port: 1111\nbind-address: 10.0.0.1\nmax-redeliveries: 5\n")
    monkeypatch.setenv("SJE_PORT", "2222")
    monkeypatch.setenv("SJE_BIND_ADDRESS", "10.0.0.2")
    settings = load_settings(MasterSettings, path, flags={"port": 3333})
    assert settings.port == 3333  # flag beats env and file
    assert settings.bind_address == "10.0.0.2"  # env beats file
    assert settings.max_redeliveries == 5  # file beats default
    assert settings.lease_timeout == 30.0  # default


def test_flags_given_as_none_do_not_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "port: 1111\n")
    monkeypatch.setenv("SJE_BIND_ADDRESS", "10.0.0.2")
    settings = load_settings(MasterSettings, path, flags={"port": None, "bind_address": None})
    assert settings.port == 1111
    assert settings.bind_address == "10.0.0.2"


# -- errors -----------------------------------------------------------------------------------


def test_unknown_key_names_file_and_key_and_suggests_nearest(tmp_path: Path) -> None:
    path = write(tmp_path, "prot: 8080\n")
    with pytest.raises(ConfigError) as info:
        load_settings(MasterSettings, path)
    message = str(info.value)
    assert str(path) in message
    assert "'prot'" in message
    assert "did you mean 'port'?" in message


def test_unknown_key_far_from_any_lists_valid_keys_in_kebab_case(tmp_path: Path) -> None:
    path = write(tmp_path, "zzzzzz: 1\n")
    with pytest.raises(ConfigError, match="valid keys: ") as info:
        load_settings(ClientSettings, path)
    assert "master, token" in str(info.value)


def test_wrong_type_error_names_file_key_and_bad_value(tmp_path: Path) -> None:
    path = write(tmp_path, "port: eighty\n")
    with pytest.raises(ConfigError) as info:
        load_settings(MasterSettings, path)
    message = str(info.value)
    assert message.startswith(f"{path}: 'port': ")
    assert "'eighty'" in message


def test_out_of_range_value_names_kebab_key(tmp_path: Path) -> None:
    path = write(tmp_path, "max-queue-length: 0\n")
    with pytest.raises(ConfigError, match=r"'max-queue-length'.*greater than or equal to 1"):
        load_settings(MasterSettings, path)


def test_error_caused_by_env_variable_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "port: 8080\n")
    monkeypatch.setenv("SJE_PORT", "not-a-port")
    with pytest.raises(ConfigError) as info:
        load_settings(MasterSettings, path)
    message = str(info.value)
    assert message.startswith("environment variable SJE_PORT: 'port'")
    assert "'not-a-port'" in message
    assert str(path) not in message


def test_error_from_env_concurrency_names_sje_concurrency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SJE_CONCURRENCY", "0")
    with pytest.raises(ConfigError, match=r"^environment variable SJE_CONCURRENCY: 'concurrency'"):
        load_settings(WorkerSettings, None)


def test_bad_env_value_overridden_by_a_flag_is_not_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SJE_PORT", "not-a-port")
    assert load_settings(MasterSettings, None, flags={"port": 1234}).port == 1234


def test_error_caused_by_a_flag_does_not_blame_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 8080\n")
    with pytest.raises(ConfigError) as info:
        load_settings(MasterSettings, path, flags={"port": 99999})
    assert "99999" in str(info.value)
    assert str(path) not in str(info.value)


def test_bad_yaml_error_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 8080\nqueues: [a, b\nconcurrency: 2\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: bad YAML at line ")
    assert "column" in message
    assert "Fix the file's syntax" in message


def test_bad_yaml_position_points_at_the_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 1\nkey: a: b\n")
    with pytest.raises(ConfigError, match=r"bad YAML at line 2, column 7"):
        load_settings(MasterSettings, path)


def test_missing_file_error_names_path_and_how_to_fix(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(MasterSettings, path)
    message = str(info.value)
    assert f"Config file not found: {path}" in message
    assert "SJE_CONFIG_FILE" in message


def test_top_level_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "- port\n- 8080\n")
    with pytest.raises(ConfigError, match="expected a mapping of keys at the top, got list"):
        read_yaml(path)


# -- lists, broker address, redaction, durations ----------------------------------------------


def test_queues_as_comma_separated_string(tmp_path: Path) -> None:
    path = write(tmp_path, "queues: high, default ,low\ntasks: app.tasks,app.more\n")
    settings = load_settings(WorkerSettings, path)
    assert settings.queues == ["high", "default", "low"]
    assert settings.tasks == ["app.tasks", "app.more"]


def test_queues_as_yaml_list(tmp_path: Path) -> None:
    path = write(tmp_path, "queues:\n  - high\n  - low\n")
    assert load_settings(WorkerSettings, path).queues == ["high", "low"]


def test_queues_from_env_string(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SJE_QUEUES", "a,b")
    assert load_settings(WorkerSettings, None).queues == ["a", "b"]


def test_empty_queue_list_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "queues: ' , '\n")
    with pytest.raises(ConfigError, match="'queues'"):
        load_settings(WorkerSettings, path)


def test_effective_broker_url_is_broker_url_without_host_or_port() -> None:
    settings = BrokerSettings(broker_url="redis://h:1/3")
    assert settings.effective_broker_url == "redis://h:1/3"


def test_without_broker_url_every_process_shares_the_sqlite_file_in_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SJE_STATE_DIR", str(tmp_path / "state"))
    for kind in (MasterSettings, WorkerSettings, MonitorSettings):
        url = load_settings(kind, None).effective_broker_url
        assert url == f"sqlite:///{tmp_path}/state/sje.db"


def test_redis_host_and_port_replace_the_address_keeping_auth_and_db() -> None:
    settings = BrokerSettings(
        broker_url="redis://user:pw@old:1/2", redis_host="new.host", redis_port=6380
    )
    assert settings.effective_broker_url == "redis://user:pw@new.host:6380/2"


def test_redis_port_alone_keeps_host_of_broker_url() -> None:
    settings = BrokerSettings(broker_url="redis://cache:6379/0", redis_port=7000)
    assert settings.effective_broker_url == "redis://cache:7000/0"


def test_redis_host_alone_keeps_port_of_default_url(tmp_path: Path) -> None:
    path = write(tmp_path, "redis-host: cache.internal\n")
    settings = load_settings(MasterSettings, path)
    assert settings.effective_broker_url == "redis://cache.internal:6379/0"


def test_redis_port_out_of_range_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "redis-port: 70000\n")
    with pytest.raises(ConfigError, match=r"'redis-port'.*70000"):
        load_settings(MasterSettings, path)


def test_redis_port_keeps_query_options_of_broker_url() -> None:
    settings = BrokerSettings(broker_url="rediss://h:1/0?ssl_cert_reqs=none", redis_port=2)
    assert settings.effective_broker_url == "rediss://h:2/0?ssl_cert_reqs=none"


def test_redact_url_hides_the_password() -> None:
    redacted = redact_url("redis://admin:s3cret@cache:6379/0")
    assert redacted == "redis://admin:***@cache:6379/0"
    assert "s3cret" not in redacted


def test_redact_url_leaves_url_without_password_alone() -> None:
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"
    assert redact_url("redis://:pw@cache/1") == "redis://:***@cache/1"


def test_redact_url_keeps_ipv6_brackets() -> None:
    assert redact_url("redis://u:pw@[::1]:6379/0") == "redis://u:***@[::1]:6379/0"


def test_printable_redacts_token_secret_and_broker_password() -> None:
    settings = MasterSettings(
        broker_url="redis://u:topsecret@h:1/0", token="tok-12345", secret="sign-0123456789abcdef"
    )
    shown = printable(settings)
    assert shown["token"] == "***"
    assert shown["secret"] == "***"
    assert shown["broker-url"] == "redis://u:***@h:1/0"
    assert shown["max-queue-length"] == 1_000_000
    assert "topsecret" not in repr(shown)
    assert "tok-12345" not in repr(shown)
    assert "sign-0123456789abcdef" not in repr(shown)


def test_short_token_and_secret_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SJE_SECRET", "short")
    with pytest.raises(ConfigError, match="SJE_SECRET"):
        load_settings(MasterSettings, None)
    monkeypatch.delenv("SJE_SECRET")
    with pytest.raises(ConfigError, match="--token"):
        load_settings(MasterSettings, None, {"token": "abc"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("250ms", 0.25), ("2h", 7200.0), ("1d", 86400.0), ("7", 7.0)],
)
def test_duration_strings(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_duration_numbers_and_none_pass_through() -> None:
    assert parse_duration(1.5) == 1.5
    assert parse_duration(3) == 3.0
    assert parse_duration(None) is None


@pytest.mark.parametrize("bad", ["soon", "5 minutes", "-1s", True, [1]])
def test_bad_duration_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="like '30s', '5m'"):
        parse_duration(bad)


def test_duration_strings_in_yaml_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "lease-timeout: 250ms\nheartbeat-interval: 5m\n")
    monkeypatch.setenv("SJE_SHUTDOWN_GRACE", "30s")
    settings = load_settings(WorkerSettings, path)
    assert settings.lease_timeout == pytest.approx(0.25)
    assert settings.heartbeat_interval == 300.0
    assert settings.shutdown_grace == 30.0


def test_bad_duration_in_yaml_names_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "lease-timeout: whenever\n")
    with pytest.raises(ConfigError, match=r"'lease-timeout'.*'whenever'"):
        load_settings(MasterSettings, path)


def test_a_refused_secret_value_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SJE_TOKEN", "short")
    with pytest.raises(ConfigError) as refused:
        load_settings(MasterSettings, None)
    assert "SJE_TOKEN" in refused.value.message
    assert "short" not in refused.value.message


def test_a_broker_url_of_an_unknown_scheme_names_the_ones_to_use() -> None:
    with pytest.raises(ConfigError, match=r"broker-url 'kafka://h/': unknown scheme 'kafka'.*"):
        open_broker("kafka://h/", "sje")
    with pytest.raises(ConfigError, match=r"use one of: redis://.*sqlite://, amqp://, amqps://$"):
        open_broker("kafka://h/", "sje")


def test_amqp_needs_a_redis_or_sqlite_state_url() -> None:
    amqp = "amqp://guest:guest@127.0.0.1:5672/"
    with pytest.raises(ConfigError, match=r"needs a state store: set state-url \(SJE_STATE_URL\)"):
        open_broker(amqp, "sje")
    with pytest.raises(
        ConfigError, match=r"state-url 'amqp://h/': unknown scheme 'amqp'; use one of: redis://"
    ) as refused:
        open_broker(amqp, "sje", "amqp://h/")
    assert "amqp://," not in str(refused.value)  # RabbitMQ cannot be its own state store
