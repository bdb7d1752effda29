"""The memory plan: for every length stage of a run, what each role holds on one device, and the largest
micro-batch token budget that fits (docs/design.md §12).

Estimates, not measurements: byte counts of the tensors each engine keeps (parameters, gradients and
optimizer state by engine and ZeRO stage; the activations a decoder layer saves for its backward per
token; the scoring head's logits; vLLM's KV cache), checked against measured peaks by
`bench/memory_plan.py` (docs/benchmarks.md). Pure arithmetic over the config and the model's shape:
`config_checks` refuses a config that cannot fit before any worker starts, `r1ray plan` prints the
table, and the trainer takes each stage's token budget from `token_budgets` (`actor.micro_batch_tokens=0`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from r1ray.config import PoolConfig, R1RayConfig
from r1ray.loss_spec import uses_reference_model

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# The scoring head (workers/engines/packing.py).
# Response tokens per chunk of the scoring head. A chunk's float32 logits (1024 x 152k vocab = 0.6 GB) and
# the few tensors of the same size its softmax makes exist only while it is scored, and again while its
# backward recomputes it. Unchunked, the bf16 logits of a 32k-token micro-batch (10 GB) would be kept for
# the backward and each of those temporaries would be 20 GB.
LOGITS_CHUNK_TOKENS = 1024
# Float32 logits of a whole micro-batch below this size are kept for the backward instead of recomputed:
# for small vocabularies or short responses the memory is nothing and the output layer's recomputation
# would cost about 5% of an update (bench/grpo_step.py, n=16 x 8 prompts, 96 tokens).
LOGITS_RECOMPUTE_BYTES = 256 * 2**20

GPU_DEVICE_GIB = 80.0            # PoolConfig.device_memory_gib = 0 on a GPU pool: an H100/H200-class card
# Held on every GPU outside the tensors counted here: the CUDA context and kernels, NCCL's buffers, and
# the caching allocator's fragmentation. A CPU process's equivalents are part of what the OS already uses.
GPU_RESERVE_GIB = 3.0
VLLM_OVERHEAD_GIB = 2.0          # vLLM's profiled activations and CUDA graphs, outside weights and KV cache
# The backward of one decoder layer holds the gradients of its activations while it runs: measured on CPU
# at 0.2-0.3 of the layer's saved activations with checkpointing (bench/memory_plan.py); the plan rounds up.
BACKWARD_WORKSPACE = 0.35
DEEPSPEED_BUCKET_ELEMENTS = 5 * 10**8      # DeepSpeed's default reduce / all-gather bucket size
BUDGET_STEP = 64                 # an automatic budget is rounded down to a multiple of this


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a decoder-only transformer (Llama / Qwen2 layout: SwiGLU MLP, GQA)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        q_out = self.heads * self.head_dim
        attention = self.hidden * (q_out + 2 * self.kv_dim) + q_out + 2 * self.kv_dim + q_out * self.hidden
        return attention + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def root_params(self) -> int:
        """Embedding, final norm and (untied) output layer: the parameters outside the decoder layers."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.root_params


# Shapes of hub checkpoints the shipped configs name, for a plan before the weights are downloaded
# (values from each model's config.json).
KNOWN_SHAPES = {
    "Qwen/Qwen2.5-1.5B": ModelShape(28, 1536, 8960, 12, 2, 128, 151936, True),
    "Qwen/Qwen2.5-3B": ModelShape(36, 2048, 11008, 16, 2, 128, 151936, True),
    "Qwen/Qwen2.5-7B": ModelShape(28, 3584, 18944, 28, 4, 128, 152064, False),
    "Qwen/Qwen2.5-Math-7B": ModelShape(28, 3584, 18944, 28, 4, 128, 152064, False),
    "Qwen/Qwen2.5-32B": ModelShape(64, 5120, 27648, 40, 8, 128, 152064, False),
    # `model.fetch` names (r1ray/models/fetch.py)
    "smollm2-135m-instruct": ModelShape(30, 576, 1536, 9, 3, 64, 49152, True),
}


