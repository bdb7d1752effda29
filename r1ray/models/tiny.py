"""Tiny random Qwen2 models for tests and the CPU quickstart, written atomically.

A tiny model directory looks exactly like a downloaded Qwen checkpoint (``config.json``,
``model.safetensors``, ``generation_config.json``, tokenizer files), so every later stage loads it with
``AutoModelForCausalLM`` / ``AutoTokenizer`` like a user's model. It is built in a temporary
directory beside the target and renamed into place, so a reader never sees half a model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from r1ray.models.loading import resolve_dtype
from r1ray.models.tokenizer import EOS_TOKEN, IM_END, build_char_tokenizer

logger = logging.getLogger(__name__)

SPEC_FILE = "r1ray_tiny_model.json"
_REQUIRED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


@dataclass(frozen=True)
class TinyModelSpec:
    """Everything that determines a tiny model's weights; stored beside it in ``SPEC_FILE``."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    max_position_embeddings: int = 1024
    seed: int = 0
    dtype: str = "float32"

    def check(self) -> None:
        """Reject shapes Qwen2 attention cannot use, with the fix in the message."""
        if self.hidden % self.heads:
            raise ValueError(f"tiny model: hidden={self.hidden} must be a multiple of heads={self.heads}")
        if self.heads % self.kv_heads:
            raise ValueError(f"tiny model: heads={self.heads} must be a multiple of kv_heads={self.kv_heads}")
        if (self.hidden // self.heads) % 2:
            raise ValueError(f"tiny model: head size hidden/heads={self.hidden // self.heads} must be even (rotary)")
        resolve_dtype(self.dtype)


def is_complete_model(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a loadable model: config, generation config, tokenizer and weights."""
    root = Path(path)
    if not root.is_dir():
        return False
    has_weights = any((root / name).is_file() for name in _WEIGHT_FILES)
    return has_weights and all((root / name).is_file() for name in _REQUIRED_FILES)


def _read_spec(path: Path) -> dict | None:
    spec_file = path / SPEC_FILE
    if not spec_file.is_file():
        return None
    return json.loads(spec_file.read_text(encoding="utf-8"))


def _write_model(root: Path, spec: TinyModelSpec) -> None:
    """Write tokenizer, config, random weights and generation config of ``spec`` into ``root``."""
    tokenizer = build_char_tokenizer(model_max_length=spec.max_position_embeddings)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        dtype=spec.dtype,
    )
    # A private RNG stream: building a model must not shift the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = Qwen2ForCausalLM(config)
    model.to(resolve_dtype(spec.dtype))
    # Like Qwen2.5-Instruct: stop at <|im_end|> (chat template) as well as at <|endoftext|>.
    model.generation_config = GenerationConfig(
        bos_token_id=eos_id, eos_token_id=[eos_id, im_end_id], pad_token_id=eos_id
    )
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    (root / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n", encoding="utf-8")


def _check_replaceable(out: Path) -> None:
    """Refuse to overwrite a directory that is neither empty nor a tiny model built here."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and _read_spec(out) is None)):
        raise ValueError(
            f"{out} exists and is not a tiny model built by r1ray; remove it or choose another model.path"
        )


def _install(built: Path, out: Path, *, replace: bool) -> None:
    """Rename ``built`` to ``out`` (which may be an empty directory); with ``replace`` an existing ``out`` goes first."""
    if out.exists() and replace:
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(built, out)
    except OSError:
        # Another process (e.g. a second worker on this node) finished first: keep its model.
        if not is_complete_model(out):
            raise
        logger.info("tiny model at %s was built concurrently; keeping that one", out)


def _make_spec(
    *, intermediate: int | None = None, hidden: int = TinyModelSpec.hidden, **rest: object
) -> TinyModelSpec:
    """A spec from ``build_tiny_model`` keyword arguments; ``intermediate`` defaults to 4 * hidden."""
    return TinyModelSpec(hidden=hidden, intermediate=intermediate or 4 * hidden, **rest)  # type: ignore[arg-type]


def _build(out_dir: str | os.PathLike, spec: TinyModelSpec, *, replace: bool) -> Path:
    spec.check()
    out = Path(out_dir).absolute()
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        built = staging / "model"
        built.mkdir()
        _write_model(built, spec)
        _install(built, out, replace=replace)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("built tiny Qwen2 model at %s (%s)", out, spec)
    return out


def build_tiny_model(
    out_dir: str | os.PathLike,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    dtype: str = "float32",
) -> Path:
    """Build (or rebuild) a random tiny Qwen2 model with the character tokenizer at ``out_dir``.

    Weights are a pure function of the arguments (``torch.manual_seed(seed)`` on a private RNG
    stream). ``intermediate`` defaults to ``4 * hidden``. An existing tiny model at ``out_dir`` is
    replaced; any other non-empty directory there is refused with a ValueError.

    Returns:
        The absolute path of the model directory.
    """
    spec = _make_spec(
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        max_position_embeddings=max_position_embeddings,
        seed=seed,
        dtype=dtype,
    )
    return _build(out_dir, spec, replace=True)


def ensure_tiny_model(out_dir: str | os.PathLike, **kwargs: object) -> Path:
    """Return ``out_dir`` if it already holds a complete model, else build it (``build_tiny_model`` kwargs).

    An existing model is never rebuilt or overwritten, even when it was built with other
    arguments (a warning says so): delete the directory to rebuild it.
    """
    spec = _make_spec(**kwargs)
    out = Path(out_dir).absolute()
    if not is_complete_model(out):
        return _build(out, spec, replace=False)
    recorded = _read_spec(out)
    wanted = asdict(spec)
    differing = sorted(k for k in wanted if recorded is not None and recorded.get(k) != wanted[k])
    if differing:
        logger.warning(
            "tiny model at %s was built with %s, not %s; using it as is (delete the directory to rebuild)",
            out, {k: recorded.get(k) for k in differing}, {k: wanted[k] for k in differing},
        )
    return out
