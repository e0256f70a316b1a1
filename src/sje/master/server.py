"""The master process: API server plus scheduler loop, over one broker connection pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable

import uvicorn
from starlette.applications import Starlette

from sje.broker.registry import open_broker
from sje.config import MasterSettings, redact_url
from sje.errors import ConfigError
from sje.master.api import Api, BearerAuth
from sje.master.scheduler import SchedulerLoop
from sje.security import LOOPBACK_HOSTS, remember_token, resolve

log = logging.getLogger(__name__)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket up front so a taken port is a clear error, not a log line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on such sockets, and without it
    # every response waits ~40 ms for the client's delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"Cannot listen on {host}:{port}: {exc.strerror}. Stop what uses the port or pick "
            "another with --port / SJE_PORT."
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Master:
    """Built from settings (no I/O), then ``serve()`` until SIGINT/SIGTERM."""

    def __init__(self, settings: MasterSettings) -> None:
        self.settings = settings
        self.url = ""
        #: lines for the operator, printed with the ready line (e.g. a generated token)
        self.notices: list[str] = []

    async def serve(self, on_ready: Callable[[str], None] | None = None) -> None:
        s = self.settings
        if s.auth == "none" and s.bind_address not in LOOPBACK_HOSTS:
            raise ConfigError(
                f"Refusing to listen on {s.bind_address} with auth: none (anyone who can reach "
                "it could run tasks): remove auth: none, or bind to 127.0.0.1."
            )
        broker = open_broker(s.effective_broker_url, s.key_prefix, s.state_url)
        await broker.ping()
        for warning in await broker.durability_warnings():
            log.warning("%s", warning)
        secret, _ = await resolve(broker, "secret", s.secret)
        token: str | None = None
        if s.auth == "token":
            token, source = await resolve(broker, "token", s.token)
            if source == "generated":
                self.notices.append(
                    f"Generated the API token {token} (stored in the broker; shown only now). "
                    "Clients on other hosts need SJE_TOKEN set to it."
                )
        scheduler = SchedulerLoop(broker, s.tick_interval, s.max_redeliveries)
        sock = bind_socket(s.bind_address, s.port)
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        if token:
            remember_token(port, token)

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            loop_task = asyncio.create_task(scheduler.run())
            log.info("master on %s, broker %s", self.url, redact_url(s.effective_broker_url))
            if on_ready:
                on_ready(self.url)
            try:
                yield
            finally:
                scheduler.stop()
                await loop_task
                await api.ends.close()
                await broker.close()

        api = Api(broker, s, secret.encode(), BearerAuth(token))
        app = api.app()
        app.router.lifespan_context = lifespan
        # open event streams must not hold a stopping master hostage. "auto" parses with
        # httptools (a dependency on CPython: a single-task round trip costs the master ~60 us
        # less CPU than with h11, docs/performance.md) and falls back to h11 where it is missing
        # rather than failing
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="on",
            access_log=False,
            timeout_graceful_shutdown=3,
            http="auto",
        )
        await uvicorn.Server(config).serve(sockets=[sock])
