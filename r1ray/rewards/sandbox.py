"""Running an untrusted Python program in a locked-down child process (for the ``code`` reward).

Each run gets a fresh interpreter (``python -I -B``: no PYTHON* variables, no user site, no bytecode
written) in a fresh temporary directory (its cwd, HOME and TMPDIR; removed afterwards), with an
environment that holds nothing of the parent's (no tokens, no proxies). Stderr is discarded.

Enforced by the kernel (holds whatever the program does):

- wall clock ``timeout_s``: the parent kills everything the run started (below);
- CPU time ``cpu_s`` (RLIMIT_CPU), address space ``memory_mb`` (RLIMIT_AS), size of each file written
  ``max_file_bytes`` (RLIMIT_FSIZE), no core dumps; all per process;
- output: the parent reads at most ``max_output_bytes`` of stdout, then ends the run (failed);
- processes and threads ``max_processes``: a pids cgroup where a pids hierarchy is writable (typically
  when running as root); RLIMIT_NPROC otherwise. RLIMIT_NPROC alone is not enough: it counts every
  process of the user, and root is exempt from it. As root without a writable cgroup, no kernel limit
  on processes applies and the audit hook below refuses ``os.fork`` instead;
- nothing left behind: where the kernel allows it (root, or unprivileged user namespaces) the program
  runs in new PID and network namespaces. Everything in the PID namespace dies with it, whatever it did
  (``setsid``, double fork), and the network namespace has no interface but a loopback that is down
  (without it, only the audit hook below keeps the program off the network). In every case the run
  also has its own session, whose process group is killed at the end, the cgroup's tasks are killed,
  and the sandbox is SIGKILLed if the thread that started it exits (a reward worker killed on a
  timeout; so call :func:`run_python` from a thread that outlives the run, as the worker's main thread
  does).

Best effort only, by an audit hook (``sys.addaudithook``) installed just before the program starts:
refusing network calls (connect, bind, sendto, DNS), starting other programs (exec, spawn, system,
subprocess), loading C functions (``ctypes`` dlopen/dlsym), signalling other processes, opening files for
writing outside the directory, and reading outside it except the Python installation (stdlib and
site-packages, read-only). An audit hook is no security boundary: code that corrupts the interpreter's
memory (``ctypes.memmove``) can disable it. Reading files is not blocked by the kernel at all, and
the number of files written (each capped at ``max_file_bytes``) is not limited. For model output that
may be hostile, run the reward workers in a container or VM with no secrets, no network and a disk
quota; this module then keeps one bad sample from hurting the run or the machine.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

from r1ray.rewards.pids_cgroup import PidsCgroup

_CHILD = str(Path(__file__).with_name("sandbox_child.py"))
_PROGRAM = "solution.py"
_READ_CHUNK = 65536
DIR_PREFIX = "r1ray-code-"  # + the owner's pid: a killed owner's leftovers are found and removed


class SandboxError(RuntimeError):
    """The sandbox itself failed before the program started: not the program's fault, so not a score."""


@dataclass(frozen=True)
class Limits:
    """Per-run limits (see the module docstring for how each is enforced)."""

    timeout_s: float = 5.0
    cpu_s: float = 5.0
    memory_mb: int = 512
    max_output_bytes: int = 64 * 1024
    max_processes: int = 16
    max_file_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1e9:
                raise ValueError(f"sandbox limit {name}={value!r}: must be a positive number")


@dataclass(frozen=True)
class RunResult:
    """What one run did. ``exit_code`` is the program's status (128 + N: killed by signal N), None when
    the parent ended the run (time limit or too much output)."""

    exit_code: Optional[int]
    stdout: bytes
    timed_out: bool = False
    output_overflow: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.output_overflow


