"""Test helpers: services on demand, deadlines instead of sleeps, real SJE processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import redis

import sje
from sje.broker.redis_events import expand_all

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
#: how long a task waits for a gate file the test opens (or never does: then it is killed)
GATE_TIMEOUT_S = 600.0


def wait_until(
    condition: Callable[[], T], timeout: float = 30.0, what: str = "condition", every: float = 0.05
) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


async def eventually(
    check: Callable[[], Awaitable[T]], what: str, timeout: float = 10.0, every: float = 0.01
) -> T:
    """``wait_until`` for coroutines: await ``check`` until it returns something truthy; fail
    naming ``what`` (and the last value) on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value})")
        await asyncio.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_reachable(url: str) -> bool:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return True
    except redis.RedisError:
        return False


def ensure_redis_server() -> tuple[str, subprocess.Popen[bytes] | None]:
    """A reachable Redis URL: the usual local one, or a private server started here."""
    url = os.environ.get("SJE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_reachable(url):
        return url, None
    binary = shutil.which("redis-server")
    if binary is None:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "redis-server"], check=False, capture_output=True
        )
        binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "Redis is not reachable at 127.0.0.1:6379 and redis-server could not be installed; "
            "run `apt-get install redis-server` or set SJE_TEST_REDIS_URL."
        )
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis_reachable(url), 20, f"the Redis server started on port {port}")
    return url, proc


def amqp_reachable(host: str, port: int) -> bool:
    """An AMQP server answers the protocol header with its ``connection.start`` frame."""
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.settimeout(2)
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return s.recv(1) == b"\x01"
    except OSError:
        return False


def ensure_rabbitmq() -> str:
    """A reachable RabbitMQ URL: the usual local one, started (and installed) when absent."""
    url = os.environ.get("SJE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    if amqp_reachable("127.0.0.1", 5672) or "SJE_TEST_AMQP_URL" in os.environ:
        return url
    if shutil.which("rabbitmq-server") is None:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "rabbitmq-server"],
            check=False,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    if shutil.which("rabbitmq-server") is None:
        raise RuntimeError(
            "RabbitMQ is not reachable at 127.0.0.1:5672 and rabbitmq-server could not be "
            "installed; run `apt-get install rabbitmq-server` (or scripts/bootstrap.sh) or set "
            "SJE_TEST_AMQP_URL."
        )
    if not amqp_reachable("127.0.0.1", 5672):  # it may have started on install
        subprocess.run(["rabbitmq-server", "-detached"], check=False, capture_output=True)
    wait_until(lambda: amqp_reachable("127.0.0.1", 5672), 120, "rabbitmq-server to answer on 5672")
    return url


def drop_amqp_queues(url: str, prefix: str, queues: list[str]) -> None:
    """Delete the RabbitMQ topology of ``queues`` under ``prefix`` (a test's, afterwards)."""
    from sje.broker.amqp_queue import AmqpQueue

    async def drop() -> None:
        cleaner = AmqpQueue(url, prefix)
        await cleaner.connect()
        try:
            await cleaner.delete_topology(queues)
        finally:
            await cleaner.close()

    asyncio.run(drop())


def sje_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SJE_")}
    if "SJE_STATE_DIR" in os.environ:  # the test session's own (see conftest.state_dir)
        env["SJE_STATE_DIR"] = os.environ["SJE_STATE_DIR"]
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_sje(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real ``sje`` command line and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "sje", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Proc:
    """A long-running ``sje`` process (master or worker) whose output is collected."""

    def __init__(self, args: list[str], env: dict[str, str], ready_marker: str) -> None:
        self.args = args
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "sje", *args],
            env=env,
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until(
            lambda: self.find(ready_marker) or self.popen.poll() is not None,
            60,
            f"'{ready_marker}' from sje {' '.join(args)}",
        )
        if self.popen.poll() is not None:
            self._reader.join(5)
            raise AssertionError(f"sje {' '.join(args)} exited early:\n" + self.output())

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def find(self, text: str) -> str | None:
        return next((line for line in list(self.lines) if text in line), None)

    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float = 60) -> int:
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 30) -> None:
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(10)
        self._reader.join(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


def start_master(env: dict[str, str], *extra: str) -> tuple[Proc, str]:
    proc = Proc(["master", "--port", "0", *extra], env, "listening on")
    line = proc.find("listening on")
    assert line is not None
    return proc, line.rsplit(" ", 1)[-1]


def start_worker(env: dict[str, str], *extra: str, tasks: str = "tests.apps.sample_tasks") -> Proc:
    return Proc(["worker", "--tasks", tasks, *extra], env, "ready:")


def events_of(r: redis.Redis, prefix: str, job_id: str) -> list[dict[str, Any]]:
    """Every event recorded for a job, oldest first, decoded."""
    raw: Any = r.xrange(f"{prefix}:job:{job_id}:ev")  # redis-py types replies as bytes | str
    return [fields for _id, fields in expand_all(raw)]  # one event per task of a batch entry


def event_kind(event: dict[str, Any]) -> str:
    """An event's type, with the reason for ``task.queued`` (``task.queued:redelivered``)."""
    reason = event.get("reason")
    return (
        f"{event['type']}:{reason}" if event["type"] == "task.queued" and reason else event["type"]
    )


# -- delivery faults: a Redis to kill, clients with the test's token, execution markers ------


class RedisServer:
    """A private ``redis-server`` with AOF on (``appendfsync everysec``) that a test may
    kill -9, SIGSTOP/SIGCONT and restart on the same port and directory (the AOF reloads)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.popen: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        """Start (or restart) the server; returns once it answers, the AOF fully loaded."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        args += ["--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")]
        self.popen = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.paused = False
        popen = self.popen
        wait_until(
            lambda: redis_reachable(self.url) or popen.poll() is not None,
            30,
            f"redis-server on port {self.port} to load its AOF and answer",
        )
        if popen.poll() is not None:
            log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"redis-server on port {self.port} exited:\n{log}")

    def kill(self) -> None:
        """kill -9: no shutdown, no final AOF flush."""
        if self.running():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)
        self.paused = False

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing until ``resume``."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGCONT)
        self.paused = False

    def heal(self) -> None:
        """Running and answering again, whatever a test did to it."""
        if self.running() and self.paused:
            self.resume()
        if not self.running():
            self.start()
        wait_until(lambda: redis_reachable(self.url), 30, f"redis-server on port {self.port}")

    def close(self) -> None:
        if self.running():
            assert self.popen is not None
            if self.paused:
                self.resume()
            self.popen.terminate()
            self.popen.wait(10)


