"""Turn a GGUF checkpoint into a plain Hugging Face model directory that every r1ray role loads.

transformers reads GGUF files (with the ``gguf`` package) and de-quantizes them to float tensors, but
a model loaded that way refuses ``save_pretrained`` ("quantized with gguf and is not serializable"),
and loading from GGUF takes a de-quantizing pass each time. So the import loads it once, copies the
tensors into a model built from the same config without the quantization entry, and writes that with
its tokenizer (chat template and special tokens included) and generation config. Everything after the
import is ``from_pretrained(DIR)``, exactly as for a user's Qwen or Llama checkpoint.

The directory is written under a temporary name beside ``out`` and renamed at the end, so a killed
import never leaves a directory that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# Written beside the weights: where the directory came from, so a later fetch can say it is already there.
IMPORT_FILE = "r1ray_import.json"


class GGUFImportError(ValueError):
    """A GGUF file that cannot be imported, or an output directory that must not be replaced (one line)."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_import_record(out: str | os.PathLike) -> dict | None:
    """The record an import wrote into ``out``, or None when ``out`` is not a finished import."""
    record = Path(out) / IMPORT_FILE
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _check_out(out: Path, replace: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise GGUFImportError(f"{out} is a file; choose a directory path")
    if any(out.iterdir()) and not replace:
        what = "an earlier import" if read_import_record(out) else "other files"
        raise GGUFImportError(f"{out} already holds {what}; remove it, choose another directory, or pass --replace")


def _load_gguf(gguf: Path):
    """(model, tokenizer) de-quantized to float32 by transformers' GGUF reader."""
    try:
        import gguf as _  # noqa: F401  transformers needs it and raises a long message without it
    except ModuleNotFoundError as exc:
        raise GGUFImportError("importing GGUF needs the gguf package: pip install gguf (or pip install -e \".[gguf]\")") from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GGUFImportError(f"{gguf}: transformers could not read it as a GGUF model ({first})") from exc
    return model, tokenizer


def _plain_copy(model):
    """The same architecture and tensors as ``model``, without the GGUF quantization entry."""
    from transformers import AutoModelForCausalLM

    config = model.config
    config_dict = config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    plain_config = type(config).from_dict(config_dict)
    plain_config.dtype = torch.float32
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(plain_config)
    # assign=True takes the loaded tensors as they are (no second copy of 0.5 GB for a 135M model).
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False, assign=True)
    # Tied heads: lm_head.weight is not in the state dict of a tied model; tie_weights restores it.
    plain.tie_weights()
    missing = [k for k in missing if not (k == "lm_head.weight" and plain_config.tie_word_embeddings)]
    if missing or unexpected:
        raise GGUFImportError(f"the de-quantized tensors do not fit {type(plain).__name__}: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    plain.generation_config = model.generation_config
    return plain.eval()


def import_gguf(
    gguf_file: str | os.PathLike,
    out: str | os.PathLike,
    *,
    replace: bool = False,
    license_file: str | os.PathLike | None = None,
    source: str = "",
) -> Path:
    """Write the model in ``gguf_file`` as a Hugging Face directory at ``out``.

    Args:
        gguf_file: a ``.gguf`` file transformers can read (Llama, Qwen2, Mistral, ... architectures).
        out: the directory to write; it must be absent or empty unless ``replace``.
        replace: overwrite an existing ``out``.
        license_file: copied into ``out`` as ``LICENSE`` (the checkpoint's licence travels with it).
        source: a word on where the file came from, kept in ``r1ray_import.json``.

    Returns:
        The absolute path of the finished directory.
    """
    gguf = Path(gguf_file).absolute()
    if not gguf.is_file():
        raise GGUFImportError(f"{gguf_file}: no such file; give the path of a .gguf file")
    out_path = Path(out).absolute()
    _check_out(out_path, replace)
    model, tokenizer = _load_gguf(gguf)
    plain = _plain_copy(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.tmp-", dir=out_path.parent))
    try:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if license_file is not None:
            shutil.copyfile(license_file, staging / "LICENSE")
        record = {"gguf_file": gguf.name, "sha256": sha256_of(gguf), "source": source,
                  "architecture": type(plain).__name__,
                  "parameters": sum(p.numel() for p in plain.parameters())}
        (staging / IMPORT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        # mkdtemp makes the directory private (0700); a model directory is read by every worker's user.
        staging.chmod(0o755)
        for written in staging.iterdir():
            written.chmod(0o644)
        if out_path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.old-", dir=out_path.parent))
            os.replace(out_path, old / "model")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, out_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("imported %s into %s (%s, %d parameters)", gguf.name, out_path, record["architecture"],
                record["parameters"])
    return out_path
