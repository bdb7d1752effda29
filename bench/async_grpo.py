"""Asynchronous GRPO against the synchronous loop: step time at trainer.max_staleness K = 0, K = 1 (fixed
lag) and K = 2 (free running, segments of --segment-tokens tokens), on the speed benchmark's shape and on a
long-tailed length distribution, in one invocation.

    python bench/async_grpo.py                     # both shapes, 1 warm-up + 4 measured steps per run
    python bench/async_grpo.py --steps 2 --shapes speed --json out.json
    python bench/async_grpo.py --engine vllm --shapes speed    # adds free running with trainer.pause_mode=keep

Every run uses the same placement, so that only the overlap differs: the actor (and reference) on one
one-thread bundle, the rollout engine (HF generate) and the reward worker on another, one thread per worker
(`placement.threads_per_worker=1`): on a 2-core machine, generation has one core and training the other.

The ideal of overlapping generation with the rest of the step is read off the K = 0 run: with gen =
timing_s/generate + timing_s/sync_weights and rest = timing_s/step - gen, a step can take no less than
max(gen, rest), so the limit of the K = 1 step time is max(gen, rest) / (gen + rest) of the K = 0 one.
The table prints each run's mean step time, the K = 1 / K = 0 and free-running / K = 0 ratios and that
limit.

Shapes (a random tiny Qwen2 of the speed benchmark, 2-digit addition, temperature 1):
  speed      --n 16 samples x 8 prompts, up to 96 new tokens (bench/grpo_step.py's quick shape)
  long_tail  --n 16 x 4 prompts, up to 512 new tokens: a random model stops at EOS with a small chance per
             token, so lengths are roughly geometric with a long tail cut at 512, and the longest sample
             of a step decides its generation time
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpo_step import Workload, _env, prepare, r1ray_config, read_jsonl, run_measured  # noqa: E402

SHAPES = {
    "speed": Workload(n=16, prompts=8, max_new_tokens=96, threads=1),
    "long_tail": Workload(n=16, prompts=4, max_new_tokens=512, threads=1),
}
# Actor and reference on one bundle, rollout and reward on the other; KL off (no reference pass), one
# thread per worker.
PLACEMENT = {
    "pools": {"train": {"nodes": 1, "devices_per_node": 1, "device": "cpu", "cpus_per_bundle": 1},
              "gen": {"nodes": 1, "devices_per_node": 1, "device": "cpu", "cpus_per_bundle": 1}},
    "actor": "train", "ref": "train", "rollout": "gen", "reward": "gen", "threads_per_worker": 1,
}


# The runs of one shape: (name, trainer.max_staleness, trainer.async_mode, trainer.pause_mode).
RUNS = (("k0", 0, "fixed_lag", "abort"), ("k1", 1, "fixed_lag", "abort"), ("free2", 2, "free_running", "abort"))
# With --engine vllm: free running with the requests kept in vLLM's scheduler across weight updates.
KEEP_RUN = ("free2_keep", 2, "free_running", "keep")


def config(work: Path, model: Path, data: Path, wl: Workload, staleness: int, mode: str = "fixed_lag",
           segment_tokens: int = 64, engine: str = "hf", pause_mode: str = "abort") -> dict[str, Any]:
    cfg = r1ray_config(work, model, data, wl)
    cfg["rollout"]["engine"] = engine
    cfg["algorithm"] = {"kl_placement": "none", **({"rollout_correction": "tis_token"} if staleness else {})}
    cfg["placement"] = PLACEMENT
    # A random model earns no accuracy reward; the length reward varies between samples, so every step
    # has advantages and really updates (a step with no reward spread skips its update).
    cfg["reward"] = {"functions": ["auto", "still3_length"], "weights": [1.0, 0.1], "processes": 1}
    cfg["trainer"]["max_staleness"] = staleness
    cfg["trainer"]["async_mode"] = mode
    cfg["trainer"]["segment_tokens"] = segment_tokens
    cfg["trainer"]["pause_mode"] = pause_mode
    return cfg


def measure(work: Path, model: Path, data: Path, wl: Workload, run: tuple[str, int, str, str],
            timeout_s: float, segment_tokens: int, engine: str) -> dict[str, Any]:
    import yaml

    name, staleness, mode, pause_mode = run
    run_dir = work / name
    run_dir.mkdir()
    cfg = config(run_dir, model, data, wl, staleness, mode, segment_tokens, engine, pause_mode)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    wall, _ = run_measured(["r1ray", "train", "--config", str(path)], _env(wl), run_dir / "log.txt", timeout_s)
    records = [r for r in read_jsonl(run_dir / "r1ray" / "metrics.jsonl") if r["step"] > wl.warmup]
    return summarise(records, wall)


def summarise(records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """Mean step time and the generation / rest split of the measured steps."""
    def mean(key: str) -> float:
        return sum(r.get(key, 0.0) for r in records) / len(records)

    step = mean("timing_s/step")
    gen = mean("timing_s/generate") + mean("timing_s/sync_weights")
    return {"step_s": step, "gen_s": gen, "rest_s": step - gen, "response_length": mean("response_length/mean"),
            "update_s": mean("timing_s/update_actor"), "grad_norm": mean("actor/grad_norm"),
            "staleness_mean": mean("async/staleness_mean"), "partial_rows": mean("async/partial_rows"),
            "process_wall_s": wall, "steps": len(records)}


def compare(sync: dict[str, Any], fixed_lag: dict[str, Any], free: dict[str, Any]) -> dict[str, float]:
    """K=1 / K=0 and free-running / K=0 step time, and the floor from the K=0 run's split:
    max(gen, rest) / (gen + rest)."""
    limit = max(sync["gen_s"], sync["rest_s"]) / sync["step_s"]
    ratio = fixed_lag["step_s"] / sync["step_s"]
    return {"k1_over_k0": ratio, "limit": limit, "k1_over_limit": ratio / limit, "speedup": 1 / ratio,
            "free_over_k0": free["step_s"] / sync["step_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="speed,long_tail")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per run (after 1 warm-up step)")
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--segment-tokens", type=int, default=64, help="trainer.segment_tokens of the free-running run")
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="rollout.engine of every run")
    args = parser.parse_args()
    runs_of_shape = RUNS + ((KEEP_RUN,) if args.engine == "vllm" else ())
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="r1ray_async_bench_") as tmp:
        for name in args.shapes.split(","):
            wl = replace(SHAPES[name], steps=args.steps)
            work = Path(tmp) / name
            work.mkdir()
            model, data = prepare(work, wl)
            runs = {run[0]: measure(work, model, data, wl, run, args.timeout, args.segment_tokens, args.engine)
                    for run in runs_of_shape}
            results[name] = {"workload": {"n": wl.n, "prompts": wl.prompts, "max_new_tokens": wl.max_new_tokens},
                             "engine": args.engine, **runs, **compare(runs["k0"], runs["k1"], runs["free2"])}
            if "free2_keep" in runs:
                results[name]["keep_over_k0"] = runs["free2_keep"]["step_s"] / runs["k0"]["step_s"]
    print(f"{'shape':<10} {'K=0 step':>9} {'gen':>6} {'rest':>6} {'K=1 step':>9} {'K1/K0':>6} {'limit':>6} "
          f"{'K1/limit':>8} {'free K=2':>9} {'free/K0':>7} {'partial':>7} {'resp len':>8}")
    for name, r in results.items():
        print(f"{name:<10} {r['k0']['step_s']:>8.2f}s {r['k0']['gen_s']:>5.2f}s {r['k0']['rest_s']:>5.2f}s "
              f"{r['k1']['step_s']:>8.2f}s {r['k1_over_k0']:>6.3f} {r['limit']:>6.3f} {r['k1_over_limit']:>8.3f} "
              f"{r['free2']['step_s']:>8.2f}s {r['free_over_k0']:>7.3f} {r['free2']['partial_rows']:>7.2f} "
              f"{r['k0']['response_length']:>8.1f}")
        if "free2_keep" in r:
            print(f"{'':<10} keep K=2 (vLLM, trainer.pause_mode=keep): {r['free2_keep']['step_s']:.2f}s, "
                  f"{r['keep_over_k0']:.3f} of K=0, partial {r['free2_keep']['partial_rows']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
