"""One GRPO step, r1ray against TRL's GRPOTrainer: same model, prompts and settings, in one invocation.

    pip install -e ".[bench]"            # TRL, only for this benchmark
    python bench/grpo_step.py            # W1, 3 measured steps after 1 warm-up step per framework
    python bench/grpo_step.py --n 8 --prompts 2 --max-new-tokens 32 --steps 1 --json out.json

Workload W1 (the default): a random tiny Qwen2 (4 layers, hidden 128, r1ray's character tokenizer), 2-digit
addition prompts, --n 64 samples for each of --prompts 4 prompts, up to 128 new tokens, temperature 1.0, KL
in the loss (beta 0.04, k3), one optimizer step per batch, accuracy reward only, float32 in both (TRL's
bf16 default turned off, `trl_args`), everything else default.

Both frameworks run in their own subprocess with OMP_NUM_THREADS=--threads, one after the other:
- r1ray: `r1ray train --config <work>/r1ray.yaml` (the real CLI path, embedded local Ray cluster); per-step
  numbers come from <work>/r1ray/metrics.jsonl (`timing_s/*`, `response_length/mean`).
- TRL: `GRPOTrainer` with `GRPOConfig(use_cpu=True, ...)` on the same model directory and the same rendered
  prompt texts, rewarded by r1ray's own accuracy function in-process; a TrainerCallback times each
  optimizer step (on_step_begin -> on_step_end), and TRL's profiling contexts plus two wrapped trainer
  methods give its stages.
The first --warmup steps of each are left out of the means.

Peak memory is the resident set size (RSS) of the subprocess and all its descendants, polled every 0.5 s:
for r1ray the driver, Ray's gcs_server/raylet/dashboard agents, every Ray worker (ray::ActorWorker, idle
workers) and the reward subprocesses, which all descend from the driver that started the local cluster.
"peak RSS" is the largest simultaneous sum; shared pages (torch's libraries) count once per process, so
it overstates physical memory for many processes; the JSON also lists each process's own peak.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

# Stages of an r1ray step in the order the trainer runs them (controller/trainer.py, StageTimer names).
R1RAY_STAGES = ("sync_weights", "generate", "reward_ref_logprobs", "advantage", "update_actor")
# TRL's stages, derived from its profiling contexts and two wrapped methods (see _TrlStageRecorder).
TRL_STAGES = ("generate", "reward", "ref_logprobs_adv", "loss_fwd_bwd", "optimizer_rest")
TRAIN_ROWS = 512                     # data.generate.train_size default


@dataclass(frozen=True)
class Workload:
    """Everything both frameworks are given; defaults are W1."""

    n: int = 64
    prompts: int = 4
    max_new_tokens: int = 128
    layers: int = 4
    hidden: int = 128
    steps: int = 3
    warmup: int = 1
    threads: int = os.cpu_count() or 1
    template: str = "none"
    kl_coef: float = 0.04
    seed: int = 0
    r1ray_overrides: tuple[str, ...] = ()   # extra dotted overrides for `r1ray train` (scaling runs)

    @property
    def max_positions(self) -> int:
        """The tiny model's max_position_embeddings: 1024 (init_tiny's default) or what the lengths need."""
        prompt = 512 if self.template == "r1_zero" else 256      # rollout.max_prompt_length
        return max(1024, prompt + self.max_new_tokens)


# ---------------------------------------------------------------------------------------------- pure helpers


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The objects of a JSONL file, one per non-empty line."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def summarise_r1ray(records: list[dict[str, Any]], warmup: int, rows_per_step: int) -> dict[str, Any]:
    """Means over the steps after ``warmup`` of r1ray's metrics.jsonl records.

    Generated tokens per step are ``response_length/mean * rows_per_step`` (prompts x n, no dynamic sampling).
    Framework overhead is ``timing_s/step`` minus the sum of the stage timers: driver work between stages.
    """
    measured = [r for r in records if r.get("step", 0) > warmup]
    if not measured:
        raise ValueError(f"r1ray: no steps after the {warmup} warm-up step(s) in metrics.jsonl")
    step = _mean([r["timing_s/step"] for r in measured])
    stages = {s: _mean([r.get(f"timing_s/{s}", 0.0) for r in measured]) for s in R1RAY_STAGES}
    tokens = _mean([r["response_length/mean"] * rows_per_step for r in measured])
    return {"steps": len(measured), "step_s": step, "step_s_each": [r["timing_s/step"] for r in measured],
            "gen_tokens_per_step": tokens, "gen_tokens_per_s": tokens / step, "stages_s": stages,
            "overhead_s": step - sum(stages.values()), "sync_share": stages["sync_weights"] / step}


def summarise_trl(steps: list[dict[str, Any]], warmup: int, rows_per_step: int) -> dict[str, Any]:
    """Means over the steps after ``warmup`` of the TRL worker's per-step records
    (``step_s``, ``mean_length`` from TRL's completions/mean_length, ``stages_s``)."""
    measured = steps[warmup:]
    if not measured:
        raise ValueError(f"TRL: no steps after the {warmup} warm-up step(s)")
    step = _mean([s["step_s"] for s in measured])
    stages = {k: _mean([s["stages_s"].get(k, 0.0) for s in measured]) for k in TRL_STAGES}
    tokens = _mean([s.get("mean_length", float("nan")) * rows_per_step for s in measured])
    return {"steps": len(measured), "step_s": step, "step_s_each": [s["step_s"] for s in measured],
            "gen_tokens_per_step": tokens, "gen_tokens_per_s": tokens / step, "stages_s": stages,
            "overhead_s": None, "sync_share": 0.0}


def ratios(r1ray: dict[str, Any], trl: dict[str, Any]) -> dict[str, float]:
    """r1ray/TRL per step and per generated token (above 1: r1ray is slower)."""
    per_token = (r1ray["step_s"] / r1ray["gen_tokens_per_step"]) / (trl["step_s"] / trl["gen_tokens_per_step"])
    return {"per_step": r1ray["step_s"] / trl["step_s"], "per_generated_token": per_token}


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.3f}{unit}" if abs(value) < 10 else f"{value:,.1f}{unit}"
    return f"{value}{unit}"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """The printed table: one column per framework present, then the ratio column when both are."""
    names = [k for k in ("r1ray", "trl") if k in results]
    rows: list[tuple[str, list[str]]] = [
        ("measured steps", [_fmt(results[k]["steps"]) for k in names]),
        ("step time", [_fmt(results[k]["step_s"], " s") for k in names]),
        ("generated tokens/step", [_fmt(results[k]["gen_tokens_per_step"]) for k in names]),
        ("generated tokens/s", [_fmt(results[k]["gen_tokens_per_s"]) for k in names]),
    ]
    for k in names:
        for stage, seconds in results[k]["stages_s"].items():
            rows.append((f"  {k} {stage}", [_fmt(seconds, " s") if j == k else "" for j in names]))
    rows += [
        ("framework overhead", [_fmt(results[k]["overhead_s"], " s") for k in names]),
        ("weight-sync share", [f"{100 * results[k]['sync_share']:.1f}%" for k in names]),
        ("peak RSS (process tree)", [_fmt(results[k].get("peak_rss_gib"), " GiB") for k in names]),
    ]
    header = ["", *names]
    if len(names) == 2:
        r = ratios(results["r1ray"], results["trl"])
        header.append("r1ray/TRL")
        extra = {"step time": f"{r['per_step']:.2f}x", "generated tokens/s": f"{1 / r['per_generated_token']:.2f}x"}
        rows = [(label, [*cells, extra.get(label, "")]) for label, cells in rows]
        rows.append(("time per generated token", ["", "", f"{r['per_generated_token']:.2f}x"]))
    widths = [max(len(str(row[i])) for row in [header, *[[label, *cells] for label, cells in rows]])
              for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header, *[[label, *cells] for label, cells in rows]]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


