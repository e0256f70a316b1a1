"""Pieces of the RabbitMQ queue layer that hold no connection: queue names and arguments, the
delivery record, the layer's exceptions and the translation of AMQP errors into ``BrokerError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

import aiormq.exceptions as amqp_errors
from aio_pika.abc import AbstractIncomingMessage, DeliveryMode
from pamqp.common import FieldTable

from sje.errors import BrokerError, QueueFull

#: priority bands, lowest first; each one a RabbitMQ queue of its own
PRIORITIES = range(10)
#: the delay buckets of ``publish_delayed``: 1 s, 5 s, 30 s, 5 min, 30 min
DELAY_BUCKETS_MS = (1_000, 5_000, 30_000, 300_000, 1_800_000)
#: epoch ms at which a chained delay (longer than the largest bucket) is due
DUE_HEADER = "x-sje-due-ms"
#: what an AMQP call may raise once connected (channel errors, a dropped connection); aiormq
#: raises RuntimeError ("<Connection> closed", ChannelInvalidStateError) for a call on a
#: connection whose loss it has not reported yet
AMQP_ERRORS = (amqp_errors.AMQPError, ConnectionError, asyncio.TimeoutError, RuntimeError)

QueueKind = Literal["quorum", "classic"]
HeaderValue = str | int | float | bool | bytes | None
#: one message to publish: (message id, body, headers)
OutgoingMessage = tuple[str, bytes, Mapping[str, HeaderValue]]


class QueueAtBound(QueueFull):
    """RabbitMQ refused messages because a band is at its ``x-max-length`` (``reject-publish``).

    ``accepted`` lists the message ids RabbitMQ confirmed before refusing (they are in the queue
    and will be delivered: the caller voids them, see ``AmqpQueue.publish``); ``rejected`` those
    it refused or that were not sent. ``depth`` is the band's ready count when it was refused.
    """

    def __init__(
        self,
        queue: str,
        priority: int,
        depth: int,
        bound: int,
        accepted: list[str],
        rejected: list[str],
    ) -> None:
        super().__init__(
            f"Queue '{queue}' is full: {depth} tasks wait at priority {priority} (bound {bound});"
            " retry later or raise max-queue-length"
        )
        self.queue = queue
        self.priority = priority
        self.depth = depth
        self.bound = bound
        self.accepted = accepted
        self.rejected = rejected


class PublishIncomplete(BrokerError):
    """The connection failed mid-batch: ``accepted`` ids were confirmed, ``unconfirmed`` ones
    may or may not be in the queue (the caller voids both)."""

    def __init__(self, message: str, accepted: list[str], unconfirmed: list[str]) -> None:
        super().__init__(message)
        self.accepted = accepted
        self.unconfirmed = unconfirmed


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message fetched from a work queue and not yet acknowledged.

    It stays invisible to other consumers until ``AmqpQueue.ack`` / ``reject``, or until this
    process's connection closes (RabbitMQ then requeues it with ``redelivered`` set).
    ``delivery_count`` is RabbitMQ's ``x-delivery-count`` (quorum queues: how often it was
    returned before; always 0 on classic queues).
    """

    queue: str
    priority: int
    message_id: str
    body: bytes
    headers: Mapping[str, object]
    redelivered: bool
    delivery_count: int
    persistent: bool
    message: AbstractIncomingMessage = field(repr=False, compare=False)
    generation: int = field(repr=False, compare=False, default=0)


def delivery_of(
    queue: str, priority: int, message: AbstractIncomingMessage, generation: int
) -> Delivery:
    headers: dict[str, object] = dict(message.headers)
    count = headers.get("x-delivery-count", 0)
    return Delivery(
        queue=queue,
        priority=priority,
        message_id=message.message_id or "",
        body=message.body,
        headers=headers,
        redelivered=bool(message.redelivered),
        delivery_count=count if isinstance(count, int) else 0,
        persistent=message.delivery_mode == DeliveryMode.PERSISTENT,
        message=message,
        generation=generation,
    )


