"""``sje up`` passes on what its master logged as warnings (e.g. about Redis durability)."""

from __future__ import annotations

from pathlib import Path

from sje.launcher import _warnings


def test_warnings_are_read_from_the_master_log(tmp_path: Path) -> None:
    log = tmp_path / "master.log"
    log.write_text(
        "2026-11-27 00:00:00,001 INFO sje.master.server: master on http://127.0.0.1:1\n"
        "2026-11-27 00:00:00,002 WARNING sje.master.server: Redis at 127.0.0.1:6379 has "
        "appendonly off: a Redis restart loses accepted jobs.\n"
        "2026-11-27 00:00:00,003 ERROR sje.master.api: something else\n"
    )
    assert _warnings(log) == [
        "Redis at 127.0.0.1:6379 has appendonly off: a Redis restart loses accepted jobs."
    ]
    assert _warnings(tmp_path / "missing.log") == []
