"""How r1ray's GRPO step scales with n and the response length, and what bounds its memory.

    python bench/grpo_scaling.py [--quick] [--json FILE]

Every row is one real `r1ray train` run (bench/grpo_step.py's r1ray side: tiny Qwen2, 4 layers, hidden 128,
2-digit addition, 4 prompts, KL 0.04) of one warm-up step and one measured step. Printed per run: step
time, generated tokens, milliseconds per 1k generated tokens (flat when cost grows linearly in tokens), the
stages, and the peak RSS of the actor, reference and rollout workers and of the whole process tree.

Rows: n = 8, 16, 32, 64 at 128 new tokens; response limits 256, 512, 1024 at n = 64; n = 64 x 1024 with
gradient checkpointing; and the mission's lengths, 1 prompt x n = 4 with responses forced to their budget
(`rollout.ignore_eos`), the response-length schedule stepping 4,096 -> 8,192 between its two steps.
The token budget (`actor.micro_batch_tokens`, 8,192 by default) is the same everywhere except the long run,
whose single sequences need 8,448.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_step import Workload, bench_r1ray, prepare, read_jsonl  # noqa: E402

WORKERS = ("ray::ActorWorker", "ray::RefWorker", "ray::RolloutWorker")


@dataclass(frozen=True)
class Row:
    name: str
    workload: Workload


def rows(quick: bool) -> list[Row]:
    base = Workload(steps=1, warmup=1)
    out = [Row(f"n={n}, 128 tokens", replace(base, n=n)) for n in (8, 16, 32, 64)]
    out += [Row(f"n=64, {t} tokens", replace(base, max_new_tokens=t)) for t in (256, 512, 1024)]
    out.append(Row("n=64, 1024 tokens, grad ckpt", replace(base, max_new_tokens=1024,
                                                           r1ray_overrides=("actor.gradient_checkpointing=true",))))
    out.append(Row("1 x n=4, forced 4096 -> 8192", replace(
        base, n=4, prompts=1, max_new_tokens=8192, steps=2, warmup=0,
        r1ray_overrides=("rollout.ignore_eos=true", "actor.micro_batch_tokens=8448",
                         "rollout.response_length_schedule=[[0,4096],[1,8192]]"))))
    if quick:
        out = [replace(r, name=f"{r.name} (quick: n<=8, <=64 tokens)", workload=replace(r.workload, n=min(r.workload.n, 8),
                                           max_new_tokens=min(r.workload.max_new_tokens, 64),
                                           r1ray_overrides=tuple(o for o in r.workload.r1ray_overrides
                                                                 if "schedule" not in o)))
               for r in out[:2] + out[-1:]]
    return out


def measure(row: Row, work: Path, timeout_s: float) -> dict[str, Any]:
    wl = row.workload
    work.mkdir(parents=True, exist_ok=True)
    model, data = prepare(work, wl)
    result = bench_r1ray(work, model, data, wl, timeout_s)
    records = [r for r in read_jsonl(work / "r1ray" / "metrics.jsonl") if "timing_s/step" in r]
    per_step = [{"budget": r.get("response_length/budget"), "step_s": r["timing_s/step"],
                 "tokens": r["response_length/mean"] * wl.n * wl.prompts} for r in records]
    workers = {w: result["peak_rss_by_process_gib"].get(w, 0.0) for w in WORKERS}
    return {"name": row.name, "step_s": result["step_s"], "tokens": result["gen_tokens_per_step"],
            "ms_per_1k_tokens": result["step_s"] * 1e6 / max(result["gen_tokens_per_step"], 1),
            "stages_s": result["stages_s"], "workers_peak_rss_gib": workers,
            "tree_peak_rss_gib": result["peak_rss_gib"], "per_step": per_step if wl.warmup == 0 else []}


def format_rows(results: list[dict[str, Any]]) -> str:
    head = (f"{'run':<32}{'step s':>8}{'gen tokens':>12}{'ms/1k tok':>10}{'gen s':>8}{'ref s':>7}{'upd s':>7}"
            f"{'actor GiB':>10}{'ref GiB':>8}{'rollout GiB':>12}{'tree GiB':>9}")
    lines = [head, "-" * len(head)]
    for r in results:
        s, w = r["stages_s"], r["workers_peak_rss_gib"]
        lines.append(f"{r['name']:<32}{r['step_s']:>8.2f}{r['tokens']:>12,.0f}{r['ms_per_1k_tokens']:>10.1f}"
                     f"{s.get('generate', 0):>8.2f}{s.get('reward_ref_logprobs', 0):>7.2f}"
                     f"{s.get('update_actor', 0):>7.2f}{w['ray::ActorWorker']:>10.2f}{w['ray::RefWorker']:>8.2f}"
                     f"{w['ray::RolloutWorker']:>12.2f}{r['tree_peak_rss_gib']:>9.2f}")
        if len(r["per_step"]) > 1:
            for i, step in enumerate(r["per_step"], 1):
                lines.append(f"{'  step ' + str(i) + ', budget ' + str(int(step['budget'] or 0)):<32}"
                             f"{step['step_s']:>8.2f}{step['tokens']:>12,.0f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three small rows, to check the script runs")
    parser.add_argument("--only", help="run only rows whose name contains this text")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="grpo_scaling_") as tmp:
        for i, row in enumerate(rows(args.quick)):
            if args.only and args.only not in row.name:
                continue
            results.append(measure(row, Path(tmp) / f"run{i}", args.timeout))
            print(format_rows(results[-1:]).splitlines()[2], flush=True)       # its line, as it finishes
    print(format_rows(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
