"""One source for reward defaults (the schema), and reward.language reaching the language reward through the
real subprocess scorer."""

from __future__ import annotations

from dataclasses import fields

import pytest

from r1ray.config import RewardConfig
from r1ray.config_load import load_config
from r1ray.controller.roles import reward_spec
from r1ray.rewards import RewardExecutor, RewardItem
from r1ray.rewards.spec import RewardSpec

ENGLISH = "<think>Two plus three makes five, so the sum is five.</think> <answer>5</answer>"
CHINESE = "<think>二加三等于五，所以答案是五。</think> <answer>5</answer>"


def test_reward_spec_defaults_are_the_schemas():
    spec = RewardSpec(names=["format"], weights=[1.0])
    schema = RewardConfig()
    assert (spec.sample_timeout_s, spec.batch_timeout_s, spec.num_workers, spec.language) == (
        schema.sample_timeout_s, schema.batch_timeout_s, schema.processes, schema.language)
    # Every RewardSpec knob but the reward list itself comes from a config field.
    assert {f.name for f in fields(RewardSpec)} == {"names", "weights", "sample_timeout_s", "batch_timeout_s",
                                                   "num_workers", "language"}


@pytest.mark.parametrize("language, scores", [("en", [1.0, 0.0, 1.0]), ("zh", [0.0, 1.0, 1.0])])
def test_reward_language_is_the_target_unless_the_row_names_its_own(tmp_path, language, scores):
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{path: {tmp_path}}}\ndata: {{generate: {{task: arithmetic}}}}\n"
                      f"reward: {{functions: [language], weights: [1.0], processes: 1, language: {language}}}\n")
    spec = reward_spec(load_config(config))
    assert spec.language == language
    own = "zh" if language == "en" else "en"
    items = [RewardItem(ENGLISH, "5"), RewardItem(CHINESE, "5"),
             RewardItem(CHINESE if own == "zh" else ENGLISH, "5", extra={"language": own})]
    with RewardExecutor(spec) as executor:
        batch = executor.score(items)
    assert [r.score for r in batch.results] == pytest.approx(scores, abs=0.05)
    assert items[0].extra == {}                     # the caller's items are not changed
