"""The SQLite file itself: which path a URL names, opening it (WAL, foreign keys, the busy
timeout, the tables of ``sqlite_schema.sql`` when new) and what its failures mean to a user.
"""

from __future__ import annotations

import os
import sqlite3
from importlib import resources
from urllib.parse import unquote, urlsplit

from sje.errors import BrokerError, ConfigError
from sje.security import state_dir

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 5000
#: filesystem types SQLite's locking cannot be trusted on
NETWORK_FS = ("nfs", "cifs", "smb", "9p", "fuse.sshfs", "afs", "ceph", "glusterfs", "lustre")


def database_path(url: str) -> str:
    """The absolute file path of a ``sqlite:///`` URL (three slashes: relative to the working
    directory; four: absolute); ``ConfigError`` for anything that is not one file."""
    parts = urlsplit(url)
    path = unquote(parts.path)[1:] if parts.path.startswith("/") else unquote(parts.path)
    example = "e.g. sqlite:///sje.db (relative) or sqlite:////var/lib/sje/sje.db (absolute)"
    if parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"broker-url '{url}': a SQLite URL is sqlite:/// and a file path, {example}"
        )
    if not path or path == ":memory:" or path.startswith("file:"):
        raise ConfigError(
            f"broker-url '{url}': give the SQLite database file every process shares, {example} "
            "(an in-memory database cannot be shared)"
        )
    return os.path.abspath(path)


def open_database(path: str) -> sqlite3.Connection:
    """A connection to the file (created with its tables when new), in WAL mode."""
    folder = os.path.dirname(path)
    if not os.path.isdir(folder) and os.path.abspath(state_dir()) == folder:
        os.makedirs(folder, mode=0o700, exist_ok=True)  # the default store's home
    if not os.path.isdir(folder):
        raise BrokerError(
            f"Cannot open the SQLite database {path}: the directory {folder} does not exist; "
            f"create it (mkdir -p {folder}) or point broker-url at another sqlite:/// path."
        )
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA foreign_keys = ON")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise BrokerError(
                f"The SQLite database {path} cannot use write-ahead logging (journal mode "
                f"{mode}); put it on a local disk, or use Redis (redis://)."
            )
        db.execute("PRAGMA synchronous = NORMAL")
        _ensure_schema(db, path)
    except BaseException:
        db.close()
        raise
    return db


_OTHER_TABLES = (
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' LIMIT 1"
)


def _ensure_schema(db: sqlite3.Connection, path: str) -> None:
    def version() -> int | None:
        row = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if row is None:
            return None
        found = db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        return None if found is None else int(found[0])

    found = version()
    if found is None and db.execute(_OTHER_TABLES).fetchone() is not None:
        raise BrokerError(
            f"The SQLite file {path} holds tables of another application, not SJE's; point "
            "broker-url at a file of SJE's own (a new path is created)."
        )
    if found is None:
        schema = (resources.files("sje.broker") / "sqlite_schema.sql").read_text("utf-8")
        try:
            db.executescript(f"BEGIN IMMEDIATE;\n{schema}\nCOMMIT;")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        found = version()
    if found != SCHEMA_VERSION:
        raise BrokerError(
            f"The SQLite database {path} has schema version {found}, this SJE uses "
            f"{SCHEMA_VERSION}; run the SJE version that created it, or start with a new file."
        )


def sqlite_error(path: str, exc: sqlite3.Error) -> BrokerError:
    """A ``BrokerError`` that says what went wrong with the file and what to do."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    text = str(exc)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return BrokerError(
            f"The SQLite database {path} stayed locked by another process for over "
            f"{BUSY_TIMEOUT_MS / 1000:g} s ({text}); retry, and if it persists find the process "
            "holding it (fuser), or move a busy deployment to Redis (redis://)."
        )
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or "not a database" in text:
        return BrokerError(
            f"The SQLite file {path} is not a database or is corrupt ({text}); move it away "
            "(SJE creates a new one) or point broker-url at another file."
        )
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
        return BrokerError(
            f"Cannot write the SQLite database {path} ({text}); make the file and its directory "
            "writable by this user, or point broker-url at another sqlite:/// path."
        )
    if name.startswith("SQLITE_FULL"):
        return BrokerError(f"The disk holding the SQLite database {path} is full ({text}).")
    return BrokerError(f"The SQLite database {path} failed: {text}")


def filesystem_type(folder: str) -> str:
    """The type of the filesystem holding ``folder`` (from /proc/mounts; empty if unknown)."""
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            table = [line.split()[1:3] for line in mounts if len(line.split()) > 2]
    except OSError:
        return ""
    real = os.path.realpath(folder)
    best, kind = "", ""
    for point, fs in table:
        point = point.replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fs
    return kind
