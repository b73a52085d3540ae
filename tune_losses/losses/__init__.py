"""Loss terms for semantic segmentation, their registry and options, and the weighted mix.

Each term is a function ``fn(logits [B,C,H,W], target [B,H,W], *, options,
ignore_index=255) -> 0-dim Tensor`` registered by name (:func:`list_losses`); its options are
checked against its signature. :func:`validate_loss` checks a loss section once and
:class:`LossMix` combines its terms.

Example:
    >>> import torch
    >>> from tune_losses.losses import get_loss
    >>> logits, target = torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)
    >>> round(get_loss("ce")(logits, target).item(), 4)
    1.0986
"""

from __future__ import annotations

from .boundary import boundary, boundary_focal
from .ce import cross_entropy
from .class_weights import WEIGHT_METHODS, class_weights_from_frequencies
from .dice import dice, jaccard, tversky
from .focal import focal
from .lovasz import lovasz_hinge, lovasz_softmax
from .mix import LossMix, LossOutput
from .registry import LOSSES, get_loss, list_losses, register_loss, validate_options
from .spec import WEIGHTINGS, LossSpec, TermSpec, loss_heads, loss_weighting, validate_loss

__all__ = [
    "LOSSES",
    "register_loss",
    "get_loss",
    "list_losses",
    "validate_options",
    "cross_entropy",
    "focal",
    "boundary_focal",
    "lovasz_softmax",
    "lovasz_hinge",
    "dice",
    "jaccard",
    "tversky",
    "boundary",
    "WEIGHT_METHODS",
    "class_weights_from_frequencies",
    "TermSpec",
    "LossSpec",
    "WEIGHTINGS",
    "loss_heads",
    "loss_weighting",
    "validate_loss",
    "LossMix",
    "LossOutput",
]
