"""Secure defaults: secrets redacted wherever a config is logged or saved; a warning for an open dashboard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1ray.config_load import load_config
from r1ray.config_load import config_to_dict
from r1ray.controller.ray_cluster import LOOPBACK, dashboard_exposure_warning
from r1ray.controller.redact import REDACTED, redact, redact_env, redact_text

REPO = Path(__file__).resolve().parents[2]
HF = "hf_" + "A1b2" * 8
OPENAI = "sk-" + "z9" * 15
GITHUB = "ghp_" + "Q" * 36


def test_secret_keys_are_redacted_at_any_depth_and_counts_of_tokens_are_not():
    tree = {"wandb": {"api_key": "abc", "apiKey": "abc", "WANDB_API_KEY": "abc"},
            "env": [{"HF_TOKEN": "abc"}, {"RAY_AUTH_TOKEN": "abc"}, {"client_secret": "abc", "password": "abc"}],
            "actor": {"micro_batch_tokens": 8192}, "model": {"tokenizer": "gpt2"}, "empty": {"api_key": ""}}
    out = redact(tree)
    assert "abc" not in json.dumps(out)
    assert out["actor"]["micro_batch_tokens"] == 8192 and out["model"]["tokenizer"] == "gpt2"
    assert out["empty"]["api_key"] == ""  # nothing to hide, and '***' would suggest a key was set
    assert tree["wandb"]["api_key"] == "abc"  # a copy: the caller's config is untouched


@pytest.mark.parametrize("text, hidden", [
    (f"token is {HF} ok", HF), (f"key={OPENAI}", OPENAI), (f"push with {GITHUB}", GITHUB),
    ("Authorization: Bearer abcdef0123456789", "abcdef0123456789"),
    ("https://alice:hunter2@pypi.example/simple", "hunter2"),
])
def test_secret_looking_text_is_redacted_whatever_the_key(text, hidden):
    assert hidden not in redact_text(text) and REDACTED in redact_text(text)
    assert hidden not in json.dumps(redact({"anything": text, "nested": [text]}))


def test_ordinary_values_are_left_alone():
    for text in ("Qwen/Qwen2.5-7B", "runs/quickstart", "hf_hub_offline", "https://pypi.org/simple", "sk-learn"):
        assert redact_text(text) == text


def test_env_values_are_hidden_unless_listed_as_settings():
    env = {"WANDB_MODE": "offline", "WANDB_BASE_URL": "https://me:pw@wandb.example", "HF_TOKEN": HF, "CUSTOM": "x"}
    shown = redact_env(env, visible=["WANDB_MODE", "WANDB_BASE_URL", "HF_TOKEN"])
    assert shown == {"WANDB_MODE": "offline", "WANDB_BASE_URL": "https://me:***@wandb.example",
                     "HF_TOKEN": REDACTED, "CUSTOM": REDACTED}


def test_a_saved_config_has_credentials_in_urls_redacted():
    """What the trainer logs and saves beside checkpoints is redact(config_to_dict(cfg))."""
    url = "https://alice:s3cret-pass@data.example/train.jsonl"
    cfg = load_config(REPO / "configs" / "quickstart.yaml", [f"data.train_files=[{url}]"])
    saved = json.dumps(redact(config_to_dict(cfg)))
    assert "s3cret-pass" not in saved and "https://alice:***@data.example/train.jsonl" in saved


def test_exposed_dashboard_without_token_warns_and_safe_setups_do_not():
    warning = dashboard_exposure_warning(True, "0.0.0.0", token_auth=False)
    assert warning and "0.0.0.0" in warning and "RAY_AUTH_MODE=token" in warning
    assert dashboard_exposure_warning(True, "0.0.0.0", token_auth=True) is None
    assert dashboard_exposure_warning(False, "0.0.0.0", token_auth=False) is None
    for host in LOOPBACK:
        assert dashboard_exposure_warning(True, host, token_auth=False) is None


def test_the_default_config_keeps_the_dashboard_on_loopback():
    cfg = load_config(REPO / "configs" / "quickstart.yaml")
    assert cfg.ray.dashboard is False and cfg.ray.dashboard_host in LOOPBACK


@pytest.mark.parametrize("mode, expected", [("token", True), ("disabled", False)])
def test_token_auth_is_read_from_ray(mode, expected, tmp_path):
    """Ray caches its auth mode per process, so each mode is checked in a fresh interpreter."""
    env = {**os.environ, "RAY_AUTH_MODE": mode, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}
    (tmp_path / "token").write_text("0" * 64)
    code = "from r1ray.controller.ray_cluster import token_auth_enabled; print(token_auth_enabled())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(expected)
