"""bench/grpo_step.py's pure helpers: metrics.jsonl parsing, means after warm-up, ratios, the table. No TRL, no Ray."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "grpo_step.py"
_spec = importlib.util.spec_from_file_location("bench_grpo_step", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench                    # dataclasses look their module up there
_spec.loader.exec_module(bench)


def r1ray_record(step: int, step_s: float, length: float) -> dict:
    stages = {"sync_weights": 0.5, "generate": 2.0, "reward_ref_logprobs": 0.5, "advantage": 0.0, "update_actor": 1.0}
    return {"step": step, "timing_s/step": step_s, "response_length/mean": length,
            **{f"timing_s/{k}": v for k, v in stages.items()}}


def test_r1ray_summary_skips_warmup_and_splits_overhead(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [r1ray_record(1, 30.0, 10.0), r1ray_record(2, 5.0, 100.0), r1ray_record(3, 5.0, 50.0)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    s = bench.summarise_r1ray(bench.read_jsonl(path), warmup=1, rows_per_step=8)
    assert s["steps"] == 2 and s["step_s"] == 5.0
    assert s["gen_tokens_per_step"] == 600.0          # mean length 75 x 8 rows
    assert s["gen_tokens_per_s"] == 120.0
    assert s["overhead_s"] == pytest.approx(1.0)      # 5.0 - (0.5 + 2 + 0.5 + 0 + 1)
    assert s["sync_share"] == pytest.approx(0.1)


def test_summaries_refuse_a_run_with_only_warmup_steps():
    with pytest.raises(ValueError, match="warm-up"):
        bench.summarise_r1ray([r1ray_record(1, 3.0, 1.0)], warmup=1, rows_per_step=1)
    with pytest.raises(ValueError, match="warm-up"):
        bench.summarise_trl([{"step_s": 1.0, "mean_length": 2.0, "stages_s": {}}], warmup=1, rows_per_step=1)


def test_ratios_per_step_and_per_generated_token():
    trl = bench.summarise_trl([{"step_s": 9.0, "mean_length": 1.0, "stages_s": {}},
                               {"step_s": 2.0, "mean_length": 20.0, "stages_s": {"generate": 1.0}}],
                              warmup=1, rows_per_step=10)
    assert trl["gen_tokens_per_step"] == 200.0 and trl["stages_s"]["generate"] == 1.0
    r1ray = {"step_s": 8.0, "gen_tokens_per_step": 400.0}
    r = bench.ratios(r1ray, trl)
    assert r["per_step"] == 4.0
    assert r["per_generated_token"] == 2.0            # 8/400 s per token against 2/200


def test_table_has_both_columns_and_the_ratio():
    r1ray = bench.summarise_r1ray([r1ray_record(1, 5.0, 10.0)], warmup=0, rows_per_step=4)
    trl = bench.summarise_trl([{"step_s": 2.5, "mean_length": 10.0, "stages_s": {}}], warmup=0, rows_per_step=4)
    table = bench.format_table({"r1ray": {**r1ray, "peak_rss_gib": 3.5}, "trl": {**trl, "peak_rss_gib": 1.0}})
    lines = {line.split("  ")[0].strip(): line for line in table.splitlines()}
    assert "r1ray/TRL" in table.splitlines()[0]
    assert lines["step time"].rstrip().endswith("2.00x")
    assert lines["time per generated token"].rstrip().endswith("2.00x")
    assert "n/a" in lines["framework overhead"]
    only = bench.format_table({"r1ray": r1ray})
    assert "r1ray/TRL" not in only and "trl" not in only.splitlines()[0]


def test_trl_runs_in_float32_as_r1ray_does(tmp_path):
    """GRPOConfig turns bf16 autocast on by default, also on CPU; r1ray computes in float32, and so must TRL here
    (with bf16 TRL's passes took half the time on this CPU, measuring the arithmetic instead of the framework)."""
    pytest.importorskip("trl", reason="TRL is the benchmark's baseline: pip install -e '.[bench]'")
    args = bench.trl_args(bench.Workload(), tmp_path)
    assert args.bf16 is False and args.fp16 is False and args.use_cpu
    assert args.per_device_train_batch_size == bench.Workload().n * bench.Workload().prompts
