"""Shared private math for the loss terms: input checks, one softmax per head, Sobel edges.

Every term reads its inputs through a :class:`Prepared` object, so that when several terms
of one head run together (see :class:`~tune_losses.losses.mix.LossMix`) the log-softmax, the
true-class log-probabilities, the soft Dice counts and the label edge map are computed once
and shared. Each cached quantity is lazy: a term that does not need it never pays for it.

All arithmetic runs in float32 (float64 inputs stay float64, for ``gradcheck``) with autocast
disabled: half-precision logits are upcast once, here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor

ClassSelection = str | Sequence[int]


@contextlib.contextmanager
def float32_region(tensor: Tensor) -> Iterator[None]:
    """Disable autocast on ``tensor``'s device so every op in the block keeps its input dtype."""
    with torch.autocast(device_type=tensor.device.type, enabled=False):
        yield


def working_dtype(logits: Tensor) -> Tensor:
    """Upcast half-precision logits to float32; float32 and float64 pass through unchanged."""
    if logits.dtype in (torch.float32, torch.float64):
        return logits
    return logits.float()


def check_inputs(logits: Tensor, target: Tensor) -> None:
    """Raise ValueError unless logits is a floating [B,C,H,W] and target an integer [B,H,W]."""
    if logits.dim() != 4 or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a floating [B,C,H,W] tensor, got {tuple(logits.shape)} {logits.dtype}"
        )
    if target.dim() != 3 or target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(
            f"target must be an integer [B,H,W] tensor, got {tuple(target.shape)} {target.dtype}"
        )
    b, _, h, w = logits.shape
    if tuple(target.shape) != (b, h, w):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
            f"expected ({b}, {h}, {w})"
        )


def class_vector(
    values: float | Sequence[float] | Tensor, num_classes: int, like: Tensor, name: str
) -> Tensor:
    """Turn a per-class list/tensor into a [C] tensor on ``like``'s device and dtype."""
    vec = torch.as_tensor(values, dtype=like.dtype, device=like.device).flatten()
    if vec.numel() != num_classes:
        raise ValueError(
            f"{name} has {vec.numel()} entries, expected one per class ({num_classes})"
        )
    return vec


def class_selection(classes: ClassSelection, num_classes: int, device: torch.device) -> Tensor:
    """Mask [C] of the classes a per-class loss averages over; "present" is applied by the caller.

    "all" and "present" start from every class; a list of ids keeps only those ids.
    """
    if isinstance(classes, str):
        if classes not in ("all", "present"):
            raise ValueError(f'classes must be "present", "all" or a list of ids, got {classes!r}')
        return torch.ones(num_classes, dtype=torch.bool, device=device)
    ids = list(classes)
    if not ids or any(not 0 <= int(c) < num_classes for c in ids):
        raise ValueError(f"classes ids {ids} must be a non-empty list within [0, {num_classes})")
    mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
    mask[torch.as_tensor([int(c) for c in ids], device=device)] = True
    return mask


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` holds; exactly 0 (graph kept) when the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


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


class Prepared:
    """Logits and target of one head, with lazily cached shared quantities.

    Args:
        logits: [B,C,H,W] raw scores (any floating dtype; upcast to float32).
        target: [B,H,W] class ids, ``ignore_index`` marks pixels left out.
        ignore_index: label of ignored pixels.
    """

    def __init__(self, logits: Tensor, target: Tensor, ignore_index: int) -> None:
        check_inputs(logits, target)
        self.logits = working_dtype(logits)
        self.ignore_index = ignore_index
        self.num_classes = logits.shape[1]
        self.valid = target != ignore_index
        n_labels = max(self.num_classes, 2)  # a 1-channel binary head takes labels 0 and 1
        in_range = (target >= 0) & (target < n_labels)
        if bool((self.valid & ~in_range).any()):
            raise ValueError(
                f"target holds ids outside [0, {n_labels}) that are not ignore_index={ignore_index}"
            )
        self.target = torch.where(self.valid, target, torch.zeros_like(target))

    @cached_property
    def validf(self) -> Tensor:
        """Valid mask [B,H,W] as the working float dtype."""
        return self.valid.to(self.logits.dtype)

    @cached_property
    def n_valid(self) -> Tensor:
        """Number of kept pixels, a float 0-dim tensor (no host sync)."""
        return self.validf.sum()

    @cached_property
    def log_probs(self) -> Tensor:
        """log softmax over classes, [B,C,H,W]."""
        return torch.log_softmax(self.logits, dim=1)

    @cached_property
    def probs(self) -> Tensor:
        """softmax over classes, [B,C,H,W], as exp of the shared log-softmax."""
        return self.log_probs.exp()

    @cached_property
    def logp_true(self) -> Tensor:
        """log p of the true class per pixel, [B,H,W] (ignored pixels read class 0)."""
        return self.log_probs.gather(1, self.target.unsqueeze(1)).squeeze(1)

    @cached_property
    def soft_counts(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per-class soft counts over the batch (I, P, Y) = (sum p*y, sum p, sum y), each [C].

        Only kept pixels count. Used by Dice, Jaccard and Tversky.
        """
        c = self.num_classes
        p_true = self.logp_true.exp() * self.validf
        inter = p_true.new_zeros(c).index_add(0, self.target.flatten(), p_true.flatten())
        pred = torch.einsum("bchw,bhw->c", self.probs, self.validf)
        label = pred.new_zeros(c).index_add(0, self.target.flatten(), self.validf.flatten())
        return inter, pred, label

    @cached_property
    def padded_label(self) -> Tensor:
        """Label [B,H+2,W+2] as the working float dtype, -1 at ignored pixels, replicate-padded.

        Shared by :attr:`edge_kept` and :attr:`label_edges`; float comparisons vectorise.
        """
        label = self.target.to(self.logits.dtype).masked_fill_(~self.valid, -1.0)
        return F.pad(label.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)

    @cached_property
    def edge_kept(self) -> Tensor:
        """Pixels whose 3x3 Sobel stencil touches no ignored pixel, [B,H,W] bool.

        A separable 3x3 max of the ignored mask; the replicate padding repeats pixels that are
        already in the window, so the border behaves like a max-pool's.
        """
        ignored = torch.lt(self.padded_label, 0.0, out=torch.empty_like(self.padded_label))
        rows = torch.maximum(ignored[:, :, :-2], ignored[:, :, 2:])
        rows = torch.maximum(rows, ignored[:, :, 1:-1], out=rows)
        near = torch.maximum(rows[:, :-2], rows[:, 2:])
        return torch.maximum(near, rows[:, 1:-1], out=near) == 0

    @cached_property
    def label_edges(self) -> Tensor:
        """Sobel edge strength of the one-hot label, [B,H,W] in [0, 1], no gradient.

        The one-hot label (all-zero at ignored pixels) is built one Sobel block at a time.
        """
        with torch.no_grad():
            total = _label_sobel_sum(self.padded_label, self.num_classes)
        return total.div_(8.0).clamp_(0.0, 1.0)

    def zero(self) -> Tensor:
        """Exact 0 that keeps the graph to the logits (finite zero gradient)."""
        return self.logits.sum() * 0.0
