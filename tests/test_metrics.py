"""Tests for tune_losses.metrics: hand-worked cases, torchmetrics agreement, boundary metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tune_losses.metrics import (
    SegmentationMetrics,
    boundary_band,
    boundary_width,
)

IGNORE = 255


@pytest.fixture
def hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Six pixels, three classes; confusion matrix worked out in test_hand_confusion_matrix."""
    target = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
    preds = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    return preds, target


@pytest.fixture
def random_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and labels (5 classes, ~10% ignored pixels)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 17, 13, generator=g)
    target = torch.randint(0, 5, (3, 17, 13), generator=g)
    target[torch.rand(3, 17, 13, generator=g) < 0.1] = IGNORE
    return logits, target


def assert_same_results(a: dict, b: dict) -> None:
    """Two compute() results agree: same keys, floats and float lists equal (nan == nan)."""
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], nan_ok=True), key


def squares(size: int, gt_cols: tuple[int, int], pr_cols: tuple[int, int]) -> tuple:
    """Class-1 square on rows 2..5 (gt at gt_cols, prediction at pr_cols), class 0 elsewhere."""
    gt = torch.zeros(1, size, size, dtype=torch.long)
    pr = torch.zeros(1, size, size, dtype=torch.long)
    gt[0, 2:6, gt_cols[0] : gt_cols[1] + 1] = 1
    pr[0, 2:6, pr_cols[0] : pr_cols[1] + 1] = 1
    return pr, gt


def test_hand_confusion_matrix(hand_case) -> None:
    # pixels (true, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0)
    #   rows = true:   t0: p0=1 p1=1;  t1: p1=2;  t2: p0=1 p2=1
    # IoU  = tp / (row + col - tp): c0 1/(2+2-1)=1/3, c1 2/(2+3-2)=2/3, c2 1/(2+1-1)=1/2
    # Dice = 2 tp / (row + col):    c0 2/4, c1 4/5, c2 2/3
    # acc  = tp / row:              c0 1/2, c1 1, c2 1/2;  pixel acc 4/6
    preds, target = hand_case
    m = SegmentationMetrics(3, boundary=False)
    m.update(preds, target)
    assert m.confmat.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m.confmat.dtype == torch.int64
    r = m.compute()
    assert r["iou_per_class"] == pytest.approx([100 / 3, 200 / 3, 50])
    assert r["mIoU"] == pytest.approx(50.0)
    assert r["dice_per_class"] == pytest.approx([50, 80, 200 / 3])
    assert r["mDice"] == pytest.approx((50 + 80 + 200 / 3) / 3)
    assert r["acc_per_class"] == pytest.approx([50, 100, 50])
    assert r["mean_acc"] == pytest.approx(200 / 3)
    assert r["pixel_acc"] == pytest.approx(400 / 6)
    assert r["excluded_classes"] == []
    assert "boundary_IoU" not in r and "boundary_F1" not in r
    assert all(isinstance(r[k], float) for k in ("mIoU", "mDice", "pixel_acc", "mean_acc"))


def test_ignored_pixels_count_nowhere(hand_case) -> None:
    preds, target = hand_case
    base = SegmentationMetrics(3)
    base.update(preds, target)
    # Widen with an ignored column whose predictions are all wrong-ish: nothing changes.
    t = torch.cat([target, torch.full((1, 2, 1), IGNORE)], dim=2)
    p = torch.cat([preds, torch.tensor([[[2], [0]]])], dim=2)
    m = SegmentationMetrics(3)
    m.update(p, t)
    assert torch.equal(m.confmat, base.confmat)
    r, rb = m.compute(), base.compute()
    for k in ("mIoU", "mDice", "pixel_acc", "mean_acc"):
        assert r[k] == pytest.approx(rb[k])


def test_ignore_index_inside_class_range() -> None:
    # ignore_index=0: label-0 pixels are skipped, a prediction of 0 elsewhere is still an error.
    target = torch.tensor([[[0, 0, 1, 2]]])
    preds = torch.tensor([[[1, 2, 1, 0]]])
    m = SegmentationMetrics(3, ignore_index=0, boundary=False)
    m.update(preds, target)
    assert m.confmat.tolist() == [[0, 0, 0], [0, 1, 0], [1, 0, 0]]


