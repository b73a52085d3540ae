"""Softmax focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._functional import NonNegative, Prepared, class_vector, masked_mean
from .registry import register_loss

Alpha = float | Sequence[float] | Tensor | None


def focal_pixels(prep: Prepared, *, gamma: float, alpha: Alpha) -> Tensor:
    """Per-pixel focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` [B,H,W] (Lin et al. eq. 5).

    ``p_t`` is the softmax probability of the true class; ``1 - p_t`` is computed as
    ``-expm1(log p_t)`` so it stays accurate when ``p_t`` is close to 1. Ignored pixels hold
    finite garbage; callers mask them.
    """
    logp = prep.logp_true
    loss = -logp
    if gamma > 0:
        one_minus_p = (-torch.expm1(logp)).clamp_min(torch.finfo(logp.dtype).tiny)
        loss = loss * one_minus_p.pow(gamma)
    if alpha is None:
        return loss
    if isinstance(alpha, int | float):
        return loss * float(alpha)
    return loss * class_vector(alpha, prep.num_classes, prep.logits, "alpha")[prep.target]


@register_loss("focal")
def focal(prep: Prepared, *, gamma: NonNegative = 2.0, alpha: Alpha = None) -> Tensor:
    """True softmax focal loss: mean over kept pixels of ``-alpha_t (1 - p_t)^gamma log p_t``.

    Down-weights well-classified pixels by ``(1 - p_t)^gamma`` (Lin et al. 2017, eq. 5) with
    the multi-class softmax probability ``p_t``, not a one-vs-rest sigmoid. ``gamma = 0`` and
    ``alpha = None`` give exactly cross-entropy.

    Args:
        logits: [B,C,H,W] raw scores.
        target: [B,H,W] class ids.
        gamma: focusing parameter >= 0.
        alpha: None (1 for every class), a float (scales every pixel alike) or a per-class
            list [C] (``alpha_t = alpha[y]``). The mean divides by the pixel count, not by
            the sum of ``alpha_t``.
        ignore_index: label of ignored pixels.

    Returns:
        0-dim float32 tensor; exactly 0 with a zero gradient when every pixel is ignored.

    Example:
        >>> import torch
        >>> logits, target = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
        >>> round(focal(logits, target, gamma=2.0).item(), 4)  # 0.25 * ln 2
        0.1733
    """
    return masked_mean(focal_pixels(prep, gamma=gamma, alpha=alpha), prep.valid)
