"""Lovasz-Softmax and Lovasz hinge (Berman, Rannen Triki & Blaschko, CVPR 2018).

The Lovasz extension of the Jaccard loss of a group of pixels (one class over the batch, or
one class of one image) is ``sum_k e_(k) g_k`` with the errors sorted in decreasing order
and ``g_k = J_k - J_{k-1}``, ``J_k = 1 - (G - F_k) / (G + k - F_k)`` where ``G`` counts the
group's foreground pixels and ``F_k`` the foreground pixels among the first ``k`` sorted
errors (paper, Alg. 1 and eq. 9). Every group has the same length, so a single batched
``torch.sort`` along the pixel axis orders all of them at once: no Python loop over classes
or images. Ignored pixels get a sort key of -1, fall behind every kept error and weigh 0.
The extension is piecewise linear, so the gradient with respect to the errors is ``g``
scattered back to the unsorted order; it is built in place without autograd through the
sort, which keeps the memory to the errors, the sort indices and one [G,N] buffer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._functional import ClassSelection, Prepared, class_selection, float32_region, masked_mean
from .registry import register_loss


def lovasz_weights(key: Tensor, fg: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient of the Lovasz extension w.r.t. each error, in the unsorted order.

    Args:
        key: [G,N] contiguous errors, -1 at ignored pixels; overwritten (its storage holds
            the result), no autograd.
        fg: [G,N] bool foreground of each group (False at ignored pixels).
        valid: bool broadcastable to [G,N], kept pixels.

    Returns:
        ``(w, fg_sum)``: ``w`` [G,N] with ``loss_g = sum_i w_gi e_gi`` (0 at ignored pixels)
        and ``fg_sum`` [G] ``= sum_i w_gi fg_gi``.
    """
    n = key.shape[1]
    count_dtype = key.dtype if n < 2**24 else torch.float64
    perm = torch.empty(key.shape, dtype=torch.long, device=key.device)
    torch.sort(key, dim=1, descending=True, out=(key, perm))
    fg_sorted = fg.gather(1, perm)
    cum = fg_sorted.cumsum(dim=1, dtype=count_dtype)
    total = cum[:, -1:].clone()
    inter = cum.neg_().add_(total)  # G - F_k: foreground not yet among the first k
    ranks = torch.arange(1, n + 1, device=key.device, dtype=count_dtype)
    jac = inter.div_(inter + ranks).neg_().add_(1.0).to(key.dtype)  # J_k
    grad = torch.empty_like(jac)
    grad[:, :1] = jac[:, :1]
    torch.sub(jac[:, 1:], jac[:, :-1], out=grad[:, 1:])
    del jac, inter, cum
    weights = key.scatter_(1, perm, grad).masked_fill_(~valid, 0.0)
    fg_sum = torch.where(fg, weights, 0.0).sum(dim=1)
    return weights, fg_sum


def _lovasz_softmax(
    prep: Prepared, *, classes: ClassSelection = "present", per_image: bool = False
) -> Tensor:
    """Lovasz-Softmax on a prepared head; see :func:`lovasz_softmax`.

    With errors ``|y - p|`` the loss of a group is ``sum_i w_i p_i (1 - 2 y_i) + sum_i w_i
    y_i``: only ``w (1 - 2 y)`` is kept for the backward pass.
    """
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
        p = probs.reshape(b, k, h * w).transpose(0, 1)
        valid = prep.valid.reshape(1, b * h * w)
        fg = (prep.target.reshape(1, -1) == ids.view(k, 1)) & valid
    with torch.no_grad():
        key = p.detach().clone(memory_format=torch.contiguous_format).view(fg.shape)
        key.sub_(fg.to(key.dtype)).abs_().masked_fill_(~valid, -1.0)
        signed, fg_sum = lovasz_weights(key, fg, valid)
        signed.mul_(fg.to(key.dtype).mul_(-2.0).add_(1.0))
    losses = (p * signed.view(p.shape)).sum(dim=tuple(range(1, p.dim()))) + fg_sum
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
    with torch.no_grad():
        weights, _ = lovasz_weights(errors.detach().masked_fill(~valid, -1.0), fg, valid)
    losses = (errors * weights).sum(dim=1)
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
