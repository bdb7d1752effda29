"""Cross-field rules of the config, checked at load time so mistakes fail before any worker starts.

Each rule returns problem lines that name the field and say how to fix it. `check_config` runs them all
and returns every problem, so `r1ray config validate` can list them together.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from r1ray.config import AlgorithmConfig, DataConfig, R1RayConfig
from r1ray.data import TASKS
from r1ray.data.template import PromptStyle
from r1ray.engines import ROLLOUT_ENGINES, TRAIN_ENGINES, EngineRegistry
from r1ray.rewards import reward_names
from r1ray import memory_plan
from r1ray.loss_spec import POLICY_LOSS_NAMES, resolve_preset, uses_reference_model

GROUP_ESTIMATORS = ("grpo", "drgrpo", "rloo", "reinforce_pp_baseline")


def check_config(cfg: R1RayConfig, memory: bool = True) -> list[str]:
    problems = _choices(cfg, "")
    for rule in (_model_rules, _data_rules, _rollout_rules, _algorithm_rules, _batch_rules,
                 _reward_rules, _optimizer_rules, _placement_rules, _engine_rules, _sequence_parallel_rules,
                 _trainer_rules, _range_rules):
        problems += rule(cfg)
    if memory and not problems:
        problems += _memory_rules(cfg)      # the plan assumes a config every other rule accepts
    return problems


def _memory_rules(cfg: R1RayConfig) -> list[str]:
    """Every length stage must fit the devices (r1ray/memory_plan.py), when the model's shape is known."""
    shape = memory_plan.model_shape(cfg)
    if shape is None:
        if cfg.actor.micro_batch_tokens == 0:
            return [f"actor.micro_batch_tokens: 0 asks the memory plan for the budget, which needs the model's shape; "
                    f"{cfg.model.path}/config.json is not there to read, so give a budget in tokens"]
        return []
    return memory_plan.plan_memory(cfg, shape).problems


# Numbers with a range that no other rule checks: (dotted key, lowest, highest, whether each end is allowed).
RANGES = (
    ("actor.min_lr_ratio", 0.0, 1.0, (True, True)),
    ("rollout.gpu_memory_utilization", 0.0, 1.0, (False, True)),
    ("data.generate.val_size", 0, None, (True, True)),
    ("algorithm.overlong_penalty", 0.0, None, (True, True)),
    ("algorithm.entropy_coef", 0.0, None, (True, True)),
    ("trainer.eval_temperature", 0.0, None, (True, True)),
)