def api_client(env: dict[str, str], url: str | None = None) -> sje.Client:
    """A client of the test's master (``SJE_MASTER`` unless ``url``) with the test's token."""
    return sje.Client(url or env["SJE_MASTER"], token=env.get("SJE_TOKEN"))


@dataclass(frozen=True)
class Run:
    """One execution of a task, from the marker file it wrote (``tests.apps.fault_tasks``);
    times in ``time.monotonic_ns()`` (one clock for every process on the host)."""

    index: int
    pid: int
    start_ns: int
    end_ns: int | None  # None: killed before it returned

    @property
    def finished(self) -> bool:
        return self.end_ns is not None


def read_runs(folder: Path) -> list[Run]:
    """Every execution recorded in ``folder``, oldest first."""
    runs = []
    for path in folder.glob("[0-9]*-*-*") if folder.exists() else []:
        index, pid, _ = path.name.split("-")
        lines = [line.split() for line in path.read_text().splitlines(keepends=True)]
        times = {fields[0]: int(fields[1]) for fields in lines if len(fields) == 3}
        runs.append(Run(int(index), int(pid), times["start"], times.get("end")))
    return sorted(runs, key=lambda run: run.start_ns)


def runs_by_index(runs: list[Run]) -> dict[int, list[Run]]:
    out: dict[int, list[Run]] = {}
    for run in runs:
        out.setdefault(run.index, []).append(run)
    return out


def overlapping_runs(
    runs: list[Run], unfinished_end_ns: int | None = None
) -> list[tuple[Run, Run]]:
    """Pairs of runs of one task that were executing at the same time. A run that never
    finished counts as lasting until ``unfinished_end_ns`` (when its process was known dead),
    or for ever when that is not given."""
    forever = 2**63
    out = []
    for same in runs_by_index(runs).values():
        for i, a in enumerate(same):
            for b in same[i + 1 :]:
                a_end = a.end_ns if a.end_ns is not None else (unfinished_end_ns or forever)
                b_end = b.end_ns if b.end_ns is not None else (unfinished_end_ns or forever)
                if a.start_ns < b_end and b.start_ns < a_end:
                    out.append((a, b))
    return out


def auth(env: dict[str, str]) -> dict[str, str]:
    """The Authorization header for raw HTTP calls to a master started with ``env``."""
    return {"Authorization": f"Bearer {env['SJE_TOKEN']}"}


def start_monitor(env: dict[str, str], *extra: str) -> tuple[Proc, str]:
    """A real ``sje monitor`` on a free port for the test's broker, key prefix and token;
    returns the process and its URL (``http://HOST:PORT``)."""
    marker = "SJE monitor listening on"
    proc = Proc(
        ["monitor", "--port", "0", "--broker-url", env["SJE_BROKER_URL"], *extra], env, marker
    )
    line = proc.find(marker)
    assert line is not None
    return proc, line.rsplit(" ", 1)[-1]


# -- a private RabbitMQ node to kill -9 ----------------------------------------------------------

