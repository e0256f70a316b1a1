"""A Redis that stops answering (SIGSTOP: its sockets stay open) is an error after the
broker's timeout, saying so, not a call that waits forever; once it answers again, so does
the broker."""

from __future__ import annotations

import asyncio

import pytest

from sje.broker.redis import RedisBroker
from sje.errors import BrokerError
from tests.support import RedisServer


def test_a_hung_redis_is_a_clear_error_after_the_timeout_then_the_broker_recovers(
    redis_server: RedisServer, prefix: str
) -> None:
    async def scenario() -> None:
        broker = RedisBroker(redis_server.url, prefix, timeout_s=0.5)
        try:
            await broker.ping()
            redis_server.pause()
            with pytest.raises(BrokerError) as caught:
                await asyncio.wait_for(broker.job("nope"), 10)
            assert (
                f"127.0.0.1:{redis_server.port} did not answer within 0.5s" in caught.value.message
            )
            redis_server.resume()
            assert await broker.job("nope") is None
        finally:
            redis_server.heal()
            await broker.close()

    asyncio.run(scenario())
