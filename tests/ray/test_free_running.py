"""Free-running asynchronous GRPO, K = 2, with the real Trainer on the session cluster: the rollout engine on
its own pool keeps generating in segments while two FSDP2 actor ranks train, and weight updates land
between the segments of responses being generated (partial rollouts).

Free running is not reproducible (what finishes first depends on timing), so the tests check invariants:
no trained token is more than K versions old; partial rollouts exist and each token's behaviour logprob
is the one the weights of its stamped version give; a run stopped and resumed trains no prompt twice and
skips none, also when its rollout worker is killed and restarted on the way.

To make a weight update meet a response in the middle of its generation on every step (on 2 cores the
tiny model can finish every group it may admit during the update, vLLM's engine more often than HF's),
the test's Trainer waits, before each update, for a group with two segments or more still to generate,
and holds the pump from then until the sync is sent: no round is sent meanwhile, so the sync lands in the
middle of that group's responses whatever the relative speed of generation and training.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import ray
import torch

from r1ray.controller.trainer import Trainer
from tests.ray.run_copies import stopped_after
from r1ray.models import load_model_and_tokenizer

pytestmark = pytest.mark.timeout(600)

K = 2
# Responses of 64 tokens in segments of 2: generating a step's groups takes longer than an update, so
# weight updates land while responses are being generated.
FREE = ["data.prompts_per_step=2", "data.generate.train_size=32", "rollout.n=4", "rollout.max_response_length=64",
        "rollout.ignore_eos=true", "trainer.max_staleness=2", "trainer.async_mode=free_running",
        "trainer.segment_tokens=2", "algorithm.rollout_correction=tis_token", "algorithm.mini_batches=2",
        "trainer.total_steps=5", "trainer.save_every=1", "trainer.keep_checkpoints=5",
        # Every response runs to the budget (ignore_eos), so the score comes from the text, with spread in
        # every group: every step updates.
        "reward.functions=[tests.ray.rewards_for_tests:text_hash]", "reward.weights=[1.0]"]


class FreeTrainer(Trainer):
    """The real Trainer, recording what it trained (batches, prompt indices, versions' weights)."""

    def __init__(self, cfg, kill_at: int | None = None):
        super().__init__(cfg)
        self.kill_at, self.killed = kill_at, False
        self.started: list[int] = []
        self.trained: dict[int, list[int]] = {}                   # step -> dataset indices of its groups
        self.batches: dict[int, object] = {}
        self.weights: dict[int, dict[str, torch.Tensor]] = {}     # version -> the actor's weights
        self.left: list[int] = []                                 # indices given out, not trained, at the end
        self.holding = False                                      # the pump's lock, from before an update to its sync
        self._step = 0

    def step(self, step):
        self.started.append(step)
        self._step = step
        if step == self.kill_at and not self.killed:
            self.killed = True
            os.kill(ray.get(self.roles.rollout.workers[0].pid.remote()), signal.SIGKILL)
        return super().step(step)

    def _take_free(self):
        rollout, metrics = super()._take_free()
        self.trained[self._step] = list(self.free.taken_indices)
        self.batches[self._step] = rollout
        return rollout, metrics

    def update(self, batch, kl_coef):
        if self.free is not None and self.free._thread is not None:
            self._hold_pump_mid_generation()
        try:
            return super().update(batch, kl_coef)
        except BaseException:
            self._release_pump()
            raise

    def _mid_generation(self) -> bool:
        """Some group has started and has two segments or more to go in every response (call under the lock)."""
        return any(g.started and not g.finished and all(len(r.tokens) <= g.budget - 2 * self.free.buffer.segment
                                                        for r in g.responses)
                   for g in self.free.buffer.groups.values())

    def _hold_pump_mid_generation(self, seconds: float = 10.0) -> None:
        """Take the pump's lock at a moment a group is mid-generation, for `sync_weights` to release once the
        sync is sent (after `seconds` without such a moment, go on without it)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.free.lock.acquire()
            if self._mid_generation():
                self.holding = True
                return
            self.free.lock.release()
            time.sleep(0.002)

    def _release_pump(self) -> None:
        if self.holding:
            self.holding = False
            self.free.lock.release()

    def sync_weights(self):
        self.weights[self.version] = self.roles.actor.full_weights()
        try:
            return super().sync_weights()
        finally:
            self._release_pump()

    def _run(self, resume):
        try:
            return super()._run(resume)
        finally:
            if self.free is not None:
                unfinished = self.free.unfinished()
                self.left = list(unfinished.indices) if unfinished is not None else []


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(ray_cluster, small_config, tmp_path_factory):
    straight_dir = tmp_path_factory.mktemp("free")
    straight = FreeTrainer(small_config(straight_dir, *FREE))
    straight.fit()

    stopped_dir = stopped_after(straight_dir, tmp_path_factory.mktemp("free_stopped") / "run", 2)
    # The resumed run also has its rollout worker killed at the start of step 4: it restarts from step 3's
    # checkpoint (its own).
    resumed = FreeTrainer(small_config(stopped_dir, *FREE, "trainer.resume=auto", "trainer.max_restarts=1"), kill_at=4)
    resumed.fit()
    return {"straight": (straight, straight_dir), "resumed": (resumed, stopped_dir)}


def test_no_trained_token_is_more_than_k_versions_old_and_partial_rollouts_happen(runs):
    trainer, out = runs["straight"]
    steps = _metrics(out)
    assert [m["step"] for m in steps] == [1, 2, 3, 4, 5]
    assert all(m["async/staleness_max"] <= K and m["actor/grad_norm"] > 0 for m in steps)
    # Checked again from the stamps: the actor trained step s at version s - 1.
    for step, batch in trainer.batches.items():
        mask = batch.response_mask().bool()
        lag = (step - 1) - batch.token_versions[mask]
        assert int(lag.min()) >= 0 and int(lag.max()) <= K, step
    # A weight update met responses mid-generation: some trained rows hold tokens of two versions.
    partial = [m["async/partial_rows"] for m in steps]
    assert sum(partial) > 0, partial
    assert any(m["async/staleness_max"] > 0 for m in steps)


def test_behaviour_logprobs_are_those_of_each_tokens_version(runs, tiny_model):
    """Every token of a partial rollout carries the logprob the weights of its own version give it."""
    trainer, _ = runs["straight"]
    assert _check_logprobs_by_version(trainer, tiny_model, atol=1e-4) > 0


def test_a_stopped_run_resumes_without_repeating_or_skipping_a_prompt(runs):
    straight, straight_dir = runs["straight"]
    resumed, out = runs["resumed"]
    assert resumed.started == [3, 4, 4, 5]                  # step 4 again, after the restart
    assert [m["step"] for m in _metrics(out)] == [1, 2, 3, 4, 5]
    before = straight.trained[1] + straight.trained[2]
    after = resumed.trained[3] + resumed.trained[4] + resumed.trained[5]
    assert len(set(before + after)) == len(before + after)             # no prompt trained twice
    # What step 2's checkpoint held as given out and not trained was generated again: trained after the
    # resume, or still being generated at its end. Nothing it held was skipped.
    pending = torch.load(straight_dir / "checkpoints" / "step_000002" / "pending_rollouts.pt", weights_only=False)
    (prompts, batch), = pending.values()
    assert batch is None and len(prompts) >= 2
    assert set(prompts.indices) <= set(after) | set(resumed.left)
    # The resumed run trained the oldest of them first.
    assert resumed.trained[3] == list(prompts.indices[:2])


def test_a_killed_rollout_worker_is_restarted_in_free_running_mode(runs):
    resumed, out = runs["resumed"]
    assert resumed.killed
    steps = _metrics(out)
    assert all(m["async/staleness_max"] <= K for m in steps)
    # Step 4's groups were in flight when the engine died; the restart from step 3's checkpoint generated
    # them again and trained them (the attempt that died trained nothing).
    pending = torch.load(out / "checkpoints" / "step_000003" / "pending_rollouts.pt", weights_only=False)
    (prompts, _), = pending.values()
    assert resumed.trained[4] == list(prompts.indices[:2])


def _check_logprobs_by_version(trainer: FreeTrainer, model_path: Path, atol: float) -> int:
    """Rows with tokens of several versions whose behaviour logprobs were checked against each version."""
    model, _ = load_model_and_tokenizer(model_path)
    model.eval()
    temperature = trainer.cfg.rollout.temperature
    checked = 0
    for batch in trainer.batches.values():
        for row in range(len(batch)):
            start, end = int(batch.cu_seqlens[row]), int(batch.cu_seqlens[row + 1])
            plen = int(batch.prompt_lens[row])
            versions = batch.token_versions[row, :end - start - plen]
            if len(set(versions.tolist())) < 2:
                continue
            ids = batch.tokens[start:end].unsqueeze(0)
            got = batch.rollout_logprobs[row, :len(versions)]
            for version in sorted(set(versions.tolist())):
                model.load_state_dict(trainer.weights[version])
                with torch.no_grad():
                    logits = model(ids).logits[0, plen - 1:-1].float() / temperature
                want = torch.log_softmax(logits, -1).gather(-1, ids[0, plen:, None])[:, 0]
                at = versions == version
                assert torch.allclose(got[at], want[at], atol=atol), (row, version, (got[at] - want[at]).abs().max())
            checked += 1
    return checked


@pytest.fixture(scope="module")
def vllm_runs(ray_cluster, small_config, tmp_path_factory):
    """vLLM in keep mode: a run of 2 steps, then the same run resumed to step 6 (as a run stopped after
    step 2 and resumed is)."""
    pytest.importorskip("vllm", reason="vLLM is not installed: pip install -e '.[cpu]' (CI installs it)")
    from r1ray.models import build_tiny_model

    tmp = tmp_path_factory.mktemp("free_vllm")
    # vLLM's CPU attention wants a head size of 32 or more.
    model = build_tiny_model(tmp / "model", hidden=64, layers=2, heads=2, kv_heads=1, max_position_embeddings=256)
    vllm = [f"model.path={model}", "rollout.engine=vllm", "trainer.pause_mode=keep"]
    first = FreeTrainer(small_config(tmp / "out", *FREE, *vllm, "trainer.total_steps=2"))
    first.fit()
    pending = torch.load(tmp / "out" / "checkpoints" / "step_000002" / "pending_rollouts.pt", weights_only=False)
    resumed = FreeTrainer(small_config(tmp / "out", *FREE, *vllm, "trainer.total_steps=6", "trainer.resume=auto"))
    resumed.fit()
    return first, resumed, tmp / "out", model, pending


def test_free_running_with_vllm_keeping_requests_across_updates_keeps_the_bound(vllm_runs):
    """trainer.pause_mode=keep: the responses stay in vLLM's scheduler while the weights change under them
    (the abort mode's resubmissions are the HF runs' above, and vLLM's generate is tested on its own)."""
    first, resumed, out, model, _ = vllm_runs
    steps = _metrics(out)
    assert [m["step"] for m in steps] == [1, 2, 3, 4, 5, 6]
    assert all(m["async/staleness_max"] <= K and m["actor/grad_norm"] > 0 for m in steps)
    assert sum(m["async/partial_rows"] for m in steps) > 0
    # A running count (per run) of the responses a weight update met in the scheduler.
    assert max(m["async/kept_over_updates"] for m in steps) > 0
    # vLLM's processed logprobs of each segment are those of the weights it held: kernel drift only.
    assert _check_logprobs_by_version(first, model, atol=2e-3) + _check_logprobs_by_version(resumed, model, atol=2e-3) > 0


def test_free_running_with_vllm_resumes_without_repeating_or_skipping_a_prompt(vllm_runs):
    first, resumed, _, _, pending = vllm_runs
    assert resumed.started == [3, 4, 5, 6]
    before = first.trained[1] + first.trained[2]
    after = [i for step in (3, 4, 5, 6) for i in resumed.trained[step]]
    assert len(set(before + after)) == len(before + after)             # no prompt trained twice
    (prompts, batch), = pending.values()
    assert batch is None and len(prompts) >= 2
    assert set(prompts.indices) <= set(after) | set(resumed.left)      # none skipped
    assert resumed.trained[3] == list(prompts.indices[:2])             # the oldest first


class KilledBeforeSync(FreeTrainer):
    """Kills the rollout worker right before the weight sync after step 1's update."""

    def sync_weights(self):
        if self.version == 1 and not self.killed:
            self.killed = True
            os.kill(ray.get(self.roles.rollout.workers[0].pid.remote()), signal.SIGKILL)
        try:
            return Trainer.sync_weights(self)
        finally:
            self._release_pump()


def test_a_weight_update_that_meets_a_dead_engine_ends_the_run_naming_it_within_the_deadline(
        ray_cluster, small_config, tmp_path):
    from r1ray.errors import WorkerFailure

    trainer = KilledBeforeSync(small_config(tmp_path / "out", *FREE, "trainer.total_steps=3", "trainer.save_every=0",
                                            "trainer.collective_timeout_s=60"))
    start = time.monotonic()
    with pytest.raises(WorkerFailure) as info:
        trainer.fit()
    seconds = time.monotonic() - start
    message = str(info.value)
    assert trainer.killed and "\n" not in message
    assert message.startswith("role 'rollout' rank 0") and "trainer.max_restarts=0" in message, message
    assert seconds < 60, seconds            # the sync did not wait out its deadline on the dead engine
