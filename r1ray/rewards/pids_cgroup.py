"""A pids cgroup per sandbox run: a kernel limit on its processes and threads that holds for root too
(RLIMIT_NPROC does not), and a complete list of its tasks for the final kill, including any that left
the run's session. Used where this process's cgroup in a pids hierarchy is writable (cgroup v1, or v2
with the pids controller delegated); :meth:`PidsCgroup.create` returns None elsewhere.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from functools import lru_cache
from pathlib import Path
from typing import Optional

_names = itertools.count()


class PidsCgroup:
    """The pids cgroup of one sandbox run."""

    _PREFIX = "r1ray-code-"

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, max_tasks: int) -> Optional[PidsCgroup]:
        """A new cgroup under this process's own, or None where there is no writable pids hierarchy."""
        base = _pids_hierarchy()
        if base is None:
            return None
        cls._remove_stale(base)
        cgroup = cls(base / f"{cls._PREFIX}{os.getpid()}-{next(_names)}")
        try:
            cgroup.path.mkdir()
            (cgroup.path / "pids.max").write_text(str(max_tasks))
        except OSError:
            cgroup.remove()
            return None
        return cgroup

    @classmethod
    def _remove_stale(cls, base: Path) -> None:
        """Remove the cgroups of processes that died mid-run (a reward worker killed on a timeout)."""
        for path in base.glob(f"{cls._PREFIX}*-*"):
            owner = path.name[len(cls._PREFIX) :].split("-")[0]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                stale = cls(path)
                stale.kill_tasks()
                stale.remove()

    def _tasks(self) -> list[int]:
        try:
            return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill_tasks(self) -> None:
        for _ in range(100):  # a task may fork between the read and the kill; a few rounds catch it
            tasks = self._tasks()
            if not tasks:
                return
            for pid in tasks:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        for _ in range(100):  # rmdir fails (EBUSY) until the killed tasks have exited
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)


@lru_cache(maxsize=1)
def _pids_hierarchy() -> Optional[Path]:
    """This process's cgroup in a writable pids hierarchy (cgroup v1, or v2 with pids delegated)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):  # v1
            base = Path("/sys/fs/cgroup/pids") / path.lstrip("/")
        elif controllers == "":  # v2: child cgroups get pids.max only if the controller is delegated
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            try:
                if "pids" not in (base / "cgroup.subtree_control").read_text().split():
                    continue
            except OSError:
                continue
        else:
            continue
        if (base / "cgroup.procs").exists() and os.access(base, os.W_OK):
            return base
    return None
