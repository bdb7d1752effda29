"""The single controller: the GRPO loop as a readable sequence of worker-group calls (DESIGN §3).

    prompts -> rollout.generate -> reward.score  ||  ref.compute_logprobs (|| actor old logprobs)
            -> advantages (here, pure) -> actor.update -> weight sync -> log / eval / checkpoint
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
import torch

from r1ray.algos import kl_coef_schedule
from r1ray.config import R1RayConfig
from r1ray.config_load import config_to_dict, config_to_yaml
from r1ray.data.curriculum import CurriculumRule, CurriculumSource
from r1ray.protocol import PromptBatch, RolloutBatch, SamplingParams, concat_batches, select_rows
from r1ray.evaluation import behaviour_rates
from r1ray.rewards import ScoreBatch
from r1ray.workers.placement import Placement
from r1ray.workers.fingerprint import WeightSyncError, verify_fingerprints

from r1ray.controller.advantage import build_train_batch, logprob_view, scores_tensor, select_groups, shaped_scores
from r1ray.controller.checkpoint import CheckpointManager, TrainerState, read_checkpoint, restore_rng
from r1ray.controller.evaluate import evaluate_dataset, training_eval_sampling
from r1ray.controller.inference import correct_flags
from r1ray.controller.metrics import StageTimer, mean_over_ranks, rollout_metrics, throughput
from r1ray.controller.ray_cluster import connect_for
from r1ray.controller.roles import Roles, build_roles, colocated
from r1ray.controller.run_setup import Datasets, build_datasets, prepare_files, prompt_batch
from r1ray.controller.schedule import groups_unit, response_budget
from r1ray.controller.tracking import Trackers
from r1ray.controller.redact import redact

logger = logging.getLogger(__name__)


class Trainer:
    """`Trainer(cfg).fit()` runs a whole GRPO run; `placement` overrides the config's (Python API)."""

    def __init__(self, cfg: R1RayConfig, placement: Placement | None = None):
        self.cfg = cfg
        self.placement = placement or Placement.from_config(cfg.placement)
        self.out_dir = Path(cfg.trainer.output_dir)
        self.checkpoints = CheckpointManager(self.out_dir / "checkpoints", cfg.trainer.keep_checkpoints)
        self.roles: Roles | None = None
        self.data: Datasets | None = None
        self.sampler: CurriculumSource | None = None
        self.manifest: list | None = None
        self.colocated = colocated(cfg)      # actor and rollout share devices (see `generate`)
        # The actor has changed since the engines last received its weights: true at start, so the engines
        # get the actor's weights (resumed or not) before they first generate.
        self.weights_stale = True

    # ---- setup -------------------------------------------------------------------------------------
    def _build(self) -> tuple[int, str | None]:
        """Files, cluster, data, workers; resume if asked. Returns (start step, tracker run id)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = prepare_files(self.cfg)
        where = connect_for(self.cfg.ray, self.placement)
        logger.info("ray: %s", where)
        self.data = build_datasets(self.cfg)
        cur = self.cfg.data.curriculum
        self.sampler = CurriculumSource(
            self.data.levels, self.cfg.data.prompts_per_step, seed=self.cfg.trainer.seed, shuffle=self.cfg.data.shuffle,
            rule=CurriculumRule(tuple(cur.advance_at_steps), cur.advance_at_accuracy, cur.window))
        self.roles = build_roles(self.cfg, self.placement)
        self.manifest = self.roles.actor.weight_manifest(self.cfg.model.dtype)
        start, run_id = self._maybe_resume()
        return start, run_id

    def _maybe_resume(self) -> tuple[int, str | None]:
        resume = self.cfg.trainer.resume
        path = self.checkpoints.latest() if resume == "auto" else (Path(resume) if resume != "never" else None)
        if path is None:
            if resume == "auto":
                logger.info("trainer.resume=auto: no complete checkpoint in %s, starting fresh", self.checkpoints.root)
            return 0, None
        state, rng = read_checkpoint(path)
        self.roles.actor.call("load", str(path / "actor"))
        self.sampler.load_state_dict(state.sampler)
        restore_rng(rng)
        logger.info("resumed from %s at step %d", path, state.step)
        return state.step, state.run_id

    # ---- the loop ----------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Run to trainer.total_steps; returns the last step's metrics."""
        start, run_id = self._build()
        t = self.cfg.trainer
        trackers = Trackers.build(self.cfg.logging, self.out_dir, total_steps=t.total_steps, start_step=start,
                                  run_id=run_id, config=redact(config_to_dict(self.cfg)))
        self.run_id = trackers.run_id
        last: dict[str, float] = {}
        try:
            if start == 0 and t.eval_before_train and self.data.val is not None:
                trackers.log(0, self.evaluate(0))
            for step in range(start + 1, t.total_steps + 1):
                last = self.step(step)
                if self.data.val is not None and t.eval_every and (step % t.eval_every == 0 or step == t.total_steps):
                    last.update(self.evaluate(step))
                trackers.log(step, last)
                if step == t.total_steps or (t.save_every and step % t.save_every == 0):
                    self.save(step)
        finally:
            trackers.close()
            self.roles.shutdown()
        return last

    def step(self, step: int) -> dict[str, float]:
        """One GRPO step; every arrow of DESIGN §3 is one visible group call.

        Colocated (actor and rollout on the same devices), each generation runs the cycle of `generate`
        (rollout wakes its weights, receives the sync, wakes its KV cache, generates, sleeps), and the
        actor's engine is onloaded for its passes and offloaded after the update.
        """
        cfg, roles, timer = self.cfg, self.roles, StageTimer()
        budget = response_budget(cfg.rollout, step)
        kl_coef = kl_coef_schedule(cfg.algorithm.kl_schedule, cfg.algorithm.kl_coef, cfg.algorithm.kl_coef_final,
                                   step - 1, cfg.trainer.total_steps)
        rollout, scores, ref_lp, old_lp, metrics = self._collect(step, budget, timer)
        if rollout is None:
            logger.warning("step %d: every group had zero reward spread; no update", step)
            return {**metrics, **timer.metrics()}
        if old_lp is not None:
            metrics["rollout/old_logprob_gap"] = sampler_gap(rollout, old_lp)
        with timer("advantage"):
            shaped = shaped_scores(scores, rollout, cfg.algorithm, budget)
            batch = build_train_batch(rollout, shaped, cfg.algorithm, kl_coef=kl_coef, ref_logprobs=ref_lp,
                                      old_logprobs=old_lp)
        with timer("update_actor"):
            if self.colocated:
                roles.actor.onload()
            refs = roles.actor.update_async(batch, temperature=cfg.rollout.temperature, kl_coef=kl_coef,
                                            mini_batches=cfg.algorithm.mini_batches, ppo_epochs=cfg.algorithm.ppo_epochs)
            metrics.update(mean_over_ranks(ray.get(refs)))
            if self.colocated:
                roles.actor.offload()
            self.weights_stale = True
        metrics.update({"actor/kl_coef": kl_coef, **rollout_metrics(rollout, budget),
                        **behaviour_rates(rollout.response_texts, cfg.eval.behaviour_words), **timer.metrics()})
        metrics.update(throughput(rollout, metrics["timing_s/step"], self.placement.pools[self.placement.roles["actor"]].size))
        return metrics

    def _collect(self, step: int, budget: int, timer: StageTimer):
        """Generate, score and (when needed) compute ref/old logprobs; with dynamic sampling, repeat until
        enough groups have reward spread. Returns (rollout, scores, ref_lp, old_lp, metrics)."""
        cfg = self.cfg
        unit = groups_unit(cfg, self.placement)
        wanted = cfg.data.prompts_per_step
        rounds = 3 if cfg.algorithm.dynamic_sampling else 1
        kept: list[tuple[RolloutBatch, torch.Tensor, Any, Any]] = []
        metrics: dict[str, float] = {}
        for round_index in range(rounds):
            prompts = prompt_batch(self.sampler.next_batch())
            sampling = SamplingParams(n=cfg.rollout.n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                      top_k=cfg.rollout.top_k, max_new_tokens=budget,
                                      seed=cfg.trainer.seed * 1_000_003 + step * 16 + round_index)
            rollout = self.generate(prompts, sampling, timer)
            with timer("reward_ref_logprobs"):
                scored, ref_lp, old_lp = self._score_and_logprobs(rollout)
            if round_index == 0:
                metrics.update(scored.metrics())
                accuracy = sum(correct_flags(cfg, scored)) / max(len(scored.results), 1)
                metrics.update({"train/accuracy": accuracy, **self.sampler.metrics()})
                self.sampler.observe(step, accuracy)
            scores = scores_tensor(scored.scores)
            chosen = select_groups(scores, cfg.rollout.n, dynamic_sampling=cfg.algorithm.dynamic_sampling,
                                   groups_unit=1)
            metrics.setdefault("frac_reward_zero_std", chosen.frac_zero_std)
            if chosen.rows:
                kept.append(_take(rollout, scores, ref_lp, old_lp, chosen.rows))
            if sum(len(k[0]) for k in kept) >= wanted * cfg.rollout.n:
                break
        metrics["dynamic_sampling/rounds"] = float(round_index + 1)
        if not kept:
            return None, None, None, None, metrics
        return (*_merge(kept, wanted * cfg.rollout.n, unit * cfg.rollout.n), metrics)

    def _score_and_logprobs(self, rollout: RolloutBatch) -> tuple[ScoreBatch, Any, Any]:
        """Reward scoring, reference logprobs and (off-policy updates only) old logprobs, all at once."""
        cfg, roles = self.cfg, self.roles
        score_refs = roles.reward.score_async(rollout)
        view = logprob_view(rollout)
        temp = cfg.rollout.temperature
        ref_refs = roles.ref.compute_logprobs_async(view, temp) if roles.ref else None
        ref_lp = None
        if ref_refs and self.placement.roles["ref"] == self.placement.roles["actor"]:
            # Reference and actor on the same devices: one forward pass at a time, not two at once.
            ref_lp = torch.cat(ray.get(ref_refs))
        old_lp = None
        if cfg.algorithm.ppo_epochs > 1 or cfg.algorithm.mini_batches > 1:
            if self.colocated:
                roles.actor.onload()
            old_refs = roles.actor.compute_logprobs_async(view, temp)
            old_lp = torch.cat(ray.get(old_refs))
        if ref_refs and ref_lp is None:
            ref_lp = torch.cat(ray.get(ref_refs))
        return roles.reward.gather_scores(score_refs), ref_lp, old_lp

    def generate(self, prompts: PromptBatch, sampling: SamplingParams, timer: StageTimer | None = None) -> RolloutBatch:
        """Generate with the actor's current weights. Colocated, the cycle is: wake weights -> sync ->
        wake KV cache -> generate -> sleep (level 2 discards the weights, so the next call resends them)."""
        timer = timer or StageTimer()
        rollout = self.roles.rollout
        with timer("sync_weights"):
            if self.colocated:
                rollout.wake(["weights"])
            if self.weights_stale or self.colocated:
                self.sync_weights()
        with timer("generate"):
            if self.colocated:
                rollout.wake(["kv_cache"])
            batch = rollout.generate(prompts, sampling)
            if self.colocated:
                rollout.sleep()
        return batch

    def score(self, rollout: RolloutBatch) -> ScoreBatch:
        return self.roles.reward.score(rollout)

    def sync_weights(self) -> None:
        """Actor -> rollout engines over the sync group, then compare every tensor's fingerprint (fails the
        step loudly, naming the engine and the tensors). The whole sync has the collective deadline."""
        roles = self.roles
        if self.colocated:
            roles.actor.onload()
        send = roles.actor.send_weights_async(self.manifest)
        receive = roles.rollout.receive_weights_async(self.manifest)
        sent = wait_for(send, "actor", self.cfg.trainer.collective_timeout_s)[0]
        tables = wait_for(receive, "rollout", self.cfg.trainer.collective_timeout_s)
        if self.colocated:
            roles.actor.offload()
        names = [name for name, _, _ in self.manifest]
        receivers = [f"rollout engine {e} worker {w}" for e, per_engine in enumerate(tables) for w in range(len(per_engine))]
        verify_fingerprints(names, sent, [t for per_engine in tables for t in per_engine], receivers)
        self.weights_stale = False

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out metrics with the trainer.eval_* sampling (greedy by default)."""
        ks = sorted({1, self.cfg.trainer.eval_n})
        return evaluate_dataset(self.cfg, self, self.data.val, training_eval_sampling(self.cfg, step), ks)

    def save(self, step: int) -> Path:
        state = TrainerState(step=step, sampler=self.sampler.state_dict(), run_id=self.run_id)
        return self.checkpoints.save(
            state, write_actor=lambda d: self.roles.actor.call("save", str(d)), model_path=self.cfg.model.path,
            config_yaml=config_to_yaml_redacted(self.cfg))


def sampler_gap(rollout: RolloutBatch, old_lp: torch.Tensor) -> float:
    """Mean |trainer - sampler| logprob over response tokens, both of the same weights (before any update
    of the step): kernel and precision drift only, or a sync that did not land."""
    mask = rollout.response_mask()
    width = mask.shape[1]
    gap = (old_lp[:, :width] - rollout.rollout_logprobs).abs() * mask
    return float(gap.sum() / mask.sum().clamp(min=1))


def wait_for(refs: list, role: str, timeout_s: float) -> list:
    """ray.get with a deadline; a straggler is named by role and rank."""
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    if pending:
        late = [i for i, r in enumerate(refs) if r in pending]
        raise WeightSyncError(f"weight sync: {role} rank(s) {late} did not finish within {timeout_s:g}s "
                              f"(trainer.collective_timeout_s); see their worker logs")
    return ray.get(list(refs))


def config_to_yaml_redacted(cfg: R1RayConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(redact(config_to_dict(cfg))))


def _take(rollout: RolloutBatch, scores, ref_lp, old_lp, rows: list[int]):
    index = torch.tensor(rows)
    return (select_rows(rollout, rows), scores[index], None if ref_lp is None else ref_lp[index],
            None if old_lp is None else old_lp[index])


def _merge(kept, wanted_rows: int, unit_rows: int):
    """Concatenate kept chunks and trim to `wanted_rows`, or to whole units when fewer were found."""
    width = max(k[0].rollout_logprobs.shape[1] for k in kept)
    rollout = concat_batches([k[0] for k in kept])
    scores = torch.cat([k[1] for k in kept])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    ref = torch.cat([pad(k[2]) for k in kept]) if kept[0][2] is not None else None
    old = torch.cat([pad(k[3]) for k in kept]) if kept[0][3] is not None else None
    rows = min(len(rollout), wanted_rows)
    rows = rows // unit_rows * unit_rows
    if rows == len(rollout):
        return rollout, scores, ref, old
    keep = list(range(rows))
    return _take(rollout, scores, ref, old, keep) if rows else (None, None, None, None)
