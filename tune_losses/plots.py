"""PNG plots of a run's metrics: the confusion matrix and per-class IoU (matplotlib Agg,
no pyplot state, so they work in Ray workers and headless CI)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor


def _check_names(n: int, class_names: Sequence[str], what: str) -> list[str]:
    names = [str(x) for x in class_names]
    if len(names) != n:
        raise ValueError(f"{what} has {n} classes but {len(names)} class names were given")
    return names


def _save(fig: Any, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, format="png", dpi=100, bbox_inches="tight")
    return out


def plot_confusion_matrix(
    confmat: Tensor | np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    *,
    normalize: bool = True,
) -> Path:
    """Write the confusion matrix as a PNG heat map (rows = true, columns = predicted).

    With ``normalize`` each row is divided by its sum, so a cell reads "share of
    the pixels of this true class predicted as that class" (empty rows stay 0).
    Uses a bare Agg canvas: no pyplot state, no display needed.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure

    cm = confmat.detach().cpu().numpy() if isinstance(confmat, Tensor) else np.asarray(confmat)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confmat must be a square [C, C] matrix, got shape {cm.shape}")
    names = _check_names(cm.shape[0], class_names, "confmat")
    cm = cm.astype(np.float64)
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(names)
    size = max(4.0, 0.5 * n + 2.0)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    if n <= 25:
        top = cm.max() if cm.size else 0.0
        for i in range(n):
            for j in range(n):
                text = f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                dark = top > 0 and cm[i, j] > 0.5 * top
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
    return _save(fig, path)


def plot_per_class_iou(iou: Sequence[float], class_names: Sequence[str], path: str | Path) -> Path:
    """Write per-class IoU (percent) as a horizontal bar chart PNG.

    ``nan`` entries (classes excluded from the mean) are drawn as "n/a" with no bar.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure

    values = np.asarray([float(x) for x in iou], dtype=np.float64)
    names = _check_names(len(values), class_names, "iou")
    n = len(names)
    fig = Figure(figsize=(6.0, max(2.0, 0.35 * n + 1.0)))
    ax = fig.add_subplot()
    ax.barh(range(n), np.nan_to_num(values, nan=0.0), color="tab:blue")
    ax.set_yticks(range(n), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    finite = values[np.isfinite(values)]
    title = f"per-class IoU, mean {finite.mean():.1f}%" if finite.size else "per-class IoU"
    ax.set_title(title)
    for i, v in enumerate(values):
        ax.text(
            1 if np.isnan(v) else v + 1,
            i,
            "n/a" if np.isnan(v) else f"{v:.1f}",
            va="center",
            fontsize=8,
        )
    return _save(fig, path)
