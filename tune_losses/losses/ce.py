"""Cross-entropy with class weights, label smoothing and OHEM pixel selection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from annotated_types import Ge, Interval
from torch import Tensor

from ._functional import Prepared, class_vector
from .registry import register_loss


def _ohem_keep(prep: Prepared, thresh: float, min_kept: int) -> Tensor:
    """Online hard example mining mask [B,H,W] (Shrivastava et al. 2016; mmseg's pixel sampler).

    Keeps the valid pixels whose true-class probability is below ``thresh``; if fewer than
    ``min_kept`` are, keeps the ``min_kept`` hardest ones instead (ties may keep a few more).
    Selection is by value and carries no gradient.
    """
    with torch.no_grad():
        p_true = prep.logp_true.exp().masked_fill(~prep.valid, 2.0)
        keep = prep.valid & (p_true < thresh)
        if min_kept > 0:
            flat = p_true.flatten()
            k = min(min_kept, flat.numel())
            kth = flat.kthvalue(k).values
            keep |= prep.valid & (p_true <= kth)
    return keep


PerClassWeight = Sequence[float] | Tensor | None
Probability = Annotated[float, Interval(ge=0.0, le=1.0)]


@register_loss("ce")
def cross_entropy(
    prep: Prepared,
    *,
    weight: PerClassWeight = None,
    label_smoothing: Probability = 0.0,
    ohem_thresh: Annotated[float, Interval(gt=0.0, le=1.0)] | None = None,
    ohem_min_kept: Annotated[int, Ge(0)] = 0,
) -> Tensor:
    """Softmax cross-entropy, mean over kept pixels; same value as ``F.cross_entropy``.

    ``loss = sum_i w_{y_i} [(1-eps) (-log p_{i,y_i}) + eps/C sum_c w_c/w_{y_i} (-log p_{i,c})]
    / sum_i w_{y_i}`` with label smoothing ``eps`` (Szegedy et al. 2016), exactly torch's
    convention for class weights with smoothing. With ``ohem_thresh`` only the hard pixels
    (true-class probability below it, at least ``ohem_min_kept`` of them) are kept.

    Args:
        logits: [B,C,H,W] raw scores.
        target: [B,H,W] class ids.
        weight: per-class weights [C], or None.
        label_smoothing: eps in [0, 1].
        ohem_thresh: probability threshold in (0, 1] for OHEM, or None to keep every valid
            pixel.
        ohem_min_kept: least number of pixels OHEM keeps (over the whole batch), >= 0.
        ignore_index: label of ignored pixels.

    Returns:
        0-dim float32 tensor; exactly 0 (finite zero gradient) when no pixel is kept, where
        torch returns NaN.

    Example:
        >>> import torch
        >>> logits, target = torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
        >>> round(cross_entropy(logits, target).item(), 4)
        1.0986
    """
    keep = prep.valid if ohem_thresh is None else _ohem_keep(prep, ohem_thresh, ohem_min_kept)
    keepf = keep.to(prep.logits.dtype)
    nll = -prep.logp_true
    if weight is None:
        pixel_w = keepf
    else:
        w = class_vector(weight, prep.num_classes, prep.logits, "weight")
        pixel_w = w[prep.target] * keepf
    loss_sum = (nll * pixel_w).sum()
    if label_smoothing > 0:
        # torch's convention: the smoothing part weights each class c by w_c inside the sum.
        if weight is None:
            smooth = -prep.log_probs.mean(dim=1)
        else:
            smooth = -torch.einsum("bchw,c->bhw", prep.log_probs, w) / prep.num_classes
        loss_sum = (1.0 - label_smoothing) * loss_sum + label_smoothing * (smooth * keepf).sum()
    denom = pixel_w.sum()
    return loss_sum / torch.where(denom > 0, denom, torch.ones_like(denom))