@dataclass(frozen=True, slots=True)
class Names:
    """Every RabbitMQ name under one prefix."""

    prefix: str

    def band(self, queue: str, priority: int) -> str:
        return f"{self.prefix}.q.{queue}.p{priority}"

    def delay(self, bucket_ms: int) -> str:
        return f"{self.prefix}.delay.{bucket_ms}"

    @property
    def dlx(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead(self) -> str:
        return f"{self.prefix}.dead"


def work_arguments(kind: QueueKind, max_length: int, dlx: str, delivery_limit: int) -> FieldTable:
    """A work queue: bounded, refusing (never dropping) when full, dead-lettering to ``dlx``."""
    args: FieldTable = {
        "x-max-length": max_length,
        "x-overflow": "reject-publish",
        "x-dead-letter-exchange": dlx,
    }
    if kind == "quorum":
        # at-least-once dead-lettering: a message is removed only once the dead queue has it
        args.update(
            {
                "x-queue-type": "quorum",
                "x-delivery-limit": delivery_limit,
                "x-dead-letter-strategy": "at-least-once",
            }
        )
    return args


def delay_arguments(kind: QueueKind, bucket_ms: int) -> FieldTable:
    """A delay bucket: messages wait ``bucket_ms`` (or their own shorter ``expiration``), then
    dead-letter through the default exchange by their routing key: their work queue."""
    args: FieldTable = {"x-message-ttl": bucket_ms, "x-dead-letter-exchange": ""}
    if kind == "quorum":
        # at-least-once needs reject-publish; without a length limit nothing is ever refused
        args.update(
            {
                "x-queue-type": "quorum",
                "x-overflow": "reject-publish",
                "x-dead-letter-strategy": "at-least-once",
            }
        )
    return args


def dead_arguments(kind: QueueKind) -> FieldTable:
    """The dead-letter queue keeps the newest 100,000 entries, as SJE's DLQ does."""
    args: FieldTable = {"x-max-length": 100_000}
    if kind == "quorum":
        args["x-queue-type"] = "quorum"
    return args


def pick_bucket(delay_ms: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that covers ``delay_ms``, else the largest (a chained delay)."""
    return next((b for b in buckets if b >= delay_ms), buckets[-1])


def address(url: str) -> tuple[str, str, str]:
    """``host:port``, user and vhost of an ``amqp://`` URL, for messages (never the password)."""
    parts = urlsplit(url)
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return f"{parts.hostname or 'localhost'}:{port}", unquote(parts.username or "guest"), vhost


def connect_error(url: str, exc: BaseException) -> BrokerError:
    """One clear line for a failed connection attempt: unreachable, bad login or bad vhost."""
    where, user, vhost = address(url)
    if isinstance(exc, amqp_errors.ProbableAuthenticationError | amqp_errors.AuthenticationError):
        return BrokerError(
            f"RabbitMQ at {where} refused the login of user '{user}' (wrong user or password). "
            f"Fix the credentials in broker-url (amqp://USER:PASSWORD@{where}/VHOST)."
        )
    if isinstance(exc, amqp_errors.InvalidFrameError) and "Connection.Close" in str(exc):
        # RabbitMQ answers connection.open on a missing (or forbidden) vhost with a close
        return BrokerError(
            f"RabbitMQ at {where} refused vhost '{vhost}' to user '{user}' (it does not exist "
            f"or the user has no permissions on it). Create it (rabbitmqctl add_vhost {vhost}; "
            f"rabbitmqctl set_permissions -p {vhost} {user} '.*' '.*' '.*') "
            "or fix the vhost in broker-url."
        )
    return BrokerError(
        f"Cannot reach RabbitMQ at {where} ({_reason(exc)}). "
        "Start it (rabbitmq-server) or point broker-url at a running one."
    )


def lost_error(url: str, exc: BaseException) -> BrokerError:
    """A call failed on an established connection."""
    where, _, _ = address(url)
    return BrokerError(
        f"Lost the connection to RabbitMQ at {where} ({_reason(exc)}); "
        "unacknowledged deliveries go back to their queues. Check that RabbitMQ runs."
    )


def refuses_quorum(exc: BaseException) -> bool:
    """The server cannot make a quorum queue (or it exists as classic): use classic."""
    text = str(exc)
    if "inequivalent arg" in text:
        return "'x-queue-type'" in text
    return "x-queue-type" in text or "quorum" in text or "NOT_IMPLEMENTED" in text


def declare_error(name: str, exc: BaseException) -> BrokerError:
    if "inequivalent arg" in str(exc):
        return BrokerError(
            f"RabbitMQ queue '{name}' exists with other settings ({exc}): it was declared with "
            "another max-queue-length or delivery limit. Use the same settings everywhere, or "
            f"delete the queue (rabbitmqctl delete_queue {name}) when it is empty."
        )
    return BrokerError(f"RabbitMQ refused to declare queue '{name}': {exc}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    args = exc.args
    if len(args) == 2 and isinstance(args[0], int):
        return "connection refused" if args[0] == 111 else str(args[1])
    return str(exc) or type(exc).__name__
