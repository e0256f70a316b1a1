"""The monitor process: the dashboard, the API (every master route but submit) and /metrics.

It keeps no state of its own: every page and number is read from the store when asked, so a
restart loses nothing and several monitors can serve one deployment.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sje.broker.base import Broker
from sje.broker.registry import open_broker
from sje.config import MonitorSettings, redact_url
from sje.errors import ConfigError
from sje.master.api import Api
from sje.master.http import HTTP_ERROR_HANDLERS, json_response
from sje.master.server import bind_socket
from sje.monitor.metrics import render
from sje.monitor.session import COOKIE, SessionAuth
from sje.security import LOOPBACK_HOSTS, resolve

log = logging.getLogger(__name__)

STATIC = Path(str(resources.files("sje.monitor") / "static"))
_SIGNIN_MAX_BYTES = 4096
_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """Adds the headers above to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Dashboard:
    """The page, sign-in and sign-out, the session probe and /metrics."""

    def __init__(self, broker: Broker, auth: SessionAuth) -> None:
        self.broker = broker
        self.auth = auth

    def _signed_in_redirect(self, request: Request) -> Response:
        response = RedirectResponse("/", status_code=303)
        self.auth.set_cookie(response, secure=request.url.scheme == "https")
        return response

    async def index(self, request: Request) -> Response:
        token = request.query_params.get("token")
        if token is not None:
            if self.auth.token_ok(token):
                return self._signed_in_redirect(request)
            return RedirectResponse("/?signin=failed", status_code=303)
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    async def signin(self, request: Request) -> Response:
        body = await request.body()
        fields = parse_qs(body[:_SIGNIN_MAX_BYTES].decode("utf-8", errors="replace"))
        token = (fields.get("token") or [""])[0].strip()
        if self.auth.token_ok(token):
            return self._signed_in_redirect(request)
        return RedirectResponse("/?signin=failed", status_code=303)

    async def signout(self, request: Request) -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    async def session(self, request: Request) -> Response:
        mode = "token" if self.auth.token else "none"
        return json_response({"csrf": self.auth.csrf, "auth": mode})

    async def metrics(self, request: Request) -> Response:
        body = render(await self.broker.views.snapshot())
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def build_app(broker: Broker, auth: SessionAuth) -> Starlette:
    api = Api(broker, None, None, auth)
    g = api.guarded
    page = Dashboard(broker, auth)
    routes = [
        Route("/", page.index),
        Route("/signin", page.signin, methods=["POST"]),
        Route("/signout", page.signout, methods=["POST"]),
        Route("/api/v1/session", g(page.session)),
        Route("/metrics", g(page.metrics)),
        *api.routes(),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers=HTTP_ERROR_HANDLERS,
    )


class Monitor:
    """Built from settings (no I/O), then ``serve()`` until SIGINT/SIGTERM."""

    def __init__(self, settings: MonitorSettings) -> None:
        self.settings = settings
        self.url = ""
        #: the link that signs a browser in (with the token), printed with the ready line
        self.signin_url = ""

    async def serve(self, on_ready: Callable[[str], None] | None = None) -> None:
        s = self.settings
        if s.auth == "none" and s.bind_address not in LOOPBACK_HOSTS:
            raise ConfigError(
                f"Refusing to serve the dashboard on {s.bind_address} with auth: none (anyone "
                "who can reach it could cancel jobs): remove auth: none, or bind to 127.0.0.1."
            )
        broker = open_broker(s.effective_broker_url, s.key_prefix, s.state_url)
        await broker.ping()
        secret, _ = await resolve(broker, "secret", s.secret)
        token = (await resolve(broker, "token", s.token))[0] if s.auth == "token" else None
        auth = SessionAuth(token, secret.encode())
        sock = bind_socket(s.bind_address, s.port)
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        self.signin_url = f"{self.url}/?token={token}" if token else f"{self.url}/"
        app = build_app(broker, auth)
        app.router.lifespan_context = _lifespan(broker, self.url, s, on_ready)
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", access_log=False, timeout_graceful_shutdown=3
        )
        await uvicorn.Server(config).serve(sockets=[sock])


def _lifespan(
    broker: Broker,
    url: str,
    s: MonitorSettings,
    on_ready: Callable[[str], None] | None,
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info("monitor on %s, broker %s", url, redact_url(s.effective_broker_url))
        if on_ready:
            on_ready(url)
        try:
            yield
        finally:
            await broker.close()

    return lifespan
