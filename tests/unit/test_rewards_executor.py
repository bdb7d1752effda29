"""RewardExecutor: real worker processes, killed on timeouts, counted failures.

Each executor start costs about a second (fresh interpreters importing math-verify), so the tests
share a few executors and keep timeouts short.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from r1ray.rewards import RewardExecutor, RewardItem, RewardSpec, ScoreBatch, score_one

# The helper is named by dotted path, which the workers import; make "tests" importable here
# (the workers inherit this sys.path).
REPO_ROOT = str(Path(__file__).resolve().parents[2])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
BEHAVE = "tests.unit.test_rewards_helpers:behave"

SAMPLE_TIMEOUT_S = 1.5


def _item(response: str) -> RewardItem:
    return RewardItem(response=response, ground_truth="", data_source="", extra={})


@pytest.fixture(scope="module")
def executor() -> Iterator[RewardExecutor]:
    spec = RewardSpec(
        names=[BEHAVE, "format"],
        weights=[1.0, 0.5],
        sample_timeout_s=SAMPLE_TIMEOUT_S,
        batch_timeout_s=60.0,
        num_workers=2,
    )
    with RewardExecutor(spec) as pool:
        yield pool


def test_failures_are_reported_and_counted(executor: RewardExecutor) -> None:
    well_formed = "<think>a</think><answer>b</answer>"
    responses = ["ok", "sleep", "raise", "die", "none", "timeout", well_formed]
    start = time.monotonic()
    batch = executor.score([_item(r) for r in responses])
    elapsed = time.monotonic() - start

    statuses = [r.status for r in batch.results]
    assert statuses == ["ok", "timeout", "error", "error", "unscorable", "timeout", "ok"]
    assert batch.scores == [1.0, None, None, None, None, None, 1.5]
    assert (batch.n_timeout, batch.n_error, batch.n_unscorable) == (2, 2, 1)
    assert "sample_timeout_s" in batch.results[1].error
    assert "boom" in batch.results[2].error
    assert "died" in batch.results[3].error
    # The hung sample is killed at its deadline, not left to the batch timeout.
    assert elapsed < SAMPLE_TIMEOUT_S + 15.0
    metrics = batch.metrics()
    assert metrics["reward/timeout_count"] == 2.0 and metrics["reward/mean"] == 1.25


def test_killed_workers_are_replaced(executor: RewardExecutor) -> None:
    batch = executor.score([_item("ok") for _ in range(6)])
    assert batch.scores == [1.0] * 6


def test_score_from_a_thread(executor: RewardExecutor) -> None:
    out: list[ScoreBatch] = []
    thread = threading.Thread(target=lambda: out.append(executor.score([_item("ok"), _item("x")])))
    thread.start()
    thread.join(60)
    assert [r.status for r in out[0].results] == ["ok", "ok"]
    assert executor.score([]).results == []


def test_batch_timeout_kills_running_and_unstarted_samples() -> None:
    spec = RewardSpec(
        names=[BEHAVE], weights=[1.0], sample_timeout_s=30.0, batch_timeout_s=1.0, num_workers=1
    )
    with RewardExecutor(spec) as pool:
        assert pool.score([_item("ok")]).scores == [1.0]  # start-up is not part of the test
        start = time.monotonic()
        batch = pool.score([_item("sleep"), _item("ok")])
        assert time.monotonic() - start < 5.0
        assert [r.status for r in batch.results] == ["timeout", "timeout"]
        assert "before the sample started" in batch.results[1].error
        assert pool.score([_item("ok")]).scores == [1.0]
    with pytest.raises(RuntimeError, match="after close"):
        pool.score([_item("ok")])


def test_score_one_runs_the_real_path() -> None:
    result = score_one(
        ["auto", "format"],
        [1.0, 0.5],
        "<think>16 - 3 - 4 = 9; 9 * 2 = 18</think><answer>18</answer>",
        "Janet sells 9 eggs...\n#### 18",
        {"data_source": "openai/gsm8k"},
    )
    assert (result.status, result.score) == ("ok", 1.5)
    assert result.components == {"auto": 1.0, "format": 1.0}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_timed_out_sample_takes_the_processes_it_started_with_it(tmp_path) -> None:
    """The worker runs in its own process group; killing it on a timeout kills the group, so the
    children a reward started do not outlive it (they were reparented to init and ran on before)."""
    pid_file = tmp_path / "children"
    spec = RewardSpec(names=[BEHAVE], weights=[1.0], sample_timeout_s=SAMPLE_TIMEOUT_S, batch_timeout_s=60.0,
                      num_workers=1)
    with RewardExecutor(spec) as pool:
        batch = pool.score([_item(f"spawn:{pid_file}"), _item("fine")])
        assert [r.status for r in batch.results] == ["timeout", "ok"]
        children = [int(p) for p in pid_file.read_text().split()]
        assert len(children) == 5
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in children)
