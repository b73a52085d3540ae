"""Lovasz-Softmax and Lovasz hinge (Berman, Rannen Triki & Blaschko, CVPR 2018).

The Lovasz extension of the Jaccard loss of a group of pixels (one class over the batch, or
one class of one image) is ``sum_k e_(k) g_k`` with the errors sorted in decreasing order
and ``g_k = J_k - J_{k-1}``, ``J_k = 1 - (G - F_k) / (G + k - F_k)`` where ``G`` counts the
group's foreground pixels and ``F_k`` the foreground pixels among the first ``k`` sorted
errors (paper, Alg. 1 and eq. 9). Every group has the same length, so a single batched
``torch.sort`` along the pixel axis orders all of them at once: no Python loop over classes
or images. Ignored pixels get a sort key of -1, fall behind every kept error and weigh 0.
The extension is piecewise linear, so its gradient with respect to the errors is ``g``
scattered back to the unsorted order (paper, eq. 9 and Alg. 1); it is built without autograd
through the sort.

Sorting is the cost. The groups are sorted group-major, errors decreasing inside a group;
ignored pixels go last in their group, where ``g`` is exactly 0 (once every kept pixel is
among the first ``k``, the foreground not yet seen is 0, so ``J_k = 1`` stays flat). For
float32 errors the order comes from one ascending sort of a packed int64 key
``group << 32 | rank-bits of the error << 1 | foreground``: non-negative IEEE floats order
like their bit patterns, a 1-D integer key takes torch's radix sort on CPU (about 2.5x
faster than a batched float sort of the same errors), and the sorted keys carry the
foreground flags, so no gather by the permutation is needed. The radix sort needs 32 bytes
per element, so Lovasz-Softmax sorts its classes in ``_SORT_BLOCKS`` blocks (a fixed number
of sorts, each over several classes and all images, not a loop per class); smaller blocks
also stay closer to the cache. Other dtypes (float64, for ``gradcheck``) use two stable
sorts (by error, then by group).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._functional import ClassSelection, Prepared, class_selection, masked_mean
from .registry import register_loss

_INF_BITS = 0x7F800000  # bit pattern of float32 +inf: every finite error >= 0 is below it
_ONE_BITS = 0x3F800000  # bit pattern of 1.0: softmax errors |y - p| are at most 1
# The radix sort holds 32 bytes per element (keys, indices and a copy of both): sorting the
# classes in this many blocks keeps that within about twice the size of the probabilities.
_SORT_BLOCKS = 4


def _sort_groups(
    errors: Tensor, fg: Tensor, invalid: Tensor, group: Tensor, n_groups: int, at_most_one: bool
) -> tuple[Tensor, Tensor]:
    """Sort the errors group-major, decreasing inside each group, ignored pixels last.

    Args:
        errors: float errors, any contiguous shape; >= 0 where kept (any value where ignored).
        fg: int32 foreground (0/1) of the shape of ``errors``, 0 where ignored; for float32
            errors its storage is reused for the key (overwritten).
        invalid: bool ignored mask, broadcastable to ``errors``.
        group: int64 group id per element (broadcastable), ``n_groups`` groups of equal size.
        at_most_one: every error is in [0, 1] (softmax errors): error rank and foreground
            then fit in 31 bits.

    Returns:
        ``(perm, fg_sorted)``: ``perm`` [G*N] flat positions in ``errors`` in sorted order,
        ``fg_sorted`` [G,N] the foreground flags in that order (0/1, integer).
    """
    if errors.dtype != torch.float32:
        masked = errors.masked_fill(invalid, -1.0).reshape(-1)
        order = torch.sort(masked, descending=True, stable=True).indices
        groups = group.expand(errors.shape).reshape(-1)[order]
        order = order[torch.sort(groups, stable=True).indices]
        return order, fg.reshape(-1)[order].view(n_groups, -1)
    bits = errors.view(torch.int32)
    key = torch.empty(errors.shape, dtype=torch.int64, device=errors.device)
    if at_most_one:
        # 2 (bits(1.0) - bits) + fg < 2^31 - 1, in place in fg; ignored pixels: 2^31 - 2.
        low = fg.sub_(bits, alpha=2).add_(2 * _ONE_BITS)
        low.bitwise_or_(invalid.to(torch.int32).mul_(0x7FFFFFFE))
        key.copy_(low)
        del low
    else:  # any float32 error >= 0: 2 (bits(inf) - bits) + fg needs 32 bits
        key.copy_(bits).mul_(-2).add_(fg).add_(2 * _INF_BITS)
        key.add_(invalid.to(torch.int64) << 32)
        group = group * 2
    key = key.add_(group << 32).view(-1)  # torch.sort takes a radix sort for 1-D int64
    perm = torch.empty_like(key)
    torch.sort(key, out=(key, perm))
    return perm, key.bitwise_and_(1).view(n_groups, -1)


def lovasz_gradient(fg_sorted: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``g_k = J_k - J_{k-1}`` per group from the sorted foreground flags [G,N] (eq. 9).

    ``J_k = 1 - (G - F_k) / (G - F_k + k)``; counts are exact in float32 below 2^24 pixels
    per group, float64 above. Returns ``(g, G)``: [G,N] in ``dtype`` and the foreground
    count [G] of each group.
    """
    n = fg_sorted.shape[1]
    count_dtype = dtype if n < 2**24 or dtype == torch.float64 else torch.float64
    cum = fg_sorted.cumsum(dim=1, dtype=count_dtype)
    total = cum[:, -1:].clone()
    inter = torch.sub(total, cum, out=cum)  # G - F_k: foreground not yet among the first k
    ranks = torch.arange(1, n + 1, device=cum.device, dtype=count_dtype)
    grad = torch.add(inter, ranks)
    ratio = inter.div_(grad)  # 1 - J_k
    torch.sub(ratio[:, :-1], ratio[:, 1:], out=grad[:, 1:])
    torch.sub(1.0, ratio[:, :1], out=grad[:, :1])
    return grad.to(dtype), total.squeeze(1)


