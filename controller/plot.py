"""`r1ray plot RUN_DIR`: PNG training curves from a run's metrics.jsonl.

Reads ``<run_dir>/metrics.jsonl`` (one object per logged step, written by the JSONL tracker) and
draws the curves a reader of the DeepSeek-R1 report looks for: reward, evaluation accuracy,
response length (R1-Zero's growing "thinking time"), KL, entropy and reasoning-behaviour rates, one
PNG each in ``<run_dir>/plots/``, plus ``overview.png`` with all of them. A multi-stage pipeline
writes one run directory per stage (``stage1_sft/``, ``stage2_grpo/``, ...); given their parent,
each stage is plotted into its own ``plots/``.

Metrics logged on only some steps (``eval/*`` every K steps) are drawn at the steps where they
appear. A figure none of whose metrics were logged is skipped, never an error. matplotlib is
imported only when plotting, with the Agg canvas (no display, no pyplot global state).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOTS_DIR = "plots"
OVERVIEW_FILE = "overview.png"
# Few points (evaluation every K steps) are drawn with markers so single points stay visible.
_MARKER_MAX_POINTS = 40
_OVERVIEW_COLUMNS = 3

Series = dict[str, tuple[list[int], list[float]]]


@dataclass(frozen=True)
class FigureSpec:
    """One figure: the exact metric keys it draws, then the keys matching each of ``patterns``
    in turn (pass@k before maj@k), numbers in natural order (pass@2 before pass@16)."""

    name: str
    title: str
    ylabel: str
    keys: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()

    def select(self, available: Any) -> list[str]:
        chosen = [key for key in self.keys if key in available]
        for pattern in self.patterns:
            matched = (key for key in available if re.fullmatch(pattern, key) and key not in chosen)
            chosen.extend(sorted(matched, key=natural_key))
        return chosen


FIGURES = (
    FigureSpec("reward", "Reward", "reward", ("reward/mean",), (r"rewards/[^/]+/mean",)),
    FigureSpec("eval", "Evaluation accuracy", "accuracy", ("eval/pass@1",), (r"eval/pass@\d+", r"eval/maj@\d+")),
    FigureSpec("response_length", "Response length", "tokens", ("response_length/mean", "response_length/max")),
    FigureSpec("kl", "KL to the reference policy", "KL", ("actor/kl",)),
    FigureSpec("entropy", "Policy entropy", "entropy", ("actor/entropy",)),
    FigureSpec("behaviour", "Reasoning behaviours", "fraction of responses", (), (r"behaviour/.+_rate",)),
)


def natural_key(text: str) -> list[Any]:
    """Sort "pass@2" before "pass@16" and "stage2" before "stage10"."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_metrics(path: Path) -> Series:
    """Metric key -> (steps, values), in step order. Lines that are not JSON objects with a
    numeric "step" (a crash can cut the last line short) and non-numeric values are skipped."""
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s:%d: not JSON, skipped", path, number)
            continue
        if not isinstance(row, dict) or not _is_number(row.get("step")):
            logger.warning("%s:%d: no numeric \"step\", skipped", path, number)
            continue
        rows.append((int(row["step"]), row))
    series: Series = {}
    for step, row in sorted(rows, key=lambda item: item[0]):
        for key, value in row.items():
            if key != "step" and _is_number(value):
                steps, values = series.setdefault(key, ([], []))
                steps.append(step)
                values.append(float(value))
    return series


def _draw(ax: "Axes", spec: FigureSpec, keys: list[str], series: Series) -> None:
    for key in keys:
        steps, values = series[key]
        marker = "o" if len(steps) <= _MARKER_MAX_POINTS else None
        ax.plot(steps, values, marker=marker, markersize=3, linewidth=1.2, label=key)
    ax.set_title(spec.title)
    ax.set_xlabel("step")
    ax.set_ylabel(spec.ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def _save(figure: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def _plot_stage(stage_dir: Path) -> list[Path]:
    """Plot one run directory's metrics.jsonl into its plots/; returns the PNGs written."""
    from matplotlib.figure import Figure

    series = load_metrics(stage_dir / METRICS_FILE)
    out_dir = stage_dir / PLOTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    panels: list[tuple[FigureSpec, list[str]]] = []
    written: list[Path] = []
    for spec in FIGURES:
        keys = spec.select(series)
        if not keys:
            logger.info("%s: no %s metrics (%s), figure skipped", stage_dir, spec.name,
                        ", ".join(spec.keys + spec.patterns))
            continue
        panels.append((spec, keys))
        figure = Figure(figsize=(6.4, 4.0))
        _draw(figure.add_subplot(), spec, keys, series)
        written.append(_save(figure, out_dir / f"{spec.name}.png"))
    if not panels:
        logger.warning("%s: nothing to plot in %s", stage_dir, METRICS_FILE)
        return written
    columns = min(_OVERVIEW_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    overview = Figure(figsize=(5.0 * columns, 3.6 * rows))
    for index, (spec, keys) in enumerate(panels, start=1):
        _draw(overview.add_subplot(rows, columns, index), spec, keys, series)
    written.append(_save(overview, out_dir / OVERVIEW_FILE))
    logger.info("%s: wrote %d plots to %s", stage_dir, len(written), out_dir)
    return written


def plot_run(run_dir: Path) -> list[Path]:
    """Write PNG curves for a run (or for each stage of a multi-stage run); returns their paths.

    Raises:
        FileNotFoundError: neither ``run_dir`` nor any of its sub-directories holds metrics.jsonl.
    """
    run_dir = Path(run_dir)
    if (run_dir / METRICS_FILE).is_file():
        return _plot_stage(run_dir)
    stages = []
    if run_dir.is_dir():
        stages = sorted((d for d in run_dir.iterdir() if (d / METRICS_FILE).is_file()),
                        key=lambda d: natural_key(d.name))
    if not stages:
        raise FileNotFoundError(f"no {METRICS_FILE} in {run_dir} nor in any stage sub-directory of it")
    written: list[Path] = []
    for stage in stages:
        written.extend(_plot_stage(stage))
    return written


def _plot_cmd(args: argparse.Namespace) -> int:
    for path in plot_run(Path(args.run_dir)):
        print(path)
    return 0


def add_plot_command(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``r1ray plot RUN_DIR`` on the CLI's sub-command parsers."""
    parser = sub.add_parser("plot", help="draw PNG curves of a run's metrics.jsonl into RUN_DIR/plots")
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="run directory holding metrics.jsonl, or stage sub-directories that do")
    parser.set_defaults(func=_plot_cmd)
    return parser
