"""Settings for every component: defaults < YAML file < ``SJE_*`` environment < CLI flags.

This is the only module that reads ``os.environ``. The file comes from ``--config`` or
``SJE_CONFIG_FILE``; each key ``some-key`` can be overridden by ``SJE_SOME_KEY`` (upper-case,
``-`` becomes ``_``). ``SJE_MASTER`` names the master URL, ``SJE_BROKER_URL`` the broker.
Settings are loaded once at start-up into frozen objects and passed down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from sje._validation import (
    SECRET_KEYS,
    describe_validation_error,
    normalize_keys,
    parse_duration,
)
from sje.errors import ConfigError
from sje.security import local_token, state_dir

#: where ``redis-host``/``redis-port`` point when no ``broker-url`` is given
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MASTER_URL = "http://127.0.0.1:7070"

S = TypeVar("S", bound=BaseModel)


def _netloc(user: str | None, password: str | None, host: str | None, port: int | None) -> str:
    """``user:password@host:port`` with IPv6 hosts in brackets; absent parts left out."""
    auth = f"{user or ''}:{password}@" if password is not None else (f"{user}@" if user else "")
    shown = f"[{host}]" if host and ":" in host else (host or "")
    return f"{auth}{shown}:{port}" if port else f"{auth}{shown}"


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def default_broker_url() -> str:
    """The embedded store every process on this host shares when no broker is configured:
    ``sje.db`` in the state directory (``$SJE_STATE_DIR``, else ``~/.local/state/sje``)."""
    return "sqlite:///" + str(state_dir() / "sje.db")


class BrokerSettings(_Settings):
    broker_url: str | None = None
    #: the state store of an ``amqp://`` broker (Redis or SQLite URL); others keep their own
    state_url: str | None = None
    redis_host: str | None = None
    redis_port: int | None = Field(default=None, ge=1, le=65535)
    key_prefix: str = Field(default="sje", min_length=1, max_length=64)
    secret: str | None = Field(default=None, min_length=16)
    max_message_kb: int = Field(default=1024, ge=1, le=512 * 1024)

    @property
    def effective_broker_url(self) -> str:
        """``broker-url``, with ``redis-host``/``redis-port`` replacing its address when given;
        with neither, the embedded SQLite file of ``default_broker_url``."""
        if self.redis_host is None and self.redis_port is None:
            return self.broker_url or default_broker_url()
        parts = urlsplit(self.broker_url or DEFAULT_REDIS_URL)
        host = self.redis_host or parts.hostname or "127.0.0.1"
        port = self.redis_port or parts.port or 6379
        netloc = _netloc(parts.username, parts.password, host, port)
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class MasterSettings(BrokerSettings):
    bind_address: str = "127.0.0.1"
    port: int = Field(default=7070, ge=0, le=65535)
    auth: Literal["token", "none"] = "token"
    token: str | None = Field(default=None, min_length=8)
    max_queue_length: int = Field(default=1_000_000, ge=1)
    lease_timeout: float = Field(default=30.0, gt=0)
    max_redeliveries: int = Field(default=3, ge=0)
    tick_interval: float = Field(default=0.5, gt=0)
    result_ttl: float = Field(default=86_400.0, gt=0)
    max_request_mb: float = Field(default=64.0, gt=0)

    _durations = field_validator("lease_timeout", "tick_interval", "result_ttl", mode="before")(
        parse_duration
    )


class MonitorSettings(BrokerSettings):
    bind_address: str = "127.0.0.1"
    port: int = Field(default=7071, ge=0, le=65535)
    auth: Literal["token", "none"] = "token"
    token: str | None = Field(default=None, min_length=8)


class WorkerSettings(BrokerSettings):
    queues: list[str] = Field(default_factory=lambda: ["default"], min_length=1)
    worker_name: str | None = None
    concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=1024)
    async_concurrency: int = Field(default=100, ge=1, le=10_000)
    prefetch: int = Field(default=256, ge=0, le=100_000)
    tasks: list[str] = Field(default_factory=list)
    lease_timeout: float = Field(default=30.0, gt=0)
    heartbeat_interval: float = Field(default=2.0, gt=0)
    shutdown_grace: float = Field(default=30.0, ge=0)
    max_tasks_per_child: int = Field(default=0, ge=0)
    # task isolation (see docs/security.md); 0 means unlimited
    task_memory_mb: int = Field(default=0, ge=0)
    task_cpu_seconds: int = Field(default=0, ge=0)
    task_max_files: int = Field(default=4096, ge=0)
    task_max_processes: int = Field(default=512, ge=0)
    task_nice: int = Field(default=5, ge=0, le=19)
    task_user: str | None = None
    task_network: Literal["allow", "none"] = "allow"
    task_cpu_affinity: Literal["spread", "off"] = "spread"
    task_env: list[str] = Field(default_factory=list)

    _lists = field_validator("queues", "tasks", "task_env", mode="before")(_split_list)
    _durations = field_validator(
        "lease_timeout", "heartbeat_interval", "shutdown_grace", mode="before"
    )(parse_duration)

    @field_validator("task_memory_mb", "task_max_files", "task_max_processes")
    @classmethod
    def _zero_or_enough(cls, value: int, info: ValidationInfo) -> int:
        least = {"task_memory_mb": 128, "task_max_files": 32, "task_max_processes": 16}
        minimum = least[str(info.field_name)]
        if 0 < value < minimum:
            raise ValueError(
                f"use 0 (unlimited) or at least {minimum}: a child process needs that much to start"
            )
        return value

    @field_validator("task_env")
    @classmethod
    def _no_sje_variables(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if n.upper().startswith("SJE_")]
        if bad:
            raise ValueError(
                f"{bad[0]} cannot be passed to tasks: SJE_* variables hold the broker password "
                "and API secrets; list only the variables tasks need"
            )
        return names


class ClientSettings(_Settings):
    master: str = DEFAULT_MASTER_URL
    token: str | None = None

    @property
    def auth_headers(self) -> dict[str, str]:
        """The Bearer header: ``token``, else the one a master on this host recorded."""
        token = self.token or local_token(self.master)
        return {"Authorization": f"Bearer {token}"} if token else {}


#: environment variables that are not simply ``SJE_`` + key
_ENV_ALIASES = {"master": "SJE_MASTER", "broker_url": "SJE_BROKER_URL"}


def env_name(key: str) -> str:
    return _ENV_ALIASES.get(key, "SJE_" + key.upper())


def config_path(explicit: str | None) -> Path | None:
    value = explicit or os.environ.get("SJE_CONFIG_FILE")
    return Path(value) if value else None


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping with ``safe_load``; problems become one-line ``ConfigError``s."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"Config file not found: {path}. Check --config or SJE_CONFIG_FILE."
        ) from None
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc.strerror}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: bad YAML{where}: {problem}. Fix the file's syntax.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys at the top, got {type(data).__name__}."
        )
    return data


def load_settings(
    model: type[S],
    path: Path | None,
    flags: Mapping[str, Any] | None = None,
    file_data: Mapping[str, Any] | None = None,
) -> S:
    """Build ``model`` from defaults, the YAML file, the environment and CLI ``flags``."""
    where = str(path) if path else "configuration"
    data: dict[str, Any] = {}
    if file_data is None and path is not None:
        file_data = read_yaml(path)
    if file_data:
        data.update(normalize_keys(file_data, model.model_fields, where, ConfigError))
    env_data = {
        key: os.environ[env_name(key)] for key in model.model_fields if env_name(key) in os.environ
    }
    data.update(env_data)
    data.update({k: v for k, v in (flags or {}).items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        bad = str(exc.errors()[0]["loc"][0]) if exc.errors()[0]["loc"] else ""
        source = where
        if (flags or {}).get(bad) is not None:
            source = f"option --{bad.replace('_', '-')}"
        elif bad in env_data:
            source = f"environment variable {env_name(bad)}"
        raise ConfigError(describe_validation_error(exc, source)) from None


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for logs and printed config)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = _netloc(parts.username, "***", parts.hostname, parts.port)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def printable(settings: BaseModel) -> dict[str, Any]:
    """The effective settings as kebab-case keys, secrets redacted."""
    out: dict[str, Any] = {}
    for key, value in settings.model_dump().items():
        if key in SECRET_KEYS and value:
            value = "***"
        elif key == "broker_url" and isinstance(value, str):
            value = redact_url(value)
        out[key.replace("_", "-")] = value
    return out
