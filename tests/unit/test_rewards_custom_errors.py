"""A broken custom reward ("package.module:function") is counted as an error or a timeout, with a message
naming the function and what it did, never scored 0; through the real RewardExecutor pool.

The executors start together (module fixture) so that their workers boot in parallel.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

from r1ray.rewards import RewardExecutor, RewardItem, RewardSpec

pytestmark = pytest.mark.timeout(120)

# The helpers are named by dotted path, which the workers import; make "tests" importable here
# (the workers inherit this sys.path).
REPO_ROOT = str(Path(__file__).resolve().parents[2])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
HELPERS = "tests.ray.rewards_for_tests"
SAMPLE_TIMEOUT_S = 1.5

# function -> (status, text the error must contain)
BROKEN = {
    "hangs": ("timeout", f"sample exceeded sample_timeout_s={SAMPLE_TIMEOUT_S} in {HELPERS}:hangs"),
    "always_raises": ("error", f"{HELPERS}:always_raises: KeyError: 'ground_truth_field'"),
    "returns_nan": (
        "error",
        f"{HELPERS}:returns_nan: ValueError: returned nan; a reward function must return a finite number or None",
    ),
    "returns_inf": ("error", f"{HELPERS}:returns_inf: ValueError: returned inf"),
    "returns_string": (
        "error",
        f"{HELPERS}:returns_string: TypeError: returned '1.0' (str); a reward function must return a number or None",
    ),
    "returns_list": ("error", f"{HELPERS}:returns_list: TypeError: returned [1.0] (list)"),
}


@pytest.fixture(scope="module")
def executors() -> Iterator[dict[str, RewardExecutor]]:
    pools: dict[str, RewardExecutor] = {}
    try:
        for name in [*BROKEN, "returns_bool"]:
            spec = RewardSpec(
                names=[f"{HELPERS}:{name}", "format"],
                weights=[1.0, 0.5],
                sample_timeout_s=SAMPLE_TIMEOUT_S,
                batch_timeout_s=60.0,
                num_workers=1,
            )
            pools[name] = RewardExecutor(spec)
        yield pools
    finally:
        for pool in pools.values():
            pool.close()


def _item(response: str = "<think>a</think><answer>b</answer>") -> RewardItem:
    return RewardItem(response=response, ground_truth="1", data_source="", extra={})


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_custom_reward_is_counted_not_scored(executors: dict[str, RewardExecutor], name: str) -> None:
    status, message = BROKEN[name]
    batch = executors[name].score([_item(), _item()])
    assert [r.status for r in batch.results] == [status, status]
    assert batch.scores == [None, None]  # never 0
    assert message in batch.first_error
    assert (batch.n_timeout, batch.n_error) == ((2, 0) if status == "timeout" else (0, 2))
    assert "reward/mean" not in batch.metrics()


def test_a_bool_is_a_number(executors: dict[str, RewardExecutor]) -> None:
    batch = executors["returns_bool"].score([_item("right"), _item("wrong")])
    assert [r.status for r in batch.results] == ["ok", "ok"]
    assert [r.components[f"{HELPERS}:returns_bool"] for r in batch.results] == [1.0, 0.0]


def test_what_a_reward_prints_is_captured_bounded_and_counted() -> None:
    from r1ray.rewards.capture import OUTPUT_TAIL_BYTES

    spec = RewardSpec(names=[f"{HELPERS}:chatty"], weights=[1.0], sample_timeout_s=30.0, batch_timeout_s=60.0,
                      num_workers=1)
    with RewardExecutor(spec) as pool:
        batch = pool.score([RewardItem("r", "1", "", {}), RewardItem("r", "2", "", {})])
    assert batch.scores == [1.0, 1.0]
    for result in batch.results:
        # 1000 lines of 1025 bytes, then stderr and a child process: all of it counted, only the end kept.
        assert result.output_bytes == 1000 * 1025 + len("from stderr\n") + len("from a child process, the last line\n")
        assert len(result.output.encode()) == OUTPUT_TAIL_BYTES
        assert result.output.endswith("from stderr\nfrom a child process, the last line\n")
    assert batch.metrics()["reward/output_bytes"] == 2 * batch.results[0].output_bytes


def test_a_failing_reward_quotes_the_end_of_its_output() -> None:
    spec = RewardSpec(names=[f"{HELPERS}:chatty_then_raises"], weights=[1.0], sample_timeout_s=30.0,
                      batch_timeout_s=60.0, num_workers=1)
    with RewardExecutor(spec) as pool:
        result = pool.score([RewardItem("r", "42", "", {})]).results[0]
    assert result.status == "error"
    assert result.error == (f"{HELPERS}:chatty_then_raises: ValueError: no answer (it printed 28 bytes, ending: "
                            f"'computing the answer for 42')")


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("name", ["daemonizes", "daemonizes_then_hangs"])
def test_a_daemon_a_reward_leaves_behind_is_killed(tmp_path, name) -> None:
    """A double-forked, setsid daemon escapes the worker's process group; the worker adopts it (a child
    subreaper) and kills it after the sample, or the pool kills the worker's whole tree at the timeout."""
    import time

    pid_file = tmp_path / "daemon.pid"
    spec = RewardSpec(names=[f"{HELPERS}:{name}"], weights=[1.0], sample_timeout_s=3.0, batch_timeout_s=30.0,
                      num_workers=1)
    with RewardExecutor(spec) as pool:
        result = pool.score([RewardItem("r", "1", "", {"pid_file": str(pid_file)})]).results[0]
        assert result.status == ("ok" if name == "daemonizes" else "timeout")
        daemon = int(pid_file.read_text())
        deadline = time.monotonic() + 10
        while _alive(daemon) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(daemon)
