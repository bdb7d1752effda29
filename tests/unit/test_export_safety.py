"""`write_hf_model` (behind `r1ray export` and every stage's model output) replaces only an empty directory or
an earlier r1ray export, never a user's files."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from r1ray.controller.cli import main
from r1ray.models import build_tiny_model
from r1ray.models.export import EXPORT_MARKER, write_hf_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny", hidden=32, layers=1, heads=2, kv_heads=1)


def _weights(model_dir):
    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(model_dir).state_dict().items()}


def test_a_directory_with_other_files_is_refused_and_kept(model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not written by r1ray export; nothing was written"):
        write_hf_model(_weights(model_dir), model_dir, out)
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        write_hf_model(_weights(model_dir), model_dir, tmp_path / "file")


def test_an_empty_directory_or_an_earlier_export_is_replaced(model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    weights = _weights(model_dir)
    write_hf_model(weights, model_dir, out)
    assert (out / EXPORT_MARKER).is_file()
    changed = {k: v + 1.0 for k, v in weights.items()}
    write_hf_model(changed, model_dir, out)                     # a re-run replaces its own output
    loaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert torch.equal(loaded["model.norm.weight"], changed["model.norm.weight"])


def test_export_cli_refuses_before_reading_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["export", str(tmp_path / "no-such-checkpoint"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "not written by r1ray export" in err[0]
    assert (out / "keep.txt").read_text() == "mine"
