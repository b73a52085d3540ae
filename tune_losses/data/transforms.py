"""Albumentations pipelines built from the config, and the collate function that pads batches.

Train: random scale, pad-if-needed + random crop, horizontal flip, colour jitter.
Val: pad bottom/right to a multiple of ``pad_multiple``. Masks always move with nearest
interpolation and are padded with ``ignore_index``, so no new label value is ever created.
Images are normalised with the ImageNet mean/std (what SMP encoders expect).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from tune_losses.config import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``value``."""
    return int(math.ceil(value / multiple) * multiple)


def train_crop_size(
    aug: AugmentConfig, sizes: Iterable[tuple[int, int]], pad_multiple: int, scale: float = 1.0
) -> tuple[int, int]:
    """``augment.crop`` when set, else the largest image size of the split (after ``scale``)
    padded to the multiple.

    With one image size per split (the usual case) this is simply the padded image size.
    """
    if aug.crop is not None:
        return int(aug.crop[0]), int(aug.crop[1])
    hs, ws = zip(*sizes, strict=True)
    h, w = math.ceil(max(hs) * scale), math.ceil(max(ws) * scale)
    return round_up(h, pad_multiple), round_up(w, pad_multiple)


def downscale(scale: float) -> list[A.BasicTransform]:
    """The ops that shrink image and mask by ``scale`` (none at 1): area interpolation for
    the image, nearest for the mask. A fixed factor, so it draws nothing at random."""
    if scale == 1.0:
        return []
    return [
        A.RandomScale(
            scale_limit=(scale - 1.0, scale - 1.0),
            interpolation=cv2.INTER_AREA,
            mask_interpolation=cv2.INTER_NEAREST,
            p=1.0,
        )
    ]


def build_train_transform(
    aug: AugmentConfig,
    crop_hw: tuple[int, int],
    ignore_index: int,
    seed: int = 0,
    scale: float = 1.0,
) -> A.Compose:
    """Downscale, random scale, pad + random crop to ``crop_hw``, flip, colour jitter,
    normalise."""
    lo, hi = aug.scale
    if not 0.0 < lo <= hi:
        raise ValueError(f"augment.scale must satisfy 0 < lo <= hi, got {aug.scale}")
    h, w = crop_hw
    ops: list[A.BasicTransform] = downscale(scale)
    if (lo, hi) != (1.0, 1.0):
        ops.append(
            A.RandomScale(
                scale_limit=(lo - 1.0, hi - 1.0),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                p=1.0,
            )
        )
    ops += [
        _pad(ignore_index, min_height=h, min_width=w, position="random"),
        A.RandomCrop(height=h, width=w),
    ]
    if aug.hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if aug.color_jitter > 0:
        j = aug.color_jitter
        ops.append(
            A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4), p=0.8)
        )
    ops.append(A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD))
    return A.Compose(ops, seed=seed)


def _pad(ignore_index: int, **where: Any) -> A.PadIfNeeded:
    """Zero-pad the image and fill the mask with ``ignore_index`` (padding is never a class)."""
    return A.PadIfNeeded(border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index, **where)


def build_val_transform(pad_multiple: int, ignore_index: int, scale: float = 1.0) -> A.Compose:
    """Downscale, then pad bottom/right to a multiple of ``pad_multiple`` (masks with
    ``ignore_index``)."""
    return A.Compose(
        [
            *downscale(scale),
            _pad(
                ignore_index,
                min_height=None,
                min_width=None,
                pad_height_divisor=pad_multiple,
                pad_width_divisor=pad_multiple,
                position="top_left",
            ),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ],
        seed=0,
    )


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``float32 [3,H,W]`` and ``int64 [H,W]`` tensors from transformed arrays."""
    img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
    return img, torch.from_numpy(mask.astype(np.int64))


class PadCollate:
    """Stack a batch, padding bottom/right to the largest size in it (mask fill ``ignore_index``).

    Sizes within one batch are equal for sets of one image size; padding only happens when a
    split mixes sizes. A class rather than a closure so that DataLoader workers can pickle it.
    """

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = ignore_index

    def __call__(
        self, batch: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = zip(*batch, strict=True)
        h = max(int(m.shape[0]) for m in masks)
        w = max(int(m.shape[1]) for m in masks)
        if all(tuple(m.shape) == (h, w) for m in masks):
            return torch.stack(images), torch.stack(masks)
        out_img = images[0].new_zeros((len(images), images[0].shape[0], h, w))
        out_mask = masks[0].new_full((len(masks), h, w), self.ignore_index)
        for i, (img, m) in enumerate(zip(images, masks, strict=True)):
            out_img[i, :, : img.shape[1], : img.shape[2]] = img
            out_mask[i, : m.shape[0], : m.shape[1]] = m
        return out_img, out_mask