def run_python(source: str, stdin: str = "", limits: Limits = Limits()) -> RunResult:
    """Run ``source`` as a program with ``stdin`` as its input.

    Never raises for what the program does; raises :class:`SandboxError` when the sandbox could not set
    itself up (a time limit shorter than interpreter start-up, a broken environment): scoring such a run
    0 would blame the program, and if it happened on every sample, silently teach nothing.
    """
    _remove_stale_dirs()
    root = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-")).resolve()
    cgroup = PidsCgroup.create(limits.max_processes + 2)  # + the bootstrap and the namespace's init
    try:
        (root / _PROGRAM).write_text(source, encoding="utf-8", errors="surrogatepass")
        (root / "stdin.txt").write_text(stdin, encoding="utf-8", errors="surrogatepass")
        status_read, status_write = os.pipe()
        config = json.dumps({**_config(root, limits, cgroup), "status_fd": status_write})
        try:
            with open(root / "stdin.txt", "rb") as stdin_file:
                process = subprocess.Popen(
                    [sys.executable, "-I", "-B", "-X", "utf8", _CHILD, config],
                    cwd=root,
                    env=_environment(root),
                    stdin=stdin_file,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    pass_fds=(status_write,),
                    start_new_session=True,  # its own process group, killed as a whole below
                )
        except BaseException:
            os.close(status_read)
            raise
        finally:
            os.close(status_write)
        try:
            result = _collect(process, limits)
        finally:
            _kill_all(process, cgroup)
            status = _read_to_end(status_read)
        if status != b"started":
            reason = status.decode(errors="replace").strip() or f"exit code {process.returncode}"
            raise SandboxError(f"the sandbox did not start the program: {reason[-800:]}")
        return result
    finally:
        if cgroup is not None:
            cgroup.remove()
        shutil.rmtree(root, ignore_errors=True)


def _read_to_end(fd: int) -> bytes:
    """The status pipe's contents (its writers are dead by now, so this ends), and close it."""
    data = b""
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read(_READ_CHUNK):
            data += chunk
    return data


def _remove_stale_dirs() -> None:
    """Remove the directories of runs whose process died mid-run (a reward worker killed on a timeout)."""
    for path in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*-*"):
        owner = path.name[len(DIR_PREFIX) :].split("-")[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            shutil.rmtree(path, ignore_errors=True)


def _config(root: Path, limits: Limits, cgroup: Optional[PidsCgroup]) -> dict:
    return {
        "root": str(root),
        "program": _PROGRAM,
        "read_roots": _python_dirs(),
        "parent_pid": os.getpid(),
        "cgroup_procs": str(cgroup.path / "cgroup.procs") if cgroup else None,
        # Forking is allowed only where the kernel counts processes: root ignores RLIMIT_NPROC.
        "allow_fork": cgroup is not None or os.geteuid() != 0,
        "cpu_s": max(1, round(limits.cpu_s)),
        "memory_bytes": int(limits.memory_mb * 2**20),
        "file_bytes": int(limits.max_file_bytes),
        "max_processes": int(limits.max_processes),
    }


@lru_cache(maxsize=1)
def _python_dirs() -> list[str]:
    """The installation's stdlib and site-packages, which imports read (not the ``.pth`` additions: an
    editable install would otherwise open the project's source tree)."""
    paths = sysconfig.get_paths()
    return sorted({os.path.realpath(paths[key]) for key in ("stdlib", "platstdlib", "purelib", "platlib")})


def _environment(root: Path) -> dict[str, str]:
    home = str(root)
    # One BLAS thread: numpy would otherwise start one per core and hit max_processes.
    threads = {key: "1" for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {"PATH": os.defpath, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8", **threads}


def _collect(process: subprocess.Popen, limits: Limits) -> RunResult:
    """Read stdout (never more than the cap) until EOF, the deadline, or the cap; then the exit status."""
    deadline = time.monotonic() + limits.timeout_s
    out = bytearray()
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return RunResult(None, bytes(out), timed_out=True)
            if not selector.select(remaining):
                continue
            chunk = os.read(process.stdout.fileno(), _READ_CHUNK)
            if not chunk:
                break  # every writer is gone (or closed stdout)
            out += chunk
            if len(out) > limits.max_output_bytes:
                return RunResult(None, bytes(out[: limits.max_output_bytes]), output_overflow=True)
    try:
        code = process.wait(max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        return RunResult(None, bytes(out), timed_out=True)
    return RunResult(128 - code if code < 0 else code, bytes(out))


def _kill_all(process: subprocess.Popen, cgroup: Optional[PidsCgroup]) -> None:
    """SIGKILL the run's process group and cgroup (the PID namespace dies with its init), and reap."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty
    if cgroup is not None:
        cgroup.kill_tasks()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()
