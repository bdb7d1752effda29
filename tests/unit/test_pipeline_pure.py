"""The pure parts of the R1 pipeline commands, without Ray: each stage's config and what flows between
stages (controller/pipeline.py), the summary `r1ray train` prints, rejection sampling's candidate rows
and selection (controller/sample.py), and evaluation metrics on hand-built rollouts (controller/evaluate.py)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from r1ray.config import StageConfig
from r1ray.config_load import load_config
from r1ray.errors import NothingToDo
from r1ray.controller import pipeline
from r1ray.controller.cli_train import eval_summary
from r1ray.controller.evaluate import eval_metrics
from r1ray.controller.pipeline import MARKER, Carry, run_pipeline, stage_config
from r1ray.controller.sample import candidates, select
from r1ray.protocol import RolloutBatch, pack, pad_right
from r1ray.rewards import ScoreBatch, ScoreResult

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"

R1_STAGES = ("stages=[{name: cold_start, kind: sft}, {name: grpo, kind: grpo}, "
             "{name: sample, kind: sample, overrides: [sample.k=4]}, {name: rft, kind: sft}, "
             "{name: rl2, kind: grpo, overrides: [trainer.total_steps=7]}, {kind: eval}]")


def base_config(root: Path, *overrides: str):
    return load_config(QUICKSTART, [f"trainer.output_dir={root}", f"model.path={root / 'tiny'}", *overrides])


def model_dir(path: Path) -> str:
    """A model directory a stage produced (the config checks that model.path exists without init_tiny)."""
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


# ---- stage_config ----------------------------------------------------------------------------------


def test_first_stage_writes_into_its_dir_and_builds_the_tiny_model(tmp_path):
    base = base_config(tmp_path)
    stage_dir = tmp_path / "1_cold_start"
    cfg = stage_config(base, base.stages[0], stage_dir, Carry(model=base.model.path), first=True)
    assert cfg.trainer.output_dir == str(stage_dir)
    assert cfg.model.path == str(tmp_path / "tiny") and cfg.model.init_tiny
    assert cfg.stages == []                       # a stage is one run, never a nested pipeline
    assert cfg.sft == base.sft and cfg.rollout == base.rollout and cfg.data == base.data


def test_later_stages_start_from_the_carried_model_without_init_tiny(tmp_path):
    base = base_config(tmp_path)
    carry = Carry(model=model_dir(tmp_path / "1_cold_start" / "model"))
    cfg = stage_config(base, base.stages[1], tmp_path / "2_grpo", carry, first=False)
    assert cfg.model.path == carry.model and not cfg.model.init_tiny
    assert cfg.trainer.output_dir == str(tmp_path / "2_grpo")
    assert cfg.trainer.total_steps == base.trainer.total_steps


def test_sft_after_sample_trains_on_the_sampled_rows(tmp_path):
    base = base_config(tmp_path)
    carry = Carry(model=model_dir(tmp_path / "m"), sft_data=str(tmp_path / "3_sample" / "sampled_sft.jsonl"))
    cfg = stage_config(base, StageConfig(name="rft", kind="sft"), tmp_path / "4_rft", carry, first=False)
    assert cfg.sft.train_files == [carry.sft_data]
    # Only SFT stages read it.
    grpo = stage_config(base, StageConfig(name="rl", kind="grpo"), tmp_path / "5_rl", carry, first=False)
    assert grpo.sft.train_files == []


def test_sampled_rows_replace_the_base_cold_start_files(tmp_path):
    """The base config's sft.train_files are the cold-start data of the first SFT stage; an SFT stage after
    a sample stage must train on the sampled rows, not on the cold-start data again."""
    base = base_config(tmp_path, f"sft.train_files=[{tmp_path / 'cold.jsonl'}]")
    first = stage_config(base, base.stages[0], tmp_path / "1_cold_start", Carry(model=base.model.path), first=True)
    assert first.sft.train_files == [str(tmp_path / "cold.jsonl")]
    carry = Carry(model=model_dir(tmp_path / "m"), sft_data=str(tmp_path / "3_sample" / "sampled_sft.jsonl"))
    later = stage_config(base, StageConfig(name="rft", kind="sft"), tmp_path / "4_rft", carry, first=False)
    assert later.sft.train_files == [carry.sft_data]


def test_stage_overrides_are_applied_last(tmp_path):
    base = base_config(tmp_path)
    stage = StageConfig(name="rl", kind="sft", overrides=["model.path=/elsewhere/model", "trainer.total_steps=7",
                                                           "sft.train_files=[/mine.jsonl]", "model.init_tiny=true"])
    carry = Carry(model=model_dir(tmp_path / "m"), sft_data="/sampled.jsonl")
    cfg = stage_config(base, stage, tmp_path / "2_rl", carry, first=False)
    assert cfg.model.path == "/elsewhere/model" and cfg.model.init_tiny
    assert cfg.trainer.total_steps == 7 and cfg.sft.train_files == ["/mine.jsonl"]
    assert cfg.trainer.output_dir == str(tmp_path / "2_rl")


@pytest.mark.parametrize("name", ["my runs, v2", "a: b", "x[1]", "q'uote"])
def test_paths_with_yaml_characters_pass_through_unchanged(tmp_path, name):
    """Paths are data, not override syntax: a comma, colon, bracket or quote in a directory name survives."""
    root = tmp_path / name
    base = base_config(tmp_path)
    carry = Carry(model=model_dir(root / "model"), sft_data=str(root / "sampled.jsonl"))
    cfg = stage_config(base, StageConfig(name="rft", kind="sft"), root / "4_rft", carry, first=False)
    assert cfg.model.path == carry.model
    assert cfg.trainer.output_dir == str(root / "4_rft")
    assert cfg.sft.train_files == [carry.sft_data]


# ---- commands that have nothing to work on fail before building or starting anything --------------


def test_sft_without_data_fails_before_writing_anything(tmp_path):
    from r1ray.controller.sft import run_sft

    cfg = base_config(tmp_path / "run", "sft.generate_cold_start=false")
    with pytest.raises(ValueError, match=r"^sft.train_files: empty"):
        run_sft(cfg)
    assert not (tmp_path / "run").exists()       # neither the output dir nor the tiny model was built


@pytest.mark.parametrize("case", ["no val_size", "own training files"])
def test_eval_without_held_out_prompts_fails_before_starting(tmp_path, case):
    from r1ray.controller.evaluate import run_eval

    if case == "no val_size":
        overrides = ["data.generate.val_size=0"]
    else:   # held-out prompts are generated only together with training prompts
        train = tmp_path / "train.jsonl"
        train.write_text(json.dumps({"prompt": "What is 1 + 1?", "reward_model": {"ground_truth": "2"},
                                     "data_source": "arithmetic"}) + "\n")
        overrides = [f"data.train_files=[{train}]"]
    cfg = base_config(tmp_path / "run", *overrides)
    with pytest.raises(ValueError, match=r"^data.val_files: empty"):
        run_eval(cfg)
    assert not (tmp_path / "run").exists()


# ---- run_pipeline: what flows between stages, markers and skipping ---------------------------------


class FakeStages:
    """Stands in for run_stage: records each stage's config and returns what the real stage would."""

    def __init__(self):
        self.calls: list[tuple[str, str, object]] = []

    def __call__(self, cfg, kind: str, stage_dir: Path) -> dict:
        self.calls.append((stage_dir.name, kind, cfg))
        stage_dir.mkdir(parents=True, exist_ok=True)      # every real stage writes into its directory
        if kind in ("sft", "grpo"):
            done = {"model": model_dir(stage_dir / "model")}
            return {**done, "metrics": {"reward/mean": 0.5}} if kind == "grpo" else done
        if kind == "sample":
            return {"sft_data": str(stage_dir / "sampled_sft.jsonl")}
        return {"metrics": {"eval/pass@1": 0.25}}


