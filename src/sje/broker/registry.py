"""Pick the broker implementation from the URL scheme."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from sje.broker.base import Broker
from sje.broker.redis import RedisBroker
from sje.broker.sqlite import SQLiteBroker
from sje.errors import ConfigError

BROKERS: dict[str, Callable[[str, str], Broker]] = {
    "redis": RedisBroker,
    "rediss": RedisBroker,
    "unix": RedisBroker,
    "sqlite": SQLiteBroker,
}


def open_broker(url: str, prefix: str) -> Broker:
    """Build (without connecting) the broker for ``url``; an unknown scheme is a ``ConfigError``."""
    scheme = urlsplit(url).scheme
    factory = BROKERS.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in BROKERS)
        raise ConfigError(f"broker-url '{url}': unknown scheme '{scheme}'; use one of: {known}")
    return factory(url, prefix)
