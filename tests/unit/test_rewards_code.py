"""The ``code`` reward: real sandboxed subprocesses, no mocks.

Each hostile program is written so that it would pass its test if the attack worked; a score of 0.0
therefore means the sandbox stopped it. Every test also checks that no sandbox process is left (the
sandbox's processes are the only ones whose command line names ``sandbox_child.py``).
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from r1ray.rewards import REWARD_FUNCTIONS, RewardExecutor, RewardItem, RewardSpec
from r1ray.rewards.code_exec import code_reward, extract_program
from r1ray.rewards.sandbox import DIR_PREFIX, Limits, SandboxError, run_python

pytestmark = pytest.mark.timeout(120)

# Short limits keep the hostile cases fast; the defaults are 5 s.
FAST = {"code_timeout_s": 2, "code_cpu_s": 1}
HANG_GUARD_S = 30.0


def _block(program: str) -> str:
    return f"<think>t</think><answer>```python\n{program}\n```</answer>"


def _sandbox_processes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"sandbox_child.py" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass  # exited while we looked
    return found


def _assert_nothing_left() -> None:
    deadline = time.monotonic() + 5.0
    while _sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_processes() == []


def _score(program: str, tests: str, **extra: object) -> float | None:
    start = time.monotonic()
    score = code_reward(_block(program), tests, {**FAST, **extra})
    assert time.monotonic() - start < HANG_GUARD_S
    _assert_nothing_left()
    return score


def test_code_is_registered() -> None:
    assert REWARD_FUNCTIONS["code"] is code_reward


def test_passing_and_failing_assert_scripts() -> None:
    program = "def add(a, b):\n    return a + b"
    assert _score(program, "assert add(2, 3) == 5") == 1.0
    assert _score(program, "assert add(2, 3) == 6") == 0.0
    assert _score("def add(a, b) return", "assert add(2, 3) == 5") == 0.0  # syntax error


def test_stdin_stdout_scores_the_fraction_of_cases() -> None:
    program = "n = int(input())\nprint(n * 2 if n < 3 else n)"
    tests = {"inputs": ["1\n", "2\n", "3\n", "4\n"], "outputs": ["2\n", "4", "6\n", "8"]}
    assert _score(program, json.dumps(tests)) == 0.5
    # Trailing spaces and blank lines at the end do not matter; other differences do.
    echo = "import sys\nprint(sys.stdin.read().rstrip() + '  \\n\\n')"
    assert _score(echo, json.dumps({"inputs": ["a b"], "outputs": ["a b"]})) == 1.0
    assert _score(echo, json.dumps({"inputs": ["a b"], "outputs": ["a  b"]})) == 0.0


def test_no_code_block_scores_zero_and_no_tests_is_unscorable() -> None:
    assert code_reward("<answer>def f(): pass</answer>", "assert True", {}) == 0.0
    assert code_reward("```python\n```", "assert True", {}) == 0.0  # an empty block
    for no_tests in ("", "   ", "{}", '{"inputs": ["1"], "outputs": []}', '{"inputs": [1], "outputs": [1]}'):
        assert code_reward(_block("print(1)"), no_tests, {}) is None
    assert code_reward(_block("print(1)"), "assert True", {"code_timeout_s": "slow"}) is None


def test_the_program_is_the_last_python_block_of_the_answer() -> None:
    response = (
        "<think>```python\nprint('draft')\n```</think><answer>```python\nprint(42)\n```\n"
        "Output:\n```\n42\n```</answer>"
    )
    assert extract_program(response) == "print(42)\n"
    assert extract_program("x\n```\nprint(1)\n```\n") == "print(1)\n"  # untagged, no <answer>
    assert extract_program("use `print` or ```print(1)``` inline") is None


HOSTILE = {
    "infinite loop (CPU limit)": ("while True:\n    pass", "assert True"),
    "sleeps forever (wall clock)": ("import time\ntime.sleep(1000)", "assert True"),
    "fork bomb": ("import os\nwhile True:\n    os.fork()", "assert True"),
    "fork bomb that ignores failures": (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "assert True",
    ),
    "thread bomb": (
        "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,)).start()",
        "assert True",
    ),
    "1 GB of output": ("import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 2**20)", "assert True"),
    "segfault": ("import ctypes\nctypes.string_at(0)", "assert True"),
    "memory bomb": ("blocks = []\nwhile True:\n    blocks.append(bytearray(2**26))", "assert True"),
    "one huge allocation": ("x = bytearray(8 * 2**30)", "assert True"),
    "reads /etc/passwd": ("data = open('/etc/passwd').read()", "assert 'root' in data"),
    "lists /etc": ("import os\nnames = os.listdir('/etc')", "assert names"),
    "writes outside its directory": ("open('/tmp/r1ray-escape', 'w').write('x')", "assert True"),
    "runs a shell": ("import os\nassert os.system('true') == 0", "assert True"),
    "runs a subprocess": ("import subprocess\nsubprocess.run(['true'], check=True)", "assert True"),
    "C fork through ctypes": ("import ctypes\nctypes.CDLL(None).fork()", "assert True"),
    "kills every process": ("import os, signal\nos.kill(-1, signal.SIGKILL)", "assert True"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_programs_score_zero_and_leave_nothing(name: str) -> None:
    program, tests = HOSTILE[name]
    assert _score(program, tests) == 0.0


def test_reading_a_file_in_the_parent_directory_is_refused() -> None:
    secret = Path(tempfile.gettempdir()) / f"r1ray-secret-{uuid.uuid4().hex}"
    secret.write_text("secret")
    try:
        assert _score(f"data = open('../{secret.name}').read()", "assert data == 'secret'") == 0.0
        assert _score(f"data = open({str(secret)!r}).read()", "assert data == 'secret'") == 0.0
        # Through a symlink made inside its own directory: resolved, and refused too.
        link = f"import os\nos.symlink({str(secret)!r}, 'link')\ndata = open('link').read()"
        assert _score(link, "assert data == 'secret'") == 0.0
    finally:
        secret.unlink()


def test_network_connections_are_refused() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        connect = f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\ns.sendall(b'hi')"
        assert _score(connect, "assert True") == 0.0
        assert _score(f"import socket\nsocket.create_connection(('127.0.0.1', {port}))", "assert True") == 0.0
        assert _score("import socket\nsocket.socket().bind(('0.0.0.0', 0))", "assert True") == 0.0
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever connected


def test_a_daemon_that_leaves_the_session_is_killed_too() -> None:
    """setsid + double fork escapes a process-group kill; the PID namespace or the cgroup gets it."""
    daemon = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.close(1)\n"
        "        time.sleep(300)\n"
        "    os._exit(0)\n"
        "print('started')"
    )
    _score(daemon, json.dumps({"inputs": [""], "outputs": ["started"]}))  # the score may be either


def test_the_sandbox_reports_what_stopped_the_program() -> None:
    fast = Limits(timeout_s=2, cpu_s=1)
    flood = run_python("import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 2**20)", limits=fast)
    assert flood.output_overflow and len(flood.stdout) == fast.max_output_bytes
    assert run_python("import ctypes\nctypes.string_at(0)", limits=fast).exit_code == 139  # 128 + SIGSEGV
    # The CPU limit, with wall time to spare: on a loaded machine 1 s of CPU can take more than 2 s of wall.
    spin = run_python("while True:\n    pass", limits=Limits(timeout_s=30, cpu_s=1))
    assert spin.exit_code == 152 and not spin.timed_out  # 128 + SIGXCPU
    assert run_python("import time\ntime.sleep(100)", limits=fast).timed_out
    ok = run_python("import os\nprint(input(), os.getcwd() == os.environ['HOME'], 'TOKEN' in os.environ)",
                    stdin="hi\n", limits=fast)
    assert ok.ok and ok.stdout == b"hi True False\n"
    _assert_nothing_left()


def test_a_sandbox_that_cannot_start_the_program_is_an_error_not_a_zero() -> None:
    with pytest.raises(SandboxError, match="did not start the program"):
        run_python("print(1)", limits=Limits(timeout_s=0.001))  # less than interpreter start-up
    with pytest.raises(SandboxError):
        code_reward(_block("print(1)"), "assert True", {"code_timeout_s": 0.001})
    _assert_nothing_left()


@pytest.fixture(scope="module")
def executor() -> Iterator[RewardExecutor]:
    spec = RewardSpec(names=["code"], weights=[1.0], sample_timeout_s=4.0, batch_timeout_s=60.0, num_workers=2)
    with RewardExecutor(spec) as pool:
        yield pool


def _item(program: str, tests: str, **extra: object) -> RewardItem:
    return RewardItem(_block(program), tests, "", {**FAST, **extra})


def test_the_reward_pool_survives_a_fork_bomb_and_scores_the_next_sample(executor: RewardExecutor) -> None:
    good = _item("def add(a, b):\n    return a + b", "assert add(1, 2) == 3")
    batch = executor.score([_item(*HOSTILE["fork bomb"]), _item(*HOSTILE["fork bomb that ignores failures"]), good])
    assert [r.status for r in batch.results] == ["ok", "ok", "ok"]
    assert batch.scores == [0.0, 0.0, 1.0]
    _assert_nothing_left()


def test_a_sandbox_outlasting_the_sample_timeout_dies_with_its_worker(executor: RewardExecutor) -> None:
    """The executor kills the worker at sample_timeout_s; the sandbox it started must not run on."""
    slow = _item("import time\ntime.sleep(1000)", "assert True", code_timeout_s=60)
    batch = executor.score([slow, _item("print(1)", "assert True")])
    assert [r.status for r in batch.results] == ["timeout", "ok"]
    assert batch.scores == [None, 1.0]
    _assert_nothing_left()
    # The killed worker could not remove its run's directory (nor its cgroup); the next run does.
    assert _score("print(1)", "assert True") == 1.0
    stale = [path for path in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*-*")
             if not Path(f"/proc/{path.name[len(DIR_PREFIX):].split('-')[0]}").exists()]
    assert stale == []


def test_a_sandbox_failure_reaches_the_pool_as_an_error(executor: RewardExecutor) -> None:
    batch = executor.score([_item("print(1)", "assert True", code_timeout_s=0.001)])
    assert (batch.results[0].status, batch.scores) == ("error", [None])
    assert batch.first_error.startswith("code: SandboxError: the sandbox did not start the program")
