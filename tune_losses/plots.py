"""PNG plots of a run: the confusion matrix, per-class IoU and the best epoch's predictions
(matplotlib Agg, no pyplot state, so they work in Ray workers and headless CI)."""

from __future__ import annotations

import io
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


# predictions.png: one row per image (image | label | prediction), a legend column at the right
PANEL_INCHES = 2.2
LEGEND_INCHES = 1.6
TITLE_INCHES = 0.5
PREDICTIONS_DPI = 100


def class_palette(num_classes: int, palette: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """uint8 ``[num_classes, 3]`` RGB colours: the dataset's ``palette`` when it has one
    (``classes.json``, the synthetic set), else distinct colours from matplotlib's tab20."""
    if palette is not None:
        colours = np.asarray([tuple(c)[:3] for c in palette], dtype=np.int64)
        if colours.shape != (num_classes, 3) or colours.min() < 0 or colours.max() > 255:
            raise ValueError(
                f"palette must hold {num_classes} RGB colours in [0, 255], "
                f"got shape {colours.shape}"
            )
        return colours.astype(np.uint8)
    from matplotlib import colormaps

    table = colormaps["tab20"].colors
    rgb = [table[(2 * i) % 20 + (2 * i // 20) % 2] for i in range(num_classes)]
    return (np.asarray(rgb, dtype=np.float64).reshape(-1, 3) * 255).round().astype(np.uint8)


def colourise(label: np.ndarray, colours: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """A ``[H,W]`` class-id map as ``[H,W,3]`` RGB; ignored or unknown ids are black."""
    ids = np.asarray(label, dtype=np.int64)
    valid = (ids >= 0) & (ids < len(colours)) & (ids != ignore_index)
    out = np.zeros((*ids.shape, 3), dtype=np.uint8)
    out[valid] = colours[ids[valid]]
    return out


def predictions_png_size(num_images: int) -> tuple[int, int]:
    """(width, height) in pixels of :func:`plot_predictions`' PNG for ``num_images`` rows."""
    width = 3 * PANEL_INCHES + LEGEND_INCHES
    height = num_images * PANEL_INCHES + TITLE_INCHES
    return round(width * PREDICTIONS_DPI), round(height * PREDICTIONS_DPI)


def plot_predictions(
    images: Sequence[Any],
    labels: Sequence[Any],
    predictions: Sequence[Any],
    *,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]] | None = None,
    ignore_index: int = 255,
    title: str = "",
) -> bytes:
    """PNG bytes of validation images beside their labels and predictions, one row each,
    coloured with the dataset's palette (or :func:`class_palette`'s default) and a legend.

    ``images`` are ``[H,W,3]`` (or ``[H,W]``) uint8, ``labels`` and ``predictions``
    ``[H,W]`` class ids (tensors or arrays). The size is fixed by the number of rows
    (:func:`predictions_png_size`), so a picture from any dataset reads the same way.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not (len(images) == len(labels) == len(predictions)) or not images:
        raise ValueError(
            f"need as many images, labels and predictions (>= 1), got "
            f"{len(images)}, {len(labels)}, {len(predictions)}"
        )
    names = [str(n) for n in class_names]
    colours = class_palette(len(names), palette)
    rows = len(images)
    width, height = predictions_png_size(rows)
    fig = Figure(figsize=(width / PREDICTIONS_DPI, height / PREDICTIONS_DPI))
    right = 3 * PANEL_INCHES / (width / PREDICTIONS_DPI)
    grid = fig.add_gridspec(
        rows,
        3,
        left=0.01,
        right=right,
        top=1 - TITLE_INCHES / (height / PREDICTIONS_DPI),
        bottom=0.01,
        wspace=0.04,
        hspace=0.08,
    )
    for row, (image, label, pred) in enumerate(zip(images, labels, predictions, strict=True)):
        panels = (
            np.asarray(image),
            colourise(np.asarray(label), colours, ignore_index),
            colourise(np.asarray(pred), colours, ignore_index),
        )
        for col, panel in enumerate(panels):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(("image", "label", "prediction")[col], fontsize=9)
    handles = [Patch(color=colours[i] / 255.0, label=name) for i, name in enumerate(names)]
    fig.legend(
        handles=handles, loc="upper right", fontsize=7, frameon=False, bbox_to_anchor=(1.0, 0.95)
    )
    if title:
        fig.suptitle(title, fontsize=10)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PREDICTIONS_DPI)
    return buffer.getvalue()
