"""Tiny random Qwen2 models: saved/reloaded identically, built atomically, ensure_tiny_model idempotent."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

from r1ray.models import (
    SPEC_FILE,
    build_tiny_model,
    ensure_tiny_model,
    is_complete_model,
    load_model_and_tokenizer,
    resolve_dtype,
)

SMALL = {"hidden": 32, "layers": 2, "heads": 4, "kv_heads": 2}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", **SMALL)


def test_layout_and_config(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert config["tie_word_embeddings"] is True
    assert config["vocab_size"] == 263
    assert config["eos_token_id"] == config["pad_token_id"] == config["bos_token_id"] == 0
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [0, 2]


def test_reload_gives_identical_logits(model_dir):
    model, tokenizer = load_model_and_tokenizer(model_dir)
    assert model.config.vocab_size == len(tokenizer)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    again = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer.encode("What is 1 + 2? <think>")])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_same_seed_same_weights_and_caller_rng_untouched(tmp_path, model_dir):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    rebuilt = build_tiny_model(tmp_path / "again", **SMALL)
    assert torch.equal(torch.rand(1), expected_next)
    assert (rebuilt / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    other = build_tiny_model(tmp_path / "other", seed=1, **SMALL)
    assert (other / "model.safetensors").read_bytes() != (model_dir / "model.safetensors").read_bytes()


def test_build_leaves_no_temporary_directories(tmp_path):
    build_tiny_model(tmp_path / "m", **SMALL)
    build_tiny_model(tmp_path / "m", **SMALL)  # rebuild in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert is_complete_model(tmp_path / "m")


def test_bad_shape_rejected(tmp_path):
    with pytest.raises(ValueError, match="multiple of heads"):
        build_tiny_model(tmp_path / "bad", hidden=30, heads=4, kv_heads=2)
    assert list(tmp_path.iterdir()) == []


def test_build_failing_half_way_leaves_old_model_and_no_partial_dir(tmp_path, monkeypatch):
    path = build_tiny_model(tmp_path / "m", **SMALL)
    weights = (path / "model.safetensors").read_bytes()

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    # Weights are already written when the tokenizer save fails.
    monkeypatch.setattr(Qwen2Tokenizer, "save_pretrained", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        build_tiny_model(tmp_path / "m", seed=5, **SMALL)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_tiny_model(tmp_path / "fresh", **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert (path / "model.safetensors").read_bytes() == weights


def test_ensure_is_idempotent(tmp_path, caplog):
    path = ensure_tiny_model(tmp_path / "m", **SMALL)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(tmp_path / "m", **SMALL) == path
    assert ensure_tiny_model(tmp_path / "m", **{**SMALL, "hidden": 64}) == path
    assert "delete the directory to rebuild" in caplog.text
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((path / SPEC_FILE).read_text())["hidden"] == 32


def test_ensure_refuses_foreign_directory(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a tiny model built by r1ray"):
        ensure_tiny_model(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_ensure_fills_an_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    assert is_complete_model(ensure_tiny_model(tmp_path / "empty", **SMALL))


def test_bfloat16_build(tmp_path):
    model, _ = load_model_and_tokenizer(build_tiny_model(tmp_path / "bf", dtype="bfloat16", **SMALL), dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8")
