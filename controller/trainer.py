"""The single controller: the GRPO loop as a readable sequence of worker-group calls (docs/design.md §2).

    prompts -> rollout.generate -> reward.score  ||  ref.compute_logprobs (|| actor old logprobs)
            -> advantages (here, pure) -> actor.update -> weight sync -> log / eval / checkpoint
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import ray
import torch

from r1ray.algos import kl_coef_schedule
from r1ray.config import R1RayConfig
from r1ray.loss_spec import uses_reference_model
from r1ray.config_load import config_to_dict
from r1ray.errors import InputMismatch, NothingToDo, Stopped, WorkerFailure
from r1ray.memory_plan import budget_at, token_budgets
from r1ray.data.curriculum import CurriculumRule, CurriculumSource
from r1ray.protocol import PromptBatch, RolloutBatch, SamplingParams, TrainBatch, concat_batches
from r1ray.evaluation import behaviour_rates
from r1ray.rewards import ScoreBatch
from r1ray.rewards.spec import RewardFailure
from r1ray.workers.placement import Placement
from r1ray.workers.fingerprint import WeightSyncError, verify_fingerprints

from r1ray.controller.advantage import (build_train_batch, keep_rows, logprob_view, scores_tensor, select_groups,
                                        shaped_scores)
from r1ray.controller.checkpoint import (CheckpointManager, TrainerState, claim_output_dir, read_checkpoint,
                                        read_pending, restore_rng, rng_state)
from r1ray.controller.evaluate import evaluate_dataset, training_eval_sampling
from r1ray.controller.inference import correct_flags
from r1ray.controller.metrics import StageTimer, mean_over_ranks, rollout_metrics, staleness_metrics, throughput
from r1ray.controller.ray_cluster import connect_for
from r1ray.controller.roles import Roles, build_roles, colocated, ref_colocated
from r1ray.controller.run_setup import Datasets, build_datasets, prepare_files, prompt_batch
from r1ray.controller.schedule import groups_unit, response_budget
from r1ray.controller.tracking import Trackers
from r1ray.controller.redact import redact
from r1ray.controller.restarts import RESTARTABLE, describe_failure
from r1ray.controller.run_guards import StopRequest, interrupted, watch_skipped
from r1ray.controller.run_lock import RunLock
from r1ray.controller.rollout_queue import FixedLagQueue
from r1ray.controller.free_running import FreeRunningRollouts
from r1ray.controller.partial_rollouts import partial_fraction

logger = logging.getLogger(__name__)

DYNAMIC_SAMPLING_ROUNDS = 3      # generations per step at most, to find enough groups with reward spread


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
        self.colocated = colocated(self.placement)     # actor and rollout share devices (see `generate`)
        # Micro-batch tokens per rank by length stage: the configured budget, or the memory plan's.
        self.token_budgets = token_budgets(cfg)
        if self.colocated and cfg.trainer.max_staleness:
            raise ValueError(f"trainer.max_staleness={cfg.trainer.max_staleness} needs the rollout engines on devices "
                             f"of their own, but the placement puts rollout and actor in pool "
                             f"'{self.placement.roles['actor']}'; give the rollout a pool of its own")
        # The actor has changed since the engines last received its weights: true at start, so the engines
        # get the actor's weights (resumed or not) before they first generate.
        self.weights_stale = True
        self.failed_steps = 0                # steps in a row in which no sample got a score
        self.skipped_updates = 0             # updates in a row whose every optimizer step was skipped
        self.run_id: str | None = None       # the trackers' run, kept across restarts
        self.initial_rng: dict | None = None
        self.ended_groups: list = []         # the last attempt's groups, after shutdown
        # Weight versions: the actor's is the number of training steps it has taken; the engines stamp
        # every token with the version they last received (docs/design.md §10).
        self.version = 0
        # trainer.max_staleness >= 1: the generations dispatched ahead of training (fixed lag), or the
        # engines generating on their own (free running); both None when synchronous.
        self.queue: FixedLagQueue | None = None
        self.free: FreeRunningRollouts | None = None
        # Steps whose prompts the sampler gave out before a checkpoint but which did not train; a resumed
        # run generates them again from these prompts when their batch cannot be reused.
        self.carried: dict[int, PromptBatch] = {}

    # ---- setup -------------------------------------------------------------------------------------
    def _build(self) -> tuple[int, str | None]:
        """Files, cluster, data, workers; resume if asked. Returns (start step, tracker run id)."""
        self._prepare()
        return self._start(self.cfg.trainer.resume)

    def _prepare(self) -> None:
        """What a run sets up once, before any worker starts: output dir, files, cluster, data."""
        claim_output_dir(self.out_dir, self.cfg.trainer.resume, self.cfg.trainer.overwrite)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = prepare_files(self.cfg)
        where = connect_for(self.cfg.ray, self.placement)
        logger.info("ray: %s", where)
        self.data = build_datasets(self.cfg)
        self.initial_rng = rng_state()       # a restart before the first checkpoint starts from it again

    def _start(self, resume: str) -> tuple[int, str | None]:
        """Workers, the prompt sampler and the state to go on from: the checkpoint `resume` names, or the
        run's beginning. Returns (start step, tracker run id). Called again by each restart."""
        path = self._resume_path(resume)
        state, rng = read_checkpoint(path) if path else (None, self.initial_rng)
        t = self.cfg.trainer
        if state is not None and state.step >= t.total_steps:
            raise NothingToDo(f"{self.out_dir}: the run is already at step {state.step} of trainer.total_steps="
                              f"{t.total_steps}; nothing was trained (raise trainer.total_steps to continue it)")
        cur = self.cfg.data.curriculum
        self.sampler = CurriculumSource(
            self.data.levels, self.cfg.data.prompts_per_step, seed=t.seed, shuffle=self.cfg.data.shuffle,
            rule=CurriculumRule(tuple(cur.advance_at_steps), cur.advance_at_accuracy, cur.window))
        self.roles = build_roles(self.cfg, self.placement)
        self.manifest = self.roles.actor.weight_manifest(self.cfg.model.dtype)
        self.weights_stale, self.failed_steps, self.skipped_updates = True, 0, 0
        self.version, self.carried = 0, {}
        self.queue = self._rollout_queue()
        self.free = self._free_running()
        restore_rng(rng)
        if state is None:
            return 0, self.run_id
        self.roles.actor.load(path / "actor")
        self.sampler.load_state_dict(state.sampler)
        self.version = state.version if state.version >= 0 else state.step
        self._carry_over(read_pending(path, state), state.step)
        logger.info("resumed from %s at step %d", path, state.step)
        return state.step, state.run_id

    def _rollout_queue(self) -> FixedLagQueue | None:
        """trainer.max_staleness >= 1: generations dispatched K steps ahead (fixed lag)."""
        t = self.cfg.trainer
        if t.max_staleness == 0 or t.async_mode != "fixed_lag":
            return None
        if self.cfg.algorithm.rollout_correction == "none":
            logger.warning("trainer.max_staleness=%d with algorithm.rollout_correction=none: tokens up to %d "
                           "versions old enter the loss as if the actor had sampled them; consider tis_token "
                           "or icepop", t.max_staleness, t.max_staleness)

        def prepare(step: int) -> tuple[PromptBatch, SamplingParams]:
            return self._prompts(step), self._sampling(step, response_budget(self.cfg.rollout, step), 0)

        def sync() -> None:
            if self.weights_stale:
                self.sync_weights()

        return FixedLagQueue(t.max_staleness, t.total_steps, prepare=prepare, sync=sync,
                             dispatch=self.roles.rollout.generate_async)

    def _free_running(self) -> FreeRunningRollouts | None:
        """trainer.max_staleness >= 1 with async_mode=free_running: engines that generate on their own."""
        t, r = self.cfg.trainer, self.cfg.rollout
        if t.max_staleness == 0 or t.async_mode != "free_running":
            return None
        from r1ray.models import load_tokenizer

        tokenizer = load_tokenizer(self.cfg.model.path, trust_remote_code=self.cfg.model.trust_remote_code)
        template = SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                  seed=t.seed * 1_000_003, ignore_eos=r.ignore_eos)
        return FreeRunningRollouts(
            self.roles.rollout, bound=t.max_staleness, per_step=self.cfg.data.prompts_per_step, n=r.n,
            segment_tokens=t.segment_tokens, on_stale=t.stale_groups, keep=t.pause_mode == "keep", draw=self._draw,
            template=template,
            budget=lambda: response_budget(r, self.version + 1),
            decode=lambda ids: tokenizer.batch_decode(ids, skip_special_tokens=True))

    def _draw(self) -> PromptBatch:
        """The sampler's next prompts (free running: the pump admits them one group at a time)."""
        return prompt_batch(self.sampler.next_batch())

    def _carry_over(self, pending: dict[int, tuple[PromptBatch, RolloutBatch]], step: int) -> None:
        """A checkpoint's dispatched steps: a batch whose tokens stay within the staleness bound when it
        trains (step j trains at version self.version + j - step - 1 when every step updates) is trained as
        it is, so a fixed-lag run resumes bit for bit; the others are generated again from their prompts.
        Either way no prompt is repeated or skipped."""
        bound = self.cfg.trainer.max_staleness
        if self.free is not None:
            # Free running: what was given out and not trained is generated again, first, in order.
            for j in sorted(pending):
                self.free.requeue(pending[j][0])
            return

        def lag(j: int, batch: RolloutBatch | None) -> int | None:
            return None if batch is None else self.version + (j - step - 1) - int(batch.token_versions.min())

        reuse = {j: entry for j, entry in pending.items()
                 if self.queue is not None and lag(j, entry[1]) is not None and lag(j, entry[1]) <= bound}
        if self.queue is not None:
            self.queue.restore(reuse)
        self.carried = {j: prompts for j, (prompts, _) in pending.items() if j not in reuse}
        if self.carried:
            logger.info("resume: generating steps %s again from their prompts (trainer.max_staleness=%d)",
                        sorted(self.carried), bound)

    def _prompts(self, step: int) -> PromptBatch:
        """The prompts of `step`: carried over from before a resume, else the sampler's next batch."""
        carried = self.carried.pop(step, None)
        return carried if carried is not None else prompt_batch(self.sampler.next_batch())

    def _resume_path(self, resume: str) -> Path | None:
        if resume == "never":
            return None
        if resume != "auto":
            return Path(resume)
        path = self.checkpoints.latest_loadable()
        if path is None and self.checkpoints.complete():
            # Starting over would overwrite the run's metrics with a new run's: refuse instead.
            raise FileNotFoundError(f"trainer.resume=auto: every checkpoint in {self.checkpoints.root} is "
                                    f"damaged (see the warnings above); nothing was trained")
        if path is None:
            logger.info("trainer.resume=auto: no complete checkpoint in %s, starting fresh", self.checkpoints.root)
        return path

    # ---- the loop ----------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Run to trainer.total_steps; returns the last step's metrics. The run holds its output directory's
        lock (`RunLock`) throughout: a second run into the same directory is refused.

        A worker failure (see `restarts`) tears the groups down and starts them again from the newest
        complete checkpoint (or the run's beginning), up to trainer.max_restarts times; metrics.jsonl is
        cut back to that checkpoint, so every step appears once. Then WorkerFailure names the worker."""
        with RunLock(self.out_dir):
            return self._fit()

    def _fit(self) -> dict[str, float]:
        self._prepare()
        resume, limit = self.cfg.trainer.resume, self.cfg.trainer.max_restarts
        for restart in range(limit + 1):
            try:
                return self._run(resume)
            except RESTARTABLE as exc:
                cause = exc.__dict__.get("cause")
                if isinstance(cause, InputMismatch):
                    # A file that does not fit the run: a restart would load it again.
                    raise InputMismatch(str(cause)) from None
                failure = describe_failure(exc, self.ended_groups)
                if restart == limit:
                    advice = ("trainer.max_restarts=0: set it above 0 to restart the workers from the newest "
                              "checkpoint" if limit == 0 else f"gave up after {limit} restart(s)")
                    raise WorkerFailure(f"{failure}; {advice}") from exc
                # Go on from the newest complete checkpoint of this run, else where the run started.
                newest = self.checkpoints.latest_loadable()
                resume = "auto" if newest else resume
                logger.warning("worker failure: %s; restart %d of %d from %s", failure, restart + 1, limit,
                               newest or "the run's start")
        raise AssertionError("unreachable")

    def _run(self, resume: str) -> dict[str, float]:
        """One attempt: workers up, resume, steps to the end; the groups are shut down however it ends."""
        t = self.cfg.trainer
        trackers = None
        last: dict[str, float] = {}
        step = None                          # the step a second Ctrl-C stops, named in its message
        try:
            start, run_id = self._start(resume)
            trackers = Trackers.build(self.cfg.logging, self.out_dir, total_steps=t.total_steps, start_step=start,
                                      run_id=run_id, config=redact(config_to_dict(self.cfg)))
            self.run_id = trackers.run_id
            step = start + 1
            with StopRequest() as stop:
                if start == 0 and t.eval_before_train and self.data.val is not None:
                    trackers.log(0, self.evaluate(0))
                for step in range(start + 1, t.total_steps + 1):
                    last = self.step(step)
                    if self.data.val is not None and t.eval_every and (step % t.eval_every == 0 or step == t.total_steps):
                        last.update(self.evaluate(step))
                    trackers.log(step, last)
                    if step == t.total_steps or (t.save_every and step % t.save_every == 0) or stop.requested:
                        path = self.save(step)
                    if stop.requested and step < t.total_steps:
                        raise Stopped(f"{stop.requested} received: finished step {step} of {t.total_steps} and wrote "
                                      f"{path}; continue with trainer.resume=auto", signal=stop.requested)
        except KeyboardInterrupt as exc:
            if step is None:
                raise
            raise interrupted(step, self.checkpoints.latest()) from exc
        finally:
            if self.free is not None:
                self.free.stop()
            if trackers is not None:
                trackers.close()
            if self.roles is not None:
                self.roles.shutdown()
                self.ended_groups, self.roles = self.roles.all(), None    # named in a failure report
        return last

    def step(self, step: int) -> dict[str, float]:
        """One GRPO step, top to bottom: generate -> score -> keep groups -> reference and old logprobs ->
        advantages -> update. The new weights reach the engines at the start of the next generation.

        The scored rollout is one `RolloutBatch`: scores and logprobs are its fields, so selecting and
        concatenating groups carries them along. Without dynamic sampling the logprob passes run while
        the reward workers score; with it, only the groups that train get logprob passes. Colocated, each
        generation runs the cycle of `generate` and the actor is onloaded only for its own passes.
        """
        cfg, timer, metrics = self.cfg, StageTimer(), {}
        budget = response_budget(cfg.rollout, step)
        kl_coef = kl_coef_schedule(cfg.algorithm.kl_schedule, cfg.algorithm.kl_coef, cfg.algorithm.kl_coef_final,
                                   step - 1, cfg.trainer.total_steps)
        filtering = cfg.algorithm.dynamic_sampling
        wanted = cfg.data.prompts_per_step * cfg.rollout.n
        kept: list[RolloutBatch] = []
        for round_index in range(DYNAMIC_SAMPLING_ROUNDS if filtering else 1):
            if self.queue is not None:
                with timer("generate"):          # waiting for the batch dispatched K steps ago
                    rollout = self.queue.take(step)
            elif self.free is not None:
                with timer("generate"):          # waiting for enough finished groups
                    rollout, taken = self._take_free()
                metrics.update(taken)
            else:
                prompts = self._prompts(step) if round_index == 0 else prompt_batch(self.sampler.next_batch())
                rollout = self.generate(prompts, self._sampling(step, budget, round_index), timer)
            with timer("reward_ref_logprobs"):
                pending = self.roles.reward.score_async(rollout)
                if not filtering:
                    rollout = self.with_logprobs(rollout)        # while the reward workers score
                scored = self.roles.reward.gather_scores(pending)
            rollout = replace(rollout, scores=scores_tensor(scored.scores))
            if round_index == 0:
                metrics.update(self._observe(step, scored))
            chosen = select_groups(rollout.scores, cfg.rollout.n, dynamic_sampling=filtering)
            metrics.setdefault("frac_reward_zero_std", chosen.frac_zero_std)
            if chosen.rows:
                kept.append(keep_rows(rollout, chosen.rows))
            if sum(map(len, kept)) >= wanted:
                break
        metrics["dynamic_sampling/rounds"] = float(round_index + 1)
        rollout = whole_units(kept, wanted, groups_unit(cfg, self.placement) * cfg.rollout.n)
        if rollout is None:
            logger.warning("step %d: every group had zero reward spread; no update", step)
            return {**metrics, **timer.metrics()}
        # Checked before the update: a token older than the bound would be a bug, and is never trained on.
        metrics.update(staleness_metrics(rollout, self.version, cfg.trainer.max_staleness))
        if filtering:
            with timer("ref_logprobs"):
                rollout = self.with_logprobs(rollout)            # the kept groups only
        with timer("advantage"):
            scores = shaped_scores(rollout.scores, rollout, cfg.algorithm, budget)
            batch = build_train_batch(rollout, scores, cfg.algorithm, kl_coef=kl_coef)
        with timer("update_actor"):
            metrics.update(self.update(batch, kl_coef))
        if self.free is not None:
            self.free.trained(self.version)
            with timer("sync_weights"):          # the engines pick the new weights up at their next segment
                self.sync_weights()
        if uses_reference_model(cfg):                            # KL is in use at some step
            metrics["actor/kl_coef"] = kl_coef
        behaviour = behaviour_rates(rollout.response_texts, cfg.eval.behaviour_words)
        metrics.update({**rollout_metrics(rollout, budget), **behaviour, **timer.metrics()})
        metrics.update(throughput(rollout, metrics["timing_s/step"], self.placement.pools[self.placement.roles["actor"]].size))
        return metrics

    def _take_free(self) -> tuple[RolloutBatch, dict[str, float]]:
        """Free running: the engines get the actor's weights before they first generate, then run on."""
        self.free.trained(self.version)          # the actor's version, resumed or not
        if self.weights_stale:
            self.sync_weights()
        self.free.start()
        rollout, metrics = self.free.take()
        metrics["async/partial_rows"] = partial_fraction(rollout)
        return rollout, metrics

    def token_budget(self) -> int:
        """Micro-batch tokens per rank for the step being trained: its length stage's (docs/design.md §12)."""
        return budget_at(self.token_budgets, self.version + 1)

    def _sampling(self, step: int, budget: int, round_index: int) -> SamplingParams:
        r = self.cfg.rollout
        return SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=budget,
                              seed=self.cfg.trainer.seed * 1_000_003 + step * 16 + round_index, ignore_eos=r.ignore_eos)

    def _observe(self, step: int, scored: ScoreBatch) -> dict[str, float]:
        """Reward metrics of the step's first round; the curriculum sees its accuracy. A run whose reward
        scores nothing, step after step, stops (RewardFailure) rather than train on nothing."""
        self.failed_steps = 0 if scored.n_scored else self.failed_steps + 1
        limit = self.cfg.reward.max_failed_steps
        if self.failed_steps >= limit:
            why = scored.first_error or "every reward returned None (unscorable)"
            raise RewardFailure(f"reward: no sample of {len(scored.results)} could be scored in {limit} step(s) in a "
                                f"row (steps {step - limit + 1}-{step}); first error: {why}. Fix the reward "
                                f"function (try it with `r1ray score`), or raise reward.max_failed_steps")
        accuracy = sum(correct_flags(self.cfg, scored)) / max(len(scored.results), 1)
        with self._sampler_lock():
            self.sampler.observe(step, accuracy)
            return {**scored.metrics(), "train/accuracy": accuracy, **self.sampler.metrics()}

    def _sampler_lock(self):
        """Free running, the pump draws prompts from the sampler in its own thread: hold it off."""
        return self.free.lock if self.free is not None else nullcontext()

    def with_logprobs(self, rollout: RolloutBatch) -> RolloutBatch:
        """The rollout with the reference's logprobs (KL on) and the actor's old logprobs (off-policy updates
        only: on-policy, the update's own first forward gives them)."""
        cfg, roles = self.cfg, self.roles
        view = logprob_view(rollout)
        temp = cfg.rollout.temperature
        cycle_ref = roles.ref is not None and ref_colocated(self.placement)
        if cycle_ref:
            roles.ref.onload()
        tokens = self.token_budget()
        ref_refs = roles.ref.compute_logprobs_async(view, temp, tokens) if roles.ref else None
        ref_lp = None
        if ref_refs and self.placement.roles["ref"] == self.placement.roles["actor"]:
            # Reference and actor on the same devices: one forward pass at a time, not two at once.
            ref_lp = torch.cat(ray.get(ref_refs))
        if cycle_ref:
            if ref_lp is None:
                ref_lp = torch.cat(ray.get(ref_refs))
            roles.ref.offload()
        old_lp = None
        if cfg.algorithm.ppo_epochs > 1 or cfg.algorithm.mini_batches > 1:
            if self.colocated:
                roles.actor.onload()
            old_lp = torch.cat(ray.get(roles.actor.compute_logprobs_async(view, temp, tokens)))
        if ref_refs and ref_lp is None:
            ref_lp = torch.cat(ray.get(ref_refs))
        return replace(rollout, ref_logprobs=ref_lp, old_logprobs=old_lp)

    def update(self, batch: TrainBatch, kl_coef: float) -> dict[str, float]:
        """The actor's optimizer steps on the batch; the engines' weights are stale afterwards."""
        a, roles = self.cfg.algorithm, self.roles
        if self.colocated:
            roles.actor.onload()
        refs = roles.actor.update_async(batch, temperature=self.cfg.rollout.temperature, kl_coef=kl_coef,
                                        mini_batches=a.mini_batches, ppo_epochs=a.ppo_epochs,
                                        token_budget=self.token_budget())
        metrics = mean_over_ranks(ray.get(refs))
        if self.colocated:
            roles.actor.offload()
        self.weights_stale = True
        self.version += 1
        self.skipped_updates = watch_skipped(self.skipped_updates, metrics, a.ppo_epochs * a.mini_batches,
                                             self.cfg.actor.max_skipped_steps)
        return metrics

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
        # Free running: no engine call is sent between the two halves, so each engine receives the weights
        # right after the segment it is generating.
        with self.free.syncing() if self.free is not None else nullcontext():
            send = roles.actor.send_weights_async(self.manifest)
            receive = roles.rollout.receive_weights_async(self.manifest, self.version)
        results = wait_for({"actor": send, "rollout": receive}, self.cfg.trainer.collective_timeout_s)
        sent, tables = results["actor"][0], results["rollout"]
        if self.colocated:
            roles.actor.offload()
        names = [name for name, _, _ in self.manifest]
        receivers = [f"rollout engine {e} worker {w}" for e, per_engine in enumerate(tables) for w in range(len(per_engine))]
        verify_fingerprints(names, sent, [t for per_engine in tables for t in per_engine], receivers)
        self.weights_stale = False
        if self.free is not None:
            self.free.engines_at(self.version)

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out metrics with the trainer.eval_* sampling (greedy by default)."""
        ks = sorted({1, self.cfg.trainer.eval_n})
        return evaluate_dataset(self.cfg, self, self.data.val, training_eval_sampling(self.cfg, step), ks)

    def save(self, step: int) -> Path:
        """The actor, the sampler and, asynchronous, the steps dispatched ahead (waited for: they came
        from weights older than the checkpoint's, so a resumed run could not generate them again)."""
        pending = self.queue.collected() if self.queue is not None else {}
        with self._sampler_lock():
            sampler = self.sampler.state_dict()
            if self.free is not None:
                # Free running: the prompts given out and not trained (regenerated by a resumed run), taken
                # with the sampler's state at the same instant.
                unfinished = self.free.unfinished()
                pending = {step + 1: (unfinished, None)} if unfinished is not None else {}
        state = TrainerState(step=step, sampler=sampler, run_id=self.run_id,
                             pending_steps=sorted(pending), version=self.version)
        return self.checkpoints.save(
            state, write_actor=self.roles.actor.save, model_path=self.cfg.model.path,
            config_yaml=config_to_yaml_redacted(self.cfg), pending=pending)


def wait_for(refs_by_role: dict[str, list], timeout_s: float) -> dict[str, list]:
    """Every role's results, with one deadline for all; fails as soon as any call fails, with a worker's
    death in preference to the error it caused in a peer (`_dead_peer`).

    Waiting for the senders first and the receivers after would report a receiver that died at once as a
    sender timing out (the sender's broadcast waits for it) only after the whole deadline.
    """
    owner = {ref: (role, rank) for role, refs in refs_by_role.items() for rank, ref in enumerate(refs)}
    pending, deadline = list(owner), time.monotonic() + timeout_s
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            late = sorted(owner[r] for r in pending)
            raise WeightSyncError(f"weight sync: {', '.join(f'{role} rank {rank}' for role, rank in late)} did not "
                                  f"finish within {timeout_s:g}s (trainer.collective_timeout_s); see their worker logs")
        try:
            ray.get(done)                # raises this call's failure now
        except ray.exceptions.RayActorError:
            raise
        except Exception as exc:
            death = _dead_peer(pending)
            if death is not None:
                raise death from exc
            raise
    return {role: ray.get(refs) for role, refs in refs_by_role.items()}


# A worker that dies in a collective shows first as its peer's error (a connection reset by the dead
# end) a moment before Ray reports the death itself; the death is the cause worth naming.
DEATH_GRACE_S = 5.0


def _dead_peer(pending: list) -> ray.exceptions.RayActorError | None:
    """The death of a worker among `pending` calls, if Ray reports one within DEATH_GRACE_S."""
    if not pending:
        return None
    ready, _ = ray.wait(pending, num_returns=len(pending), timeout=DEATH_GRACE_S)
    for ref in ready:
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError as death:
            return death
        except Exception:
            continue
    return None


def config_to_yaml_redacted(cfg: R1RayConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(redact(config_to_dict(cfg))))


def whole_units(kept: list[RolloutBatch], wanted_rows: int, unit_rows: int) -> RolloutBatch | None:
    """The kept groups concatenated, cut to `wanted_rows`, or to whole units (groups that divide evenly over
    ranks x mini-batches) when fewer were found; None when not one unit is left."""
    if not kept:
        return None
    rollout = concat_batches(kept) if len(kept) > 1 else kept[0]
    rows = min(len(rollout), wanted_rows) // unit_rows * unit_rows
    return keep_rows(rollout, list(range(rows))) if rows else None