def test_pipeline_chains_models_and_sampled_data_and_writes_markers(tmp_path, monkeypatch):
    fake = FakeStages()
    monkeypatch.setattr(pipeline, "run_stage", fake)
    cfg = base_config(tmp_path, R1_STAGES)
    carry = run_pipeline(cfg)

    names = ["1_cold_start", "2_grpo", "3_sample", "4_rft", "5_rl2", "6_eval"]
    assert [c[0] for c in fake.calls] == names
    assert [c[1] for c in fake.calls] == ["sft", "grpo", "sample", "sft", "grpo", "eval"]
    configs = {name: c for name, _, c in fake.calls}
    assert configs["1_cold_start"].model.path == str(tmp_path / "tiny") and configs["1_cold_start"].model.init_tiny
    assert configs["2_grpo"].model.path == str(tmp_path / "1_cold_start" / "model")
    assert configs["3_sample"].model.path == str(tmp_path / "2_grpo" / "model")
    assert configs["3_sample"].sample.k == 4 and cfg.sample.k != 4
    assert configs["4_rft"].model.path == str(tmp_path / "2_grpo" / "model")     # sampling trains nothing
    assert configs["4_rft"].sft.train_files == [str(tmp_path / "3_sample" / "sampled_sft.jsonl")]
    assert configs["5_rl2"].model.path == str(tmp_path / "4_rft" / "model")
    assert configs["5_rl2"].trainer.total_steps == 7 and configs["2_grpo"].trainer.total_steps == 100
    assert configs["6_eval"].model.path == str(tmp_path / "5_rl2" / "model")
    assert not any(c.model.init_tiny for name, _, c in fake.calls[1:])
    for name, _, c in fake.calls:
        assert c.trainer.output_dir == str(tmp_path / name) and (tmp_path / name / MARKER).is_file()

    assert carry.model == str(tmp_path / "5_rl2" / "model")
    assert carry.sft_data == str(tmp_path / "3_sample" / "sampled_sft.jsonl")
    assert carry.results == {"1_cold_start": {}, "2_grpo": {"reward/mean": 0.5}, "3_sample": {}, "4_rft": {},
                             "5_rl2": {"reward/mean": 0.5}, "6_eval": {"eval/pass@1": 0.25}}
    assert json.loads((tmp_path / "3_sample" / MARKER).read_text()) == {
        "sft_data": str(tmp_path / "3_sample" / "sampled_sft.jsonl")}
    assert not list(tmp_path.glob("*/*.tmp"))


