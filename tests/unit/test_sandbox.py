"""Task isolation: what the worker asks the kernel for, and how it reports what it got.

Probes that change the calling process (subreaper, rlimits) run in a fresh interpreter, so
the test process stays as it was.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from sje.config import WorkerSettings, load_settings
from sje.errors import ConfigError, WorkerError
from sje.worker import sandbox
from sje.worker.cgroups import ChildCgroup, PidsCgroups, pids_cgroup_candidates
from sje.worker.sandbox import Isolation, TaskLimits, TaskUser
from tests.support import sje_env

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = "8:pids:/\n1:cpu:/\n0::/\n"


@pytest.fixture(autouse=True)
def _no_sje_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("SJE_")]:
        monkeypatch.delenv(name)


def _run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], env=sje_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# -- cgroups -------------------------------------------------------------------------------


def test_cgroup_candidates_on_a_hybrid_host_put_v2_before_the_v1_pids_hierarchy() -> None:
    assert pids_cgroup_candidates(HYBRID_MOUNTINFO, HYBRID_CGROUP) == [
        (2, Path("/sys/fs/cgroup/unified")),
        (1, Path("/sys/fs/cgroup/pids")),
    ]


def test_cgroup_candidate_on_a_pure_v2_host_is_the_process_own_cgroup() -> None:
    mountinfo = "29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"
    proc_cgroup = "0::/system.slice/sje-worker.service\n"
    assert pids_cgroup_candidates(mountinfo, proc_cgroup) == [
        (2, Path("/sys/fs/cgroup/system.slice/sje-worker.service"))
    ]


def test_cgroup_candidates_follow_the_mount_root_and_skip_cgroups_outside_it() -> None:
    mountinfo = "50 40 0:36 /docker/abc /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
    assert pids_cgroup_candidates(mountinfo, "3:pids:/docker/abc/job\n") == [
        (1, Path("/sys/fs/cgroup/pids/job"))
    ]
    assert pids_cgroup_candidates(mountinfo, "3:pids:/elsewhere\n") == []


def test_no_cgroup_candidate_without_a_pids_hierarchy_or_with_a_garbled_table() -> None:
    mountinfo = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\nnonsense line\n"
    assert pids_cgroup_candidates(mountinfo, "1:cpu:/\n") == []
    assert pids_cgroup_candidates("", "") == []


def test_cgroup_mount_points_with_spaces_are_unescaped() -> None:
    mountinfo = r"39 31 0:36 / /mnt/cg\040pids rw - cgroup cgroup rw,pids" + "\n"
    assert pids_cgroup_candidates(mountinfo, "8:pids:/\n") == [(1, Path("/mnt/cg pids"))]


def test_child_cgroup_is_created_with_its_limit_and_removed(tmp_path: Path) -> None:
    cgroups = PidsCgroups(tmp_path, 1)
    limited = cgroups.create("123-1", 16)
    assert limited.path == tmp_path / "sje-123-1"
    assert (limited.path / "pids.max").read_text() == "16"
    assert (cgroups.create("123-2", 0).path / "pids.max").read_text() == "max"
    (limited.path / "pids.max").unlink()
    assert limited.remove() is True
    assert not limited.path.exists()
    assert limited.remove() is True, "an absent cgroup counts as removed"


def test_child_cgroup_kill_kills_every_member_but_the_caller(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        group = ChildCgroup(tmp_path)
        (tmp_path / "cgroup.procs").write_text(f"{sleeper.pid}\n{os.getpid()}\n")
        assert group.members() == [sleeper.pid, os.getpid()]
        group.kill()
        assert sleeper.wait(10) == -9
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stale_cgroups_of_dead_workers_are_emptied_and_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = PidsCgroups(tmp_path, 1)
    (tmp_path / f"sje-{dead.pid}-1").mkdir()
    (tmp_path / f"sje-{os.getppid()}-1").mkdir()  # a live worker's: left alone
    (tmp_path / "unrelated").mkdir()
    mine.remove_stale(own_pid=os.getpid())
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"sje-{os.getppid()}-1", "unrelated"]


def test_a_pids_cgroup_found_here_takes_its_limit_and_its_members() -> None:
    code = (
        "import json, os, subprocess\n"
        "from sje.worker.cgroups import find_pids_cgroups\n"
        "cgroups = find_pids_cgroups(os.getpid())\n"
        "if cgroups is None:\n"
        "    print('null'); raise SystemExit\n"
        "group = cgroups.create(f'{os.getpid()}-test', 16)\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "(group.path / 'cgroup.procs').write_text(str(child.pid))\n"
        "seen = {'max': (group.path / 'pids.max').read_text().strip(),\n"
        "        'members': group.members() == [child.pid]}\n"
        "group.kill()\n"
        "seen['killed'] = child.wait(10) == -9\n"
        "seen['removed'] = group.remove()\n"
        "print(json.dumps(seen))\n"
    )
    seen = json.loads(_run_python(code))
    if seen is None:  # no writable pids cgroup here: the pool falls back (see prepare)
        return
    assert seen == {"max": "16", "members": True, "killed": True, "removed": True}


# -- user, network, subreaper, environment --------------------------------------------------


def test_task_user_is_resolved_or_refused_with_a_clear_reason() -> None:
    nobody = pwd.getpwnam("nobody")
    assert sandbox.resolve_task_user(None, 0) is None
    assert sandbox.resolve_task_user("", 0) is None
    assert sandbox.resolve_task_user("nobody", nobody.pw_uid) is None, "already that user"
    assert sandbox.resolve_task_user("nobody", 0) == TaskUser(
        "nobody", nobody.pw_uid, nobody.pw_gid, nobody.pw_dir
    )
    with pytest.raises(WorkerError, match=r"^task-user 'no-such-user-x' does not exist"):
        sandbox.resolve_task_user("no-such-user-x", 0)
    with pytest.raises(
        WorkerError, match=r"needs the worker to run as root \(it runs as uid 1000\)"
    ):
        sandbox.resolve_task_user("nobody", 1000)


def test_network_none_asks_for_a_user_namespace_only_when_not_root() -> None:
    assert sandbox.network_flags("allow", 0) == 0
    assert sandbox.network_flags("none", 0) == sandbox.CLONE_NEWNET
    assert sandbox.network_flags("none", 1000) == sandbox.CLONE_NEWNET | sandbox.CLONE_NEWUSER


def test_unshare_probe_reports_the_kernel_refusal_as_text() -> None:
    assert sandbox.unshare_problem(1) == os.strerror(errno.EINVAL)
    problem = sandbox.unshare_problem(sandbox.network_flags("none", os.geteuid()))
    assert problem is None or isinstance(problem, str)
    if os.geteuid() == 0 and sys.platform.startswith("linux"):
        assert problem is None, "root on Linux gets a network namespace"


def test_subreaper_is_available_on_linux() -> None:
    code = "from sje.worker.sandbox import set_child_subreaper; print(set_child_subreaper())"
    assert _run_python(code) == str(sys.platform.startswith("linux"))


def test_scrubbed_environment_keeps_only_the_allow_list_and_never_sje_variables() -> None:
    environ = {
        "PATH": "/bin",
        "HOME": "/root",
        "LC_ALL": "C.UTF-8",
        "LANG": "C",
        "SJE_BROKER_URL": "redis://:pw@host/0",
        "SJE_TOKEN": "t",
        "AWS_SECRET_ACCESS_KEY": "k",
        "APP_MODE": "prod",
        "APP_LEVEL": "3",
    }
    assert sandbox.scrub_env(environ, []) == {
        "PATH": "/bin",
        "HOME": "/root",
        "LC_ALL": "C.UTF-8",
        "LANG": "C",
    }
    kept = sandbox.scrub_env(environ, ["APP_*", "SJE_TOKEN", "SJE_*"], home="/nonexistent")
    assert sorted(kept) == ["APP_LEVEL", "APP_MODE", "HOME", "LANG", "LC_ALL", "PATH"]
    assert kept["HOME"] == "/nonexistent"


def test_death_hint_names_the_cpu_limit_for_sigxcpu() -> None:
    assert "task-cpu-seconds" in sandbox.death_hint(-24)
    assert "out of memory" in sandbox.death_hint(-9)
    assert "out of memory" in sandbox.death_hint(1)


# -- what is in force ----------------------------------------------------------------------


def test_process_guard_prefers_the_cgroup_then_rlimit_for_non_root_then_the_watchdog(
    tmp_path: Path,
) -> None:
    limits = TaskLimits(max_processes=64)
    cgroups = PidsCgroups(tmp_path, 2)
    assert sandbox.choose_process_guard(TaskLimits(), cgroups, 0, 2) == ("none", 0)
    assert sandbox.choose_process_guard(limits, cgroups, 0, 2) == ("cgroup", 0)
    assert sandbox.choose_process_guard(limits, None, 0, 2) == ("watchdog", 0)
    guard, nproc = sandbox.choose_process_guard(limits, None, os.getuid() or 65534, 2)
    assert guard == "rlimit" and nproc >= 128


def test_defaults_come_from_worker_settings() -> None:
    limits = TaskLimits.from_settings(WorkerSettings())
    assert limits == TaskLimits(
        memory_mb=0, cpu_seconds=0, max_files=4096, max_processes=512, nice=5, network="allow"
    )


def test_isolation_line_says_what_is_in_force(tmp_path: Path) -> None:
    limits = TaskLimits(memory_mb=256, cpu_seconds=5, max_files=4096, max_processes=64, nice=5)
    with_cgroup = Isolation(
        limits,
        subreaper=True,
        euid=0,
        cgroups=PidsCgroups(tmp_path, 1),
        process_guard="cgroup",
        max_files=4096,
    )
    assert with_cgroup.describe() == (
        "own process group, subreaper, memory 256 MB, cpu 5 s per task, files 4096, "
        "processes 64 per child (pids cgroup), uid root, nice +5, env scrubbed, network allowed"
    )
    user = TaskUser("nobody", 65534, 65534, "/nonexistent")
    fallback = Isolation(
        TaskLimits(max_processes=64, network="none"),
        subreaper=False,
        euid=0,
        user=user,
        process_guard="watchdog",
        unshare=sandbox.CLONE_NEWNET,
    )
    line = fallback.describe()
    for part in (
        "no subreaper",
        "memory unlimited",
        "cpu unlimited",
        "files unlimited",
        "processes 64 per child (watchdog; no writable pids cgroup)",
        "uid nobody",
        "nice unchanged",
        "no network",
    ):
        assert part in line
    rlimit = Isolation(TaskLimits(max_processes=64), True, 1000, process_guard="rlimit", nproc=300)
    assert "processes 300 for the user (rlimit" in rlimit.describe()


def test_child_spec_and_environment_carry_the_user_and_the_cgroup(tmp_path: Path) -> None:
    user = TaskUser("nobody", 65534, 65534, "/nonexistent")
    isolation = Isolation(TaskLimits(cpu_seconds=3, env=("APP_*",)), True, 0, user=user)
    spec = isolation.child_spec(ChildCgroup(tmp_path))
    assert spec["cgroup"] == str(tmp_path)
    assert (spec["uid"], spec["gid"], spec["user"], spec["cpu_seconds"]) == (
        65534,
        65534,
        "nobody",
        3,
    )
    assert isolation.child_spec(None)["cgroup"] is None
    env = isolation.child_env({"HOME": "/root", "APP_X": "1", "SJE_SECRET": "s"})
    assert env == {"HOME": "/nonexistent", "APP_X": "1"}


def test_a_child_applies_its_limits_to_itself() -> None:
    code = (
        "import json, os, resource\n"
        "from sje.worker.child import enter_sandbox\n"
        "before = os.nice(0)\n"
        "problem = enter_sandbox({'memory_mb': 512, 'max_files': 64, 'nice': 3})\n"
        "print(json.dumps({'problem': problem, 'nice': os.nice(0) - before,\n"
        "  'as': resource.getrlimit(resource.RLIMIT_AS),\n"
        "  'files': resource.getrlimit(resource.RLIMIT_NOFILE)}))\n"
    )
    seen = json.loads(_run_python(code))
    assert seen == {"problem": None, "nice": 3, "as": [512 << 20] * 2, "files": [64, 64]}


def test_the_cpu_limit_is_rearmed_from_the_cpu_already_used() -> None:
    code = (
        "import json, resource\n"
        "from sje.worker.child import arm_cpu_limit\n"
        "arm_cpu_limit(2)\n"
        "print(json.dumps(resource.getrlimit(resource.RLIMIT_CPU)))\n"
    )
    soft, hard = json.loads(_run_python(code))
    assert 2 <= soft <= 4
    assert hard == (soft + 2 if os.geteuid() == 0 else resource.RLIM_INFINITY)


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SJE_TASK_ENV", "APP_MODE,SJE_TOKEN", r"SJE_TOKEN cannot be passed to tasks"),
        ("SJE_TASK_MEMORY_MB", "64", r"use 0 \(unlimited\) or at least 128"),
        ("SJE_TASK_MAX_PROCESSES", "4", r"use 0 \(unlimited\) or at least 16"),
        ("SJE_TASK_NETWORK", "off", r"'task-network'"),
        ("SJE_TASK_NICE", "20", r"'task-nice'"),
    ],
)
def test_bad_isolation_settings_are_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=expected) as error:
        load_settings(WorkerSettings, None)
    assert f"environment variable {variable}" in error.value.message
    assert "\n" not in error.value.message


def test_isolation_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SJE_TASK_MEMORY_MB", "2048")
    monkeypatch.setenv("SJE_TASK_ENV", "APP_MODE, LD_LIBRARY_PATH")
    monkeypatch.setenv("SJE_TASK_NETWORK", "none")
    monkeypatch.setenv("SJE_TASK_USER", "nobody")
    s = load_settings(WorkerSettings, None)
    assert (s.task_memory_mb, s.task_env, s.task_network, s.task_user) == (
        2048,
        ["APP_MODE", "LD_LIBRARY_PATH"],
        "none",
        "nobody",
    )


def test_worker_refuses_network_none_when_the_kernel_says_no(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sandbox, "unshare_problem", lambda flags: "Operation not permitted")
    with pytest.raises(WorkerError) as error:
        sandbox.prepare(TaskLimits(network="none"), 2)
    assert error.value.message == (
        "task-network is none but this machine cannot give tasks their own network namespace "
        "(unshare: Operation not permitted); run the worker as root or enable user namespaces, "
        "or set task-network: allow."
    )
