"""Tests of ``tune_losses.data``: synthetic set, loaders, file formats, validation, stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tune_losses.config import DataConfig
from tune_losses.data import DatasetInfo, build_datasets, build_loaders, synthetic

# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_by_seed() -> None:
    a_img, a_mask = synthetic.make_split(0, "train", 4)
    b_img, b_mask = synthetic.make_split(0, "train", 4)
    c_img, c_mask = synthetic.make_split(1, "train", 4)
    assert all(np.array_equal(x, y) for x, y in zip(a_img, b_img, strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(a_mask, b_mask, strict=True))
    assert not np.array_equal(a_img[0], c_img[0])
    assert not np.array_equal(a_mask[0], c_mask[0])
    v_img, _ = synthetic.make_split(0, "val", 1)
    assert not np.array_equal(a_img[0], v_img[0])


def test_synthetic_imbalanced_with_thin_class() -> None:
    _, masks = synthetic.make_split(0, "train", 48)
    stack = np.stack(masks)
    freq = np.bincount(stack.ravel(), minlength=5) / stack.size
    assert freq.min() > 0  # every class present
    assert freq.max() / freq.min() > 20  # strong imbalance
    line = synthetic.class_names(5).index("line")
    # a thin class: most of its pixels have a non-line 4-neighbour
    m = stack == line
    inner = m[:, 1:-1, 1:-1] & m[:, :-2, 1:-1] & m[:, 2:, 1:-1] & m[:, 1:-1, :-2] & m[:, 1:-1, 2:]
    assert inner.sum() < 0.5 * m[:, 1:-1, 1:-1].sum()


def test_synthetic_loaders_shapes_and_info() -> None:
    cfg = DataConfig()
    train, val, info = build_loaders(cfg)
    assert isinstance(info, DatasetInfo)
    assert info.num_classes == 5 and info.class_names[0] == "background"
    assert info.class_frequencies.dtype == np.float64
    assert info.class_frequencies.sum() == pytest.approx(1.0)
    images, masks = next(iter(train))
    assert images.shape == (8, 3, 64, 64) and images.dtype == torch.float32
    assert masks.shape == (8, 64, 64) and masks.dtype == torch.int64
    assert len(train) == 48 // 8 and len(val) == 2
    vi, vm = next(iter(val))
    assert vi.shape == (8, 3, 64, 64)
    assert set(vm.unique().tolist()) <= set(range(5))


def test_loaders_deterministic_by_seed() -> None:
    def epoch(seed: int) -> list[torch.Tensor]:
        train, _, _ = build_loaders(DataConfig(), seed=seed)
        return [m for _, m in train]

    a, b, c = epoch(3), epoch(3), epoch(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_synthetic_generates_fast() -> None:
    import time

    t0 = time.perf_counter()
    build_datasets(DataConfig())
    assert time.perf_counter() - t0 < 1.0
