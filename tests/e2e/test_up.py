"""The README's first command: `sje up --example` runs the example job end to end."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil

from tests.support import ROOT, run_sje


def _started_with_prefix(prefix: str) -> list[psutil.Process]:
    """Live processes whose environment carries this test's key prefix."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("SJE_KEY_PREFIX") == prefix:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_up_example_runs_the_primes_job_correctly_and_stops_what_it_started(
    env: dict[str, str], prefix: str
) -> None:
    done = run_sje("up", "--example", env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Result: 148,933 primes below 2,000,000 (correct)" in done.stdout
    assert re.search(r"^Dashboard: http://127\.0\.0\.1:\d+/\?token=\S+", done.stdout, re.M), (
        "sje up prints where the dashboard is, with a link that signs in"
    )
    assert _started_with_prefix(prefix) == []


def _own_network_namespace() -> list[str]:
    """A command prefix running in a fresh network namespace (its own loopback, nothing
    listening: no Redis, no RabbitMQ), or [] where this machine does not allow one."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    probe = subprocess.run([unshare, "-n", "true"], capture_output=True)
    return (
        [unshare, "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
        if (probe.returncode == 0 and shutil.which("ip"))
        else []
    )


def test_up_with_no_broker_configured_runs_on_the_embedded_sqlite_file(
    env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    """The README's first command on a machine with no Redis: nothing configured, no server."""
    state = tmp_path / "state"
    bare = {k: v for k, v in env.items() if k != "SJE_BROKER_URL"}
    bare["SJE_STATE_DIR"] = str(state)
    isolated = _own_network_namespace()
    probe = "import redis, sys; redis.Redis(socket_connect_timeout=1).ping()"
    if isolated:
        no_redis = subprocess.run([*isolated, sys.executable, "-c", probe], capture_output=True)
        assert no_redis.returncode != 0, "Redis must not answer inside the namespace"
    done = subprocess.run(
        [*isolated, sys.executable, "-m", "sje", "up", "--example"],
        env=bare,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Result: 148,933 primes below 2,000,000 (correct)" in done.stdout
    assert f"sqlite:///{state}/sje.db" in done.stdout.replace("\n", "")
    assert (state / "sje.db").stat().st_size > 0
    assert oct((state).stat().st_mode & 0o777) == oct(0o700)
    assert _started_with_prefix(prefix) == []


def test_up_without_redis_says_how_to_start_it(env: dict[str, str]) -> None:
    done = run_sje("up", "--example", env={**env, "SJE_BROKER_URL": "redis://127.0.0.1:1/0"})
    assert done.returncode == 3
    assert "Cannot reach Redis at 127.0.0.1:1" in done.stderr


def test_config_command_prints_effective_settings_with_secrets_hidden(
    env: dict[str, str],
) -> None:
    done = run_sje(
        "config",
        "master",
        "--config",
        "config/master.yaml",
        env={
            **env,
            "SJE_PORT": "8181",
            "SJE_TOKEN": "hunter2-hunter2",
            "SJE_BROKER_URL": "redis://user:pw@127.0.0.1:6379/0",
        },
    )
    assert done.returncode == 0, done.stderr
    assert "port: 8181" in done.stdout
    assert "hunter2" not in done.stdout and "token: '***'" in done.stdout
    assert "redis://user:***@127.0.0.1:6379/0" in done.stdout
