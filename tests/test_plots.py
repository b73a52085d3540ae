from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from tune_losses.plots import plot_confusion_matrix, plot_per_class_iou


def test_plot_confusion_matrix_writes_png(tmp_path: Path) -> None:
    confmat = torch.tensor([[5, 1, 0], [2, 7, 1], [0, 0, 4]])
    out = plot_confusion_matrix(confmat, ["road", "car", "sky"], tmp_path / "a" / "cm.png")
    assert out == tmp_path / "a" / "cm.png"
    assert matplotlib.image.imread(out).ndim == 3
    raw = plot_confusion_matrix(
        np.eye(2, dtype=int), ["a", "b"], tmp_path / "raw.png", normalize=False
    )
    assert matplotlib.image.imread(raw).shape[0] > 10
    with pytest.raises(ValueError, match="class names"):
        plot_confusion_matrix(confmat, ["road"], tmp_path / "bad.png")


def test_plot_per_class_iou_writes_png(tmp_path: Path) -> None:
    out = plot_per_class_iou([80.0, float("nan"), 12.5], ["a", "b", "c"], str(tmp_path / "i.png"))
    assert isinstance(out, Path) and matplotlib.image.imread(out).ndim == 3
    with pytest.raises(ValueError, match="class names"):
        plot_per_class_iou([1.0], ["a", "b"], tmp_path / "bad.png")
