"""Pick the broker implementation from the URL scheme."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from sje.broker.base import Broker, StateStore
from sje.broker.redis import RedisBroker
from sje.broker.sqlite import SQLiteBroker
from sje.errors import ConfigError

STORES: dict[str, Callable[[str, str], StateStore]] = {
    "redis": RedisBroker,
    "rediss": RedisBroker,
    "unix": RedisBroker,
    "sqlite": SQLiteBroker,
}
#: RabbitMQ: deliveries there, everything else in the ``state-url`` store
QUEUES = ("amqp", "amqps")


def open_broker(url: str, prefix: str, state_url: str | None = None) -> Broker:
    """Build (without connecting) the broker for ``url``; an unknown scheme, or an ``amqp://``
    URL without a usable ``state_url``, is a ``ConfigError``."""
    if urlsplit(url).scheme in QUEUES:
        # imported here: aio-pika costs every other process ~5 MB and 60 ms at start-up
        from sje.broker.amqp import AmqpBroker, check_state_url

        return AmqpBroker(url, prefix, open_store(check_state_url(url, state_url), prefix))
    return open_store(url, prefix)


def open_store(url: str, prefix: str) -> StateStore:
    """A broker that keeps its own state: Redis or SQLite."""
    scheme = urlsplit(url).scheme
    factory = STORES.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in (*STORES, *QUEUES))
        raise ConfigError(f"broker-url '{url}': unknown scheme '{scheme}'; use one of: {known}")
    return factory(url, prefix)
