"""The first code to run in a sandbox process (see :mod:`r1ray.rewards.sandbox`): it applies the limits, then
runs the untrusted program.

Run as ``python -I -B sandbox_child.py CONFIG_JSON`` with the sandbox directory as cwd. It imports only the
standard library (never r1ray: ``-I`` keeps the project off ``sys.path``), and the order of the steps
matters: kernel limits and namespaces first, while this code is still trusted, and the audit hook last,
just before the program starts, because from then on the program runs with the same powers as this code.

Process layout when a new PID namespace is allowed::

    bootstrap (parent's namespace) -> init (pid 1 of the new namespace) -> program (pid 2)

The extra ``init`` exists because pid 1 of a namespace ignores signals it has no handler for, which would
make the CPU limit's SIGXCPU a no-op on the program; and when ``init`` exits the kernel kills everything
left in the namespace, so nothing the program started can outlive it.
"""

import ctypes
import json
import os
import resource
import runpy
import signal
import sys
import traceback

_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_PR_SET_PDEATHSIG = 1
_O_WRITE = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

# Starting another program would leave the audit hook behind (it lives in this interpreter only).
_EXEC_EVENTS = frozenset(
    {"os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.forkpty", "subprocess.Popen", "pty.spawn"}
)
# dlopen/dlsym hand out any C function (fork, execve, connect) without passing through an audit event.
_NATIVE_EVENTS = frozenset({"ctypes.dlopen", "ctypes.dlsym"})
_NET_EVENTS = frozenset(
    {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
     "socket.gethostbyname", "socket.gethostbyaddr", "socket.gethostbyname_ex"}
)
# Events whose path arguments the program may only point inside its directory.
_WRITE_PATH_EVENTS = frozenset(
    {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
     "os.truncate", "os.utime", "os.chflags", "os.lchmod", "os.setxattr", "os.removexattr", "shutil.rmtree"}
)
_READ_PATH_EVENTS = frozenset({"os.listdir", "os.scandir", "os.getxattr", "os.listxattr"})
# The hook keeps its allowed directories in a closure; the gc walkers would let the program find and edit it.
_INTROSPECTION_EVENTS = frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents"})


def _libc_call(name, *args):
    """A libc function through ctypes (``os.unshare`` only exists from Python 3.12); True on success."""
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)(*args) == 0
    except (OSError, AttributeError):
        return False


def _die_with_parent():
    """Be SIGKILLed when the process that started us dies (a reward worker killed for a timeout)."""
    _libc_call("prctl", _PR_SET_PDEATHSIG, signal.SIGKILL)


def _limit(which, soft, hard=None):
    """Lower a resource limit; never above the current hard limit, which only root may raise."""
    _, ceiling = resource.getrlimit(which)
    hard = soft if hard is None else hard
    if ceiling != resource.RLIM_INFINITY:
        soft, hard = min(soft, ceiling), min(hard, ceiling)
    resource.setrlimit(which, (soft, hard))