# What `model.init_tiny` builds besides its configured hidden size and layers (r1ray/models/tiny.py:
# TinyModelSpec, and the character tokenizer's 3 special + 4 format tokens + 256 byte symbols, tied
# embeddings). Written out because importing r1ray.models loads torch and transformers, 4 s of every
# config check; tests/unit/test_memory_plan.py builds the model and checks the two agree.
TINY_HEADS, TINY_KV_HEADS, TINY_VOCAB = 4, 2, 263


def shape_from_config(config: dict) -> ModelShape:
    """A Hugging Face config.json (a multimodal one's text_config) as a ModelShape; KeyError if incomplete."""
    c = config.get("text_config") or config
    heads = int(c["num_attention_heads"])
    return ModelShape(layers=int(c["num_hidden_layers"]), hidden=int(c["hidden_size"]),
                      intermediate=int(c["intermediate_size"]), heads=heads,
                      kv_heads=int(c.get("num_key_value_heads") or heads),
                      head_dim=int(c.get("head_dim") or int(c["hidden_size"]) // heads),
                      vocab=int(c["vocab_size"]), tied=bool(c.get("tie_word_embeddings", False)))


def model_shape(cfg: R1RayConfig) -> ModelShape | None:
    """The policy's shape: its local config.json, the tiny model `model.init_tiny` will build, or a known
    hub checkpoint or `model.fetch` name; None when none of these tells it."""
    m = cfg.model
    config_json = Path(m.path) / "config.json"
    if config_json.is_file():
        try:
            return shape_from_config(json.loads(config_json.read_text()))
        except (ValueError, KeyError, TypeError):
            return None
    if m.init_tiny:
        return ModelShape(layers=m.tiny_layers, hidden=m.tiny_hidden, intermediate=4 * m.tiny_hidden,
                          heads=TINY_HEADS, kv_heads=TINY_KV_HEADS, head_dim=m.tiny_hidden // TINY_HEADS,
                          vocab=TINY_VOCAB, tied=True)
    return KNOWN_SHAPES.get(m.path) or KNOWN_SHAPES.get(m.fetch)


def device_memory_gib(pool: PoolConfig) -> float:
    """Memory of one device of `pool`: its `device_memory_gib`, else 80 GiB for a GPU and, for a CPU
    bundle, this machine's RAM shared by the node's bundles."""
    if pool.device_memory_gib > 0:
        return pool.device_memory_gib
    if pool.device == "gpu":
        return GPU_DEVICE_GIB
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram / GIB / max(1, pool.devices_per_node)


# --- what each role holds ----------------------------------------------------------------------------


def training_states(cfg: R1RayConfig, shape: ModelShape, ranks: int) -> dict[str, float]:
    """Bytes per actor rank of parameters, gradients and optimizer state, and of the parameters and
    gradients gathered whole while a layer runs (by engine, ZeRO stage and offload)."""
    a, p, b = cfg.actor, shape.params, DTYPE_BYTES[cfg.model.dtype]
    gathered = (shape.root_params + 2 * shape.layer_params) * 2 * b      # one layer ahead, and its gradient
    if a.engine == "fsdp2":
        # float32 master weights, float32 gradients and two float32 Adam moments, all sharded.
        return {"parameters": 4 * p / ranks, "gradients": 4 * p / ranks, "optimizer": 8 * p / ranks,
                "gathered": gathered + 4 * shape.layer_params}
    bucket = min(DEEPSPEED_BUCKET_ELEMENTS, p) * 4                        # float32 communication
    offload = a.cpu_offload
    if a.zero_stage == 3:
        params = 0.0 if offload else b * p / ranks
    else:
        params = b * p                                                    # ZeRO-2 keeps the module whole
    return {"parameters": params, "gradients": (b * p / ranks if a.zero_stage == 2 else 0.0) +
            (0.0 if offload else 4 * p / ranks),
            "optimizer": 0.0 if offload else 12 * p / ranks,             # float32 master + Adam moments
            "gathered": gathered + bucket}


def reference_states(cfg: R1RayConfig, shape: ModelShape, ranks: int) -> float:
    """Bytes per reference rank: frozen compute-dtype weights, sharded unless DeepSpeed runs it unsharded
    (stage 0, its choice for a frozen model under ZeRO-2), plus one gathered layer."""
    a, b = cfg.actor, DTYPE_BYTES[cfg.model.dtype]
    if a.engine == "deepspeed" and a.zero_stage != 3:
        return b * shape.params
    held = 0.0 if (a.engine == "deepspeed" and a.cpu_offload) else b * shape.params / ranks
    return held + (shape.root_params + 2 * shape.layer_params) * b


def layer_activation_bytes(cfg: R1RayConfig, shape: ModelShape) -> float:
    """Bytes one decoder layer saves for its backward per token: the two RMSNorms (float32 input and
    normalised value, output in the compute dtype), q after rotary, k and v (repeated to the query heads
    unless the kernel takes GQA: flash-attention), the attention output and o_proj's input, and the
    SwiGLU MLP's gate, activation, up and product."""
    b = DTYPE_BYTES[cfg.model.dtype]
    kv = shape.kv_dim if cfg.model.attn_implementation == "flash_attention_2" else shape.heads * shape.head_dim
    q = shape.heads * shape.head_dim
    norms = 2 * (8 + b) * shape.hidden
    return norms + b * (q + 2 * kv + 2 * q + 4 * shape.intermediate)


def attention_score_bytes(cfg: R1RayConfig, shape: ModelShape, longest: int) -> float:
    """Per token of a micro-batch and per layer, what eager attention materialises: the float32 softmax,
    its compute-dtype copy and the dropout mask over (heads, L, L). Independent of sequence parallelism:
    a rank holds heads/S of S times the columns. sdpa and flash-attention keep O(L) per token."""
    if cfg.model.attn_implementation != "eager":
        return 0.0
    return shape.heads * longest * (4 + DTYPE_BYTES[cfg.model.dtype] + 1)


def activation_bytes(cfg: R1RayConfig, shape: ModelShape, tokens: int, longest: int) -> float:
    """Bytes a training forward + backward of a micro-batch of `tokens` columns per rank holds at its peak,
    its longest sequence `longest` tokens (whole, before the sequence-parallel split)."""
    b = DTYPE_BYTES[cfg.model.dtype]
    layer = layer_activation_bytes(cfg, shape) + attention_score_bytes(cfg, shape, longest)
    if cfg.actor.gradient_checkpointing:
        # Each layer keeps its input; the one being back-propagated is recomputed whole.
        per_token = shape.layers * shape.hidden * b + (1 + BACKWARD_WORKSPACE) * layer
    else:
        per_token = (shape.layers + BACKWARD_WORKSPACE) * layer
    # The mask sdpa/eager get for padded rows: (rows, L, L) booleans over the whole union of S ranks.
    mask = 0 if cfg.model.attn_implementation == "flash_attention_2" else longest
    return tokens * (per_token + mask * max(1, cfg.actor.sequence_parallel_size)) + logits_bytes(cfg, shape, tokens)


def logits_bytes(cfg: R1RayConfig, shape: ModelShape, tokens: int) -> float:
    """The scoring head: a micro-batch's float32 logits kept whole when small, else one chunk's computed
    (compute dtype, float32 copy, log-softmax) in the forward and again in the backward."""
    per_position = shape.vocab * (DTYPE_BYTES[cfg.model.dtype] + 8)
    if tokens * shape.vocab * 4 <= LOGITS_RECOMPUTE_BYTES:
        return tokens * per_position
    return 2 * LOGITS_CHUNK_TOKENS * per_position


def kv_bytes_per_token(cfg: R1RayConfig, shape: ModelShape, tensor_parallel: int = 1) -> float:
    """K and V of every layer for one token, on one of `tensor_parallel` devices (KV heads split, or
    replicated when fewer than the devices)."""
    heads = math.ceil(shape.kv_heads / max(1, tensor_parallel))
    return 2 * shape.layers * heads * shape.head_dim * DTYPE_BYTES[cfg.model.dtype]


# --- the plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One stage of the length schedule and what the plan found for it."""

    start_step: int                 # first step (0-based, as rollout.response_length_schedule counts)
    response: int                   # response budget in tokens
    longest: int                    # prompt + response: the longest sequence
    parts: dict[str, float]         # actor device, training phase: bytes by part at `budget`
    fits_tokens: int                # largest budget per rank that fits (0: not even one sequence)
    needs_tokens: int               # smallest budget per rank: one whole sequence over S ranks
    step_tokens: int                # a rank's share of a whole step's columns: no budget needs more
    budget: int                     # the budget the run uses (configured, or `fits_tokens` rounded)
    rollout: dict[str, float] = field(default_factory=dict)    # rollout device: bytes by part
    kv_sequences: float = 0.0       # longest sequences the rollout's KV cache holds at once (vLLM)
    problem: str = ""               # why this stage cannot run; empty when it fits


@dataclass(frozen=True)
class MemoryPlan:
    shape: ModelShape
    device_gib: float               # one actor device
    stages: list[Stage]

    @property
    def problems(self) -> list[str]:
        """One line: the first stage that does not fit, naming the later ones that do not either."""
        failing = [number for number, s in enumerate(self.stages, 1) if s.problem]
        if not failing:
            return []
        also = failing[1:]
        more = f" (stage{'s' if len(also) > 1 else ''} {', '.join(map(str, also))} too)" if also else ""
        return [self.stages[failing[0] - 1].problem + more]

    def budgets(self) -> list[tuple[int, int]]:
        """[(first step, micro-batch tokens per rank)] for each stage."""
        return [(s.start_step, s.budget) for s in self.stages]


def length_stages(cfg: R1RayConfig) -> list[tuple[int, int]]:
    schedule = [tuple(entry) for entry in cfg.rollout.response_length_schedule if len(entry) == 2]
    return schedule or [(0, cfg.rollout.max_response_length)]


def plan_memory(cfg: R1RayConfig, shape: ModelShape) -> MemoryPlan:
    """The plan of every length stage (see the module docstring)."""
    p = cfg.placement
    actor_pool, rollout_pool = p.pools[p.actor], p.pools[p.rollout]
    ranks = actor_pool.nodes * actor_pool.devices_per_node
    device = device_memory_gib(actor_pool) * GIB
    fixed = dict(training_states(cfg, shape, ranks))
    fixed.update(_colocated_parts(cfg, shape))
    if actor_pool.device == "gpu":
        fixed["reserve"] = GPU_RESERVE_GIB * GIB
    base = sum(fixed.values())
    s = max(1, cfg.actor.sequence_parallel_size)
    configured = cfg.actor.micro_batch_tokens
    stages = []
    for number, (start, response) in enumerate(length_stages(cfg), 1):
        longest = cfg.rollout.max_prompt_length + response
        needs = math.ceil(longest / s)
        # A rank never holds more columns than its share of a whole step: a larger budget changes nothing.
        step_columns = max(needs, math.ceil(cfg.data.prompts_per_step * cfg.rollout.n * longest / ranks))

        def fits(tokens: int, longest: int = longest) -> bool:
            return base + activation_bytes(cfg, shape, tokens, longest) <= device

        largest = _largest(fits, step_columns)
        budget = configured or max(needs, largest // BUDGET_STEP * BUDGET_STEP)
        used = min(budget, step_columns)
        parts = {**fixed, "activations": activation_bytes(cfg, shape, max(used, needs), longest)}
        rollout, kv_sequences, rollout_problem = _rollout(cfg, shape, rollout_pool, longest)
        where = f"stage {number} (from step {start}, responses up to {response} tokens, sequences up to {longest})"
        problem = ""
        if largest < needs:
            problem = (f"memory plan, {where}: the actor needs {_gib(base + activation_bytes(cfg, shape, needs, longest))} "
                       f"GiB per device for one sequence ({needs} tokens per rank) and a device has {_gib(device)}; "
                       f"{_knobs(cfg)}")
        elif configured and used > largest:
            problem = (f"actor.micro_batch_tokens: {configured} needs {_gib(base + activation_bytes(cfg, shape, used, longest))} "
                       f"GiB per device at {where}, more than the {_gib(device)} a device has; the largest that fits "
                       f"is {largest // BUDGET_STEP * BUDGET_STEP or largest} (or set 0: the plan's budget per stage)")
        elif rollout_problem:
            problem = f"memory plan, {where}: {rollout_problem}"
        stages.append(Stage(start, response, longest, parts, largest if largest >= needs else 0, needs, step_columns, budget,
                            rollout, kv_sequences, problem))
    return MemoryPlan(shape, device / GIB, stages)


def token_budgets(cfg: R1RayConfig) -> list[tuple[int, int]]:
    """[(first step, micro-batch tokens)] per length stage: the configured budget throughout, or with
    `actor.micro_batch_tokens=0` the plan's (ValueError when the model's shape cannot be read)."""
    if cfg.actor.micro_batch_tokens:
        return [(0, cfg.actor.micro_batch_tokens)]
    shape = model_shape(cfg)
    if shape is None:
        raise ValueError(f"actor.micro_batch_tokens: 0 asks the memory plan for the budget, which needs the "
                         f"model's shape, and {cfg.model.path}/config.json is not there to read; give a budget")
    return plan_memory(cfg, shape).budgets()


def budget_at(budgets: list[tuple[int, int]], step: int) -> int:
    """The budget of 1-based `step`: the last stage whose first step is <= step - 1."""
    value = budgets[0][1]
    for start, tokens in budgets:
        if step - 1 >= start:
            value = tokens
    return value


def _colocated_parts(cfg: R1RayConfig, shape: ModelShape) -> dict[str, float]:
    """What other roles leave on an actor device while it trains."""
    p, b = cfg.placement, DTYPE_BYTES[cfg.model.dtype]
    parts = {}
    # A reference sharing the rollout's devices is offloaded between its passes (controller/roles.py).
    if uses_reference_model(cfg) and p.ref == p.actor and p.ref != p.rollout:
        pool = p.pools[p.ref]
        parts["reference"] = reference_states(cfg, shape, pool.nodes * pool.devices_per_node)
    if p.rollout == p.actor and cfg.rollout.engine == "hf":
        parts["rollout weights"] = b * shape.params            # the HF engine keeps its copy resident
    # A colocated vLLM sleeps while the actor trains (free_cache_engine=false is refused there).
    return parts


def _rollout(cfg: R1RayConfig, shape: ModelShape, pool: PoolConfig, longest: int) -> tuple[dict, float, str]:
    """(bytes by part on one rollout device, longest sequences its KV cache holds, problem)."""
    r, b = cfg.rollout, DTYPE_BYTES[cfg.model.dtype]
    device = device_memory_gib(pool) * GIB
    if r.engine == "hf":
        rows = min(r.generate_batch_size, cfg.data.prompts_per_step * r.n)
        parts = {"weights": b * shape.params, "kv cache": rows * longest * kv_bytes_per_token(cfg, shape),
                 "sampling logits": rows * shape.vocab * 4}
        return parts, 0.0, ""
    tp = max(1, r.tensor_parallel_size)
    weights = b * shape.params / tp
    if pool.device == "cpu":
        kv = r.cpu_kv_cache_gib * GIB
        parts = {"weights": weights, "kv cache": kv}
    else:
        kv = r.gpu_memory_utilization * device - weights - VLLM_OVERHEAD_GIB * GIB
        parts = {"weights": weights, "kv cache": max(kv, 0.0), "overhead": VLLM_OVERHEAD_GIB * GIB}
    sequences = max(kv, 0.0) / (kv_bytes_per_token(cfg, shape, tp) * longest)
    if sequences < 1:
        return parts, sequences, (f"vLLM's KV cache ({_gib(max(kv, 0.0))} GiB per device) cannot hold one sequence of "
                                  f"{longest} tokens; raise rollout.gpu_memory_utilization (or cpu_kv_cache_gib) or "
                                  f"rollout.tensor_parallel_size")
    return parts, sequences, ""


def _largest(fits, upper: int) -> int:
    """The largest token count in [1, upper] for which fits() holds (0 when none)."""
    if not fits(1):
        return 0
    low, high = 1, max(1, upper)
    if fits(high):
        return high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def _knobs(cfg: R1RayConfig) -> str:
    a = cfg.actor
    knobs = [f"actor.sequence_parallel_size={2 * max(1, a.sequence_parallel_size)}"]
    if not a.gradient_checkpointing:
        knobs.append("actor.gradient_checkpointing=true")
    if a.engine == "deepspeed" and not a.cpu_offload:
        knobs.append("actor.cpu_offload=true")
    elif a.engine == "fsdp2":
        knobs.append("actor.engine=deepspeed with actor.cpu_offload=true")
    knobs.append("more actor devices, or a shorter rollout.response_length_schedule")
    return "try " + ", ".join(knobs)


def _gib(value: float) -> str:
    return f"{value / GIB:.1f}"


def format_plan(cfg: R1RayConfig, plan: MemoryPlan) -> str:
    """The plan as the text `r1ray plan` prints (a table per stage, GiB per device)."""
    a, p = cfg.actor, cfg.placement
    pool = p.pools[p.actor]
    ranks = pool.nodes * pool.devices_per_node
    count = f"{plan.shape.params / 1e9:.2f}B" if plan.shape.params >= 1e8 else f"{plan.shape.params / 1e6:.2f}M"
    lines = [f"model {cfg.model.path}: {count} parameters, {plan.shape.layers} layers, "
             f"hidden {plan.shape.hidden}, vocab {plan.shape.vocab}, {cfg.model.dtype}, {cfg.model.attn_implementation}",
             f"actor: {a.engine}" + (f" ZeRO-{a.zero_stage}" if a.engine == "deepspeed" else "") +
             f" on {ranks} x {pool.device} ({plan.device_gib:.1f} GiB each), sequence parallel "
             f"{max(1, a.sequence_parallel_size)}, checkpointing {'on' if a.gradient_checkpointing else 'off'}, "
             f"offload {'on' if a.cpu_offload else 'off'}"]
    unit, scale = ("GiB", GIB) if plan.device_gib >= 4 else ("MiB", 2**20)

    def amounts(parts: dict[str, float]) -> str:
        return ", ".join(f"{k} {v / scale:.1f}" for k, v in parts.items())

    for number, s in enumerate(plan.stages, 1):
        total = sum(s.parts.values())
        lines.append("")
        lines.append(f"stage {number}: from step {s.start_step}, responses up to {s.response} tokens "
                     f"(sequences up to {s.longest})")
        lines.append(f"  actor ({unit}): {amounts(s.parts)} = {total / scale:.1f} of {plan.device_gib * GIB / scale:.1f}")
        fits = "a whole step's share" if s.fits_tokens == s.step_tokens else str(s.fits_tokens)
        lines.append(f"  micro-batch: {s.budget} tokens per rank (one sequence needs {s.needs_tokens}; fits: {fits})")
        if s.rollout:
            line = f"  rollout ({unit}): {amounts(s.rollout)}"
            if s.kv_sequences:
                line += f"; KV cache holds {s.kv_sequences:.0f} sequences"
            lines.append(line)
        if s.problem:
            lines.append(f"  DOES NOT FIT: {s.problem}")
    return "\n".join(lines)
