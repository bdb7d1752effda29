"""One run per output directory: `<output_dir>/RUN_LOCK.json`, held for the whole run.

Two runs started into the same directory (a sweep script, a resubmitted job) would both pass the check for
an earlier run's outputs, write metrics.jsonl and `step_*` checkpoints under the same names, and both end
with `done:`. So a run creates the lock file atomically (O_CREAT|O_EXCL) with its holder, and a second run
is refused with one line naming it:

    {"host": "node-3", "pid": 4121, "pid_started": 1714551000.2, "pid_namespace": "pid:[4026531836]",
     "started": "2024-05-01T10:10:00+00:00", "command": "r1ray train --config ..."}

A crashed run cannot leave the lock behind forever: on the same host (and PID namespace) a lock whose
process is gone, or whose pid now belongs to a process started at another time (pids are reused), is taken
over with a warning. A lock held on another host is never taken over, since its process cannot be seen
from here; the message says how to remove it. The same process may take the lock again (a pipeline's
stages nest in its directory); it is released when the outermost holder ends, however it ends, and the
directories it created are removed again when nothing else was written into them.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

import psutil

logger = logging.getLogger(__name__)

LOCK_FILE = "RUN_LOCK.json"
# A lock file is written right after it is created; a reader that finds it empty waits this long for it.
_WRITE_GRACE_S = 2.0
# Create-time jitter between two reads of the same process's start (psutil derives it from clock ticks).
_SAME_START_S = 1.0
# Lock files this process holds -> how many times it took each (stages nest under a pipeline's root).
_HELD: dict[Path, int] = {}


class OutputDirInUse(RuntimeError):
    """Another run holds the output directory; the message names it and what to do."""


def _pid_namespace() -> str:
    """The PID namespace of this process: pids seen in another one (a container) mean other processes."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def this_holder(command: str) -> dict:
    """The lock record of this process."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": psutil.Process().create_time(),
            "pid_namespace": _pid_namespace(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command}


def _same_machine(holder: dict) -> bool:
    return holder.get("host") == socket.gethostname() and holder.get("pid_namespace", "") == _pid_namespace()


def holder_alive(holder: dict) -> bool:
    """Whether the holder's process still runs: its pid exists, is no zombie, and started when it did."""
    try:
        process = psutil.Process(int(holder["pid"]))
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        started = holder.get("pid_started")
        return started is None or abs(process.create_time() - float(started)) < _SAME_START_S
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True                       # another user's process: it exists, and may be the holder


def _is_record(text: str) -> bool:
    try:
        holder = json.loads(text)
    except ValueError:
        return False
    return isinstance(holder, dict) and isinstance(holder.get("pid"), int)


def describe(holder: dict) -> str:
    command = " ".join(str(holder.get("command", "?")).split())
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}: "
            f"{command}")


class RunLock:
    """`with RunLock(out_dir): ...` holds `out_dir/RUN_LOCK.json`; OutputDirInUse if a live run holds it."""

    def __init__(self, out_dir: Path, command: str | None = None):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_FILE
        self.key = self.path.resolve()    # resolved once: the working directory may change during the run
        self.command = command if command is not None else shlex.join(sys.argv)
        self.record: dict | None = None
        self.created: list[Path] = []     # directories made for the lock, deepest first

    def __enter__(self) -> "RunLock":
        if self.key in _HELD:
            _HELD[self.key] += 1
            return self
        self._acquire()
        _HELD[self.key] = 1
        return self

    def __exit__(self, *exc) -> None:
        _HELD[self.key] -= 1
        if _HELD[self.key] == 0:
            del _HELD[self.key]
            self._release()

    def _acquire(self) -> None:
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"trainer.output_dir {self.out_dir}: is a file; choose a directory")
        self.record = this_holder(self.command)
        text = json.dumps(self.record)
        try:
            self._make_dirs()
            created = self._create(text)
        except FileExistsError:
            raise
        except OSError as exc:            # read-only filesystem, no permission, a path under /sys or /proc
            raise ValueError(f"trainer.output_dir {self.out_dir}: cannot write there ({exc.strerror or exc}); "
                             f"choose a directory this user can write to") from None
        if created:
            return
        for _ in range(3):                # a lock that vanishes or is taken over meanwhile: look again
            if self._create(text):
                return
            seen = self._read()
            if seen is None:
                continue
            holder = json.loads(seen)
            if not _same_machine(holder):
                raise OutputDirInUse(
                    f"trainer.output_dir {self.out_dir}: in use by a run on another host ({describe(holder)}); "
                    f"choose another trainer.output_dir, or if that run is no longer alive, delete {self.path}")
            # A live holder with this process's own pid is a lock an earlier RunLock here left: take it.
            if holder_alive(holder) and holder.get("pid") != os.getpid():
                raise OutputDirInUse(f"trainer.output_dir {self.out_dir}: in use by another run ({describe(holder)}); "
                                     f"wait for it to end or choose another trainer.output_dir")
            logger.warning("trainer.output_dir %s: taking over the lock of a run that is gone (%s)", self.out_dir,
                           describe(holder))
            self._remove_if_unchanged(seen)
        raise OutputDirInUse(f"trainer.output_dir {self.out_dir}: other runs keep taking {self.path}; "
                             f"choose another trainer.output_dir")

    def _make_dirs(self) -> None:
        missing = [d for d in (self.out_dir, *self.out_dir.parents) if not d.exists()]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.created = missing

    def _create(self, text: str) -> bool:
        """Create the lock file with `text` unless it exists; whether this call created it."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read(self) -> str | None:
        """The lock file's JSON text, or None when it vanished; one that stays unreadable is refused, as its
        holder cannot be told."""
        deadline = time.monotonic() + _WRITE_GRACE_S
        while True:
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                return None
            if _is_record(text):
                return text
            if time.monotonic() > deadline:
                raise OutputDirInUse(f"trainer.output_dir {self.out_dir}: {self.path} is not a readable lock; "
                                     f"if no run uses this directory, delete it")
            time.sleep(0.05)

    def _remove_if_unchanged(self, seen: str) -> None:
        """Remove the lock only if it still holds `seen`: of two runs that both find it stale, the slower
        one must not remove the lock the faster one has just taken."""
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if aside.read_text() != seen:
                os.link(aside, self.path)          # put a live run's lock back (fails if a third run has one)
        except OSError:
            pass
        aside.unlink(missing_ok=True)

    def _release(self) -> None:
        try:
            still_mine = json.loads(self.path.read_text()) == self.record
        except (OSError, ValueError):
            still_mine = False
        if not still_mine:
            logger.warning("trainer.output_dir %s: %s no longer names this run; left as it is", self.out_dir,
                           self.path)
            return
        self.path.unlink()
        for directory in self.created:     # nothing written but the lock: leave no trace
            try:
                directory.rmdir()
            except OSError:
                break


Result = TypeVar("Result")


def holds_output_dir(run: Callable[..., Result]) -> Callable[..., Result]:
    """`run(cfg, ...)` holding the RunLock of cfg.trainer.output_dir for as long as it runs."""
    @functools.wraps(run)
    def locked(cfg, *args, **kwargs) -> Result:
        with RunLock(Path(cfg.trainer.output_dir)):
            return run(cfg, *args, **kwargs)
    return locked
