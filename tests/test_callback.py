"""The search callback's progress lines (no Ray cluster needed)."""

from __future__ import annotations

from tune_losses.tune.callback import progress_line

EPOCH = {"val/mIoU": 31.25, "best_val_mIoU": 40.5, "train/loss": 0.71875, "best_train_loss": 0.5}


def test_progress_names_the_best_value_of_the_search_metric() -> None:
    """A search on ``train/loss`` shows the lowest loss so far as its best, not the mIoU."""
    assert progress_line(EPOCH, "train/loss") == (
        "val mIoU 31.25  best train/loss 0.5  train loss 0.7188"
    )
    assert progress_line(EPOCH) == "val mIoU 31.25  best 40.50  train loss 0.7188"
    # a metric no epoch has reported yet (val/IoU/<class> before its first value)
    assert "best val/IoU/road -" in progress_line(EPOCH, "val/IoU/road")
