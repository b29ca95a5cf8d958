"""Metrics to CSV and TensorBoard, and the learning-curve plot written at the end of a run.

Each stream (``train``, ``eval``…) is a wide CSV ``<stream>.csv`` in the run directory with a
``step`` column first; TensorBoard receives the same scalars under ``<stream>/<name>``.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

from swfp.runio import atomic_write, atomic_write_text


class MetricLogger:
    """``wall_time`` of each row counts from the run's start: a resumed run passes the seconds its
    earlier sessions spent as ``elapsed``, so the column keeps rising across sessions."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, elapsed: float = 0.0):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.start = time.time() - elapsed
        self._headers: dict[str, list[str]] = {}
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(self.run_dir / "tb"))

    def log(self, stream: str, step: int, metrics: dict[str, float]) -> None:
        row = {"step": int(step), "wall_time": round(time.time() - self.start, 3)}
        row.update({k: float(v) for k, v in metrics.items()})
        path = self.run_dir / f"{stream}.csv"
        header = self._headers.get(stream)
        if header is None and path.exists():
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
        if header is None or set(row) - set(header):
            header = list(dict.fromkeys((header or []) + list(row)))
            self._rewrite_with_header(path, header)
        self._headers[stream] = header
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=header).writerow(row)
        if self._writer is not None:
            for key, value in metrics.items():
                if math.isfinite(float(value)):
                    self._writer.add_scalar(f"{stream}/{key}", float(value), int(step))

    @staticmethod
    def _rewrite_with_header(path: Path, header: list[str]) -> None:
        rows = read_csv(path) if path.exists() else []
        lines = [",".join(header)]
        lines += [",".join(str(r.get(h, "")) for h in header) for r in rows]
        atomic_write_text(path, "\n".join(lines) + "\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_csv(path: Path) -> list[dict[str, float]]:
    """Rows of a metrics CSV as floats (empty cells dropped); a cell that is not a number (a benchmark's
    ``device`` or ``phase``) stays a string."""
    with open(path, newline="") as f:
        return [{k: _cell(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]


def _cell(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def plot_learning_curve(run_dir: Path, panels: list[tuple[str, str]], title: str,
                        reference_lines: dict[str, float] | None = None,
                        out_name: str = "learning_curve.png") -> Path | None:
    """One panel per ``(stream, key)``: ``key`` of ``<stream>.csv`` against ``step``, written to
    ``run_dir/out_name`` (atomically). ``reference_lines`` are drawn on return panels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    panels = [(s, k) for s, k in panels if (run_dir / f"{s}.csv").exists()]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (stream, key) in zip(axes[0], panels):
        pts = [(r["step"], r[key]) for r in read_csv(run_dir / f"{stream}.csv") if key in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=3, label=key)
        if key.startswith("return"):
            for label, value in (reference_lines or {}).items():
                ax.axhline(value, ls="--", color="gray", label=label)
            ax.legend(fontsize=8)
        label_steps(ax, "step")
        ax.set_ylabel(f"{stream} {key}")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, run_dir / out_name)


def label_steps(ax, name: str) -> None:
    """Label a plot's x axis ``name``, its ticks in thousands ("150k"): full counts overlap at 200k."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xlabel(name)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0"))


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as PNG atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)

def make_progress(transient: bool = False):
    """A rich progress bar with rate, elapsed and remaining time, plus a free-text status column.

    Drawn on stderr only when it is a terminal, so CI logs and pipes stay clean.
    """
    import sys

    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    console = Console(stderr=True)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                    console=console, transient=transient, disable=not sys.stderr.isatty())
