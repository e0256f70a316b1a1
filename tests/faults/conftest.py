"""Fixtures of the fault suite: a private Redis with AOF on, which tests may kill -9,
SIGSTOP/SIGCONT and restart on the same port and directory.

``redis_url`` is overridden for this directory, so every fixture of ``tests/conftest.py``
(``prefix``, ``env``, ``master``, ``worker``, ``procs``, ``r``) uses this server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import Proc, RedisServer


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The directory's Redis: ``redis-server --appendonly yes --appendfsync everysec``
    on a free port, its AOF in a temporary directory."""
    server = RedisServer(tmp_path_factory.mktemp("redis-aof"))
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_url(redis_service: RedisServer) -> str:
    return redis_service.url


@pytest.fixture
def redis_server(
    redis_service: RedisServer, procs: list[Proc], prefix: str
) -> Iterator[RedisServer]:
    """Control of the Redis for one test: ``kill()`` (-9), ``pause()`` / ``resume()``
    (SIGSTOP / SIGCONT), ``restart()``. Afterwards it is running and answering again, before
    the test's processes are stopped and its keys deleted."""
    yield redis_service
    redis_service.heal()
