"""Who may use the monitor: programs with the API token (Bearer), browsers with a session.

A browser signs in once with the token (``/?token=…`` or the sign-in form) and gets a cookie
holding an HMAC of the token, never the token itself (``HttpOnly``, ``SameSite=Strict``).
Requests that change something and come with a cookie must also send ``X-SJE-CSRF`` with the
value ``GET /api/v1/session`` returns: a page on another site can neither read it nor send a
custom header without a CORS preflight, which the monitor never grants. Both values are derived
from the deployment's secret, so they survive monitor restarts and differ per deployment.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request
from starlette.responses import Response

from sje.master.api import BearerAuth, unauthorized
from sje.master.http import json_response

COOKIE = "sje_session"
CSRF_HEADER = "x-sje-csrf"
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def _mac(secret: bytes, message: str) -> str:
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


class SessionAuth:
    def __init__(self, token: str | None, secret: bytes) -> None:
        self.token = token
        self._bearer = BearerAuth(token)
        self.session = _mac(secret, f"session|{token or ''}")
        self.csrf = _mac(secret, f"csrf|{token or ''}")

    def token_ok(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def signed_in(self, request: Request) -> bool:
        if self.token is None:
            return True
        return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), self.session.encode())

    def check(self, request: Request) -> Response | None:
        if self._bearer.bearer_ok(request):
            return None
        if not self.signed_in(request):
            return unauthorized()
        if request.method not in _SAFE_METHODS:
            given = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(given.encode(), self.csrf.encode()):
                body = {
                    "error": {
                        "code": "csrf",
                        "message": "Refused: this request lacks the X-SJE-CSRF header the "
                        "dashboard sends. Use the dashboard, or call the API with a Bearer token.",
                    }
                }
                return json_response(body, 403)
        return None

    def set_cookie(self, response: Response, secure: bool) -> None:
        response.set_cookie(
            COOKIE,
            self.session,
            max_age=30 * 86400,
            httponly=True,
            samesite="strict",
            secure=secure,
        )
