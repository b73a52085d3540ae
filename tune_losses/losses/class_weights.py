"""Class weights from label frequencies: the method names (here only) and their formulas."""

from __future__ import annotations

import typing
from typing import Literal

import numpy as np
import torch
from torch import Tensor

WeightMethod = Literal["inverse", "sqrt_inverse", "median_frequency"]
WEIGHT_METHODS: tuple[str, ...] = typing.get_args(WeightMethod)


def class_weights_from_frequencies(freqs: np.ndarray | Tensor, method: WeightMethod) -> Tensor:
    """Per-class loss weights from pixel frequencies (counts or fractions, any scale).

    * ``inverse``: ``w_c = 1 / f_c``.
    * ``sqrt_inverse``: ``w_c = 1 / sqrt(f_c)`` (milder; as in ENet-style and mmseg setups).
    * ``median_frequency``: ``w_c = median(f) / f_c`` (Eigen & Fergus, ICCV 2015), the median
      over classes with ``f_c > 0``.

    Weights are normalised so they average 1 over the classes with ``f_c > 0``. A class of
    frequency 0 gets weight 0: it never occurs as a target, so its weight would only matter
    through label smoothing, where 0 keeps it from dominating.

    Example:
        >>> class_weights_from_frequencies(np.array([3.0, 1.0, 0.0]), "inverse").tolist()
        [0.5, 1.5, 0.0]
    """
    f = torch.as_tensor(np.asarray(freqs, dtype=np.float64)).flatten()
    if f.numel() == 0 or bool((f < 0).any()) or not bool(torch.isfinite(f).all()):
        raise ValueError(f"class frequencies must be finite, non-negative and non-empty: {f}")
    seen = f > 0
    if not bool(seen.any()):
        raise ValueError("every class frequency is 0: cannot derive class weights")
    safe = torch.where(seen, f, torch.ones_like(f))
    if method == "inverse":
        w = 1.0 / safe
    elif method == "sqrt_inverse":
        w = 1.0 / safe.sqrt()
    elif method == "median_frequency":
        w = torch.quantile(f[seen], 0.5) / safe  # the mean of the middle two when even
    else:
        raise ValueError(f"unknown class weight method {method!r}; choose one of {WEIGHT_METHODS}")
    w = torch.where(seen, w, torch.zeros_like(w))
    return (w / w[seen].mean()).to(torch.float32)
