"""The memory plan (r1ray/memory_plan.py): model shapes against published and real parameter counts, the
shipped 7B recipe's fit at every length stage (and its opening comment kept true), one-line refusals that
name the stage and the knobs, budgets that follow the stages, and `r1ray plan` as a user runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from r1ray.config_load import ConfigError, load_config
from r1ray.controller.cli import EXIT_USAGE, main
from r1ray.memory_plan import (KNOWN_SHAPES, ModelShape, budget_at, format_plan, model_shape, plan_memory,
                               shape_from_config, token_budgets)

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs" / "r1_zero_qwen2.5_7b_math.yaml"
GSM8K_SAMPLE = REPO / "tests" / "data" / "gsm8k_sample.jsonl"
RECIPE_DATA = [f"data.train_files=[{GSM8K_SAMPLE}]", "data.val_files=[]"]
GIB = 2**30


def recipe(*overrides: str, memory: bool = True):
    return load_config(RECIPE, [*RECIPE_DATA, *overrides], memory=memory)


@pytest.mark.parametrize("name, published", [("Qwen/Qwen2.5-1.5B", 1.54e9), ("Qwen/Qwen2.5-3B", 3.09e9),
                                             ("Qwen/Qwen2.5-7B", 7.61e9), ("Qwen/Qwen2.5-32B", 32.5e9),
                                             ("smollm2-135m-instruct", 1.35e8)])
def test_known_shapes_count_the_parameters_their_model_cards_publish(name: str, published: float) -> None:
    assert KNOWN_SHAPES[name].params == pytest.approx(published, rel=0.01)


def test_a_tiny_models_shape_counts_its_real_parameters(tmp_path: Path) -> None:
    """The config.json reading, and the shape `model.init_tiny` predicts before the model exists."""
    import json

    from transformers import AutoModelForCausalLM

    from r1ray.models import build_tiny_model

    path = build_tiny_model(tmp_path / "tiny", hidden=64, layers=2, max_position_embeddings=256)
    shape = shape_from_config(json.loads((path / "config.json").read_text()))
    model = AutoModelForCausalLM.from_pretrained(path)
    assert shape.params == sum(p.numel() for p in model.parameters())
    predicted = model_shape(load_config(None, ["model.init_tiny=true", f"model.path={tmp_path / 'not_yet'}",
                                               "data.generate.task=arithmetic"], memory=False))
    assert predicted == shape


def test_the_7b_recipe_fits_every_stage_and_its_comment_quotes_the_plan() -> None:
    cfg = recipe()
    plan = plan_memory(cfg, model_shape(cfg))
    assert [s.response for s in plan.stages] == [8192, 12288, 20480] and not plan.problems
    for stage in plan.stages:
        total = sum(stage.parts.values())
        assert stage.budget == cfg.actor.micro_batch_tokens <= stage.fits_tokens
        assert total < 0.8 * 80 * GIB                                  # room for the estimate's error
        assert stage.kv_sequences >= cfg.rollout.n                    # a group's samples decode together
    comment = "\n".join(line[2:] for line in RECIPE.read_text().splitlines() if line.startswith("# "))
    for line in format_plan(cfg, plan).splitlines():
        if line.startswith(("  actor (", "  rollout (")):
            assert line.strip() in comment, f"the recipe's opening comment no longer quotes: {line.strip()}"


def test_a_stage_that_cannot_fit_is_refused_in_one_line_naming_it_and_the_knobs() -> None:
    with pytest.raises(ConfigError) as caught:
        recipe("actor.gradient_checkpointing=false")
    assert len(caught.value.problems) == 1
    line = caught.value.problems[0]
    assert line.startswith("memory plan, stage 1 (from step 0, responses up to 8192 tokens")
    assert "actor.sequence_parallel_size=2" in line and "actor.gradient_checkpointing=true" in line
    # The first knob it names is enough here: half of each sequence per rank fits.
    cfg = recipe("actor.gradient_checkpointing=false", "actor.sequence_parallel_size=2",
                 "actor.micro_batch_tokens=0", "rollout.response_length_schedule=[[0,8192]]",
                 "rollout.max_response_length=8192")
    assert not plan_memory(cfg, model_shape(cfg)).problems


def test_a_configured_budget_too_large_names_the_largest_that_fits() -> None:
    with pytest.raises(ConfigError) as caught:
        recipe("actor.micro_batch_tokens=200000")
    [line] = caught.value.problems
    assert line.startswith("actor.micro_batch_tokens: 200000 needs") and "stage 1" in line
    largest = int(line.split("the largest that fits is ")[1].split()[0])
    recipe(f"actor.micro_batch_tokens={largest}")                    # which loads


def test_a_kv_cache_that_cannot_hold_one_sequence_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        recipe("rollout.gpu_memory_utilization=0.1")
    [line] = caught.value.problems
    assert "vLLM's KV cache" in line and "stage 1" in line and "rollout.gpu_memory_utilization" in line


def test_budgets_follow_the_stages_when_the_plan_picks_them() -> None:
    """Automatic budgets: flash-attention's memory is linear in tokens, so one budget fits every stage;
    eager attention keeps (heads, L, L) scores, so the 20k stage fits fewer tokens than the 8k one."""
    flash = token_budgets(recipe("actor.micro_batch_tokens=0"))
    assert len({tokens for _, tokens in flash}) == 1 and flash[0][1] > 32768
    eager = token_budgets(recipe("actor.micro_batch_tokens=0", "model.attn_implementation=eager",
                                 "actor.sequence_parallel_size=4"))
    assert [start for start, _ in eager] == [0, 400, 800]
    assert eager[0][1] > eager[1][1] > eager[2][1] >= 21504 / 4
    assert [budget_at(eager, step) for step in (1, 400, 401, 801)] == [eager[0][1], eager[0][1], eager[1][1],
                                                                       eager[2][1]]
    assert token_budgets(recipe()) == [(0, 32768)]                  # a configured budget stays


def test_offload_and_zero_stages_move_what_they_should() -> None:
    """DeepSpeed ZeRO-3 shards the module too; offload leaves no optimizer state on the device; FSDP2's
    float32 master weights cost twice DeepSpeed's compute-dtype shards."""
    def parts(*overrides: str) -> dict[str, float]:
        cfg = recipe(*overrides, memory=False)
        return plan_memory(cfg, model_shape(cfg)).stages[0].parts

    fsdp2, zero3 = parts(), parts("actor.engine=deepspeed", "actor.zero_stage=3")
    zero2 = parts("actor.engine=deepspeed", "actor.zero_stage=2")
    offloaded = parts("actor.engine=deepspeed", "actor.zero_stage=3", "actor.cpu_offload=true")
    assert fsdp2["parameters"] == 2 * zero3["parameters"]
    assert zero2["parameters"] == 8 * zero3["parameters"]            # whole on each of 8 ranks
    assert offloaded["optimizer"] == offloaded["parameters"] == 0 < zero3["optimizer"]