def test_absent_classes_excluded_and_reported() -> None:
    # 5 classes: 3 never appears; 4 is predicted but never labelled.
    target = torch.tensor([[[0, 0, 1, 1, 2, 2]]])
    preds = torch.tensor([[[0, 0, 1, 1, 2, 4]]])
    m = SegmentationMetrics(5, boundary=False)
    m.update(preds, target)
    r = m.compute()
    assert r["excluded_classes"] == [3]
    iou = r["iou_per_class"]
    assert math.isnan(iou[3]) and math.isnan(r["dice_per_class"][3])
    # IoU: 100, 100, 1/2, -, 0 -> mean over the 4 present classes.
    assert iou[:3] + [iou[4]] == pytest.approx([100, 100, 50, 0])
    assert r["mIoU"] == pytest.approx(250 / 4)
    # Accuracy of a never-labelled class is undefined: nan, out of mean_acc.
    assert math.isnan(r["acc_per_class"][4]) and math.isnan(r["acc_per_class"][3])
    assert r["mean_acc"] == pytest.approx((100 + 100 + 50) / 3)


def test_precision_and_recall_by_hand(hand_case) -> None:
    # the hand case's matrix, rows = true, columns = predicted: [[1,1,0],[0,2,0],[1,0,1]]
    # precision = TP / (TP + FP), the TP over the pixels predicted as the class:
    #   c0: predicted at (0,0) right and (2,0) wrong -> 1/2; c1: (0,1) wrong, two right -> 2/3;
    #   c2: predicted once, right -> 1/1
    # recall = TP / (TP + FN), the TP over the pixels labelled as the class:
    #   c0: labelled twice, once found -> 1/2; c1: 2/2; c2: labelled twice, once found -> 1/2
    preds, target = hand_case
    m = SegmentationMetrics(3, boundary=False)
    m.update(preds, target)
    r = m.compute()
    assert r["precision_per_class"] == pytest.approx([50, 200 / 3, 100])
    assert r["recall_per_class"] == pytest.approx([50, 100, 50])


def test_precision_of_a_class_never_predicted_is_nan() -> None:
    # 4 classes; class 1 is labelled but never predicted, class 3 is predicted, never labelled
    target = torch.tensor([[[0, 1, 1, 2]]])
    preds = torch.tensor([[[0, 0, 3, 2]]])
    m = SegmentationMetrics(4, boundary=False)
    m.update(preds, target)
    r = m.compute()
    precision, recall = r["precision_per_class"], r["recall_per_class"]
    assert math.isnan(precision[1]) and recall[1] == 0.0  # never predicted: 0/0; found 0/2
    assert precision[3] == 0.0 and math.isnan(recall[3])  # predicted once, wrongly; never labelled
    assert precision[0] == pytest.approx(50) and recall[0] == pytest.approx(100)
    assert precision[2] == pytest.approx(100) and recall[2] == pytest.approx(100)


def test_agrees_with_torchmetrics(random_batch) -> None:
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassJaccardIndex,
        MulticlassPrecision,
        MulticlassRecall,
    )

    logits, target = random_batch
    preds = logits.argmax(1)
    preds[preds == 3] = 4  # class 3 only in the labels: IoU 0, still in the mean
    kw = {"num_classes": 5, "ignore_index": IGNORE}
    m = SegmentationMetrics(5, boundary=False)
    m.update(preds, target)
    r = m.compute()
    cm = MulticlassConfusionMatrix(**kw)(preds, target)
    assert torch.equal(m.confmat, cm)
    iou = MulticlassJaccardIndex(**kw, average=None)(preds, target)
    assert r["iou_per_class"] == pytest.approx((iou * 100).tolist(), abs=1e-4)
    miou = MulticlassJaccardIndex(**kw, average="macro")(preds, target)
    assert r["mIoU"] == pytest.approx(float(miou) * 100, abs=1e-4)
    acc = MulticlassAccuracy(**kw, average=None)(preds, target)
    assert r["acc_per_class"] == pytest.approx((acc * 100).tolist(), abs=1e-4)
    macc = MulticlassAccuracy(**kw, average="macro")(preds, target)
    assert r["mean_acc"] == pytest.approx(float(macc) * 100, abs=1e-4)
    pacc = MulticlassAccuracy(**kw, average="micro")(preds, target)
    assert r["pixel_acc"] == pytest.approx(float(pacc) * 100, abs=1e-4)
    precision = MulticlassPrecision(**kw, average=None)(preds, target) * 100
    recall = MulticlassRecall(**kw, average=None)(preds, target) * 100
    assert r["recall_per_class"] == pytest.approx(recall.tolist(), abs=1e-4)
    # class 3 is never predicted: undefined here (nan), 0 in torchmetrics (zero_division=0)
    assert math.isnan(r["precision_per_class"][3])
    kept = [0, 1, 2, 4]
    assert [r["precision_per_class"][i] for i in kept] == pytest.approx(
        precision[kept].tolist(), abs=1e-4
    )


