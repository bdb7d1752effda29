"""The `r1ray` command line as a user meets it: output, exit status, and one-line errors without tracebacks.

Most commands run in-process through `main([...])`; a few run the installed console script for real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from r1ray.controller.cli import EXIT_USAGE, main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert all(line.startswith("error: ") for line in lines), lines
    return lines


# ---- config --------------------------------------------------------------------------------------


def test_config_show_prints_yaml_with_overrides(capsys) -> None:
    code, out, _ = run(capsys, "config", "show", "--config", str(QUICKSTART), "rollout.n=16", "trainer.total_steps=3")
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["rollout"]["n"] == 16
    assert shown["trainer"]["total_steps"] == 3
    assert shown["model"]["path"] == "runs/quickstart/tiny-model"       # from the YAML
    assert shown["rollout"]["top_p"] == 1.0                              # from the defaults


def test_config_overrides_may_come_before_config(capsys) -> None:
    code, out, _ = run(capsys, "config", "show", "rollout.n=4", "--config", str(QUICKSTART), "data.prompts_per_step=2")
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["rollout"]["n"] == 4 and shown["data"]["prompts_per_step"] == 2


def test_config_validate_ok(capsys) -> None:
    code, out, err = run(capsys, "config", "validate", "--config", str(QUICKSTART))
    assert code == 0
    assert out.startswith(f"ok: {QUICKSTART} is valid (8 prompts x n=8 per step, 100 steps")
    assert "error" not in err


def test_config_validate_lists_every_problem_on_its_own_line(capsys, tmp_path: Path) -> None:
    code, out, err = run(capsys, "config", "validate", "--config", str(QUICKSTART),
                         "rollout.temprature=0.5", "actor.lr=abc", "trainer.total_steps=ten")
    assert code == EXIT_USAGE
    assert out == ""
    lines = error_lines(err)
    assert len(lines) == 3
    assert "error: rollout.temprature: unknown key; did you mean 'rollout.temperature'?" in lines
    assert any(line.startswith("error: actor.lr: ") for line in lines)
    assert any(line.startswith("error: trainer.total_steps: ") for line in lines)

    code, _, err = run(capsys, "config", "validate", "--config", str(QUICKSTART), "rollout.n=1", "reward.weights=[1]")
    assert code == EXIT_USAGE
    lines = error_lines(err)
    assert [line.split(":")[1].strip() for line in lines] == ["rollout.n", "reward.weights"]


def test_config_validate_missing_and_broken_files(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "config", "validate", "--config", str(tmp_path / "nope.yaml"))
    assert code == EXIT_USAGE
    assert error_lines(err) == [f"error: {tmp_path / 'nope.yaml'}: config file not found "
                                f"(pass --config with an existing YAML file)"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("rollout: {n: 4\n")
    code, _, err = run(capsys, "config", "validate", "--config", str(broken))
    assert code == EXIT_USAGE
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"error: {broken}:2:1: not valid YAML")


def test_config_fields_lists_keys_with_help(capsys) -> None:
    code, out, _ = run(capsys, "config", "fields")
    assert code == 0
    lines = out.splitlines()
    assert "rollout.n = 8" in lines
    index = lines.index("rollout.n = 8")
    assert lines[index + 1].strip() == "Samples per prompt (the GRPO group size)."
    keys = [line.split(" = ")[0] for line in lines if not line.startswith(" ")]
    helps = [line for line in lines if line.startswith("    ")]
    assert len(keys) == len(helps) > 80
    assert all(h.strip() for h in helps)
    assert "algorithm.loss_agg" in keys and "placement.pools" in keys


def test_bad_log_level_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--log-level", "verbose", "config", "fields"])
    assert info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--log-level" in err
    assert main(["--log-level", "warning", "config", "fields"]) == 0


def test_unknown_positional_arguments_are_rejected(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["score", "--reward", "math", "--ground-truth", "1", "--response", "1", "stray"])
    assert info.value.code == EXIT_USAGE
    assert "unrecognized arguments: stray" in capsys.readouterr().err


# ---- score ---------------------------------------------------------------------------------------


def test_score_math(capsys) -> None:
    code, out, _ = run(capsys, "score", "--reward", "math", "--ground-truth", "#### 18",
                       "--response", "<think>x</think><answer>18</answer>")
    assert code == 0
    result = json.loads(out)
    assert result["score"] == 1.0
    assert result["details"] == {"components": {"math": 1.0}, "status": "ok", "error": "", "output": "",
                                 "output_bytes": 0}


def test_score_countdown_with_extra_and_weights(capsys) -> None:
    code, out, _ = run(capsys, "score", "--reward", "countdown", "--weight", "1.0", "--reward", "format",
                       "--weight", "0.5", "--ground-truth", "24", "--extra", '{"numbers": [3, 8, 1]}',
                       "--response", "<think>3 times 8 is 24</think>\n<answer>(3 * 8) * 1</answer>")
    assert code == 0
    result = json.loads(out)
    assert result["details"]["components"]["countdown"] == 1.0
    assert result["score"] == pytest.approx(1.0 + 0.5 * result["details"]["components"]["format"])


def test_score_unknown_reward_suggests_the_name(capsys) -> None:
    code, out, err = run(capsys, "score", "--reward", "maths", "--ground-truth", "1", "--response", "1")
    assert code == EXIT_USAGE
    assert out == ""
    lines = error_lines(err)
    assert len(lines) == 1
    assert "unknown reward function 'maths'" in lines[0] and "Did you mean 'math'?" in lines[0]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [("[1, 2]", "--extra: must be a JSON object"), ("{bad json", "--extra")],
)
def test_score_bad_extra(capsys, extra: str, needle: str) -> None:
    code, _, err = run(capsys, "score", "--reward", "countdown", "--ground-truth", "1", "--response", "1",
                       "--extra", extra)
    assert code == EXIT_USAGE
    lines = error_lines(err)
    assert len(lines) == 1 and needle in lines[0]


def test_score_weights_must_match_rewards(capsys) -> None:
    code, _, err = run(capsys, "score", "--reward", "math", "--reward", "format", "--weight", "1",
                       "--ground-truth", "1", "--response", "1")
    assert code == EXIT_USAGE
    assert error_lines(err) == ["error: --weight: give one --weight per --reward, or none"]


# ---- data ----------------------------------------------------------------------------------------


def test_data_make_then_validate(capsys, tmp_path: Path) -> None:
    out_file = tmp_path / "arith.jsonl"
    code, out, _ = run(capsys, "data", "make", "arithmetic", "--n", "5", "--out", str(out_file), "--digits", "1")
    assert code == 0
    assert out.strip() == f"wrote 5 arithmetic rows to {out_file}"
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 5
    assert all(row["data_source"] == "arithmetic" and row["reward_model"]["ground_truth"] for row in rows)
    code, out, _ = run(capsys, "data", "validate", str(out_file))
    assert code == 0
    assert out.startswith(f"ok: {out_file}: ") and "rows=5" in out


def test_data_validate_names_the_bad_line(capsys, tmp_path: Path) -> None:
    rows = [{"prompt": f"What is {i} + {i}?", "reward_model": {"ground_truth": str(2 * i)},
             "data_source": "arithmetic"} for i in range(5)]
    del rows[2]["reward_model"]["ground_truth"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run(capsys, "data", "validate", str(bad))
    assert code == EXIT_USAGE
    assert out == ""
    lines = error_lines(err)
    assert len(lines) == 1
    assert f"{bad}:3:" in lines[0] and "ground_truth" in lines[0]


def test_data_make_unknown_task(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "data", "make", "arithmatic", "--n", "3", "--out", str(tmp_path / "x.jsonl"))
    assert code == EXIT_USAGE
    lines = error_lines(err)
    assert len(lines) == 1 and "arithmatic" in lines[0]
    assert not (tmp_path / "x.jsonl").exists()


# ---- model ---------------------------------------------------------------------------------------


def test_model_init_tiny_loads_with_transformers(capsys, tmp_path: Path) -> None:
    out_dir = tmp_path / "tiny"
    code, out, _ = run(capsys, "model", "init-tiny", "--out", str(out_dir), "--hidden", "32", "--layers", "1")
    assert code == 0
    assert str(out_dir) in out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out_dir)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    ids = tokenizer("<think>1+1</think>", return_tensors="pt").input_ids
    import torch

    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()


# ---- the installed console script ----------------------------------------------------------------


def _r1ray_script() -> str:
    script = shutil.which("r1ray") or str(Path(sys.executable).with_name("r1ray"))
    assert Path(script).exists(), "the r1ray console script is not installed (pip install -e .)"
    return script


def _run_script(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([_r1ray_script(), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_console_script_validates_the_quickstart() -> None:
    proc = _run_script("config", "validate", "--config", "configs/quickstart.yaml", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: configs/quickstart.yaml is valid")


def test_console_script_missing_data_file_is_one_line(tmp_path: Path) -> None:
    proc = _run_script("data", "validate", "missing.jsonl", cwd=tmp_path)
    assert proc.returncode == EXIT_USAGE
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: missing.jsonl")


def test_score_a_response_longer_than_an_argument_can_be(tmp_path) -> None:
    """The kernel limits one argument to 128 KiB; --response-file (or '-' for stdin) takes any length."""
    import subprocess
    import sys

    response = "<think>" + "step. " * 40_000 + "</think><answer>18</answer>"          # 240 KB
    path = tmp_path / "response.txt"
    path.write_text(response)
    base = [sys.executable, "-m", "r1ray.controller.cli", "score", "--reward", "math", "--ground-truth", "18"]
    from_file = subprocess.run(base + ["--response-file", str(path)], capture_output=True, text=True, timeout=120)
    from_stdin = subprocess.run(base + ["--response-file", "-"], input=response, capture_output=True, text=True,
                                timeout=120)
    for proc in (from_file, from_stdin):
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["score"] == 1.0
    missing = subprocess.run(base + ["--response-file", str(tmp_path / "nope.txt")], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == EXIT_USAGE and error_lines(missing.stderr) == [
        f"error: --response-file {tmp_path / 'nope.txt'}: no such file"]


def test_score_exits_non_zero_when_the_reward_fails(capsys) -> None:
    code, out, err = run(capsys, "score", "--reward", "tests.unit.test_rewards_helpers:behave", "--ground-truth", "1",
                         "--response", "raise")
    assert code == 1 and json.loads(out)["details"]["status"] == "error"
    assert error_lines(err) == ["error: the reward error: tests.unit.test_rewards_helpers:behave: RuntimeError: boom"]


def test_user_errors_print_without_importing_the_training_stack() -> None:
    """The error path names the user-error classes without importing their modules (torch, transformers):
    a bad config is reported as fast as Python starts, not after seconds of imports."""
    import importlib

    from r1ray.controller.cli import USER_ERRORS

    for module, name in USER_ERRORS:
        assert issubclass(getattr(importlib.import_module(module), name), Exception), (module, name)
    code = ("import sys; from r1ray.controller.cli import main; "
            "code = main(['train', '--config', 'configs/quickstart.yaml', 'rollout.n=1']); "
            "print(code, 'torch' in sys.modules, 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["2", "False", "False"], done.stderr[-2000:]
    assert done.stderr.strip().startswith("error: rollout.n:")


def test_score_keeps_what_the_reward_prints_out_of_its_json() -> None:
    """`r1ray score … | jq` works with a reward that prints: stdout is the JSON line alone."""
    done = subprocess.run([sys.executable, "-m", "r1ray.controller.cli", "score", "--reward",
                           "tests.ray.rewards_for_tests:chatty", "--ground-truth", "1", "--response", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    result = json.loads(done.stdout)
    assert result["score"] == 1.0 and result["details"]["output_bytes"] > 1_000_000
    assert result["details"]["output"].endswith("from a child process, the last line\n")
    assert "line 0999" not in done.stderr