def test_a_restarted_pipeline_skips_finished_stages_and_carries_their_outputs(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pipeline, "run_stage", FakeStages())
    cfg = base_config(tmp_path, R1_STAGES)
    first = run_pipeline(cfg)

    # Interrupted during stage 5: stages 1-4 are complete, 5 and 6 are not.
    for name in ("5_rl2", "6_eval"):
        (tmp_path / name / MARKER).unlink()
    fake = FakeStages()
    monkeypatch.setattr(pipeline, "run_stage", fake)
    with caplog.at_level(logging.INFO, logger="r1ray.controller.pipeline"):
        second = run_pipeline(cfg)
    assert [c[0] for c in fake.calls] == ["5_rl2", "6_eval"]
    assert fake.calls[0][2].model.path == str(tmp_path / "4_rft" / "model")      # read back from the marker
    assert not fake.calls[0][2].model.init_tiny
    assert second.model == first.model and second.sft_data == first.sft_data and second.results == first.results
    assert caplog.text.count("already complete; skipping") == 4

    # Everything complete: nothing runs, and the run says so instead of passing for a finished one.
    def refuse(*args):
        raise AssertionError("a complete stage ran again")

    monkeypatch.setattr(pipeline, "run_stage", refuse)
    with pytest.raises(NothingToDo, match=r"all 6 stages in .* are already complete; nothing was run"):
        run_pipeline(cfg)


def test_a_grpo_stage_given_more_steps_continues_and_later_stages_are_redone(tmp_path, monkeypatch, caplog):
    """`trainer.total_steps=2` then `=4` on a finished pipeline: the GRPO stage resumes from its checkpoint
    (resume=auto) instead of being skipped, and the stages after it, which used its old model, run again
    from the new one (replacing their earlier outputs)."""
    stages = "stages=[{name: cold_start, kind: sft}, {name: grpo, kind: grpo}, {name: rl2, kind: grpo}]"
    monkeypatch.setattr(pipeline, "run_stage", FakeStages())
    run_pipeline(base_config(tmp_path, stages, "trainer.total_steps=2"))
    assert json.loads((tmp_path / "2_grpo" / MARKER).read_text())["total_steps"] == 2

    fake = FakeStages()
    monkeypatch.setattr(pipeline, "run_stage", fake)
    with caplog.at_level(logging.INFO, logger="r1ray.controller.pipeline"):
        run_pipeline(base_config(tmp_path, stages, "trainer.total_steps=4"))
    assert [c[0] for c in fake.calls] == ["2_grpo", "3_rl2"]                   # the SFT stage is still done
    grpo, rl2 = fake.calls[0][2], fake.calls[1][2]
    assert grpo.trainer.resume == "auto" and grpo.trainer.total_steps == 4
    assert rl2.trainer.resume == "never" and rl2.trainer.overwrite
    assert "stage 2 (grpo) finished at step 2, trainer.total_steps is now 4: continuing it" in caplog.text
    assert json.loads((tmp_path / "2_grpo" / MARKER).read_text())["total_steps"] == 4

    # Fewer steps than it finished with: nothing to undo, so nothing runs.
    monkeypatch.setattr(pipeline, "run_stage", FakeStages())
    with pytest.raises(NothingToDo):
        run_pipeline(base_config(tmp_path, stages, "trainer.total_steps=3"))


