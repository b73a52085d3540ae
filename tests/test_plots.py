from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from tune_losses.plots import (
    class_palette,
    colourise,
    plot_confusion_matrix,
    plot_per_class_iou,
    plot_predictions,
    predictions_png_size,
)


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


def test_class_palette_uses_the_dataset_colours_or_a_distinct_default() -> None:
    given = class_palette(2, [(1, 2, 3), (250, 0, 9)])
    assert given.tolist() == [[1, 2, 3], [250, 0, 9]]
    default = class_palette(12)
    assert default.shape == (12, 3) and default.dtype == np.uint8
    assert len({tuple(c) for c in default.tolist()}) == 12
    with pytest.raises(ValueError, match="3 RGB colours"):
        class_palette(3, [(0, 0, 0)])


def test_colourise_paints_ignored_pixels_black() -> None:
    colours = class_palette(2, [(10, 20, 30), (40, 50, 60)])
    rgb = colourise(np.array([[0, 1], [255, 7]]), colours, ignore_index=255)
    assert rgb.tolist() == [[[10, 20, 30], [40, 50, 60]], [[0, 0, 0], [0, 0, 0]]]


def test_plot_predictions_is_a_png_of_the_announced_size(tmp_path: Path) -> None:
    images = [np.zeros((20, 30, 3), np.uint8), torch.zeros(16, 16, 3, dtype=torch.uint8)]
    labels = [np.zeros((20, 30), np.int64), torch.ones(16, 16, dtype=torch.int64)]
    png = plot_predictions(images, labels, labels, class_names=["a", "b"], title="best")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "p.png").write_bytes(png)
    height, width = matplotlib.image.imread(tmp_path / "p.png").shape[:2]
    assert (width, height) == predictions_png_size(2)
    with pytest.raises(ValueError, match="as many images"):
        plot_predictions(images, labels[:1], labels, class_names=["a", "b"])
