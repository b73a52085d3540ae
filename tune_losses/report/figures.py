"""The report's figures: learning curves, importances bar chart, applied loss weights."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from tune_losses.report.importances import Importances
from tune_losses.tracking import CURVE_METRIC, TrialRecord


def plot_curves(trials: Sequence[TrialRecord], path: Path, title: str = "") -> Path | None:
    """``val/mIoU`` per epoch, one line per trial, the first (best) trial highlighted.

    Returns None (and writes nothing) when no trial has a history yet.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    with_curve = [t for t in trials if t.history]
    if not with_curve:
        return None
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    others = [f"C{i}" for i in range(10) if i != 3]  # C3 (red) is the best trial's
    lines = []
    for rank, t in enumerate(with_curve):
        steps = [s for s, _ in t.history]
        vals = [v for _, v in t.history]
        if rank == 0:
            style = {"color": "C3", "lw": 2.5, "marker": "o", "ms": 4, "zorder": 3}
            label = f"{t.name} (best)"
        else:
            style = {"color": others[(rank - 1) % 9], "lw": 1, "marker": ".", "alpha": 0.7}
            label = t.name
        lines.append(ax.plot(steps, vals, label=label, **style)[0])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{CURVE_METRIC} (%)")
    ax.set_title(title or f"{CURVE_METRIC} per trial")
    ax.grid(alpha=0.3)
    ax.legend(handles=lines[:12], fontsize="small", loc="lower right")
    fig.savefig(path, dpi=110)
    return path


def plot_importances(importances: Importances, path: Path) -> Path | None:
    """Horizontal bar chart of the importances, largest on top; None when there are none."""
    from matplotlib.figure import Figure

    if not importances.values:
        return None
    items = sorted(importances.values.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(7, 1.2 + 0.4 * len(items)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color="C0")
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    ax.set_title(
        f"parameter importances ({importances.n_trials} finished trials, "
        f"epoch budget {importances.budget})"
    )
    ax.set_xlim(0, max(1.0, max(v for _, v in items)))
    fig.savefig(path, dpi=110)
    return path


def plot_schedules(
    schedules: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], path: Path, title: str = ""
) -> Path | None:
    """The applied weight of each loss term per epoch, one panel per ``head/term``, one line
    per trial (``{trial: {"decode/dice": [(epoch, weight)]}}``, best trial first, drawn
    red). Shows what a schedule really did; None when no trial logged a weight."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    terms = sorted({term for weights in schedules.values() for term in weights})
    if not terms:
        return None
    cols = min(3, len(terms))
    rows = math.ceil(len(terms) / cols)
    fig = Figure(figsize=(4 * cols, 2.8 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colours = ["C3"] + [f"C{i}" for i in range(10) if i != 3]
    for ax, term in zip(axes, terms, strict=False):
        for rank, (trial, weights) in enumerate(schedules.items()):
            points = weights.get(term)
            if points:
                style = {
                    "lw": 2.5 if rank == 0 else 1.2,
                    "marker": ".",
                    "alpha": 1 if rank == 0 else 0.8,
                }
                ax.plot(
                    [s for s, _ in points],
                    [w for _, w in points],
                    color=colours[rank % 10],
                    label=trial,
                    **style,
                )
        ax.set_title(term, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("weight (epoch mean)")
        ax.grid(alpha=0.3)
    for ax in axes[len(terms) :]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside lower center", ncols=min(5, len(labels)), fontsize="small"
    )
    fig.suptitle(title or "applied loss weights per epoch")
    fig.savefig(path, dpi=110)
    return path
