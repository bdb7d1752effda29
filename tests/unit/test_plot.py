"""`r1ray plot`: PNG curves from a synthetic metrics.jsonl."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest

from r1ray.controller.plot import add_plot_command, load_metrics, plot_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_FIGURES = {"reward", "eval", "response_length", "kl", "entropy", "behaviour", "overview"}


def _write_metrics(run_dir: Path, steps: int = 6, full: bool = True) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(steps):
        row: dict = {"step": step, "reward/mean": 0.1 * step, "rewards/math/mean": 0.1 * step}
        if full:
            row.update({
                "rewards/format/mean": 0.5, "response_length/mean": 100 + 10 * step, "response_length/max": 300,
                "actor/kl": 0.001 * step, "actor/entropy": 1.0 - 0.05 * step,
                "behaviour/reflection_rate": 0.02 * step, "behaviour/reflection_per_1k_words": 0.3,
                "timing_s/step": 1.5,
            })
            if step % 3 == 0:  # evaluation at step 0 and every 3 steps
                row.update({"eval/pass@1": 0.2 + 0.05 * step, "eval/pass@4": 0.4, "eval/maj@4": 0.3})
        lines.append(json.dumps(row))
    lines.append('{"step": 99, "reward/me')  # a line cut short by a crash
    path = run_dir / "metrics.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _assert_pngs(paths: list[Path], names: set[str], plots_dir: Path) -> None:
    assert {path.stem for path in paths} == names
    for path in paths:
        assert path.parent == plots_dir
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_SIGNATURE)


def test_load_metrics_handles_sparse_keys_and_bad_lines(tmp_path: Path) -> None:
    path = _write_metrics(tmp_path)
    with path.open("a") as f:
        f.write('{"step": 7, "reward/mean": "n/a", "flag": true}\n[1, 2]\n\n')
    series = load_metrics(path)
    assert series["eval/pass@1"][0] == [0, 3]
    assert series["eval/pass@1"][1] == pytest.approx([0.2, 0.35])
    assert series["reward/mean"][0] == [0, 1, 2, 3, 4, 5]
    assert "flag" not in series


def test_plot_run_writes_every_figure_and_an_overview(tmp_path: Path) -> None:
    _write_metrics(tmp_path)
    paths = plot_run(tmp_path)
    _assert_pngs(paths, ALL_FIGURES, tmp_path / "plots")


def test_plot_run_skips_figures_without_metrics(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_metrics(tmp_path, full=False)
    with caplog.at_level(logging.INFO, logger="r1ray.controller.plot"):
        paths = plot_run(tmp_path)
    _assert_pngs(paths, {"reward", "overview"}, tmp_path / "plots")
    assert "no kl metrics" in caplog.text and "figure skipped" in caplog.text


def test_plot_run_plots_each_stage_of_a_pipeline(tmp_path: Path) -> None:
    _write_metrics(tmp_path / "stage1_sft", full=False)
    _write_metrics(tmp_path / "stage2_grpo", full=False)
    (tmp_path / "logs").mkdir()  # a sub-directory without metrics is not a stage
    paths = plot_run(tmp_path)
    assert [path.parent.parent.name for path in paths] == ["stage1_sft"] * 2 + ["stage2_grpo"] * 2
    _assert_pngs(paths[2:], {"reward", "overview"}, tmp_path / "stage2_grpo" / "plots")
    assert not (tmp_path / "plots").exists()


def test_plot_run_without_metrics_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "empty_stage").mkdir()
    for run_dir in (tmp_path, tmp_path / "does_not_exist"):
        with pytest.raises(FileNotFoundError) as info:
            plot_run(run_dir)
        message = str(info.value)
        assert str(run_dir) in message and "metrics.jsonl" in message and "\n" not in message


def test_plot_command_registers_and_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="r1ray")
    add_plot_command(parser.add_subparsers(dest="command", required=True))
    _write_metrics(tmp_path, full=False)
    args = parser.parse_args(["plot", str(tmp_path)])
    assert args.func(args) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "plots" / f) for f in ("reward.png", "overview.png")]
