"""A `ray start --head` of our own on this machine, with token authentication, stopped without `ray stop`.

`ray stop` ends every Ray process of every user of the machine (it matches process names), so it would
kill other developers' clusters. This head instead gets its own temp dir, free ports and a token file of
its own; `--block` keeps `ray start` as the parent of everything it launches, and stopping walks that
process tree, plus any process that carries this head's token path in its environment (a job driver that
outlived its parent), and ends those processes by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

NODE_PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                   "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")
PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port", *NODE_PORT_FLAGS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalHead:
    num_cpus: int = 4
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="r1h-", dir="/tmp")))
    ports: dict[str, int] = field(default_factory=lambda: {flag: free_port() for flag in PORT_FLAGS})
    process: subprocess.Popen | None = None
    nodes: list[subprocess.Popen] = field(default_factory=list)     # `ray start --address` of joined nodes

    @property
    def token_path(self) -> Path:
        return self.root / "auth_token"

    @property
    def address(self) -> str:
        """The job API (dashboard) address."""
        return f"http://127.0.0.1:{self.ports['--dashboard-port']}"

    def env(self, token: bool = True) -> dict[str, str]:
        """This process's environment for a Ray client of this head (without the token when token=False)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH_", "RAY_ADDRESS",
                                                                        "RAY_API_SERVER_ADDRESS"))}
        if token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path))
        return env

    def start(self, timeout_s: float = 180.0) -> None:
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        # The temp dir is short on purpose: Ray's socket paths must fit in 107 bytes.
        cmd = ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--dashboard-host", "127.0.0.1", "--num-cpus", str(self.num_cpus), "--disable-usage-stats",
               "--temp-dir", str(self.root / "ray")]
        for flag, port in self.ports.items():
            cmd += [flag, str(port)]
        with open(self.root / "head.log", "wb") as log:
            self.process = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, cwd=self.root)
        self._wait_ready(timeout_s)

    def add_node(self, num_cpus: int, timeout_s: float = 180.0) -> None:
        """Another node joining this head as a worker machine of a real cluster joins it (`ray start
        --address`, the token in its environment), here a second raylet on 127.0.0.1 with ports of its own;
        returns once the head counts it alive."""
        cmd = ["ray", "start", "--address", f"127.0.0.1:{self.ports['--port']}", "--block", "--node-ip-address",
               "127.0.0.1", "--num-cpus", str(num_cpus), "--disable-usage-stats"]
        for flag in NODE_PORT_FLAGS:
            cmd += [flag, str(free_port())]
        with open(self.root / f"node{len(self.nodes) + 1}.log", "wb") as log:
            self.nodes.append(subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True, cwd=self.root))
        deadline = time.monotonic() + timeout_s
        while self.alive_nodes() < 1 + len(self.nodes):
            if self.nodes[-1].poll() is not None or time.monotonic() > deadline:
                log = (self.root / f"node{len(self.nodes)}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the node did not join within {timeout_s:g}s: {log}")
            time.sleep(1.0)

    def alive_nodes(self) -> int:
        """Nodes the head counts alive (the state API of its dashboard, with the token)."""
        request = urllib.request.Request(f"{self.address}/api/v0/nodes?limit=100",
                                         headers={"Authorization": f"Bearer {self.token_path.read_text()}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                nodes = json.loads(response.read())["data"]["result"]["result"]
        except (OSError, ValueError, KeyError):
            return 0
        return sum(1 for n in nodes if n.get("state") == "ALIVE")

    def _wait_ready(self, timeout_s: float) -> None:
        """Ready when the job API answers; a 401 counts, since it comes from the token check."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}: {self.log_tail()}")
            try:
                urllib.request.urlopen(f"{self.address}/api/version", timeout=2)
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the head did not answer within {timeout_s:g}s: {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        path = self.root / "head.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def processes(self) -> list[psutil.Process]:
        """Every live process of this head: the `ray start` tree and whatever carries our token path."""
        found: dict[int, psutil.Process] = {}
        if self.process is not None:
            try:
                root = psutil.Process(self.process.pid)
                found.update({p.pid: p for p in [root, *root.children(recursive=True)]})
            except psutil.NoSuchProcess:
                pass
        marker = str(self.token_path)
        for proc in psutil.process_iter():
            try:
                if proc.pid not in found and proc.environ().get("RAY_AUTH_TOKEN_PATH") == marker:
                    found[proc.pid] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return list(found.values())

    def stop(self, grace_s: float = 3.0) -> list[int]:
        """End this head's processes (SIGTERM, then SIGKILL after `grace_s`); returns the pids still alive."""
        for _ in range(2):  # a second sweep catches processes started while the first one ran
            procs = self.processes()
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.terminate()
            _, alive = psutil.wait_procs(procs, timeout=grace_s)
            for proc in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            psutil.wait_procs(alive, timeout=5)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        left = [p.pid for p in self.processes() if _alive(p)]
        if not left:
            shutil.rmtree(self.root, ignore_errors=True)
        return left


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
