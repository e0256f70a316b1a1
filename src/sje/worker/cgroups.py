"""Per-child pids cgroups: a process limit the kernel enforces, and a membership no process
can leave by setsid() or double forking.

``find_pids_cgroups`` finds, once per worker, a directory of a cgroup hierarchy with the pids
controller (v2 first, else v1) where the worker may create cgroups; the pool then makes one
cgroup per child, which the child joins before it imports task code.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

_CGROUP_PREFIX = "sje-"
_KILL_ROUNDS = 20


@dataclass(frozen=True)
class ChildCgroup:
    """One child's cgroup: every process the child starts stays in it, setsid() or not."""

    path: Path

    def members(self) -> list[int]:
        try:
            text = (self.path / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def kill(self) -> None:
        """SIGKILL every member; repeated because members may fork while being killed."""
        switch = self.path / "cgroup.kill"  # cgroup v2 since Linux 5.14: kills atomically
        if switch.exists():
            with contextlib.suppress(OSError):
                switch.write_text("1")
        me = os.getpid()
        for _ in range(_KILL_ROUNDS):
            pids = [pid for pid in self.members() if pid != me]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def remove(self) -> bool:
        """Delete the cgroup; False while it still has members (retry later)."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class PidsCgroups:
    """A writable directory of a pids cgroup hierarchy where per-child cgroups are made."""

    root: Path
    version: int

    def create(self, name: str, max_pids: int) -> ChildCgroup:
        path = self.root / f"{_CGROUP_PREFIX}{name}"
        path.mkdir(exist_ok=True)
        (path / "pids.max").write_text(str(max_pids) if max_pids else "max")
        return ChildCgroup(path)

    def remove_stale(self, own_pid: int) -> None:
        """Empty and delete cgroups left by workers that died (or by an earlier us)."""
        for path in self.root.glob(f"{_CGROUP_PREFIX}*-*"):
            owner = _owner_pid(path.name)
            if owner is None or (owner != own_pid and _is_alive(owner)):
                continue
            group = ChildCgroup(path)
            group.kill()
            group.remove()


def _owner_pid(name: str) -> int | None:
    head = name.removeprefix(_CGROUP_PREFIX).split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unescape(path: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def pids_cgroup_candidates(mountinfo: str, proc_cgroup: str) -> list[tuple[int, Path]]:
    """This process's own cgroup directory in each hierarchy that may offer ``pids.max``.

    ``mountinfo`` is the text of /proc/self/mountinfo and ``proc_cgroup`` of /proc/self/cgroup;
    cgroup v2 comes first, then a v1 hierarchy with the pids controller.
    """
    own_v1 = own_v2 = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            own_v2 = parts[2]
        elif "pids" in parts[1].split(","):
            own_v1 = parts[2]
    found: list[tuple[int, Path]] = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        root, mount = _unescape(fields[3]), _unescape(fields[4])
        fstype, options = tail[0], tail[2].split(",")
        if fstype == "cgroup2" and own_v2 is not None:
            own, version = own_v2, 2
        elif fstype == "cgroup" and "pids" in options and own_v1 is not None:
            own, version = own_v1, 1
        else:
            continue
        relative = os.path.relpath(own, root)
        if relative.startswith(".."):
            continue
        found.append((version, Path(mount) / relative))
    return sorted(set(found), key=lambda item: (-item[0], str(item[1])))


def _v2_offers_pids(directory: Path, own_pid: int) -> bool:
    """Whether children of ``directory`` get pids.max, enabling the controller if needed."""
    try:
        if "pids" not in (directory / "cgroup.controllers").read_text().split():
            return False
        if "pids" in (directory / "cgroup.subtree_control").read_text().split():
            return True
        _leave_for_a_leaf(directory, own_pid)
        (directory / "cgroup.subtree_control").write_text("+pids")
    except OSError:
        return False
    return True


def _leave_for_a_leaf(directory: Path, own_pid: int) -> None:
    """Move this process, when alone in ``directory``, into a leaf cgroup of its own.

    cgroup v2 gives a cgroup's children no controller while the cgroup itself has processes
    (the usual case of a service's cgroup, even delegated); processes of others stay put.
    """
    if [int(p) for p in (directory / "cgroup.procs").read_text().split()] != [own_pid]:
        return
    leaf = directory / f"{_CGROUP_PREFIX}{own_pid}-worker"
    leaf.mkdir(exist_ok=True)
    (leaf / "cgroup.procs").write_text(str(own_pid))


def find_pids_cgroups(own_pid: int) -> PidsCgroups | None:
    """The first hierarchy where this worker can create a cgroup with a working pids.max."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    for version, directory in pids_cgroup_candidates(mountinfo, proc_cgroup):
        if version == 2 and not _v2_offers_pids(directory, own_pid):
            continue
        cgroups = PidsCgroups(directory, version)
        try:
            probe = cgroups.create(f"{own_pid}-probe", 1)
        except OSError:
            continue
        probe.remove()
        cgroups.remove_stale(own_pid)
        return cgroups
    return None