def test_r1ray_plan_prints_every_stage_and_exits_2_on_a_config_that_cannot_fit(capsys) -> None:
    code = main(["plan", "--config", str(RECIPE), *RECIPE_DATA])
    out, err = capsys.readouterr()
    assert code == 0 and not err
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("stage")] == ["stage 1", "stage 2",
                                                                                          "stage 3"]
    code = main(["plan", "--config", str(RECIPE), *RECIPE_DATA, "actor.gradient_checkpointing=false"])
    out, err = capsys.readouterr()
    assert code == EXIT_USAGE and "DOES NOT FIT" in out                  # the table, then the reason
    assert err.startswith("error: memory plan, stage 1") and len(err.strip().splitlines()) == 1
    assert err.rstrip().endswith("(stages 2, 3 too)")


def test_r1ray_plan_without_a_shape_to_read_says_so(capsys, tmp_path: Path) -> None:
    code = main(["plan", "model.path=someorg/unknown-model", "data.generate.task=arithmetic"])
    _, err = capsys.readouterr()
    assert code == EXIT_USAGE and err.startswith("error: model.path: no config.json at someorg/unknown-model")


def test_auto_budget_without_a_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="actor.micro_batch_tokens: 0 asks the memory plan"):
        load_config(None, ["model.path=someorg/unknown-model", "data.generate.task=arithmetic",
                           "actor.micro_batch_tokens=0"])


def test_shapes_read_a_multimodal_text_config() -> None:
    text = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "vocab_size": 300}
    assert shape_from_config({"text_config": text}) == ModelShape(2, 64, 128, 4, 4, 16, 300, False)


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_r1ray_plan_runs_for_every_shipped_config(capsys, config: Path) -> None:
    """Before any model is built or downloaded: the tiny model's shape comes from its settings, SmolLM2's
    from its `model.fetch` name, Qwen2.5-7B's from the hub name."""
    overrides = RECIPE_DATA if config == RECIPE else []
    code = main(["plan", "--config", str(config), *overrides])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.count("\nstage ") == len(load_config(config, overrides).rollout.response_length_schedule or [0])