def _range_rules(cfg: R1RayConfig) -> list[str]:
    """Each of RANGES in its range, and the AdamW betas in [0, 1): one line per value outside."""
    problems = []
    for key, low, high, (low_ok, high_ok) in RANGES:
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        below = value < low or (value == low and not low_ok)
        above = high is not None and (value > high or (value == high and not high_ok))
        if below or above:
            span = (f"{'[' if low_ok else '('}{low}, {high}{']' if high_ok else ')'}" if high is not None
                    else f">= {low}" if low_ok else f"> {low}")
            problems.append(f"{key}: {value} is out of range; it must be {span}")
    if not all(0.0 <= b < 1.0 for b in cfg.actor.betas) or len(cfg.actor.betas) != 2:
        problems.append(f"actor.betas: {list(cfg.actor.betas)} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    return problems


def _choices(node: Any, prefix: str) -> list[str]:
    problems = []
    for f in fields(node):
        value = getattr(node, f.name)
        key = prefix + f.name
        if is_dataclass(value):
            problems += _choices(value, key + ".")
        elif isinstance(value, (dict, list)):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for name, sub in items:
                if is_dataclass(sub):
                    problems += _choices(sub, f"{key}.{name}.")
        elif "choices" in f.metadata and value not in f.metadata["choices"]:
            problems.append(f"{key}: '{value}' is not one of {', '.join(f.metadata['choices'])}")
    return problems


def model_max_length(cfg: R1RayConfig) -> int | None:
    """The longest sequence the policy allows, or None when it cannot be known yet."""
    if cfg.model.max_model_len > 0:
        return cfg.model.max_model_len
    config_json = Path(cfg.model.path) / "config.json"
    if config_json.is_file():
        value = json.loads(config_json.read_text()).get("max_position_embeddings")
        return int(value) if value else None
    if cfg.model.init_tiny:
        return cfg.model.tiny_max_length
    return None


def _model_rules(cfg: R1RayConfig) -> list[str]:
    m = cfg.model
    problems = []
    if not m.path:
        problems.append("model.path: empty; set it to a Hugging Face model directory (or model.init_tiny=true with a path to build into)")
    elif not m.init_tiny and not m.fetch and not Path(m.path).exists() and not _looks_like_hub_id(m.path):
        problems.append(f"model.path: '{m.path}' does not exist; give a model directory or set model.init_tiny=true")
    elif not m.init_tiny and not m.fetch and Path(m.path).is_dir():
        problems += _model_dir_rules(Path(m.path))
    if m.ref_path:
        problems += _ref_path_rules(cfg)
    if m.init_tiny and m.fetch:
        problems.append("model.fetch and model.init_tiny: choose one way to build model.path")
    if m.fetch:
        # Imported here only: the r1ray.models package imports torch and transformers, which a config check
        # must not wait for.
        from r1ray.models.fetch import KNOWN

        if m.fetch not in KNOWN:
            problems.append(f"model.fetch: '{m.fetch}' is not a known checkpoint (known: {', '.join(sorted(KNOWN))})")
    if m.tiny_hidden < 8 or m.tiny_layers < 1:
        problems.append("model.tiny_hidden/tiny_layers: need tiny_hidden >= 8 and tiny_layers >= 1")
    limit = model_max_length(cfg)
    total = cfg.rollout.max_prompt_length + cfg.rollout.max_response_length
    if limit is not None and total > limit:
        problems.append(f"rollout.max_prompt_length + rollout.max_response_length = {total} exceeds the model's "
                        f"{limit} positions; lower one of them (or set model.max_model_len if the model allows more)")
    return problems


def _model_dir_rules(path: Path) -> list[str]:
    """A directory given as model.path that is not a model: a training checkpoint, or a file's parent."""
    if (path / "config.json").is_file():
        return []
    if (path / "COMPLETE").is_file() and (path / "actor").is_dir():
        return [f"model.path: '{path}' is a training checkpoint, not a model directory; export it first "
                f"(r1ray export {path} --out <dir>) and give that, or resume it with trainer.resume={path}"]
    if (path / "checkpoints").is_dir() and (path / "metrics.jsonl").is_file():
        return [f"model.path: '{path}' is a run's output directory, not a model; export one of its checkpoints "
                f"(r1ray export {path}/checkpoints/step_... --out <dir>) and give that"]
    # Anything else may still become a model (an earlier pipeline stage writes it): left to the loader.
    return []


def _ref_path_rules(cfg: R1RayConfig) -> list[str]:
    """model.ref_path must exist and share the policy's vocabulary (KL compares logprobs token by token)."""
    m = cfg.model
    ref = Path(m.ref_path)
    if not ref.exists():
        return [] if _looks_like_hub_id(m.ref_path) else [
            f"model.ref_path: '{m.ref_path}' does not exist; give the reference model's directory (or leave it empty "
            f"to use model.path's weights)"]
    if not uses_reference_model(cfg):
        return [f"model.ref_path: set, but no reference model runs (algorithm.kl_placement="
                f"{cfg.algorithm.kl_placement}, kl_coef={cfg.algorithm.kl_coef}); enable KL or remove model.ref_path"]
    sizes = {}
    for key, path in (("model.path", Path(m.path)), ("model.ref_path", ref)):
        config_json = path / "config.json"
        if config_json.is_file():
            sizes[key] = json.loads(config_json.read_text()).get("vocab_size")
    if len(sizes) == 2 and sizes["model.path"] != sizes["model.ref_path"]:
        return [f"model.ref_path: vocab_size {sizes['model.ref_path']} differs from model.path's "
                f"{sizes['model.path']}; the reference must use the policy's tokenizer"]
    return []


def _data_rules(cfg: R1RayConfig) -> list[str]:
    d = cfg.data
    problems = []
    if not d.train_files and not d.generate.task:
        problems.append("data.train_files: empty; list JSONL/Parquet files, or set data.generate.task to build a dataset")
    for key in ("train_files", "val_files"):
        for name in getattr(d, key):
            if Path(name).is_dir():
                problems.append(f"data.{key}: '{name}' is a directory; list the JSONL/Parquet files in it, e.g. "
                                f"data.{key}=[{Path(name) / 'train.jsonl'}]")
            elif not Path(name).is_file() and "://" not in name:
                problems.append(f"data.{key}: '{name}' not found; check the path (relative paths start at the working directory)")
    if d.generate.task:
        if d.generate.task not in TASKS:
            problems.append(f"data.generate.task: '{d.generate.task}' is not one of {', '.join(sorted(TASKS))}")
        if d.generate.train_size < d.prompts_per_step:
            problems.append("data.generate.train_size: smaller than data.prompts_per_step; generate more prompts")
    if d.prompts_per_step < 1:
        problems.append("data.prompts_per_step: must be >= 1")
    try:
        prompt_style(d)
    except ValueError as exc:
        problems.append(str(exc))
    return problems


def prompt_style(data: DataConfig) -> PromptStyle:
    """The PromptStyle of a DataConfig (template, system prompt, demonstrations); ValueError names the field."""
    return PromptStyle(data.template, data.system_prompt, tuple(tuple(pair) for pair in data.demonstrations))


def _rollout_rules(cfg: R1RayConfig) -> list[str]:
    r = cfg.rollout
    problems = []
    if r.n < 1:
        problems.append("rollout.n: must be >= 1")
    if not 0.0 < r.top_p <= 1.0:
        problems.append("rollout.top_p: must be in (0, 1]")
    if r.temperature < 0:
        problems.append("rollout.temperature: must be >= 0")
    elif r.temperature == 0 and r.n > 1:
        problems.append(f"rollout.temperature: 0 (greedy) makes the {r.n} samples of a prompt identical, so a group "
                        f"has no reward spread and nothing is learned; use 0.6 to 1.0 (held-out evaluation has its "
                        f"own trainer.eval_temperature)")
    if r.max_prompt_length < 1 or r.max_response_length < 1:
        problems.append("rollout.max_prompt_length/max_response_length: must be >= 1")
    steps = [entry[0] for entry in r.response_length_schedule if len(entry) == 2]
    if any(len(entry) != 2 for entry in r.response_length_schedule):
        problems.append("rollout.response_length_schedule: each entry is [step, length], e.g. [[0, 8192], [200, 20480]]")
    elif r.response_length_schedule:
        if steps != sorted(steps) or steps[0] != 0:
            problems.append("rollout.response_length_schedule: steps must start at 0 and increase")
        longest = max(entry[1] for entry in r.response_length_schedule)
        if longest > r.max_response_length:
            problems.append(f"rollout.response_length_schedule: length {longest} exceeds rollout.max_response_length="
                            f"{r.max_response_length}; raise max_response_length (it sizes the engines)")
    engine = ROLLOUT_ENGINES.entries.get(r.engine)       # None: named by the choices check
    if engine is not None:
        problems += _package_rules(ROLLOUT_ENGINES, r.engine, _pool_device(cfg, cfg.placement.rollout))
        if engine.cpu_kv_cache and r.cpu_kv_cache_gib < 1:
            problems.append("rollout.cpu_kv_cache_gib: must be >= 1 (whole GiB of KV cache per CPU vLLM engine)")
        head = model_head_size(cfg)
        if (engine.cpu_head_sizes and _pool_device(cfg, cfg.placement.rollout) == "cpu" and head is not None
                and head not in engine.cpu_head_sizes):
            problems.append(f"rollout.engine: {r.engine} on CPU has no attention kernel for the model's head size "
                            f"{head} ({cfg.model.path}); it runs {', '.join(map(str, engine.cpu_head_sizes))}: use "
                            f"rollout.engine=hf, or a model whose hidden_size / num_attention_heads is one of those")
    return problems


def model_head_size(cfg: R1RayConfig) -> int | None:
    """The policy's attention head size from its config.json (head_dim, else hidden / heads), or None when
    there is no local config.json to read yet."""
    config_json = Path(cfg.model.path) / "config.json"
    if not config_json.is_file():
        return None
    try:
        config = json.loads(config_json.read_text())
        return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def _algorithm_rules(cfg: R1RayConfig) -> list[str]:
    a = cfg.algorithm
    problems = []
    if a.adv_estimator in GROUP_ESTIMATORS and cfg.rollout.n < 2:
        problems.append(f"rollout.n: {a.adv_estimator} needs a group baseline, so n must be >= 2 (typical: 8 to 64)")
    if not 0.0 <= a.clip_low < 1.0 or a.clip_high < 0.0:
        problems.append("algorithm.clip_low/clip_high: need 0 <= clip_low < 1 and clip_high >= 0")
    if a.dual_clip != 0.0 and a.dual_clip <= 1.0:
        problems.append("algorithm.dual_clip: must be 0 (off) or > 1, e.g. 3.0")
    if a.kl_coef < 0 or a.kl_coef_final < 0:
        problems.append("algorithm.kl_coef/kl_coef_final: must be >= 0")
    # The penalty ramp is measured against the current budget, so the buffer must fit in the smallest one.
    budgets = [entry[1] for entry in cfg.rollout.response_length_schedule if len(entry) == 2]
    smallest = min(budgets or [cfg.rollout.max_response_length])
    if a.overlong_shaping and a.overlong_buffer_len >= smallest:
        problems.append(f"algorithm.overlong_buffer_len: must be smaller than the smallest response budget ({smallest}, "
                        f"rollout.max_response_length or rollout.response_length_schedule)")
    if a.ppo_epochs < 1 or a.mini_batches < 1:
        problems.append("algorithm.ppo_epochs/mini_batches: must be >= 1")
    return problems + _loss_rules(a)


def _loss_rules(a: AlgorithmConfig) -> list[str]:
    """The policy loss names a registered loss or an importable module; the correction's cap and band."""
    problems = []
    if ":" in a.policy_loss:
        if not _importable(a.policy_loss.partition(":")[0]):
            problems.append(f"algorithm.policy_loss: module '{a.policy_loss.partition(':')[0]}' of '{a.policy_loss}' "
                            f"cannot be imported from here; check its spelling and that its folder is on PYTHONPATH")
    elif a.policy_loss not in POLICY_LOSS_NAMES:
        problems.append(f"algorithm.policy_loss: unknown loss '{a.policy_loss}'; known: {', '.join(POLICY_LOSS_NAMES)}, "
                        f"or 'package.module:function'")
    if a.policy_loss in ("gspo", "cispo") and a.dual_clip:
        problems.append(f"algorithm.dual_clip: {a.policy_loss} bounds its ratio already; set dual_clip=0")
    try:
        resolve_preset(a.rollout_correction, a.rollout_correction_cap, a.rollout_correction_band)
    except ValueError as exc:
        problems.append(str(exc))
    return problems


def _batch_rules(cfg: R1RayConfig) -> list[str]:
    sequences = cfg.data.prompts_per_step * cfg.rollout.n
    dp = _pool_size(cfg, cfg.placement.actor)
    problems = []
    if dp and sequences % (dp * cfg.algorithm.mini_batches):
        problems.append(f"data.prompts_per_step * rollout.n = {sequences} sequences is not divisible by actor ranks ({dp}) "
                        f"x algorithm.mini_batches ({cfg.algorithm.mini_batches}); change prompts_per_step or mini_batches")
    if cfg.data.prompts_per_step % cfg.algorithm.mini_batches:
        problems.append("algorithm.mini_batches: must divide data.prompts_per_step so that groups stay whole")
    # The budget is per rank: S ranks sharing each sequence (sequence parallelism) hold S budgets of it.
    a = cfg.actor
    split = max(1, min(a.sequence_parallel_size, a.ref_sequence_parallel_size or a.sequence_parallel_size))
    longest = cfg.rollout.max_prompt_length + cfg.rollout.max_response_length
    if a.micro_batch_tokens < 0:
        problems.append(f"actor.micro_batch_tokens: {a.micro_batch_tokens} is negative; give a token budget, or 0 "
                        f"for the memory plan's")
    elif a.micro_batch_tokens and a.micro_batch_tokens * split < longest:
        per = f" x sequence parallel {split}" if split > 1 else ""
        problems.append(f"actor.micro_batch_tokens: {a.micro_batch_tokens}{per} cannot hold one full sequence "
                        f"({longest} tokens); raise it" + ("" if split > 1 else
                                                          " (or split sequences: actor.sequence_parallel_size)"))
    if cfg.placement.threads_per_worker < 0:
        problems.append(f"placement.threads_per_worker: {cfg.placement.threads_per_worker} is negative; "
                        f"use 0 (automatic) or a thread count")
    return problems


def _reward_rules(cfg: R1RayConfig) -> list[str]:
    r = cfg.reward
    problems = []
    if not r.functions:
        problems.append("reward.functions: empty; list at least one reward, e.g. [auto, format]")
    if len(r.weights) != len(r.functions):
        problems.append(f"reward.weights: {len(r.weights)} weights for {len(r.functions)} functions; give one weight per function")
    known = set(reward_names())
    for name in r.functions:
        if name not in known and ":" not in name:
            problems.append(f"reward.functions: unknown reward '{name}'; known: {', '.join(sorted(known))}")
        elif ":" in name and not _importable(name.partition(":")[0]):
            problems.append(f"reward.functions: module '{name.partition(':')[0]}' of '{name}' cannot be imported from "
                            f"here; check its spelling and that its folder is on PYTHONPATH (or in the job's working dir)")
    bad = [w for w in r.weights if not math.isfinite(w)]
    if bad:
        problems.append(f"reward.weights: {bad[0]} is not a finite number; give each reward a real weight, e.g. 1.0")
    if r.sample_timeout_s <= 0 or r.batch_timeout_s < r.sample_timeout_s:
        problems.append("reward.sample_timeout_s/batch_timeout_s: need 0 < sample_timeout_s <= batch_timeout_s")
    if r.max_failed_steps < 1:
        problems.append("reward.max_failed_steps: must be >= 1")
    if r.processes < 1:
        problems.append("reward.processes: must be >= 1")
    return problems


def _placement_rules(cfg: R1RayConfig) -> list[str]:
    p = cfg.placement
    problems = []
    for role in ("actor", "ref", "rollout", "reward"):
        name = getattr(p, role)
        if name not in p.pools:
            problems.append(f"placement.{role}: pool '{name}' is not defined; define it under placement.pools "
                            f"(defined: {', '.join(p.pools) or 'none'})")
    for name, pool in p.pools.items():
        if pool.nodes < 1 or pool.devices_per_node < 1:
            problems.append(f"placement.pools.{name}: nodes and devices_per_node must be >= 1")
    rollout_size = _pool_size(cfg, p.rollout)
    tp = cfg.rollout.tensor_parallel_size
    engine = ROLLOUT_ENGINES.entries.get(cfg.rollout.engine)
    if tp > 1 and engine is not None and not engine.tensor_parallel:
        spanning = [name for name, e in ROLLOUT_ENGINES.entries.items() if e.tensor_parallel]
        problems.append(f"rollout.tensor_parallel_size: {tp} needs rollout.engine={'/'.join(spanning)} (the "
                        f"{cfg.rollout.engine} engine runs one device per engine); set it to 1 or use "
                        f"{' or '.join(spanning)}")
    per_node = cfg.placement.pools[p.rollout].devices_per_node if p.rollout in cfg.placement.pools else 0
    if rollout_size and (tp < 1 or per_node % tp):
        problems.append(f"rollout.tensor_parallel_size: {tp} must divide the rollout pool's {per_node} devices per "
                        f"node (an engine's devices sit on one node)")
    return problems


def _sequence_parallel_rules(cfg: R1RayConfig) -> list[str]:
    """actor.(ref_)sequence_parallel_size: at least 1, dividing its pool's ranks and the model's heads."""
    a = cfg.actor
    if a.sequence_parallel_size < 1 or a.ref_sequence_parallel_size < 0:
        return ["actor.sequence_parallel_size: must be >= 1 (1: no sequence parallelism), and "
                "actor.ref_sequence_parallel_size >= 0 (0: the actor's)"]
    sizes = {"actor.sequence_parallel_size": (a.sequence_parallel_size, cfg.placement.actor)}
    if uses_reference_model(cfg):
        sizes["actor.ref_sequence_parallel_size"] = (a.ref_sequence_parallel_size or a.sequence_parallel_size,
                                                     cfg.placement.ref)
    heads = model_attention_heads(cfg)
    problems = []
    for key, (size, pool) in sizes.items():
        ranks = _pool_size(cfg, pool)
        if size > 1 and ranks and ranks % size:
            problems.append(f"{key}: {size} must divide the {ranks} ranks of pool '{pool}' (groups of {size} "
                            f"ranks share each sequence); choose a divisor of {ranks} or resize the pool")
        if size > 1 and heads is not None and heads % size:
            problems.append(f"{key}: {size} must divide the model's num_attention_heads={heads} ({cfg.model.path}): "
                            f"each rank attends with heads/{size} of them; choose a divisor of {heads}")
    return problems


def model_attention_heads(cfg: R1RayConfig) -> int | None:
    """num_attention_heads from the policy's config.json, or None when there is none to read yet (the
    engine checks again when it loads the model: `ulysses.check_heads`)."""
    config_json = Path(cfg.model.path) / "config.json"
    if not config_json.is_file():
        return None
    try:
        return int(json.loads(config_json.read_text())["num_attention_heads"])
    except (ValueError, KeyError, TypeError):
        return None


def _engine_rules(cfg: R1RayConfig) -> list[str]:
    """actor.engine: its package, and the fields that only some engines read (see `r1ray.engines`)."""
    a = cfg.actor
    engine = TRAIN_ENGINES.entries.get(a.engine)
    if engine is None:
        return []                        # named by the choices check
    device = _pool_device(cfg, cfg.placement.actor)
    problems = _package_rules(TRAIN_ENGINES, a.engine, device)
    if a.cpu_offload and not engine.cpu_offload:
        offloading = [name for name, e in TRAIN_ENGINES.entries.items() if e.cpu_offload]
        titles = " or ".join(TRAIN_ENGINES.entries[name].title for name in offloading)
        problems.append(f"actor.cpu_offload: only the {titles} engine offloads; set actor.engine={'/'.join(offloading)} "
                        f"or leave it false ({engine.title} frees the device between phases when colocated)")
    if engine.zero_stages and a.zero_stage not in engine.zero_stages:
        stages = " or ".join(str(z) for z in engine.zero_stages)
        problems.append(f"actor.zero_stage: {a.zero_stage}; the {engine.title} engine runs ZeRO stage {stages}")
    if cfg.model.dtype == "float16" and device in engine.float16_refused_on:
        problems.append(f"model.dtype: float16 {engine.float16_why}; use bfloat16")
    return problems + _colocation_rules(cfg)


def _colocation_rules(cfg: R1RayConfig) -> list[str]:
    """Settings that cannot work when the rollout shares the actor's GPUs."""
    p, a = cfg.placement, cfg.actor
    if p.rollout != p.actor or _pool_device(cfg, p.actor) != "gpu":
        return []
    problems = []
    if a.engine == "deepspeed" and a.zero_stage == 2 and a.cpu_offload:
        # DeepSpeed's reload_states moves the fp32 partitions and Adam state back to the GPU whatever
        # cpu_offload says, while the gradient buffers stay pinned on the host.
        problems.append("actor.cpu_offload: DeepSpeed ZeRO-2 cannot offload between phases when the rollout shares "
                        "the actor's GPUs (placement.rollout = placement.actor); use actor.zero_stage=3, or "
                        "actor.cpu_offload=false, or a rollout pool of its own")
    if cfg.rollout.engine == "vllm" and not cfg.rollout.free_cache_engine:
        problems.append("rollout.free_cache_engine: false keeps vLLM's weights and KV cache on the GPUs the actor "
                        "trains on (placement.rollout = placement.actor); set it true, or give the rollout a pool "
                        "of its own")
    return problems


def _package_rules(registry: EngineRegistry, name: str, device: str | None) -> list[str]:
    """The engine's own package, where the registry says it must be installed where the config loads."""
    message = registry.missing_package(name, device) if device else None
    if message is None or importlib.util.find_spec(registry.entries[name].package.name) is not None:
        return []
    return [message]


def _optimizer_rules(cfg: R1RayConfig) -> list[str]:
    a = cfg.actor
    problems = []
    if not (math.isfinite(a.lr) and a.lr > 0):
        problems.append(f"actor.lr: {a.lr} must be a positive learning rate, e.g. 1e-6")
    if not (math.isfinite(cfg.sft.lr) and cfg.sft.lr >= 0):
        problems.append(f"sft.lr: {cfg.sft.lr} must be >= 0 (0 uses actor.lr)")
    if a.max_skipped_steps < 1:
        problems.append("actor.max_skipped_steps: must be >= 1")
    if a.weight_decay < 0 or a.grad_clip < 0:
        problems.append("actor.weight_decay/grad_clip: must be >= 0")
    return problems


def _importable(module: str) -> bool:
    """Whether `module` can be found, without running it (the reward workers import it)."""
    try:
        return bool(module) and importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _trainer_rules(cfg: R1RayConfig) -> list[str]:
    t = cfg.trainer
    problems = []
    if t.total_steps < 1:
        problems.append("trainer.total_steps: must be >= 1")
    if t.save_every < 0 or t.eval_every < 0 or t.keep_checkpoints < 1:
        problems.append("trainer.save_every/eval_every must be >= 0 and keep_checkpoints >= 1")
    if t.resume not in ("never", "auto") and not (Path(t.resume) / "COMPLETE").is_file():
        problems.append(f"trainer.resume: '{t.resume}' is neither 'never', 'auto' nor a complete checkpoint "
                        f"(a <output_dir>/checkpoints/step_* directory with its COMPLETE marker)")
    if t.eval_n < 1:
        problems.append("trainer.eval_n: must be >= 1")
    if t.max_restarts < 0:
        problems.append(f"trainer.max_restarts: {t.max_restarts} must be >= 0 (0: the first worker failure ends the run)")
    return problems + _async_rules(cfg)


def _async_rules(cfg: R1RayConfig) -> list[str]:
    """Asynchronous GRPO needs engines that can generate while the actor trains."""
    k, p = cfg.trainer.max_staleness, cfg.placement
    if k < 0:
        return [f"trainer.max_staleness: {k} must be >= 0 (0: synchronous)"]
    if k == 0:
        return []
    problems = []
    if p.rollout == p.actor:
        problems.append(f"trainer.max_staleness: {k} needs the rollout engines on devices of their own, but "
                        f"placement.rollout and placement.actor are both pool '{p.actor}'; define a pool for "
                        f"generation (placement.pools.gen: {{...}}) and set placement.rollout=gen")
    if cfg.algorithm.dynamic_sampling:
        problems.append(f"algorithm.dynamic_sampling: not available with trainer.max_staleness={k} (its extra "
                        f"rounds would generate with newer weights than the fixed lag); set one of them off")
    if cfg.trainer.async_mode == "free_running" and cfg.trainer.segment_tokens < 1:
        problems.append(f"trainer.segment_tokens: {cfg.trainer.segment_tokens} must be >= 1 (tokens per response "
                        f"and engine call in free-running mode)")
    if cfg.trainer.pause_mode == "keep":
        keepers = [name for name, entry in ROLLOUT_ENGINES.entries.items() if entry.keeps_requests]
        if cfg.trainer.async_mode != "free_running":
            problems.append("trainer.pause_mode: keep applies to trainer.async_mode=free_running (fixed lag "
                            "generates whole responses between updates); set trainer.async_mode=free_running")
        elif cfg.rollout.engine in ROLLOUT_ENGINES.entries and not ROLLOUT_ENGINES.get(cfg.rollout.engine).keeps_requests:
            problems.append(f"trainer.pause_mode: keep needs a rollout engine that holds requests across weight "
                            f"updates ({', '.join(keepers)}), not rollout.engine={cfg.rollout.engine}; use "
                            f"trainer.pause_mode=abort (it pauses at segment boundaries) or rollout.engine={keepers[0]}")
    return problems


def _looks_like_hub_id(path: str) -> bool:
    """'Qwen/Qwen2.5-7B' is fetched from a hub where the network allows; './x' or '/x/y' is local."""
    return path.count("/") == 1 and not path.startswith((".", "/", "~"))


def _pool_size(cfg: R1RayConfig, name: str) -> int:
    pool = cfg.placement.pools.get(name)
    return pool.nodes * pool.devices_per_node if pool else 0


def _pool_device(cfg: R1RayConfig, name: str) -> str | None:
    pool = cfg.placement.pools.get(name)
    return pool.device if pool else None
