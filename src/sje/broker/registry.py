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
    if urlsplit(url).scheme not in QUEUES:
        return open_store(url, prefix, "broker-url", (*STORES, *QUEUES))
    if not state_url:
        raise ConfigError(
            f"broker-url '{url}' needs a state store: set state-url (SJE_STATE_URL) to a Redis "
            "or SQLite URL, e.g. redis://127.0.0.1:6379/0 or sqlite:////var/lib/sje/sje.db"
        )
    # imported here: aio-pika costs every other process ~5 MB and 60 ms at start-up
    from sje.broker.amqp import AmqpBroker

    return AmqpBroker(url, prefix, open_store(state_url, prefix, "state-url", tuple(STORES)))


def open_store(url: str, prefix: str, key: str, known: tuple[str, ...]) -> StateStore:
    """A broker that keeps its own state: Redis or SQLite; ``key`` and ``known`` (schemes)
    word the error for any other URL."""
    scheme = urlsplit(url).scheme
    factory = STORES.get(scheme)
    if factory is None:
        schemes = ", ".join(f"{s}://" for s in known)
        raise ConfigError(f"{key} '{url}': unknown scheme '{scheme}'; use one of: {schemes}")
    return factory(url, prefix)
