"""TLS to Redis (``rediss://``) with an ACL user: a job runs end to end over it; a wrong CA or
password is one clear error; the password never appears in any output."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

import sje
from tests.support import Proc, free_port, run_sje, start_master, wait_until

PASSWORD = "tls-acl-password-91"


@dataclass
class TlsRedis:
    port: int
    ca: Path

    def url(self, password: str = PASSWORD, ca: Path | None = None) -> str:
        query = f"?ssl_ca_certs={ca or self.ca}"
        return f"rediss://sje:{password}@127.0.0.1:{self.port}/0{query}"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificates(folder: Path) -> None:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=sje-test-ca", cwd=folder)  # fmt: skip
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
             cwd=folder)  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.ext",
             cwd=folder)  # fmt: skip


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    binary = shutil.which("redis-server")
    assert binary and shutil.which("openssl"), "bootstrap installs redis-server and openssl"
    _certificates(tmp_path)
    port = free_port()
    args = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    args += ["--tls-cert-file", "server.pem", "--tls-key-file", "server.key"]
    args += ["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"]
    args += ["--save", "", "--appendonly", "yes", "--dir", str(tmp_path), "--logfile", "redis.log"]
    # an ACL user that may do everything but read the server's configuration
    args += ["--user", "default", "off", "--user", "sje", "on", f">{PASSWORD}", "~*", "&*"]
    args += ["+@all", "-config"]
    proc = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    server = TlsRedis(port, tmp_path / "ca.pem")

    def answers() -> bool:
        client = redis.Redis.from_url(server.url(), socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return proc.poll() is not None
        finally:
            client.close()

    wait_until(answers, 20, "the TLS Redis")
    assert proc.poll() is None, (tmp_path / "redis.log").read_text()
    yield server
    proc.terminate()
    proc.wait(10)


def test_a_job_runs_over_tls_with_an_acl_user(
    tls_redis: TlsRedis, env: dict[str, str], procs: list[Proc], worker: Callable[..., Proc]
) -> None:
    env["SJE_BROKER_URL"] = tls_redis.url()
    master, url = start_master(env)
    procs.append(master)
    env["SJE_MASTER"] = url
    w = worker("--concurrency", "1")
    handle = sje.Client(url).submit({"task": "tests.apps.sample_tasks.square", "inputs": [7]})
    assert handle.result(timeout=30) == [49]
    for proc in (master, w):
        # the user may not run CONFIG: SJE says it could not check, and how to make sure
        assert proc.find("could not check Redis at 127.0.0.1")
        assert PASSWORD not in proc.output()
    shown = run_sje("config", "worker", env=env)
    assert PASSWORD not in shown.stdout and "sje:***@127.0.0.1" in shown.stdout


def test_wrong_ca_or_password_is_one_clear_error(tls_redis: TlsRedis, env: dict[str, str]) -> None:
    other_ca = tls_redis.ca.parent / "other"
    other_ca.mkdir()
    _certificates(other_ca)
    for broker, expect in (
        (tls_redis.url(ca=other_ca / "ca.pem"), "certificate verify failed"),
        (tls_redis.url(password="wrong-password"), "invalid username-password pair"),
    ):
        done = run_sje("master", "--port", "0", env={**env, "SJE_BROKER_URL": broker})
        assert done.returncode == 3, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
        assert expect in lines[0].lower() or expect in lines[0]
        assert f"127.0.0.1:{tls_redis.port}" in lines[0]
        assert "wrong-password" not in done.stderr and PASSWORD not in done.stderr
