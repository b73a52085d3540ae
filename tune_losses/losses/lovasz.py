"""Lovasz-Softmax and Lovasz hinge (Berman, Rannen Triki & Blaschko, CVPR 2018).

The Lovasz extension of the Jaccard loss of a group of pixels (one class over the batch, or
one class of one image) is ``sum_k e_(k) g_k`` with the errors sorted in decreasing order
and ``g_k = J_k - J_{k-1}``, ``J_k = 1 - (G - F_k) / (G + k - F_k)`` where ``G`` counts the
group's foreground pixels and ``F_k`` the foreground pixels among the first ``k`` sorted
errors (paper, Alg. 1 and eq. 9). Every group has the same length, so a single batched
``torch.sort`` along the pixel axis orders all of them at once: no Python loop over classes
or images. Ignored pixels get a sort key of -1, fall behind every kept error and weigh 0.
The extension is piecewise linear, so the gradient with respect to the errors is ``g``
scattered back to the unsorted order; it is built without autograd through the sort.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._functional import ClassSelection, Prepared, class_selection, float32_region, masked_mean
from .registry import register_loss


def lovasz_extension(errors: Tensor, fg: Tensor, valid: Tensor) -> Tensor:
    """Lovasz extension of the Jaccard loss per group, [G] from errors [G,N] >= 0.

    Args:
        errors: [G,N] non-negative errors, differentiable.
        fg: [G,N] bool, foreground pixels of each group (False where ignored).
        valid: bool broadcastable to [G,N], kept pixels.
    """
    groups, n = errors.shape
    count_dtype = errors.dtype if n < 2**24 else torch.float64
    with torch.no_grad():
        key = errors.detach().masked_fill(~valid, -1.0)
        perm = key.sort(dim=1, descending=True).indices
        cum_fg = fg.gather(1, perm).cumsum(dim=1, dtype=count_dtype)
        total_fg = cum_fg[:, -1:].clone()
        inter = cum_fg.neg_().add_(total_fg)
        ranks = torch.arange(1, n + 1, device=errors.device, dtype=count_dtype)
        jac = inter.div_(inter + ranks).neg_().add_(1.0).to(errors.dtype)
        grad = torch.diff(jac, dim=1, prepend=jac.new_zeros(groups, 1))
        weights = key.scatter_(1, perm, grad).masked_fill_(~valid, 0.0)
    return (errors * weights).sum(dim=1)


def _lovasz_softmax(
    prep: Prepared, *, classes: ClassSelection = "present", per_image: bool = False
) -> Tensor:
    """Lovasz-Softmax on a prepared head; see :func:`lovasz_softmax`."""
    b, c, h, w = prep.logits.shape
    device = prep.logits.device
    class_selection(classes, c, device)
    if isinstance(classes, str):
        probs, ids = prep.probs, torch.arange(c, device=device)
    else:
        ids = torch.as_tensor([int(i) for i in classes], device=device)
        probs = prep.probs.index_select(1, ids)
    k = ids.numel()
    if per_image:
        p = probs.reshape(b * k, h * w)
        labels = prep.target.reshape(b, 1, h * w)
        valid = prep.valid.reshape(b, 1, h * w).expand(b, k, h * w).reshape(b * k, h * w)
        fg = (labels == ids.view(1, k, 1)).reshape(b * k, h * w) & valid
    else:
        p = probs.transpose(0, 1).reshape(k, b * h * w)
        valid = prep.valid.reshape(1, b * h * w)
        fg = (prep.target.reshape(1, -1) == ids.view(k, 1)) & valid
    errors = torch.where(fg, 1.0 - p, p)
    losses = lovasz_extension(errors, fg, valid)
    selected = valid.any(dim=1).expand_as(losses)
    if classes == "present":
        selected = selected & fg.any(dim=1)
    if not per_image:
        return masked_mean(losses, selected)
    losses, selected = losses.view(b, k), selected.view(b, k)
    per_image_mean = (losses * selected).sum(1) / selected.sum(1).clamp_min(1)
    return masked_mean(per_image_mean, selected.any(dim=1))


def _lovasz_hinge(prep: Prepared, *, per_image: bool = False) -> Tensor:
    """Binary Lovasz hinge on a prepared head; see :func:`lovasz_hinge`."""
    b, c, h, w = prep.logits.shape
    if c == 1:
        score = prep.logits[:, 0]
    elif c == 2:
        score = prep.logits[:, 1] - prep.logits[:, 0]
    else:
        raise ValueError(f"lovasz_hinge is binary: logits need 1 or 2 channels, got {c}")
    groups = b if per_image else 1
    valid = prep.valid.reshape(groups, -1)
    fg = (prep.target == 1).reshape(groups, -1) & valid
    sign = fg.to(score.dtype) * 2.0 - 1.0
    errors = torch.relu(1.0 - score.reshape(groups, -1) * sign)
    losses = lovasz_extension(errors, fg, valid)
    return masked_mean(losses, valid.any(dim=1))


@register_loss("lovasz", from_prepared=_lovasz_softmax)
def lovasz_softmax(
    logits: Tensor,
    target: Tensor,
    *,
    classes: ClassSelection = "present",
    per_image: bool = False,
    ignore_index: int = 255,
) -> Tensor:
    """Lovasz-Softmax loss on softmax probabilities, errors ``|y_c - p_c|`` per class.

    Args:
        logits: [B,C,H,W] raw scores (softmax is applied here).
        target: [B,H,W] class ids.
        classes: "present" (classes with a kept pixel in the group), "all" or a list of ids.
            As in Berman's reference code, "all" and a list include absent classes, whose
            Jaccard gradient is ``(1, 0, ..., 0)``: their loss is the largest predicted
            probability of that class.
        per_image: loss per image (mean over its selected classes), then mean over images
            that have a kept pixel; otherwise one group per class over the whole batch.
        ignore_index: label of ignored pixels.

    Returns:
        0-dim float32 tensor; 0 with a zero gradient when every pixel is ignored.
    """
    with float32_region(logits):
        return _lovasz_softmax(
            Prepared(logits, target, ignore_index), classes=classes, per_image=per_image
        )


@register_loss("lovasz_hinge", from_prepared=_lovasz_hinge)
def lovasz_hinge(
    logits: Tensor, target: Tensor, *, per_image: bool = False, ignore_index: int = 255
) -> Tensor:
    """Binary Lovasz hinge: Lovasz extension of ``relu(1 - s * (2y - 1))`` (Berman et al. eq. 10).

    Args:
        logits: [B,1,H,W] foreground score, or [B,2,H,W] (score = logit 1 - logit 0).
        target: [B,H,W] with 0 (background), 1 (foreground) or ``ignore_index``.
        per_image: one group per image, mean over images with a kept pixel (Berman's
            reference defaults to True here; this library defaults to False everywhere).
        ignore_index: label of ignored pixels.
    """
    with float32_region(logits):
        return _lovasz_hinge(Prepared(logits, target, ignore_index), per_image=per_image)