def test_torchmetrics_also_drops_classes_absent_everywhere(random_batch) -> None:
    from torchmetrics.classification import MulticlassJaccardIndex

    _, target = random_batch
    target = target.clone()
    target[target == 2] = 1
    preds = target.clone()
    preds[preds == IGNORE] = 0
    preds[0, 0, :5] = 4
    m = SegmentationMetrics(5, boundary=False)
    m.update(preds, target)
    r = m.compute()
    assert r["excluded_classes"] == [2]
    miou = MulticlassJaccardIndex(5, ignore_index=IGNORE, average="macro")(preds, target)
    assert r["mIoU"] == pytest.approx(float(miou) * 100, abs=1e-4)


def test_logits_and_ids_give_the_same(random_batch) -> None:
    logits, target = random_batch
    a, b = SegmentationMetrics(5), SegmentationMetrics(5)
    a.update(logits, target)
    b.update(logits.argmax(1).to(torch.int32), target)
    assert torch.equal(a.confmat, b.confmat)
    assert_same_results(a.compute(), b.compute())


def test_accumulation_equals_concatenation(random_batch) -> None:
    logits, target = random_batch
    one, many = (SegmentationMetrics(5, boundary_dilation_ratio=0.1) for _ in range(2))  # d = 2
    one.update(logits, target)
    for i in range(target.shape[0]):
        many.update(logits[i : i + 1], target[i : i + 1])
    assert torch.equal(one.confmat, many.confmat)
    assert_same_results(one.compute(), many.compute())


def test_reset_and_empty_compute(random_batch) -> None:
    logits, target = random_batch
    m = SegmentationMetrics(5)
    m.update(logits, target)
    m.reset()
    assert int(m.confmat.sum()) == 0
    r = m.compute()
    for k in ("mIoU", "mDice", "pixel_acc", "mean_acc", "boundary_IoU", "boundary_F1"):
        assert math.isnan(r[k])
    assert r["excluded_classes"] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("preds", "target", "message"),
    [
        (torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long), "shape"),
        (torch.zeros(2, 4, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), "channels"),
        (torch.zeros(2, 3, 4, 5), torch.zeros(2, 4, 4, dtype=torch.long), "logits shape"),
        (torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), "integer class ids"),
        (torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long), "target"),
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 7], [1, 2]]]), r"\[7\]"),
        (torch.tensor([[[0, 3], [1, 2]]]), torch.zeros(1, 2, 2, dtype=torch.long), r"\[3\]"),
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2), "dtype"),
    ],
)
def test_bad_input_raises(preds, target, message) -> None:
    with pytest.raises(ValueError, match=message):
        SegmentationMetrics(3).update(preds, target)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMetrics(0)
    with pytest.raises(ValueError, match="ratio"):
        SegmentationMetrics(3, boundary_dilation_ratio=-0.1)


def test_boundary_width_follows_reference_rule() -> None:
    assert boundary_width(180, 240, 0.02) == 6  # CamVid: diagonal 300
    assert boundary_width(10, 10, 0.02) == 1  # 0.28 rounds to 0, at least 1
    assert boundary_width(512, 1024, 0.0) == 1


def test_band_treats_image_border_as_boundary() -> None:
    # A mask filling an 8x8 image: outside is background (reference pads with 0),
    # so the band is the 2-pixel frame: 64 - 4*4 = 48 pixels.
    full = torch.ones(1, 8, 8, dtype=torch.bool)
    band = boundary_band(full, 2)
    assert int(band.sum()) == 48
    assert not band[0, 2:6, 2:6].any()


def _reference_band(mask: np.ndarray, d: int) -> np.ndarray:
    """Band as in the Boundary IoU API: pad 1 px with 0, erode with 3x3 d times, subtract."""
    cv2 = pytest.importorskip("cv2")
    h, w = mask.shape
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1 : h + 1, 1 : w + 1]
    return mask - eroded


@pytest.mark.parametrize("d", [1, 3])
def test_band_matches_reference_implementation(d: int) -> None:
    g = torch.Generator().manual_seed(d)
    # Blobby masks: thresholded, smoothed noise, so there are real regions and holes.
    noise = torch.nn.functional.avg_pool2d(torch.rand(4, 1, 30, 23, generator=g), 5, 1, 2)
    masks = (noise > noise.median()).squeeze(1)
    ours = boundary_band(masks, d)
    for i in range(masks.shape[0]):
        ref = _reference_band(masks[i].numpy().astype(np.uint8), d)
        np.testing.assert_array_equal(ours[i].numpy(), ref.astype(bool))


