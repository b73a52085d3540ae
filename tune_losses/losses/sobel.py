"""Sobel edge strength of class-probability and one-hot label maps, with an analytic backward.

Per channel the Sobel gradient (G_x, G_y) is taken with replicate padding, so the image border
is not an edge; the edge strength of a pixel is ``clamp(sum_c |G_c|_2 / 8, 0, 1)``. The kernel
runs block by block in a few reused scratch buffers (the working set stays in cache) and keeps
no [B,C,H,W] intermediate for backward. The boundary terms (:mod:`.boundary`) use it.
"""

from __future__ import annotations

import torch
from torch import Tensor

_SOBEL_CHUNK = 1 << 18  # elements per block: a few [k,H,W] scratch buffers stay in L2


def _sobel_x(padded: Tensor, diff: Tensor, out: Tensor) -> Tensor:
    """Sobel G_x of ``padded`` [k,h+2,w+2] into ``out`` [k,h,w]; ``diff`` [k,h+2,w] is scratch.

    The kernel is separable: the horizontal difference [-1, 0, 1], then the vertical
    smoothing [1, 2, 1] (correlation, as ``F.conv2d`` with ``[[-1,0,1],[-2,0,2],[-1,0,1]]``).
    """
    torch.sub(padded[..., 2:], padded[..., :-2], out=diff)
    torch.add(diff[..., :-2, :], diff[..., 2:, :], out=out)
    return out.add_(diff[..., 1:-1, :], alpha=2.0)


def _sobel_y(padded: Tensor, diff: Tensor, out: Tensor) -> Tensor:
    """Sobel G_y (the transposed kernel) of ``padded`` [k,h+2,w+2]; ``diff`` [k,h,w+2]."""
    torch.sub(padded[..., 2:, :], padded[..., :-2, :], out=diff)
    torch.add(diff[..., :-2], diff[..., 2:], out=out)
    return out.add_(diff[..., 1:-1], alpha=2.0)