# ---------------------------------------------------------------------------------------------- memory


class TreePeakRSS(threading.Thread):
    """Polls the RSS of a process and all its descendants; keeps the peak simultaneous sum and each one's peak."""

    def __init__(self, pid: int, interval_s: float = 0.5):
        super().__init__(daemon=True)
        self.root, self.interval_s = psutil.Process(pid), interval_s
        self.peak_total = 0
        self.per_process: dict[tuple[int, float], tuple[str, int]] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                rss, key, name = p.memory_info().rss, (p.pid, p.create_time()), _process_label(p)
            except psutil.Error:
                continue
            total += rss
            if rss > self.per_process.get(key, ("", 0))[1]:
                self.per_process[key] = (name, rss)
        self.peak_total = max(self.peak_total, total)

    def stop(self) -> dict[str, Any]:
        self._stop_event.set()
        self.join()
        gib = 1024**3
        by_label: dict[str, float] = {}
        for name, rss in self.per_process.values():
            by_label[name] = by_label.get(name, 0.0) + rss / gib
        return {"peak_rss_gib": self.peak_total / gib, "sum_of_process_peaks_gib": sum(by_label.values()),
                "processes": len(self.per_process),
                "peak_rss_by_process_gib": dict(sorted(by_label.items(), key=lambda kv: -kv[1]))}