def test_boundary_iou_identical_and_disjoint() -> None:
    pr, gt = squares(8, (2, 5), (3, 6))
    m = SegmentationMetrics(2)
    m.update(gt, gt)
    r = m.compute()
    assert r["boundary_IoU"] == pytest.approx(100.0)
    assert r["boundary_F1"] == pytest.approx(100.0)
    # Label all class 0, prediction all class 1: no band pixel in common.
    m = SegmentationMetrics(2)
    m.update(torch.ones_like(gt), torch.zeros_like(gt))
    r = m.compute()
    assert r["boundary_IoU"] == 0.0
    assert r["boundary_F1"] == 0.0


def test_boundary_iou_shifted_square_by_hand() -> None:
    # 8x8 image, d = round(0.02 * 11.3) -> 1: bands are 1-pixel inner boundaries.
    # Class 1: gt square rows 2..5 x cols 2..5, prediction cols 3..6; each band is the
    #   12-pixel perimeter; shared: rows 2 and 5 at cols 3..5 = 6 -> IoU 6 / (24 - 6) = 1/3.
    # Class 0 (the rest): band = image frame (28) + ring around the square (20).
    #   gt: 28 + 20 = 48. prediction: its ring spans cols 2..7, and col 7 is already in
    #   the frame, so 28 + 14 = 42. Shared: frame 28 + ring rows 1 and 6 at cols 2..6 = 10
    #   -> 38; union 48 + 42 - 38 = 52 -> 38/52.
    pr, gt = squares(8, (2, 5), (3, 6))
    m = SegmentationMetrics(2)
    m.update(pr, gt)
    assert m.compute()["boundary_IoU"] == pytest.approx((1 / 3 + 38 / 52) / 2 * 100)


def test_boundary_f1_shifted_square_by_hand() -> None:
    # 10x10 image, d = 1; contours = 1-pixel inner boundaries; a contour pixel matches
    # when the other contour has a pixel in its 3x3 neighbourhood.
    # Class 1: gt square cols 2..5, prediction cols 4..7 (rows 2..5), 12 contour pixels each.
    #   Prediction matched: rows 2,5 at cols 4..6 (6) + col 4 rows 3,4 (2) = 8 -> P = 2/3;
    #   symmetric for recall -> R = 2/3, F1 = 2/3.
    # Class 0: contours = frame (36) + ring around the square (20) = 56 each.
    #   Prediction: frame 36, rows 1 and 6 (12, next to the frame or gt ring), col 8 (4, next
    #   to the frame), col 3 only at rows 2 and 5 (2) -> 54/56; recall likewise 54/56.
    pr, gt = squares(10, (2, 5), (4, 7))
    m = SegmentationMetrics(2)
    m.update(pr, gt)
    assert m.compute()["boundary_F1"] == pytest.approx((2 / 3 + 54 / 56) / 2 * 100)
    # A shift within the tolerance is not penalised at all for the square itself.
    pr, gt = squares(10, (2, 5), (3, 6))
    m = SegmentationMetrics(2, boundary_dilation_ratio=0.1)  # d = round(1.41) = 1
    m.update(pr, gt)
    assert m.compute()["boundary_F1"] == pytest.approx(100.0)


def test_boundary_ignores_void_like_outside() -> None:
    # Ignored pixels behave like the outside of the image: the same scene with a void
    # column on the right gives the same boundary scores as the cropped scene.
    pr, gt = squares(8, (2, 5), (3, 6))
    cropped = SegmentationMetrics(2)
    cropped.update(pr[..., :7], gt[..., :7])
    gt_void = gt.clone()
    gt_void[..., 7] = IGNORE
    pr_any = pr.clone()
    pr_any[..., 7] = 1
    voided = SegmentationMetrics(2)
    voided.update(pr_any, gt_void)
    a, b = cropped.compute(), voided.compute()
    # Same d (1 for both sizes), same bands.
    assert a["boundary_IoU"] == pytest.approx(b["boundary_IoU"])
    assert a["boundary_F1"] == pytest.approx(b["boundary_F1"])


def test_boundary_chunks_give_the_same(monkeypatch, random_batch) -> None:
    logits, target = random_batch
    whole = SegmentationMetrics(5, boundary_dilation_ratio=0.1)
    whole.update(logits, target)
    monkeypatch.setattr("tune_losses.metrics._BOUNDARY_BLOCK_ELEMENTS", 1)  # one class a pass
    chunked = SegmentationMetrics(5, boundary_dilation_ratio=0.1)
    chunked.update(logits, target)
    assert_same_results(whole.compute(), chunked.compute())
