"""`r1ray submit` without a cluster: the job it builds, what it prints, what it refuses."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from r1ray.controller.cli import main
from r1ray.controller.submit import (DEFAULT_ADDRESS, DEFAULT_EXCLUDES, SubmitError, build_job, cleartext_warning,
                                     refuse_checkout, resolve_address, validate_in_working_dir)

REPO = Path(__file__).resolve().parents[2]
SECRETS = {"WANDB_API_KEY": "wandb-key-0123456789abcdef", "HF_TOKEN": "hf_" + "x" * 30}


@pytest.fixture
def experiment(tmp_path) -> Path:
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "quickstart.yaml", tmp_path / "configs" / "grpo.yaml")
    return tmp_path


def test_the_job_runs_the_config_relative_to_the_uploaded_folder(experiment):
    job = build_job(experiment / "configs" / "grpo.yaml", ["trainer.total_steps=3", "trainer.output_dir=/tmp/a b"],
                    environ={})
    assert job.runtime_env["working_dir"] == str((experiment / "configs").resolve())
    assert shlex.split(job.entrypoint) == ["python", "-m", "r1ray.train", "--config", "grpo.yaml",
                                           "trainer.total_steps=3", "trainer.output_dir=/tmp/a b"]
    assert "env_vars" not in job.runtime_env


def test_an_explicit_working_dir_keeps_the_config_path_inside_it(experiment):
    job = build_job(experiment / "configs" / "grpo.yaml", working_dir=experiment, environ={})
    assert job.runtime_env["working_dir"] == str(experiment.resolve())
    assert "--config configs/grpo.yaml" in job.entrypoint


def test_a_config_outside_the_working_dir_is_refused(experiment, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with pytest.raises(SubmitError, match="outside the working directory"):
        build_job(experiment / "configs" / "grpo.yaml", working_dir=elsewhere, environ={})


def test_outputs_and_weights_stay_out_of_the_upload(experiment):
    excludes = build_job(experiment / "configs" / "grpo.yaml", excludes=["big_data/"], environ={}).runtime_env["excludes"]
    for pattern in ("checkpoints", "runs", ".git", "wandb", "*.safetensors", "big_data/"):
        assert pattern in excludes
    assert set(DEFAULT_EXCLUDES) <= set(excludes)


def test_secrets_come_from_the_environment_and_only_known_or_named_ones(experiment):
    environ = {**SECRETS, "MY_SERVICE_KEY": "s3cr3t", "RAY_AUTH_TOKEN": "cluster-token", "HOME": "/root"}
    job = build_job(experiment / "configs" / "grpo.yaml", environ=environ, forward_env=["MY_SERVICE_KEY"])
    assert job.runtime_env["env_vars"] == {**SECRETS, "MY_SERVICE_KEY": "s3cr3t"}


def test_a_value_on_the_command_line_is_refused(experiment):
    with pytest.raises(SubmitError, match="only the variable's name"):
        build_job(experiment / "configs" / "grpo.yaml", environ={}, forward_env=["WANDB_API_KEY=abc"])


def test_the_printed_job_hides_env_values_but_keeps_settings(experiment):
    environ = {**SECRETS, "WANDB_MODE": "offline", "MY_SERVICE_KEY": "s3cr3t"}
    job = build_job(experiment / "configs" / "grpo.yaml", environ=environ, forward_env=["MY_SERVICE_KEY"])
    shown = json.dumps(job.describe())
    for secret in (*SECRETS.values(), "s3cr3t"):
        assert secret not in shown
    assert job.describe()["runtime_env"]["env_vars"] == {"WANDB_API_KEY": "***", "HF_TOKEN": "***",
                                                         "WANDB_MODE": "offline", "MY_SERVICE_KEY": "***"}
    assert job.runtime_env["env_vars"]["HF_TOKEN"] == SECRETS["HF_TOKEN"]  # the job itself gets the value


def test_address_precedence():
    assert resolve_address("http://a:8265", {"RAY_ADDRESS": "http://b:8265"}) == "http://a:8265"
    assert resolve_address(None, {"RAY_API_SERVER_ADDRESS": "http://c:8265", "RAY_ADDRESS": "http://b:8265"}) \
        == "http://c:8265"
    assert resolve_address(None, {"RAY_ADDRESS": "http://b:8265"}) == "http://b:8265"
    assert resolve_address(None, {}) == DEFAULT_ADDRESS == "http://127.0.0.1:8265"


def test_plain_http_beyond_loopback_is_flagged():
    assert "unencrypted" in cleartext_warning("http://10.0.0.5:8265")
    assert "unencrypted" in cleartext_warning("ray-head.example:8265")
    for safe in ("http://127.0.0.1:8265", "http://localhost:8265", "https://ray.example"):
        assert cleartext_warning(safe) is None


def test_validation_reads_relative_paths_from_the_working_dir(experiment):
    config = experiment / "configs" / "grpo.yaml"
    config.write_text(config.read_text() + "\n# data beside the config\n")
    (experiment / "configs" / "train.jsonl").write_text((REPO / "tests" / "data" / "gsm8k_sample.jsonl").read_text())
    job = build_job(config, ["data.train_files=[train.jsonl]"], environ={})
    validate_in_working_dir(job, ["data.train_files=[train.jsonl]"])  # found although the cwd is elsewhere
    with pytest.raises(ValueError, match="missing.jsonl"):
        validate_in_working_dir(job, ["data.train_files=[missing.jsonl]"])


def test_dry_run_prints_the_redacted_job(experiment, monkeypatch, capsys):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    code = main(["submit", "--config", str(experiment / "configs" / "grpo.yaml"), "--address", "http://127.0.0.1:9",
                 "--dry-run", "trainer.total_steps=3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "python -m r1ray.train --config grpo.yaml trainer.total_steps=3" in out
    assert '"HF_TOKEN": "***"' in out and all(v not in out for v in SECRETS.values())


def test_a_bad_config_fails_before_anything_is_submitted(experiment, capsys):
    code = main(["submit", "--config", str(experiment / "configs" / "grpo.yaml"), "--address", "http://127.0.0.1:9",
                 "trainer.total_stepz=3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "trainer.total_stepz: unknown key; did you mean 'trainer.total_steps'?" in err


def test_an_unreachable_cluster_is_a_one_line_error(experiment, capsys):
    code = main(["submit", "--config", str(experiment / "configs" / "grpo.yaml"), "--address", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the Ray job API at http://127.0.0.1:9" in err


@pytest.mark.parametrize("marker", ["r1ray/__init__.py", "setup.py"])
def test_a_checkout_as_working_dir_is_refused(experiment, marker):
    """Its r1ray/ would come first on the driver's sys.path and hide the installed package."""
    (experiment / marker).parent.mkdir(exist_ok=True)
    (experiment / marker).write_text("")
    with pytest.raises(SubmitError) as err:
        build_job(experiment / "configs" / "grpo.yaml", working_dir=experiment, environ={})
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert f"holds {marker}" in message and "shadow the installed r1ray package" in message
    assert "pass --working-dir configs (or your experiment folder)" in message
    refuse_checkout(experiment / "configs")  # the folder the message points to is fine


def test_submitting_the_repository_root_is_a_one_line_error(capsys):
    code = main(["submit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--working-dir", str(REPO),
                 "--address", "http://127.0.0.1:9", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: --working-dir {REPO} holds r1ray/__init__.py: ") and "Traceback" not in err
