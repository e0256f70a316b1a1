"""Deployment secrets: the API token and the task-signing secret, and where each comes from.

Both come from configuration (``token`` / ``SJE_TOKEN``, ``secret`` / ``SJE_SECRET``). When
unset, the first master (or worker) to start generates one and stores it in the broker
(``P:auth``) for every other process of the deployment. A master also records its token in a
per-user file (``$SJE_STATE_DIR`` or ``~/.local/state/sje/tokens.json``, mode 0600) keyed by
port, so clients on the same host find it without configuration.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class SharedValues(Protocol):
    async def shared_value(self, name: str, candidate: str) -> tuple[str, bool]: ...


async def resolve(store: SharedValues, name: str, configured: str | None) -> tuple[str, str]:
    """(value, source) where source is ``configured``, ``generated`` or ``stored``."""
    if configured:
        return configured, "configured"
    value, created = await store.shared_value(name, secrets.token_urlsafe(32))
    return value, "generated" if created else "stored"


def state_dir() -> Path:
    explicit = os.environ.get("SJE_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sje"


def _tokens_file() -> Path:
    return state_dir() / "tokens.json"


def _read_tokens() -> dict[str, str]:
    try:
        data = json.loads(_tokens_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def remember_token(port: int, token: str) -> None:
    """Record a local master's token for clients of this user (best effort)."""
    with contextlib.suppress(OSError):
        path = _tokens_file()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tokens = _read_tokens()
        tokens[str(port)] = token
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(tokens, f)
        os.replace(tmp, path)


def local_token(master_url: str) -> str | None:
    """The token a master on this host recorded for ``master_url``'s port, if any."""
    parts = urlsplit(master_url)
    if parts.hostname not in LOOPBACK_HOSTS:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return _read_tokens().get(str(port))