#: Debian's start script itself; ``/usr/sbin/rabbitmq-server`` wraps it to run as user rabbitmq
RABBITMQ_SCRIPT = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class RabbitServer:
    """A private RabbitMQ node that a test may kill -9 and restart on the same ports and
    database: durable (quorum) queues and persistent messages come back. The machine's own
    RabbitMQ is left alone: this node has its own name, AMQP and distribution ports, Erlang
    cookie, configuration, database and logs, all under ``directory``; no plugins. It shares the
    host's ``epmd`` (every Erlang node on a host registers there).

    The start script runs in the foreground with ``RABBITMQ_ALLOW_INPUT`` set, so it ``exec``s
    the Erlang VM (without it, a shell stays in between to forward signals): the process
    started here is ``beam.smp``, the leader of a process group of its own."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.dist_port = free_port()
        self.node = f"sjetest-{uuid.uuid4().hex[:8]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def log_file(self) -> Path:
        return self.dir / "log" / f"{self.node}.log"

    @property
    def ra_dir(self) -> Path:
        """Where the node keeps its quorum queues (one directory per queue's Raft server)."""
        return self.dir / "mnesia" / self.node / "quorum" / self.node

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def _env(self) -> dict[str, str]:
        d = self.dir
        for sub in ("home", "mnesia", "log", "schema", "generated"):
            (d / sub).mkdir(exist_ok=True)
        cookie = d / "home" / ".erlang.cookie"  # Erlang wants it readable by its owner alone
        if not cookie.exists():
            cookie.write_text(uuid.uuid4().hex.upper())
            cookie.chmod(0o400)
        (d / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's (the system node's)
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "disk_free_limit.absolute = 1MB\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(d / "home"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),  # absent
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_SCHEMA_DIR=str(d / "schema"),
            RABBITMQ_GENERATED_CONFIG_DIR=str(d / "generated"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
            RABBITMQ_ALLOW_INPUT="1",  # exec the VM; -noinput below still disables its shell
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                "-noinput -kernel inet_dist_use_interface {127,0,0,1}"
            ),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def start(self) -> None:
        """Start (or restart) the node; returns once it answers AMQP, its queues recovered."""
        script = RABBITMQ_SCRIPT if os.path.exists(RABBITMQ_SCRIPT) else None
        script = script or shutil.which("rabbitmq-server")
        if script is None:
            raise RuntimeError("rabbitmq-server is not installed: apt-get install rabbitmq-server")
        env = self._env()
        with open(self.dir / "rabbitmq.out", "ab") as out:
            self.popen = subprocess.Popen(
                [script],
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        popen = self.popen
        wait_until(
            lambda: amqp_reachable("127.0.0.1", self.port) or popen.poll() is not None,
            90,
            f"the private RabbitMQ node {self.node} to answer on port {self.port}",
            every=0.1,
        )
        if popen.poll() is not None:
            out_tail = (self.dir / "rabbitmq.out").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"rabbitmq-server {self.node} exited:\n{out_tail}")

    def wait_durable(self, timeout: float = 10.0) -> None:
        """Wait until a kill -9 would bring back every quorum queue the node has.

        RabbitMQ's Raft library records each queue's server in ``names.dets``, and saves that
        file up to 500 ms after the queue was declared (it syncs it at once only since
        rabbitmq/ra#443, 2024). A queue declared in the last 500 ms before a kill -9 is missing
        from it afterwards, and RabbitMQ 3.10 (ra 2.2) then starts the queue as a new, empty
        Raft member that never elects a leader: every call on it times out. A server's data
        directory is named after its id, which the saved file holds."""

        def saved() -> bool:
            if not self.ra_dir.is_dir():
                return True
            ids = [p.name.encode() for p in self.ra_dir.iterdir() if p.is_dir()]
            names = self.ra_dir / "names.dets"
            data = names.read_bytes() if names.exists() else b""
            return all(uid in data for uid in ids)

        wait_until(saved, timeout, f"RabbitMQ {self.node} to save its quorum queue registry")

    def kill(self) -> None:
        """kill -9 of the Erlang VM and of every process it started; no shutdown at all."""
        if not self.running():
            return
        assert self.popen is not None
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        with_children = []
        os.killpg(self.pid, signal.SIGKILL)  # the VM leads its own process group
        for child in children:  # erl_child_setup and its helpers run in sessions of their own
            try:
                child.kill()
                with_children.append(child)
            except psutil.NoSuchProcess:
                pass
        self.popen.wait(10)

        def gone(p: psutil.Process) -> bool:  # or a zombie: its parent is gone, it is not ours
            try:
                return p.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        wait_until(lambda: all(gone(p) for p in with_children), 10, f"the processes of {self.node}")

    def restart(self) -> None:
        self.kill()
        self.start()

    def heal(self) -> None:
        """Running and answering again, whatever a test did to it."""
        if not self.running():
            self.start()

    def close(self) -> None:
        """Stop the node (SIGTERM: a clean shutdown; kill -9 when it takes too long)."""
        if self.running():
            assert self.popen is not None
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