def _set_limits(cfg):
    cpu = int(cfg["cpu_s"])
    _limit(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU at the soft limit, SIGKILL a second later
    _limit(resource.RLIMIT_AS, cfg["memory_bytes"])
    _limit(resource.RLIMIT_FSIZE, cfg["file_bytes"])
    _limit(resource.RLIMIT_CORE, 0)


def _unshare():
    """New network and PID namespaces where the kernel allows them; False (nothing changed) otherwise.

    Unprivileged users may create them inside a new user namespace; root needs none."""
    flags = _CLONE_NEWPID | _CLONE_NEWNET | (_CLONE_NEWUSER if os.geteuid() != 0 else 0)
    return _libc_call("unshare", flags)


def _inside(path, roots):
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _audit_hook(root, read_roots, allow_fork):
    """Refuse what the kernel limits do not cover. Best effort: code that corrupts memory through ctypes can
    remove the hook, so this is no security boundary (see the sandbox module docstring)."""
    write_roots, read_roots = (root, os.devnull), (root, os.devnull, *read_roots)
    me = os.getpid()

    def refuse(event, args):
        raise PermissionError(f"sandbox: {event}{args!r} is not allowed")

    def check_path(event, path, roots):
        # Only exact str/bytes: a str subclass or a PathLike runs the program's own code inside this hook
        # (``__fspath__``, overridden methods), which could answer differently here and in the real call.
        if type(path) is int:
            return  # an already open descriptor (``open(0)`` for stdin)
        if type(path) is bytes:
            path = os.fsdecode(path)
        if type(path) is not str:
            refuse(event, (f"a {type(path).__name__} path; pass file paths as str",))
        # Symlinks and ".." resolved: a link to /etc/passwd, or "../x", is outside.
        if not _inside(os.path.realpath(path), roots):
            refuse(event, (path,))

    def hook(event, args):
        if event in _EXEC_EVENTS or event in _NATIVE_EVENTS or event in _NET_EVENTS:
            refuse(event, args)
        elif event in _INTROSPECTION_EVENTS or (event == "os.fork" and not allow_fork):
            refuse(event, ())
        elif event in ("os.kill", "os.killpg") and args[0] not in (me, 0):
            refuse(event, args)
        elif event == "import" and args[0] == "_posixsubprocess":
            refuse(event, args[:1])
        elif event == "open":
            path, mode, flags = args
            writes = (flags or 0) & _O_WRITE or any(c in (mode or "") for c in "wax+")
            check_path(event, path, write_roots if writes else read_roots)
        elif event in _WRITE_PATH_EVENTS or event in _READ_PATH_EVENTS:
            roots = write_roots if event in _WRITE_PATH_EVENTS else read_roots
            for arg in args[:2]:  # the path arguments come first (rename, link: both)
                if type(arg) is not int and arg is not None:
                    check_path(event, arg, roots)

    return hook


def _run_program(cfg):
    """Run the program in this process; exit with its status (never return)."""
    try:
        # Counts every process and thread of this user; root is exempt (the parent's pids cgroup covers it).
        _limit(resource.RLIMIT_NPROC, cfg["max_processes"])
        sys.argv = [cfg["program"]]
        sys.addaudithook(_audit_hook(cfg["root"], cfg["read_roots"], cfg["allow_fork"]))
    except Exception:  # noqa: BLE001 - as in main()
        _report(cfg, traceback.format_exc().encode())
        os._exit(1)
    _report(cfg, b"started")  # from here on, whatever happens is the program's doing
    code = 1
    try:
        runpy.run_path(cfg["program"], run_name="__main__")
        code = 0
    except SystemExit as exc:
        if exc.code is None or exc.code is False or exc.code == 0:
            code = 0
        elif type(exc.code) is int and 0 < exc.code < 256:
            code = exc.code
        else:  # sys.exit("message"), or a status the OS would wrap to 0 (256)
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the program's own error; report it as Python would
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
        finally:
            os._exit(code)


def _fork_and_wait(child):
    """Run ``child()`` in a child process, wait for it, and exit with its status (never return)."""
    pid = os.fork()
    if pid == 0:
        try:
            _die_with_parent()
            child()
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)  # killed by signal N: 128 + N, as a shell reports it


def _report(cfg, message):
    """Tell the parent how set-up went, then close the status pipe so the program never holds it."""
    os.write(cfg["status_fd"], message[:60000])  # under a pipe's capacity: never blocks
    os.close(cfg["status_fd"])


def main():
    cfg = json.loads(sys.argv[1])
    try:
        _die_with_parent()
        if os.getppid() != cfg["parent_pid"]:
            os._exit(1)  # the parent died before the line above took effect
        if cfg.get("cgroup_procs"):
            with open(cfg["cgroup_procs"], "w") as procs:
                procs.write(str(os.getpid()))
        _set_limits(cfg)
        in_new_namespaces = _unshare()
    except Exception:  # noqa: BLE001 - a broken sandbox must not pass for a failing program
        _report(cfg, traceback.format_exc().encode())
        os._exit(1)
    if in_new_namespaces:
        _fork_and_wait(lambda: _fork_and_wait(lambda: _run_program(cfg)))
    _run_program(cfg)


if __name__ == "__main__":
    main()
