"""Rewards for Trainer tests, imported by the reward subprocesses as `tests.ray.rewards_for_tests:<name>` (Ray
puts the driver's working directory, the repository root under pytest, on the workers' path)."""

from __future__ import annotations

import zlib


def spread_on_even_answers(response: str, ground_truth: str, extra: dict) -> float:
    """Groups whose answer is even get scores that differ between samples, groups whose answer is odd all
    score 0, so dynamic sampling must drop exactly the odd ones."""
    if int(ground_truth) % 2:
        return 0.0
    return (zlib.crc32(response.encode()) % 1000) / 1000


def text_hash(response: str, ground_truth: str, extra: dict) -> float:
    """A score in [0, 1) from the response's text: different samples score differently, so every group has
    spread and every step updates, whatever the (random) model writes."""
    return (zlib.crc32(response.encode()) % 1000) / 1000


def always_raises(response: str, ground_truth: str, extra: dict) -> float:
    """A broken custom reward: every call raises."""
    raise KeyError("ground_truth_field")


def hangs(response: str, ground_truth: str, extra: dict) -> float:
    """A broken custom reward: never returns (the executor must kill it at sample_timeout_s)."""
    import time

    while True:
        time.sleep(60)


def returns_nan(response: str, ground_truth: str, extra: dict) -> float:
    """A broken custom reward: NaN would poison the group's mean and std."""
    return float("nan")


def returns_inf(response: str, ground_truth: str, extra: dict) -> float:
    """A broken custom reward: an infinite score."""
    return float("inf")


def returns_string(response: str, ground_truth: str, extra: dict) -> str:
    """A broken custom reward: text that float() would silently accept."""
    return "1.0"


def returns_list(response: str, ground_truth: str, extra: dict) -> list:
    """A broken custom reward: a list of scores instead of one."""
    return [1.0]


def returns_bool(response: str, ground_truth: str, extra: dict) -> bool:
    """A custom reward returning bool: accepted as 1.0 / 0.0 (bool is an int in Python)."""
    return response == "right"


def chatty(response: str, ground_truth: str, extra: dict) -> float:
    """Prints a megabyte through print, stderr's file descriptor and a child process, then scores 1."""
    import os
    import subprocess
    import sys

    for i in range(1000):
        print(f"line {i:04d} " + "x" * 1014)
    os.write(2, b"from stderr\n")
    subprocess.run([sys.executable, "-c", "print('from a child process, the last line')"], check=True)
    return 1.0


def chatty_then_raises(response: str, ground_truth: str, extra: dict) -> float:
    """Prints a little, then raises."""
    print("computing the answer for", ground_truth)
    raise ValueError("no answer")


def _daemon(pid_file: str) -> None:
    """Double-fork a `sleep` that leaves the session (setsid) and writes its pid to `pid_file`."""
    import os
    import sys

    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open(pid_file, "w") as f:
                f.write(str(os.getpid()))
            os.execvp("sleep", ["sleep", "300"])
        os._exit(0)
    os.wait()
    while not os.path.exists(pid_file) or not open(pid_file).read():
        pass
    sys.stdout.flush()


def daemonizes(response: str, ground_truth: str, extra: dict) -> float:
    """Leaves a daemon behind (its pid in extra["pid_file"]) and scores 1."""
    _daemon(extra["pid_file"])
    return 1.0


def daemonizes_then_hangs(response: str, ground_truth: str, extra: dict) -> float:
    """Leaves a daemon behind, then never returns (killed at sample_timeout_s)."""
    import time

    _daemon(extra["pid_file"])
    while True:
        time.sleep(60)
