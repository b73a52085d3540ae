"""Boundary terms: Sobel edge BCE, and focal loss up-weighted on label boundaries.

Both use the same edge operator (:func:`~tune_losses.losses.sobel.sobel_magnitude`):
per class the Sobel gradient with replicate padding (so the image border is not an edge),
edge strength ``clamp(sum_c |G_c| / 8, 0, 1)``; a straight boundary of a one-hot label scores
1. A pixel whose 3x3 stencil touches an ignored pixel is left out, so the border of an
ignored region is never an edge.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._functional import NonNegative, Prepared, masked_mean
from .focal import Alpha, focal_pixels
from .registry import register_loss
from .sobel import sobel_magnitude

_EPS = 1e-6


@register_loss("boundary")
def boundary(prep: Prepared) -> Tensor:
    """BCE between the Sobel edge map of the softmax probabilities and that of the label.

    ``mean_i -[t_i log e_i + (1 - t_i) log(1 - e_i)]`` over kept pixels, ``e`` the edge
    strength of the softmax probabilities, ``t`` that of the one-hot label (same operator,
    see the module docstring). A Sobel-based boundary term in the spirit of the edge losses
    of Gated-SCNN (Takikawa et al., ICCV 2019) without the extra shape stream.

    Args:
        logits: [B,C,H,W] raw scores.
        target: [B,H,W] class ids.
        ignore_index: label of ignored pixels.

    Returns:
        0-dim float32 tensor; 0 with a zero gradient when no pixel is kept.
    """
    pred = sobel_magnitude(prep.probs).clamp(_EPS, 1.0 - _EPS)
    edge = prep.label_edges
    bce = -(edge * torch.log(pred) + (1.0 - edge) * torch.log1p(-pred))
    return masked_mean(bce, prep.edge_kept)


@register_loss("boundary_focal")
def boundary_focal(
    prep: Prepared, *, gamma: NonNegative = 2.0, alpha: Alpha = None, edge_weight: NonNegative = 1.0
) -> Tensor:
    """Focal loss weighted up on label boundaries: mean of ``focal_i (1 + edge_weight t_i)``.

    ``focal_i = -alpha_t (1 - p_t)^gamma log p_t`` (Lin et al. 2017) and ``t_i`` in [0, 1] the
    Sobel edge strength of the label (no gradient). ``edge_weight = 0`` is plain focal. The
    mean divides by the number of kept pixels.

    Args:
        logits: [B,C,H,W] raw scores.
        target: [B,H,W] class ids.
        gamma: focusing parameter >= 0.
        alpha: None, a float or a per-class list, as for :func:`~tune_losses.losses.focal`.
        edge_weight: extra weight of a full-strength boundary pixel, >= 0.
        ignore_index: label of ignored pixels.
    """
    edge = prep.label_edges * prep.edge_kept.to(prep.logits.dtype)
    pixels = focal_pixels(prep, gamma=gamma, alpha=alpha) * (1.0 + edge_weight * edge)
    return masked_mean(pixels, prep.valid)