def _process_label(p: psutil.Process) -> str:
    """"ray::RolloutWorker", "raylet", "python r1ray" ...: Ray workers retitle themselves."""
    cmd = p.cmdline() or [p.name()]
    if cmd[0].startswith("ray::"):
        return cmd[0].split()[0].split(".")[0]        # "ray::ActorWorker.update" -> "ray::ActorWorker"
    exe, rest = Path(cmd[0]).name, cmd[1:]
    if not exe.startswith("python"):
        return exe
    if rest[:1] == ["-m"] and len(rest) > 1:
        return f"python -m {rest[1]}"
    if rest[:1] == ["-c"]:
        return "python -c"
    return f"python {Path(next((a for a in rest if not a.startswith('-')), '')).name}"


def run_measured(cmd: list[str], env: dict[str, str], log: Path, timeout_s: float) -> tuple[float, dict[str, Any]]:
    """Run ``cmd`` with its output in ``log``; returns (wall seconds, TreePeakRSS summary)."""
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).parents[1])
        poller = TreePeakRSS(proc.pid)
        poller.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        memory = poller.stop()
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{cmd[0]} {cmd[1]} exited with {rc}; last lines of {log}:\n{tail}")
    return time.perf_counter() - t0, memory


# ---------------------------------------------------------------------------------------------- workload


def prepare(work: Path, wl: Workload) -> tuple[Path, Path]:
    """The tiny model and the training prompt file, built once and given to both frameworks."""
    from r1ray.data import make_task
    from r1ray.models import build_tiny_model

    # r1ray's init_tiny defaults: heads 4, kv_heads 2, intermediate 4*hidden, 1024 positions, seed trainer.seed.
    model = build_tiny_model(work / "model", hidden=wl.hidden, layers=wl.layers, seed=wl.seed,
                             max_position_embeddings=wl.max_positions)
    data = make_task("arithmetic", TRAIN_ROWS, work / "data" / "train.jsonl", seed=wl.seed, digits=2, operations="+")
    return model, data


def r1ray_config(work: Path, model: Path, data: Path, wl: Workload) -> dict[str, Any]:
    """The r1ray config of the workload: library defaults except what W1 fixes (and no eval, no wandb)."""
    return {
        "model": {"path": str(model), "init_tiny": False},
        "data": {"train_files": [str(data)], "template": wl.template, "prompts_per_step": wl.prompts},
        # r1_zero prompts run to ~380 characters (tokens, with the character tokenizer): past the default 256.
        "rollout": {"n": wl.n, "max_response_length": wl.max_new_tokens, "temperature": 1.0,
                    **({"max_prompt_length": 512} if wl.template == "r1_zero" else {})},
        "algorithm": {"kl_placement": "loss", "kl_coef": wl.kl_coef, "kl_kind": "k3"},
        "reward": {"functions": ["auto"], "weights": [1.0]},
        "trainer": {"total_steps": wl.steps + wl.warmup, "output_dir": str(work / "r1ray"), "seed": wl.seed,
                    "save_every": 0, "eval_every": 0, "eval_before_train": False},
        "logging": {"wandb": False},
        "stages": [],
    }


def _env(wl: Workload) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(wl.threads), "MKL_NUM_THREADS": str(wl.threads),
            "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}