def test_a_stage_without_a_name_is_named_by_its_kind(tmp_path, monkeypatch):
    fake = FakeStages()
    monkeypatch.setattr(pipeline, "run_stage", fake)
    run_pipeline(base_config(tmp_path, "stages=[{kind: sft}, {kind: eval}]"))
    assert [c[0] for c in fake.calls] == ["1_sft", "2_eval"]


# ---- eval_summary ----------------------------------------------------------------------------------


def write_metrics(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_eval_summary_of_a_single_run(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", [
        {"step": 0, "eval/pass@1": 0.125}, {"step": 1, "reward/mean": 0.1},
        {"step": 2, "reward/mean": 0.2, "eval/pass@1": 0.5}, {"step": 3, "reward/mean": 0.3}])
    assert eval_summary(tmp_path) == [f"{tmp_path.name}: held-out pass@1 0.125 (step 0) -> 0.500 (step 2)"]


def test_eval_summary_of_a_pipeline_lists_stages_with_evaluations_in_order(tmp_path):
    write_metrics(tmp_path / "1_cold_start" / "metrics.jsonl", [{"step": 1, "sft/nll": 2.0}])
    write_metrics(tmp_path / "2_grpo" / "metrics.jsonl",
                  [{"step": 0, "eval/pass@1": 0.1}, {"step": 5, "eval/pass@1": 0.2}])
    write_metrics(tmp_path / "10_grpo" / "metrics.jsonl",
                  [{"step": 0, "eval/pass@1": 0.3}, {"step": 5, "eval/pass@1": 0.4}])
    (tmp_path / "3_eval").mkdir()
    assert eval_summary(tmp_path) == [
        "2_grpo: held-out pass@1 0.100 (step 0) -> 0.200 (step 5)",
        "10_grpo: held-out pass@1 0.300 (step 0) -> 0.400 (step 5)",
    ]


def test_eval_summary_without_evaluations_is_empty(tmp_path):
    assert eval_summary(tmp_path) == []
    write_metrics(tmp_path / "metrics.jsonl", [{"step": 1, "reward/mean": 0.1}])
    assert eval_summary(tmp_path) == []


def test_eval_summary_skips_a_line_cut_short_by_a_crash(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/pass@1": 0.25}) + "\n\n"
                                            + json.dumps({"step": 4, "eval/pass@1": 0.75}) + "\n" + '{"step": 5, "ev')
    assert eval_summary(tmp_path) == [f"{tmp_path.name}: held-out pass@1 0.250 (step 0) -> 0.750 (step 4)"]


# ---- hand-built rollouts and scores ----------------------------------------------------------------


def rollout(texts: list[str], n: int, sources: list[str] | None = None, truncated: list[bool] | None = None,
            response_lens: list[int] | None = None) -> RolloutBatch:
    """len(texts) samples, n per prompt; 3 prompt tokens each; response lengths default to 1, 2, 3, ..."""
    b = len(texts)
    lens = response_lens or [i + 1 for i in range(b)]
    tokens, cu = pack([[1, 1, 1] + [5] * k for k in lens])
    return RolloutBatch(
        tokens=tokens, cu_seqlens=cu, prompt_lens=torch.full((b,), 3), truncated=torch.tensor(truncated or [False] * b),
        rollout_logprobs=pad_right([torch.full((k,), -0.1) for k in lens]), response_texts=list(texts),
        ground_truths=["7"] * b, data_sources=sources or ["arithmetic"] * b, extra_infos=[{} for _ in range(b)],
        group_size=n)