def _lovasz_weights(
    errors: Tensor, fg: Tensor, invalid: Tensor, group: Tensor, n_groups: int, at_most_one: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sorted-order Lovasz gradient of every group, with what is needed to scatter it back.

    Returns ``(perm, grad, fg_sorted, fg_count)``: see :func:`_sort_groups` and
    :func:`lovasz_gradient`.
    """
    perm, fg_sorted = _sort_groups(errors, fg, invalid, group, n_groups, at_most_one)
    grad, fg_count = lovasz_gradient(fg_sorted, errors.dtype)
    return perm, grad, fg_sorted, fg_count


class _GroupDot(torch.autograd.Function):
    """``out[b,g] = sum_n p[b,g,n] w[b,g,n]`` (summed over b too unless ``per_image``).

    ``w`` is a constant (no gradient): ``dL/dp = w * dL/dout`` broadcast over pixels. Saves
    only ``w``; the product is never stored.
    """

    @staticmethod
    def forward(ctx, p: Tensor, w: Tensor, per_image: bool) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(w)
        ctx.per_image = per_image
        out = torch.linalg.vecdot(p, w)
        return out if per_image else out.sum(0)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (w,) = ctx.saved_tensors
        scale = grad_out.unsqueeze(-1) if ctx.per_image else grad_out.view(1, -1, 1)
        return w * scale, None, None


@register_loss("lovasz")
def lovasz_softmax(
    prep: Prepared, *, classes: ClassSelection = "present", per_image: bool = False
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
    p = probs.reshape(b, k, h * w)
    invalid = ~prep.valid.reshape(b, 1, h * w)
    # Same-dtype comparisons (float and int32 one-hot) vectorise; bool outputs do not.
    labels = prep.target.reshape(b, 1, h * w).masked_fill(invalid, -1).int()
    labels_f = labels.to(p.dtype)
    signed = torch.empty_like(p)
    fg_sum = p.new_empty(b, k) if per_image else p.new_empty(k)
    fg_count = torch.empty_like(fg_sum)
    step = -(-k // _SORT_BLOCKS)
    with torch.no_grad():
        for start in range(0, k, step):
            block = slice(start, min(k, start + step))
            block_ids = ids[block].view(1, -1, 1)
            kb = block_ids.shape[1]
            n_groups = b * kb if per_image else kb
            group = torch.arange(n_groups, device=device).view(-1 if per_image else 1, kb, 1)
            shape = (b, kb, h * w)
            fg = torch.eq(labels, block_ids.int(), out=p.new_empty(shape, dtype=torch.int32))
            errors = torch.eq(labels_f, block_ids.to(p.dtype), out=p.new_empty(shape))
            errors = torch.sub(p[:, block], errors, out=errors).abs_()
            perm, grad, fg_sorted, count = _lovasz_weights(
                errors, fg, invalid, group, n_groups, True
            )
            del fg
            fg_part = torch.mul(grad, fg_sorted)
            fg_sum[..., block] = fg_part.sum(dim=1).view(-1, kb).squeeze(0)
            fg_count[..., block] = count.view(-1, kb).squeeze(0)
            grad.sub_(fg_part, alpha=2.0)  # w (1 - 2 y), still in sorted order
            del fg_part, fg_sorted
            signed[:, block] = errors.view(-1).scatter_(0, perm, grad.view(-1)).view(shape)
            del perm, grad, errors
    losses = (_GroupDot.apply(p, signed, per_image) + fg_sum).reshape(-1)
    has_fg = fg_count.reshape(-1) > 0
    if per_image:
        kept = prep.valid.reshape(b, h * w).any(dim=1)
        selected = kept.view(b, 1).expand(b, k).reshape(-1)
    else:
        selected = prep.valid.any().expand(k)
    if classes == "present":
        selected = selected & has_fg
    if not per_image:
        return masked_mean(losses, selected)
    losses, selected = losses.view(b, k), selected.view(b, k)
    per_image_mean = (losses * selected).sum(1) / selected.sum(1).clamp_min(1)
    return masked_mean(per_image_mean, selected.any(dim=1))


@register_loss("lovasz_hinge")
def lovasz_hinge(prep: Prepared, *, per_image: bool = False) -> Tensor:
    """Binary Lovasz hinge: Lovasz extension of ``relu(1 - s * (2y - 1))`` (Berman et al. eq. 10).

    Args:
        logits: [B,1,H,W] foreground score, or [B,2,H,W] (score = logit 1 - logit 0).
        target: [B,H,W] with 0 (background), 1 (foreground) or ``ignore_index``.
        per_image: one group per image, mean over images with a kept pixel (Berman's
            reference defaults to True here; this library defaults to False everywhere).
        ignore_index: label of ignored pixels.
    """
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
    group = torch.arange(groups, device=errors.device).view(groups, 1)
    with torch.no_grad():
        detached = errors.detach().contiguous()
        fg_int = fg.to(torch.int32)
        perm, grad, _, _ = _lovasz_weights(detached, fg_int, ~valid, group, groups, False)
        del fg_int
        weights = torch.empty_like(detached).view(-1).scatter_(0, perm, grad.view(-1))
    losses = (errors * weights.view(errors.shape)).sum(dim=1)
    return masked_mean(losses, valid.any(dim=1))