def bench_r1ray(work: Path, model: Path, data: Path, wl: Workload, timeout_s: float) -> dict[str, Any]:
    import yaml

    cfg_path = work / "r1ray.yaml"
    cfg_path.write_text(yaml.safe_dump(r1ray_config(work, model, data, wl), sort_keys=False))
    cmd = [shutil.which("r1ray") or "r1ray", "train", "--config", str(cfg_path), *wl.r1ray_overrides]
    wall, memory = run_measured(cmd, _env(wl), work / "r1ray.log", timeout_s)
    result = summarise_r1ray(read_jsonl(work / "r1ray" / "metrics.jsonl"), wl.warmup, wl.n * wl.prompts)
    return {**result, **memory, "process_wall_s": wall}


def bench_trl(work: Path, model: Path, data: Path, wl: Workload, timeout_s: float) -> dict[str, Any]:
    spec = work / "trl_spec.json"
    spec.write_text(json.dumps({"workload": asdict(wl), "model": str(model), "data": str(data),
                                "out": str(work / "trl")}))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--trl-worker", str(spec)]
    wall, memory = run_measured(cmd, _env(wl), work / "trl.log", timeout_s)
    steps = read_jsonl(work / "trl" / "steps.jsonl")
    return {**summarise_trl(steps, wl.warmup, wl.n * wl.prompts), **memory, "process_wall_s": wall}


# ---------------------------------------------------------------------------------------------- TRL worker


