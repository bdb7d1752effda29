"""Everything a run needs before workers start: the model on disk, the data files, the prompt datasets."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from r1ray.config import R1RayConfig
from r1ray.config_checks import prompt_style
from r1ray.data import ColumnMap, PromptDataset, PromptItem, load_rows, make_task
from r1ray.models import ensure_tiny_model, load_tokenizer
from r1ray.protocol import PromptBatch
from r1ray.workers.placement import Placement

from r1ray.controller.ray_cluster import connect_for

logger = logging.getLogger(__name__)


def prepare_files(cfg: R1RayConfig) -> R1RayConfig:
    """Build the tiny model and generate task data when the config asks for them; returns the config with
    the generated file paths filled in (so checkpoints record what was really used)."""
    out = Path(cfg.trainer.output_dir)
    m = cfg.model
    if m.init_tiny:
        ensure_tiny_model(m.path, hidden=m.tiny_hidden, layers=m.tiny_layers,
                          max_position_embeddings=m.tiny_max_length, seed=cfg.trainer.seed)
    if m.fetch:
        from r1ray.models.fetch import fetch_model, is_fetched

        if not is_fetched(m.fetch, m.path):
            fetch_model(m.fetch, m.path)
    data = cfg.data
    if not data.train_files and data.generate.task:
        g = data.generate
        knobs = _task_knobs(g.task, g)
        train = make_task(g.task, g.train_size, out / "data" / "train.jsonl", seed=g.seed, **knobs)
        files = {"train_files": [str(train)]}
        if g.val_size and not data.val_files:
            # A different seed keeps held-out prompts out of the training draw (up to chance collisions).
            val = make_task(g.task, g.val_size, out / "data" / "val.jsonl", seed=g.seed + 1_000_003, **knobs)
            files["val_files"] = [str(val)]
        levels = _generate_levels(cfg, out, knobs)
        if levels:
            files["curriculum"] = replace(data.curriculum, level_files=levels)
        cfg = replace(cfg, data=replace(data, **files))
    return cfg


def _generate_levels(cfg: R1RayConfig, out: Path, knobs: dict) -> list[list[str]]:
    """One generated training file per curriculum difficulty (the task's digits or n_people knob)."""
    g, cur = cfg.data.generate, cfg.data.curriculum
    if not cur.generate_difficulties:
        return []
    knob = "digits" if "digits" in knobs else "n_people"
    return [[str(make_task(g.task, g.train_size, out / "data" / f"train_level{i}.jsonl", seed=g.seed + i,
                           **{**knobs, knob: difficulty}))]
            for i, difficulty in enumerate(cur.generate_difficulties)]


def _task_knobs(task: str, g) -> dict:
    from r1ray.data import get_task

    accepted = get_task(task).knobs()
    wanted = {"digits": g.digits, "n_people": g.n_people, "operations": g.operations}
    return {k: v for k, v in wanted.items() if k in accepted}


def column_map(cfg: R1RayConfig) -> ColumnMap:
    d = cfg.data
    return ColumnMap(prompt=d.prompt_key, ground_truth=d.ground_truth_key, data_source=d.data_source_key,
                     extra_info=d.extra_info_key)


@dataclass
class Datasets:
    train: PromptDataset
    val: PromptDataset | None
    levels: list[PromptDataset]       # curriculum levels, easiest first ([train] without a curriculum)


def build_datasets(cfg: R1RayConfig) -> Datasets:
    tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    columns = column_map(cfg)
    limit = cfg.rollout.max_prompt_length
    style = prompt_style(cfg.data)
    train = PromptDataset(load_rows(cfg.data.train_files, columns), tokenizer, style, limit)
    val = None
    if cfg.data.val_files:
        rows = load_rows(cfg.data.val_files, columns)
        if cfg.data.val_max_prompts:
            rows = rows[:cfg.data.val_max_prompts]
        val = PromptDataset(rows, tokenizer, style, limit)
    levels = [PromptDataset(load_rows(files, columns), tokenizer, style, limit)
              for files in cfg.data.curriculum.level_files] or [train]
    logger.info("data: %d training prompts (%d dropped as too long), %s held-out, %d level(s)", len(train),
                train.n_dropped, len(val) if val else "no", len(levels))
    return Datasets(train, val, levels)


def start_inference_run(cfg: R1RayConfig, placement: Placement | None) -> tuple[R1RayConfig, Placement, Datasets]:
    """What `r1ray eval` and `r1ray sample` do before their workers start: output dir, generated files,
    the Ray connection sized for the placement, and the prompt datasets."""
    Path(cfg.trainer.output_dir).mkdir(parents=True, exist_ok=True)
    cfg = prepare_files(cfg)
    placement = placement or Placement.from_config(cfg.placement)
    connect_for(cfg.ray, placement)
    return cfg, placement, build_datasets(cfg)


def prompt_batch(items: list[PromptItem]) -> PromptBatch:
    return PromptBatch(
        prompt_ids=[it.prompt_ids for it in items],
        ground_truths=[it.row.ground_truth for it in items],
        data_sources=[it.row.data_source for it in items],
        extra_infos=[dict(it.row.extra_info) for it in items],
        indices=[it.row.index for it in items])
