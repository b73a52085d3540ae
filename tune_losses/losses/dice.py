"""Soft overlap losses over the batch: Dice, Jaccard (soft IoU) and Tversky.

All three read the same per-class soft counts over every kept pixel of the batch,
``I_c = sum p_c y_c``, ``P_c = sum p_c`` and ``Y_c = sum y_c`` (``p`` softmax probabilities,
``y`` one-hot label), so in a :class:`~tune_losses.losses.mix.LossMix` they cost one pass.

How a class counts (``classes``):
    * ``"present"`` (default): mean over the classes with at least one labelled pixel in the
      batch. A batch with no kept pixel gives exactly 0.
    * ``"all"``: mean over every class. An absent class (``Y_c = 0``) scores
      ``1 - s / (P_c + s)``: with ``smooth = 0`` that is a constant 1 with no gradient, with
      ``smooth > 0`` it pulls the predicted mass ``P_c`` of the absent class towards 0.
    * a list of ids: mean over those classes, absent ones counted as for ``"all"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from ._functional import ClassSelection, NonNegative, Prepared, class_selection, masked_mean
from .registry import register_loss

_EPS = 1e-12


def _overlap_loss(
    prep: Prepared,
    score: Callable[[Tensor, Tensor, Tensor], Tensor],
    classes: ClassSelection,
) -> Tensor:
    """Mean over selected classes of ``1 - score(I, P, Y)``."""
    inter, pred, label = prep.soft_counts
    selected = class_selection(classes, prep.num_classes, inter.device)
    if classes == "present":
        selected = selected & (label > 0)
    selected = selected & (prep.n_valid > 0)
    return masked_mean(1.0 - score(inter, pred, label), selected)


@register_loss("dice")
def dice(
    prep: Prepared, *, smooth: NonNegative = 0.0, classes: ClassSelection = "present"
) -> Tensor:
    """Soft Dice loss per class over the batch, ``1 - (2 I + s) / (P + Y + s)``, class mean.

    Milletari et al., "V-Net", 3DV 2016 (soft Dice coefficient). See the module docstring
    for ``classes`` and absent classes; ``smooth`` is ``s`` >= 0.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[[[9.0]], [[-9.0]]]])
        >>> dice(logits, torch.zeros(1, 1, 1, dtype=torch.long)).item() < 1e-3
        True
    """

    def score(i: Tensor, p: Tensor, y: Tensor) -> Tensor:
        return (2.0 * i + smooth) / (p + y + smooth).clamp_min(_EPS)

    return _overlap_loss(prep, score, classes)


@register_loss("jaccard")
def jaccard(
    prep: Prepared, *, smooth: NonNegative = 0.0, classes: ClassSelection = "present"
) -> Tensor:
    """Soft Jaccard (IoU) loss per class over the batch, ``1 - (I + s) / (P + Y - I + s)``.

    Rahman & Wang, "Optimizing Intersection-over-Union in Deep Neural Networks for Image
    Segmentation", ISVC 2016. See the module docstring for ``classes``.
    """

    def score(i: Tensor, p: Tensor, y: Tensor) -> Tensor:
        return (i + smooth) / (p + y - i + smooth).clamp_min(_EPS)

    return _overlap_loss(prep, score, classes)


def _alpha_or_beta(options: Any) -> None:
    """Tversky needs some weight on FP or FN: ``alpha + beta > 0``."""
    if options.alpha + options.beta == 0:
        raise ValueError("alpha and beta must not both be 0")


@register_loss("tversky", check=_alpha_or_beta)
def tversky(
    prep: Prepared,
    *,
    alpha: NonNegative = 0.5,
    beta: NonNegative = 0.5,
    smooth: NonNegative = 0.0,
    classes: ClassSelection = "present",
) -> Tensor:
    """Tversky loss ``1 - (I + s) / (I + alpha FP + beta FN + s)``, class mean over the batch.

    Salehi et al., "Tversky loss function for image segmentation using 3D fully
    convolutional deep networks", MLMI 2017: soft ``FP = P - I`` weighted by ``alpha``,
    soft ``FN = Y - I`` by ``beta`` (both >= 0, not both 0); ``alpha = beta = 0.5`` is Dice,
    ``1, 1`` is Jaccard.
    """

    def score(i: Tensor, p: Tensor, y: Tensor) -> Tensor:
        denom = i + alpha * (p - i) + beta * (y - i) + smooth
        return (i + smooth) / denom.clamp_min(_EPS)

    return _overlap_loss(prep, score, classes)