class _TrlStageRecorder:
    """Seconds per TRL stage within one optimizer step.

    generate: TRL's "transformers.generate" profiling block; reward: the reward function's block;
    ref_logprobs_adv: the rest of _generate_and_score_completions (tokenising, reference and old logprobs,
    advantages); loss_fwd_bwd: training_step minus that; optimizer_rest: the step minus training_step
    (gradient clipping, optimizer, scheduler, callbacks).
    """

    def __init__(self, trainer: Any):
        from trl.extras import profiling

        self.blocks: dict[str, float] = {}
        self.gen_score = self.train_step = 0.0
        recorder = self

        def log_metrics(ctx: Any, duration: float) -> None:
            recorder.blocks[ctx.name] = recorder.blocks.get(ctx.name, 0.0) + duration

        profiling.ProfilingContext._log_metrics = log_metrics
        trainer._generate_and_score_completions = self._timed(trainer._generate_and_score_completions, "gen_score")
        trainer.training_step = self._timed(trainer.training_step, "train_step")

    def _timed(self, fn: Any, attr: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                setattr(self, attr, getattr(self, attr) + time.perf_counter() - t0)
        return wrapper

    def take(self, step_s: float) -> dict[str, float]:
        generate = sum(v for k, v in self.blocks.items() if k.endswith("transformers.generate"))
        reward = sum(v for k, v in self.blocks.items() if k.endswith("accuracy_reward"))
        stages = {"generate": generate, "reward": reward, "ref_logprobs_adv": self.gen_score - generate - reward,
                  "loss_fwd_bwd": self.train_step - self.gen_score, "optimizer_rest": step_s - self.train_step}
        self.blocks, self.gen_score, self.train_step = {}, 0.0, 0.0
        return stages


def accuracy_reward(completions: list[str], ground_truth: list[str], data_source: list[str],
                    extra_info: list[str], **_: Any) -> list[float | None]:
    """r1ray's `auto` accuracy reward (arithmetic: exact integer in <answer>), called in-process."""
    from r1ray.rewards.auto import auto_reward

    return [auto_reward(c, gt, {**json.loads(extra), "data_source": ds})
            for c, gt, ds, extra in zip(completions, ground_truth, data_source, extra_info)]


def trl_dataset(data: str, model: str, template: str) -> Any:
    """The training rows as TRL wants them: the prompt text exactly as r1ray renders it, plus reward columns."""
    from datasets import Dataset

    from r1ray.data import load_rows
    from r1ray.data.template import render_prompt
    from r1ray.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    return Dataset.from_list([{"prompt": render_prompt(r.prompt, tokenizer, template), "ground_truth": r.ground_truth,
                               "data_source": r.data_source, "extra_info": json.dumps(r.extra_info)}
                              for r in load_rows(data)])


def trl_args(wl: Workload, out: Path) -> Any:
    """TRL's settings for the workload. GRPOConfig turns bf16 autocast on by default, on CPU too (`bf16=None`
    becomes True), and on a CPU with AVX512-BF16 that halves the cost of its forward and backward passes;
    r1ray computes in the model's float32 (`model.dtype`), so both run in float32 here: the same arithmetic,
    compared framework against framework."""
    from trl import GRPOConfig

    from r1ray.config import ActorConfig

    return GRPOConfig(
        output_dir=str(out), use_cpu=True, seed=wl.seed, num_generations=wl.n, bf16=False, fp16=False,
        per_device_train_batch_size=wl.n * wl.prompts, gradient_accumulation_steps=1,  # one generation per step
        max_completion_length=wl.max_new_tokens, temperature=1.0, beta=wl.kl_coef, num_iterations=1,
        learning_rate=ActorConfig().lr, lr_scheduler_type="constant", max_steps=wl.steps + wl.warmup,
        logging_steps=1, report_to="none", save_strategy="no", dataloader_num_workers=0, disable_tqdm=True)


def trl_worker(spec_path: str) -> None:
    """Run TRL's GRPOTrainer on the workload and write one JSON line per optimizer step to <out>/steps.jsonl."""
    import torch
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    spec = json.loads(Path(spec_path).read_text())
    wl, out = Workload(**spec["workload"]), Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(wl.threads)
    trainer = GRPOTrainer(model=spec["model"], reward_funcs=accuracy_reward, args=trl_args(wl, out),
                          train_dataset=trl_dataset(spec["data"], spec["model"], wl.template))
    recorder = _TrlStageRecorder(trainer)
    records: list[dict[str, Any]] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            step_s = time.perf_counter() - self.t0
            records.append({"step_s": step_s, "stages_s": recorder.take(step_s)})

        def on_log(self, _args: Any, _state: Any, _control: Any, logs: dict | None = None, **__: Any) -> None:
            if logs and "completions/mean_length" in logs and records:
                records[-1]["mean_length"] = logs["completions/mean_length"]

    trainer.add_callback(StepTimer())
    trainer.train()
    (out / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


# ---------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = Workload()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=d.n, help="samples per prompt (GRPO group size)")
    p.add_argument("--prompts", type=int, default=d.prompts, help="prompts per step")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--layers", type=int, default=d.layers, help="tiny model layers")
    p.add_argument("--hidden", type=int, default=d.hidden, help="tiny model hidden size")
    p.add_argument("--steps", type=int, default=d.steps, help="measured steps per framework")
    p.add_argument("--warmup", type=int, default=d.warmup, help="steps run first and left out of the means")
    p.add_argument("--threads", type=int, default=d.threads, help="OMP_NUM_THREADS of both subprocesses")
    p.add_argument("--template", choices=["none", "r1_zero"], default=d.template,
                   help="prompt template (data.template); with r1_zero, r1ray gets rollout.max_prompt_length=512")
    p.add_argument("--only", choices=["r1ray", "trl", "both"], default="both")
    p.add_argument("--r1ray-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra r1ray config override, repeatable (e.g. actor.gradient_checkpointing=true)")
    p.add_argument("--json", type=Path, help="write the results (and the workload) to this file")
    p.add_argument("--work-dir", type=Path, help="keep model, data, logs and metrics here (default: a temp dir)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per framework run")
    p.add_argument("--trl-worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.trl_worker:
        trl_worker(args.trl_worker)
        return
    wl = Workload(n=args.n, prompts=args.prompts, max_new_tokens=args.max_new_tokens, layers=args.layers,
                  hidden=args.hidden, steps=args.steps, warmup=args.warmup, threads=args.threads,
                  template=args.template, r1ray_overrides=tuple(args.r1ray_set))
    with tempfile.TemporaryDirectory(prefix="grpo_step_") as tmp:
        work = (args.work_dir or Path(tmp)).absolute()
        work.mkdir(parents=True, exist_ok=True)
        model, data = prepare(work, wl)
        results: dict[str, dict[str, Any]] = {}
        if args.only in ("r1ray", "both"):
            results["r1ray"] = bench_r1ray(work, model, data, wl, args.timeout)
        if args.only in ("trl", "both"):
            results["trl"] = bench_trl(work, model, data, wl, args.timeout)
    print(f"workload: {asdict(wl)}")
    print(format_table(results))
    if args.json:
        both = ratios(results["r1ray"], results["trl"]) if len(results) == 2 else None
        args.json.write_text(json.dumps({"workload": asdict(wl), "results": results, "ratio_r1ray_over_trl": both},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