def scores(accuracy: list[float | None], status: list[str] | None = None) -> ScoreBatch:
    """ScoreResults as the reward workers give them for reward.functions [auto, format], weights [1, 0.1]."""
    results = []
    for i, acc in enumerate(accuracy):
        state = status[i] if status else ("ok" if acc is not None else "unscorable")
        score = acc + 0.1 if state == "ok" else None
        results.append(ScoreResult(score, {"auto": acc, "format": 1.0}, state))
    return ScoreBatch(results)


def answer(x: str) -> str:
    return f"<think>adding</think> <answer>{x}</answer>"


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return base_config(tmp_path_factory.mktemp("eval"))


def test_eval_metrics_pass_at_k_and_majority_vote(cfg):
    # Prompt A: 1 of 4 right, and the vote goes to a wrong answer; B: 3 of 4 right (vote right);
    # C: 0 of 4, no answers at all.
    texts = [answer("7"), answer("8"), answer("8"), answer("9"),
             answer("7"), answer("7"), answer("7"), answer("6"),
             "no idea", "still none", answer("1"), answer("2")]
    acc = [1.0, 0, 0, 0, 1.0, 1.0, 1.0, 0, 0, 0, 0, 0]
    metrics = eval_metrics(cfg, rollout(texts, 4), scores(acc), ks=[1, 2, 4, 8])
    assert metrics["eval/pass@1"] == pytest.approx((1 / 4 + 3 / 4 + 0) / 3)
    # Unbiased pass@2 = 1 - C(n-c, 2) / C(n, 2): A 1 - 3/6, B 1 - 0, C 0.
    assert metrics["eval/pass@2"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert metrics["eval/pass@4"] == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    assert "eval/pass@8" not in metrics                      # k above n is skipped, not made up
    assert metrics["eval/maj@4"] == pytest.approx(1 / 3)     # only B's majority answer is right
    assert metrics["eval/arithmetic/pass@1"] == metrics["eval/pass@1"]
    assert metrics["eval/response_length/mean"] == pytest.approx(6.5)   # lengths 1..12
    assert metrics["eval/reward_mean"] == pytest.approx(sum(acc) / 12 + 0.1)
    assert metrics["eval/unscorable_count"] == 0.0


def test_eval_metrics_per_data_source_and_unscorable_samples(cfg):
    texts = [answer("7"), answer("7"), answer("3"), answer("4"), answer("7"), "x"]
    sources = ["arithmetic", "arithmetic", "openai/gsm8k", "openai/gsm8k", "countdown", "countdown"]
    acc = [1.0, 1.0, 0.0, None, 1.0, None]
    status = ["ok", "ok", "ok", "unscorable", "ok", "timeout"]
    metrics = eval_metrics(cfg, rollout(texts, 2, sources), scores(acc, status), ks=[1, 2])
    assert metrics["eval/arithmetic/pass@1"] == 1.0 and metrics["eval/arithmetic/maj@2"] == 1.0
    assert metrics["eval/openai_gsm8k/pass@1"] == 0.0        # unscorable is not correct, and '/' becomes '_'
    assert metrics["eval/countdown/pass@1"] == 0.5 and metrics["eval/countdown/pass@2"] == 1.0
    assert metrics["eval/pass@1"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert metrics["eval/reward_mean"] == pytest.approx((1.1 + 1.1 + 0.1 + 1.1) / 4)   # scored samples only
    assert metrics["eval/unscorable_count"] == 2.0


def test_eval_metrics_behaviour_rates_and_all_unscorable(cfg):
    texts = ["<think>wait, let me check</think> <answer>7</answer>", answer("7")]
    metrics = eval_metrics(cfg, rollout(texts, 2), scores([None, None]), ks=[1])
    assert metrics["eval/behaviour/reflection_rate"] == 0.5 and metrics["eval/behaviour/verification_rate"] == 0.5
    assert metrics["eval/behaviour/correction_rate"] == 0.0 and "eval/behaviour/reflection_per_1k_words" in metrics
    assert math.isnan(metrics["eval/reward_mean"]) and metrics["eval/pass@1"] == 0.0


# ---- rejection sampling: candidates and select -----------------------------------------------------


def test_candidates_group_samples_by_prompt():
    texts = [answer(str(i)) for i in range(6)]
    batch = rollout(texts, 3, truncated=[False, True, False, False, False, True], response_lens=[4, 9, 5, 6, 7, 9])
    prompts = ["What is 3 + 4?", [{"role": "user", "content": "What is 2 + 5?"}]]
    groups = candidates(batch, [True, False, True, False, True, True], prompts)
    assert len(groups) == 2 and [len(g) for g in groups] == [3, 3]
    assert groups[0][1] == {"prompt": prompts[0], "response": texts[1], "correct": False, "truncated": True,
                            "tokens": 9}
    assert [r["prompt"] for r in groups[1]] == [prompts[1]] * 3
    assert [r["response"] for g in groups for r in g] == texts
    assert [r["tokens"] for g in groups for r in g] == [4, 9, 5, 6, 7, 9]


def row(prompt, response, correct=True, truncated=False):
    return {"prompt": prompt, "response": response, "correct": correct, "truncated": truncated, "tokens": 5}


def test_select_keeps_correct_finished_distinct_rows_up_to_keep_per_prompt():
    groups = [
        [row("p1", answer("7"), correct=False), row("p1", "<think>3 + 4 = 7</think> <answer>7</answer>"),
         row("p1", "<think>3  +  4 = 7</think>\n<answer>7</answer> "),        # the same after normalising
         row("p1", "<think>4 + 3 = 7</think> <answer>7</answer>"),
         row("p1", "<think>4 + 3 = 7</think> <answer>7</answer> and so on and", truncated=True),   # no EOS
         row("p1", "<think>thinking hard</think> <answer>7</answer>")],
        [row("p2", answer("1"), correct=False), row("p2", "<think>1 + 1 = 2</think> <answer>2</answer>",
                                                    truncated=True)],
        [row("p3", "<think>6 + 3 = 9</think> <answer>9</answer>")],
    ]
    kept, stats = select(groups, keep=2, language="en")
    assert kept == [{"prompt": "p1", "response": "<think>3 + 4 = 7</think> <answer>7</answer>"},
                    {"prompt": "p1", "response": "<think>4 + 3 = 7</think> <answer>7</answer>"},
                    {"prompt": "p3", "response": "<think>6 + 3 = 9</think> <answer>9</answer>"}]
    assert all(set(r) == {"prompt", "response"} for r in kept)
    assert (stats.incorrect, stats.overlong, stats.duplicate) == (2, 2, 1)
    assert stats.total == 9

    one, _ = select(groups, keep=1, language="en")
    assert [r["prompt"] for r in one] == ["p1", "p3"]


def test_select_drops_correct_answers_without_the_answer_format():
    """The accuracy reward may read a bare final number; SFT rows must also show the <answer> format."""
    groups = [[row("p", "<think>7 + 1 = 8</answer></answer>"), row("p", "the answer is 8"),
               row("p", "<think>x</think> \\boxed{8}"), row("p", "<think>7 + 1 = 8</think> <answer>8</answer>")]]
    kept, stats = select(groups, keep=4, language="en")
    assert [r["response"] for r in kept] == [groups[0][2]["response"], groups[0][3]["response"]]
    assert stats.incorrect == 2


def test_select_drops_mixed_language_unless_the_filter_is_off():
    mixed = "<think>我们 先 计算 这个 加法 然后 得到 结果 7</think> <answer>7</answer>"
    groups = [[row("p", mixed), row("p", "<think>three plus four is seven</think> <answer>7</answer>")]]
    kept, stats = select(groups, keep=2, language="en")
    assert [r["response"] for r in kept] == [groups[0][1]["response"]] and stats.mixed_language == 1
    kept, _ = select(groups, keep=2, language="")
    assert len(kept) == 2


def test_select_limits_a_prompt_that_appears_in_several_groups():
    """Generated data repeats prompts (single-digit addition has 81 questions): keep_per_prompt and the
    duplicate filter hold per prompt, not per occurrence, also across calls (run_sample's chunks)."""
    chat = [{"role": "user", "content": "What is 3 + 4?"}]
    same = "<think>3 + 4 = 7</think> <answer>7</answer>"
    other = "<think>4 + 3 = 7</think> <answer>7</answer>"
    groups = [[row(chat, same)], [row([dict(m) for m in chat], same), row(chat, other)], [row(chat, other)]]
    kept, stats = select(groups, keep=2, language="en")
    assert kept == [{"prompt": chat, "response": same}, {"prompt": chat, "response": other}]
    assert stats.duplicate >= 1

    seen: dict = {}
    first, _ = select(groups[:1], keep=1, language="en", seen=seen)
    second, _ = select(groups[1:], keep=1, language="en", seen=seen)
    assert first + second == [{"prompt": chat, "response": same}]
