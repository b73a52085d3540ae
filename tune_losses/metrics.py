"""Semantic-segmentation metrics accumulated on the device of the inputs.

One confusion matrix (rows = true class, columns = predicted class) gives mIoU,
per-class IoU, mDice, pixel accuracy, mean class accuracy and per-class precision and
recall; Boundary IoU
(Cheng et al., CVPR 2021) and the boundary F1 / BF score (Csurka et al., BMVC
2013) are accumulated beside it, per class, over the whole dataset.

Conventions, shared by every number here:

- All metrics are in percent.
- Pixels whose label equals ``ignore_index`` count in no metric.
- A class absent from both the labels and the predictions has no IoU, Dice or
  accuracy (``nan`` in the per-class lists); it is left out of every mean and
  listed in ``"excluded_classes"``.

Example:
    >>> import torch
    >>> m = SegmentationMetrics(num_classes=3)
    >>> target = torch.tensor([[[0, 0, 1, 255]]])
    >>> m.update(torch.tensor([[[0, 1, 1, 2]]]), target)
    >>> r = m.compute()
    >>> round(r["mIoU"], 2), r["excluded_classes"]
    (50.0, [2])
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SegmentationMetrics",
    "boundary_band",
    "boundary_width",
    "label_edges",
]

# Upper bound on the elements of one [B, classes, H, W] mask block in the boundary
# metrics; classes are processed in chunks below it so memory stays bounded.
_BOUNDARY_BLOCK_ELEMENTS = 1 << 24


def boundary_width(height: int, width: int, dilation_ratio: float) -> int:
    """Boundary band width in pixels: ``round(ratio * image diagonal)``, at least 1.

    Same rule as the reference Boundary IoU code (Cheng et al. 2021,
    ``boundary_iou/utils/boundary_utils.py``).
    """
    return max(1, int(round(dilation_ratio * math.hypot(height, width))))


def _pool_dtype(device: torch.device) -> torch.dtype:
    # max_pool2d has no bool kernel; uint8 is the cheapest on CPU, half is safe on GPUs.
    return torch.uint8 if device.type == "cpu" else torch.float16


def _dilate(masks: Tensor, radius: int, *, same_size: bool = True) -> Tensor:
    """Binary dilation by a (2r+1) x (2r+1) square (Chebyshev distance <= r).

    ``masks`` is a 0/1 tensor [N, C, H, W] of a max-pool dtype. The square is
    separable, so two 1-D max-pools do it in O(r) per pixel instead of O(r^2).
    With ``same_size`` the output keeps H x W (max_pool2d pads with -inf, so
    nothing is dilated in from outside); otherwise it shrinks by ``r`` per side.
    """
    k = 2 * radius + 1
    pad = radius if same_size else 0
    out = F.max_pool2d(masks, (1, k), stride=1, padding=(0, pad))
    return F.max_pool2d(out, (k, 1), stride=1, padding=(pad, 0))


def label_edges(labels: Tensor, radius: int) -> Tensor:
    """Pixels that have a different label within Chebyshev distance ``radius``.

    ``labels`` [B, H, W] holds class ids and -1 for void; outside the image
    counts as -1 too. For a pixel of class ``c`` this is exactly "in the band
    of width ``radius`` of the mask of ``c``" (mask minus its erosion by a
    (2r+1)-square), for every class at once: one min/max-pool pair over the
    label map instead of one erosion per class.

    Returns:
        bool tensor [B, H, W].
    """
    x = F.pad(labels.unsqueeze(1).float(), (radius, radius, radius, radius), value=-1.0)
    hi = _dilate(x, radius, same_size=False)
    lo = -_dilate(-x, radius, same_size=False)
    return (hi != lo).squeeze(1)


def boundary_band(masks: Tensor, radius: int) -> Tensor:
    """Inner boundary band of binary masks: the mask minus its erosion (``G_d ∩ G``).

    Erosion by a (2r+1) x (2r+1) square, i.e. the reference's 3x3 erosion
    iterated ``r`` times. As in the reference (which pads the mask with a
    1-pixel constant-0 border before eroding), everything outside the image is
    background, so a mask that touches the image border has a boundary along it.

    Args:
        masks: bool tensor [N, H, W].
        radius: band width in pixels (>= 1).

    Returns:
        bool tensor [N, H, W], True on the band.
    """
    return masks & label_edges(masks.long(), radius)


class SegmentationMetrics:
    """Confusion-matrix and boundary metrics, torchmetrics-style (update / compute / reset).

    State lives on the device of the inputs of the last ``update`` (moved there
    when it changes), so evaluation on CUDA needs no host transfer until
    ``compute``.

    Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric Image
    Segmentation Evaluation", CVPR 2021): for each class, the band of each mask
    is the mask minus its erosion, width ``d = round(ratio * diagonal)`` (at
    least 1 px); ``|B(G) ∩ B(P)|`` and ``|B(G) ∪ B(P)|`` are summed per class
    over the dataset (as for mIoU) and the ratio is averaged over the classes
    whose union is not empty.

    Boundary F1 (Csurka et al., "What is a good evaluation measure for semantic
    segmentation?", BMVC 2013, the BF score): the contours are the 1-pixel
    inner boundaries of each class mask; a predicted contour pixel is matched
    when a true contour pixel lies within ``d`` (same ``d`` as above, Chebyshev
    distance, i.e. a square window); precision = matched predicted / predicted
    contour pixels, recall symmetric, both summed per class over the dataset;
    F1 = 2PR / (P + R), averaged over the classes with any contour pixel.

    Borders: as in the reference Boundary IoU code, the image border is a
    boundary (outside the image counts as background), and so is the edge of
    an ignored region: ignored pixels are treated as outside the image for both
    label and prediction, and no band or contour pixel lies on them.

    Args:
        num_classes: number of classes ``C``; labels are ``0 .. C-1``.
        ignore_index: label value that counts in no metric (may be outside or
            inside ``0 .. C-1``).
        boundary: also compute Boundary IoU and boundary F1. Costs max-pools per
            batch: about 50 ms per 240x180 image with 11 classes on one CPU
            thread, mostly the per-class BF tolerance test.
        boundary_dilation_ratio: band width / tolerance as a fraction of the
            image diagonal (Cheng et al. use 0.02).
    """

    confmat: Tensor

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        *,
        boundary: bool = True,
        boundary_dilation_ratio: float = 0.02,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if boundary_dilation_ratio < 0:
            raise ValueError(f"boundary_dilation_ratio must be >= 0, got {boundary_dilation_ratio}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.boundary = bool(boundary)
        self.boundary_dilation_ratio = float(boundary_dilation_ratio)
        self.reset()

    def reset(self) -> None:
        """Zero every accumulated count (keeps the current device)."""
        device = self.confmat.device if hasattr(self, "confmat") else torch.device("cpu")
        c = self.num_classes
        self.confmat = torch.zeros(c, c, dtype=torch.int64, device=device)
        # Per class: Boundary IoU intersection / union; BF matched / total contour
        # pixels, for the prediction (precision) and the label (recall).
        self._boundary_counts = torch.zeros(6, c, dtype=torch.int64, device=device)

    def _to(self, device: torch.device) -> None:
        if self.confmat.device != device:
            self.confmat = self.confmat.to(device)
            self._boundary_counts = self._boundary_counts.to(device)

    def _check(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Validate shapes and values; return class ids [B,H,W] and the target as long."""
        if target.ndim != 3:
            raise ValueError(f"target must be [B, H, W], got shape {tuple(target.shape)}")
        if target.is_floating_point() or target.is_complex():
            raise ValueError(f"target must hold integer class ids, got dtype {target.dtype}")
        if preds.ndim == 4:
            if preds.shape[1] != self.num_classes:
                raise ValueError(
                    f"logits have {preds.shape[1]} channels, expected num_classes="
                    f"{self.num_classes} (shape {tuple(preds.shape)})"
                )
            if preds.shape[0] != target.shape[0] or preds.shape[2:] != target.shape[1:]:
                raise ValueError(
                    f"logits shape {tuple(preds.shape)} does not match target shape "
                    f"{tuple(target.shape)} (expected [B, C, H, W] vs [B, H, W])"
                )
            preds = preds.argmax(dim=1)
        elif preds.ndim == 3:
            if preds.is_floating_point() or preds.is_complex():
                raise ValueError(
                    f"preds [B, H, W] must hold integer class ids, got dtype {preds.dtype}; "
                    "pass logits as [B, C, H, W]"
                )
            if preds.shape != target.shape:
                raise ValueError(
                    f"preds shape {tuple(preds.shape)} does not match target shape "
                    f"{tuple(target.shape)}"
                )
        else:
            raise ValueError(
                "preds must be class ids [B, H, W] or logits [B, C, H, W], "
                f"got shape {tuple(preds.shape)}"
            )
        if preds.device != target.device:
            raise ValueError(f"preds on {preds.device} but target on {target.device}")
        preds, target = preds.long(), target.long()
        c = self.num_classes
        bad_target = (target < 0) | (target >= c)
        bad_target &= target != self.ignore_index
        bad_preds = (preds < 0) | (preds >= c)
        flags = torch.stack([bad_target.any(), bad_preds.any()]).tolist()  # one sync
        if flags[0]:
            found = torch.unique(target[bad_target]).tolist()[:10]
            raise ValueError(
                f"target holds values {found} outside 0..{c - 1} and ignore_index="
                f"{self.ignore_index}"
            )
        if flags[1]:
            found = torch.unique(preds[bad_preds]).tolist()[:10]
            raise ValueError(f"preds hold class ids {found} outside 0..{c - 1}")
        return preds, target

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            preds: class ids [B, H, W] (integer) or logits / probabilities [B, C, H, W]
                (arg-maxed over C).
            target: labels [B, H, W], integer, ``ignore_index`` for pixels to skip.

        Raises:
            ValueError: on shapes that do not match, float ids, or values out of range.
        """
        preds, target = self._check(preds, target)
        self._to(target.device)
        c = self.num_classes
        valid = target != self.ignore_index
        index = c * target[valid] + preds[valid]
        self.confmat += torch.bincount(index, minlength=c * c).view(c, c)
        if self.boundary:
            self._update_boundary(preds, target, valid)

    def _update_boundary(self, preds: Tensor, target: Tensor, valid: Tensor) -> None:
        """Accumulate Boundary IoU and BF counts of one batch, vectorised over the batch.

        Bands and contours come from one min/max-pool of each label map
        (``label_edges``) and are counted per class with ``bincount``; only the
        BF tolerance test dilates per class, for the classes with contour pixels.
        """
        c = self.num_classes
        d = boundary_width(target.shape[1], target.shape[2], self.boundary_dilation_ratio)
        gt = torch.where(valid, target, -1)
        pr = torch.where(valid, preds, -1)
        gt_band, pr_band = label_edges(gt, d) & valid, label_edges(pr, d) & valid
        inter = torch.bincount(gt[gt_band & pr_band & (gt == pr)], minlength=c)
        band_sum = torch.bincount(gt[gt_band], minlength=c) + torch.bincount(
            pr[pr_band], minlength=c
        )
        gt_contour, pr_contour = label_edges(gt, 1) & valid, label_edges(pr, 1) & valid
        gt_all = torch.bincount(gt[gt_contour], minlength=c)
        pr_all = torch.bincount(pr[pr_contour], minlength=c)
        pr_hit, gt_hit = torch.zeros_like(pr_all), torch.zeros_like(gt_all)
        classes = torch.nonzero((gt_all > 0) & (pr_all > 0)).flatten()  # others match nothing
        gt_contour_ids = torch.where(gt_contour, gt, -1).unsqueeze(1)
        pr_contour_ids = torch.where(pr_contour, pr, -1).unsqueeze(1)
        pool_dtype = _pool_dtype(target.device)
        chunk = max(1, _BOUNDARY_BLOCK_ELEMENTS // max(1, target.numel()))
        for start in range(0, len(classes), chunk):
            ids = classes[start : start + chunk]
            view = ids.view(1, -1, 1, 1)
            gt_c, pr_c = gt_contour_ids == view, pr_contour_ids == view
            near_gt = _dilate(gt_c.to(pool_dtype), d).bool()
            near_pr = _dilate(pr_c.to(pool_dtype), d).bool()
            pr_hit[ids] = (pr_c & near_gt).sum(dim=(0, 2, 3))
            gt_hit[ids] = (gt_c & near_pr).sum(dim=(0, 2, 3))
        counts = torch.stack([inter, band_sum - inter, pr_hit, pr_all, gt_hit, gt_all])
        self._boundary_counts += counts

    def compute(self) -> dict[str, Any]:
        """Metrics over everything seen since the last reset, in percent.

        Returns:
            ``mIoU``, ``mDice``, ``pixel_acc``, ``mean_acc`` and, when ``boundary``,
            ``boundary_IoU`` and ``boundary_F1`` (floats, percent);
            ``iou_per_class``, ``dice_per_class``, ``acc_per_class``,
            ``precision_per_class`` (TP / (TP + FP): of the pixels predicted as the
            class, the share labelled so; ``nan`` for a class never predicted) and
            ``recall_per_class`` (TP / (TP + FN): of the pixels labelled as the class,
            the share predicted so; ``nan`` for a class never labelled; the same
            numbers as ``acc_per_class``) (lists of ``C`` floats, percent);
            ``excluded_classes`` (class ids absent from
            both labels and predictions: ``nan`` in the per-class lists and left
            out of every mean). A class that is predicted but never labelled has
            IoU and Dice 0 (counted in the means) and accuracy ``nan`` (its
            recall is undefined, so ``mean_acc`` averages over labelled
            classes only). Means with no class to average are ``nan``.
        """
        cm = self.confmat.double()
        tp = cm.diagonal()
        label_count, pred_count = cm.sum(dim=1), cm.sum(dim=0)
        present = (label_count + pred_count) > 0
        nan = torch.full_like(tp, float("nan"))
        iou = torch.where(present, tp / (label_count + pred_count - tp), nan) * 100
        dice = torch.where(present, 2 * tp / (label_count + pred_count), nan) * 100
        acc = torch.where(label_count > 0, tp / label_count, nan) * 100
        # precision = TP / (TP + FP), recall = TP / (TP + FN) (column and row sums)
        class_precision = torch.where(pred_count > 0, tp / pred_count, nan) * 100
        total = cm.sum()
        pixel_acc = (tp.sum() / total * 100) if total > 0 else torch.tensor(float("nan"))
        result: dict[str, Any] = {
            "mIoU": float(iou[present].mean()),
            "mDice": float(dice[present].mean()),
            "pixel_acc": float(pixel_acc),
            "mean_acc": float(acc[label_count > 0].mean()),
        }
        if self.boundary:
            inter, union, pr_hit, pr_all, gt_hit, gt_all = self._boundary_counts.double()
            result["boundary_IoU"] = float((inter / union)[union > 0].mean() * 100)
            has_contour = (pr_all + gt_all) > 0
            precision = torch.where(pr_all > 0, pr_hit / pr_all, torch.zeros_like(pr_all))
            recall = torch.where(gt_all > 0, gt_hit / gt_all, torch.zeros_like(gt_all))
            denom = precision + recall
            f1 = torch.where(denom > 0, 2 * precision * recall / denom, torch.zeros_like(denom))
            result["boundary_F1"] = float(f1[has_contour].mean() * 100)
        result["iou_per_class"] = iou.tolist()
        result["dice_per_class"] = dice.tolist()
        result["acc_per_class"] = acc.tolist()
        result["precision_per_class"] = class_precision.tolist()
        result["recall_per_class"] = acc.tolist()
        result["excluded_classes"] = torch.nonzero(~present).flatten().tolist()
        return result
