"""The plots of a run, drawn with matplotlib on a bare Agg canvas (no pyplot global state) and
written atomically:

    plot_accuracy_by_steps   accuracy vs number of reasoning steps, with interval bands (eval)
    plot_training_curves     a training run's loss, validation loss and accuracy by step (loss.png)
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_accuracy_by_steps(series: dict[str, dict[int, tuple[float, float, float]]], path,
                           title: str = "accuracy by number of reasoning steps",
                           train_max_steps: int | None = None, ylabel: str = "accuracy") -> str:
    """Line plot of accuracy vs n_steps, one line per series, with a shaded interval band.

    series: {"cot": {1: (acc, lo, hi), 2: (...), ...}, "direct": {...}}, e.g. the output of
    bootstrap_ci / wilson_interval per step-count bucket. If train_max_steps is given, a dashed
    vertical line is drawn between train_max_steps and train_max_steps + 1: everything to its
    right has more steps than any training example (out of distribution).

    The PNG is written atomically (temporary file in the same directory, then os.replace),
    so a crash or a concurrent reader never sees a half-written image. Returns the path.
    We draw on a bare Agg-canvas Figure rather than pyplot, so no global backend state changes.
    """
    if not series:
        raise ValueError("nothing to plot: series is empty")

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, points in series.items():
        steps = sorted(points)
        acc, lo, hi = (np.array([points[s][j] for s in steps], dtype=float) for j in range(3))
        (line,) = ax.plot(steps, acc, marker="o", label=name)
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    if train_max_steps is not None:
        ax.axvline(train_max_steps + 0.5, color="gray", linestyle="--", linewidth=1,
                   label=f"trained on ≤ {train_max_steps} steps")
    ax.set_xlabel("number of reasoning steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(-0.02, 1.02)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save_png(fig, path)


def plot_training_curves(records: list[dict], path, title: str = "training") -> str:
    """loss.png of a training run: its metrics.jsonl records ({step, loss, val_loss?,
    val_accuracy?, ...}). Left: training and validation loss per supervised token (log scale);
    right, when the run measured it: validation accuracy. Written atomically; returns the path."""
    curves = {key: sorted((r["step"], r[key]) for r in records if r.get(key) is not None)
              for key in ("loss", "val_loss", "val_accuracy")}
    if not curves["loss"] and not curves["val_loss"]:
        raise ValueError("nothing to plot: no loss or val_loss in the records")
    fig = Figure(figsize=(11, 4) if curves["val_accuracy"] else (7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if curves["val_accuracy"] else 1, 1)
    for key, label, style in (("loss", "training loss", "-"), ("val_loss", "validation loss", "o-")):
        if curves[key]:
            steps, values = zip(*curves[key])
            ax.plot(steps, values, style, label=label, markersize=4)
    if all(v > 0 for key in ("loss", "val_loss") for _, v in curves[key]):
        ax.set_yscale("log")  # losses fall by orders of magnitude on the tiny task
    ax.set_xlabel("step")
    ax.set_ylabel("loss per supervised token")
    ax.set_title(f"{title}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if curves["val_accuracy"]:
        acc = fig.add_subplot(1, 2, 2)
        steps, values = zip(*curves["val_accuracy"])
        acc.plot(steps, values, "o-", color="tab:green", markersize=4)
        acc.set_ylim(-0.02, 1.02)
        acc.set_xlabel("step")
        acc.set_ylabel("validation accuracy (greedy, final answer)")
        acc.set_title(f"{title}: validation accuracy")
        acc.grid(alpha=0.3)
    fig.tight_layout()
    return _save_png(fig, path)


def _save_png(fig, path) -> str:
    """Write fig as a PNG through a temporary file in the same directory, then os.replace."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a plot should be readable like any output
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