def _sobel_blocks(b: int, c: int, h: int, w: int) -> tuple[int, list[tuple[slice, slice]]]:
    """Blocks (images, classes) of about ``_SOBEL_CHUNK`` elements, and the most planes in one.

    A block is either whole images (all classes) or some classes of one image, so that its
    slice of a contiguous [B,C,H,W] tensor is a contiguous stack of [H,W] planes.
    """
    per_image = c * h * w
    if per_image <= _SOBEL_CHUNK:
        n = min(b, _SOBEL_CHUNK // per_image)
        return n * c, [(slice(i, min(b, i + n)), slice(0, c)) for i in range(0, b, n)]
    step = max(1, _SOBEL_CHUNK // (h * w))
    starts = range(0, c, step)
    return step, [(slice(i, i + 1), slice(j, min(c, j + step))) for i in range(b) for j in starts]


class _SobelScratch:
    """Per-call scratch buffers for the Sobel gradients of one block of ``planes`` planes.

    Reusing them across blocks keeps the working set in cache and avoids one fresh
    allocation (page faults) per intermediate.
    """

    def __init__(self, like: Tensor, planes: int, h: int, w: int) -> None:
        self.padded = like.new_empty(planes, h + 2, w + 2)
        self.diff_x = like.new_empty(planes, h + 2, w)
        self.diff_y = like.new_empty(planes, h, w + 2)
        self.gx = like.new_empty(planes, h, w)
        self.gy = like.new_empty(planes, h, w)

    def gradients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(G_x, G_y) of planes x [k,h,w] with replicate padding, in the scratch buffers."""
        k = x.shape[0]
        padded = self.padded[:k]
        padded[:, 1:-1, 1:-1] = x
        padded[:, 0, 1:-1] = x[:, 0]
        padded[:, -1, 1:-1] = x[:, -1]
        padded[:, :, 0] = padded[:, :, 1]
        padded[:, :, -1] = padded[:, :, -2]
        return self.gradients_padded(padded)

    def gradients_padded(self, padded: Tensor) -> tuple[Tensor, Tensor]:
        """(G_x, G_y) of already padded planes [k,h+2,w+2], in the scratch buffers."""
        k = padded.shape[0]
        gx = _sobel_x(padded, self.diff_x[:k], self.gx[:k])
        gy = _sobel_y(padded, self.diff_y[:k], self.gy[:k])
        return gx, gy


def _magnitude_sum(
    gx: Tensor, gy: Tensor, n: int, out: Tensor, first: bool, mostly_zero: bool = False
) -> None:
    """Add ``sum_c |G_c|`` of a block of n images to ``out`` [n,h,w]; overwrites gx and gy.

    ``mostly_zero``: most magnitudes are exactly 0 (a one-hot label), where the vectorised
    sqrt takes a slow path (about 4x on this CPU); they are taken as ``sqrt(0 + 1) - 1``.
    """
    h, w = out.shape[-2:]
    square = gx.mul_(gx).addcmul_(gy, gy)
    if mostly_zero:
        zero = torch.eq(square, 0.0, out=gy)
        mag = square.add_(zero).sqrt_().sub_(zero).view(n, -1, h, w)
    else:
        mag = square.sqrt_().view(n, -1, h, w)
    if first:
        torch.sum(mag, 1, out=out)
    else:
        out += mag.sum(1)


def _sobel_sum(x: Tensor) -> Tensor:
    """``sum_c |G_c|_2`` [B,H,W] over the channels of x [B,C,H,W], no autograd."""
    b, c, h, w = x.shape
    planes, blocks = _sobel_blocks(b, c, h, w)
    scratch = _SobelScratch(x, planes, h, w)
    out = x.new_empty(b, h, w)
    for images, classes in blocks:
        part = x[images, classes]
        n, k = part.shape[:2]
        gx, gy = scratch.gradients(part.reshape(n * k, h, w))
        _magnitude_sum(gx, gy, n, out[images], classes.start == 0)
    return out


def _label_sobel_sum(padded_label: Tensor, num_classes: int) -> Tensor:
    """``sum_c |G_c|_2`` [B,H,W] of the one-hot of a replicate-padded label [B,H+2,W+2].

    The padded label holds class ids as floats and -1 at ignored pixels (all-zero one-hot);
    one-hot and replicate padding commute, so each block of the padded one-hot is one
    comparison written straight into the Sobel scratch buffer.
    """
    b, hp, wp = padded_label.shape
    h, w = hp - 2, wp - 2
    planes, blocks = _sobel_blocks(b, num_classes, h, w)
    scratch = _SobelScratch(padded_label, planes, h, w)
    ids = torch.arange(num_classes, device=padded_label.device, dtype=padded_label.dtype)
    ids = ids.view(1, -1, 1, 1)
    labels = padded_label.unsqueeze(1)
    out = padded_label.new_empty(b, h, w)
    for images, classes in blocks:
        hot_ids = ids[:, classes]
        n, k = labels[images].shape[0], hot_ids.shape[1]
        padded = scratch.padded[: n * k]
        torch.eq(labels[images], hot_ids, out=padded.view(n, k, hp, wp))
        gx, gy = scratch.gradients_padded(padded)
        _magnitude_sum(gx, gy, n, out[images], classes.start == 0, mostly_zero=True)
    return out


class _SobelSum(torch.autograd.Function):
    """``S = sum_c sqrt(G_x,c^2 + G_y,c^2)`` of x [B,C,H,W] (replicate padding) -> [B,H,W].

    Backward, with ``r_c = dL/dS / |G_c|`` (0 where ``|G_c| = 0``: the subgradient on flat
    regions): ``dL/dx_c = Sx^T (r_c G_x,c) + Sy^T (r_c G_y,c)``, the adjoint of the padded
    Sobel. The adjoint of a valid 3x3 correlation is the full correlation with the flipped
    kernel, which for Sobel is the negated kernel; the adjoint of replicate padding adds each
    padding row/column back onto the border pixel it copied. Only x is saved (in a mix it is
    the shared softmax, alive anyway); the gradients are recomputed block by block, so the
    operator needs no [B,C,H,W] buffer besides its output gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return _sobel_sum(x)

    @staticmethod
    def backward(ctx, grad_sum: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        b, c, h, w = x.shape
        planes, blocks = _sobel_blocks(b, c, h, w)
        scratch = _SobelScratch(x, planes, h, w)
        # r G_x and r G_y, zero-padded by 2 for the full correlation (borders stay 0).
        u_pad = x.new_zeros(planes, h + 4, w + 4)
        v_pad = x.new_zeros(planes, h + 4, w + 4)
        diff_u = x.new_empty(planes, h + 4, w + 2)
        diff_v = x.new_empty(planes, h + 2, w + 4)
        adj_u = x.new_empty(planes, h + 2, w + 2)
        adj_v = x.new_empty(planes, h + 2, w + 2)
        ratio = x.new_empty(planes, h, w)
        neg_grad = grad_sum.neg().unsqueeze(1)  # the flipped Sobel kernels are negated
        grad = torch.empty_like(x)
        for images, classes in blocks:
            part = x[images, classes]
            n, k = part.shape[:2]
            m = n * k
            gx, gy = scratch.gradients(part.reshape(m, h, w))
            r = torch.mul(gx, gx, out=ratio[:m]).addcmul_(gy, gy).sqrt_().view(n, k, h, w)
            torch.div(neg_grad[images], r, out=r)  # inf/nan where |G| = 0, cleared below
            r = r.view(m, h, w)
            torch.mul(gx, r, out=u_pad[:m, 2:-2, 2:-2]).nan_to_num_(0.0)
            torch.mul(gy, r, out=v_pad[:m, 2:-2, 2:-2]).nan_to_num_(0.0)
            full = _sobel_x(u_pad[:m], diff_u[:m], adj_u[:m])
            full.add_(_sobel_y(v_pad[:m], diff_v[:m], adj_v[:m]))
            g = grad[images, classes].view(m, h, w)
            g.copy_(full[:, 1:-1, 1:-1])
            g[:, 0, :] += full[:, 0, 1:-1]
            g[:, -1, :] += full[:, -1, 1:-1]
            g[:, :, 0] += full[:, 1:-1, 0]
            g[:, :, -1] += full[:, 1:-1, -1]
            g[:, 0, 0] += full[:, 0, 0]
            g[:, 0, -1] += full[:, 0, -1]
            g[:, -1, 0] += full[:, -1, 0]
            g[:, -1, -1] += full[:, -1, -1]
        return grad


def sobel_magnitude(x: Tensor) -> Tensor:
    """Edge strength in [0, 1] of a stack of maps [B,C,H,W] in [0, 1]: one value per pixel.

    Per channel the Sobel gradient (G_x, G_y) is taken with replicate padding, so the image
    border is not an edge; the strength is ``clamp(sum_c |G_c|_2 / 8, 0, 1)``. For a one-hot
    label a straight boundary between two classes scores 1 (each class's Sobel response is
    4, and the two classes count once each); flat regions score 0 (gradient 0 there).

    Computed block by block with an analytic backward (:class:`_SobelSum`): about 10 passes
    over the input forward and 25 backward, and no [B,C,H,W] intermediate kept.
    """
    return (_SobelSum.apply(x.contiguous()) / 8.0).clamp(0.0, 1.0)


def label_edge_magnitude(padded_label: Tensor, num_classes: int) -> Tensor:
    """Edge strength in [0, 1] of a one-hot label [B,H,W], no gradient; see :func:`sobel_magnitude`.

    ``padded_label`` [B,H+2,W+2] holds class ids as floats, -1 at ignored pixels (an all-zero
    one-hot there), replicate-padded; the one-hot is built one Sobel block at a time.
    """
    with torch.no_grad():
        total = _label_sobel_sum(padded_label, num_classes)
    return total.div_(8.0).clamp_(0.0, 1.0)
