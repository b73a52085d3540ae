"""Shared private math for the loss terms: input checks, option types, one softmax per head.

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
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, MinLen
from torch import Tensor

from .sobel import label_edge_magnitude

# Option types shared by the terms: their bounds are the options' validation (see registry).
NonNegative = Annotated[float, Ge(0.0)]
ClassSelection = Literal["present", "all"] | Annotated[Sequence[Annotated[int, Ge(0)]], MinLen(1)]
"""Classes a per-class loss averages over: "present" (with a kept pixel), "all", or class ids."""


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

    "all" and "present" start from every class; a list of ids keeps only those ids, which must
    exist in the logits (the one check that needs the data).
    """
    if isinstance(classes, str):
        return torch.ones(num_classes, dtype=torch.bool, device=device)
    ids = [int(c) for c in classes]
    if any(c >= num_classes for c in ids):
        raise ValueError(f"classes ids {ids} must be within [0, {num_classes})")
    mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
    mask[torch.as_tensor(ids, device=device)] = True
    return mask


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` holds; exactly 0 (graph kept) when the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


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
        """Sobel edge strength of the one-hot label, [B,H,W] in [0, 1], no gradient."""
        return label_edge_magnitude(self.padded_label, self.num_classes)

    def zero(self) -> Tensor:
        """Exact 0 that keeps the graph to the logits (finite zero gradient)."""
        return self.logits.sum() * 0.0
