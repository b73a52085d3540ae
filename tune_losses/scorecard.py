"""The evaluation report of one split: the means, per-class IoU, precision, recall and
pixels as JSON, a terminal table, and the same numbers under MLflow names.

Built from :meth:`~tune_losses.metrics.SegmentationMetrics.compute`; written by
``python -m tune_losses.evaluate`` and read back by the benchmarks.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

# in a training result (an epoch's numbers): the split its ``<split>/...`` scores are on,
# set where a run scores its final weights on another split (``test/mIoU``)
SCORED_SPLIT = "scored_split"
SUMMARY_KEYS = ("mIoU", "boundary_IoU", "boundary_F1", "pixel_acc", "mDice", "mean_acc")


def _nan_to_none(values: Sequence[float]) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]


def score(result: dict[str, Any], confmat: list[list[int]], class_names: list[str]) -> dict:
    """The JSON report from :meth:`SegmentationMetrics.compute`'s ``result``: the means, and
    per class IoU, precision = TP / (TP + FP), recall = TP / (TP + FN) and labelled pixels
    (percent; ``None`` where undefined: a class never predicted has no precision)."""
    per_class = {}
    iou, precision, recall = (
        _nan_to_none(result[k])
        for k in ("iou_per_class", "precision_per_class", "recall_per_class")
    )
    for i, name in enumerate(class_names):
        per_class[name] = {
            "IoU": iou[i],
            "precision": precision[i],
            "recall": recall[i],
            "pixels": int(sum(confmat[i])),
        }
    out: dict[str, Any] = {k: result[k] for k in SUMMARY_KEYS if k in result}
    out = {k: None if math.isnan(v) else v for k, v in out.items()}
    out["per_class"] = per_class
    out["excluded_classes"] = [class_names[i] for i in result["excluded_classes"]]
    out["confmat"] = confmat
    return out


def mlflow_metrics(report: dict[str, Any], split: str) -> dict[str, float]:
    """The report's numbers under MLflow names: ``<split>/mIoU``, ``<split>/IoU/<class>``,
    ``<split>/precision/<class>``, ``<split>/recall/<class>`` (undefined values left out)."""
    out = {f"{split}/{k}": report[k] for k in SUMMARY_KEYS if report.get(k) is not None}
    for name, row in report["per_class"].items():
        for key in ("IoU", "precision", "recall"):
            if row[key] is not None:
                out[f"{split}/{key}/{name}"] = row[key]
    return out


def print_table(report: dict[str, Any], file: Any = None) -> None:
    """Per-class IoU, precision, recall and pixels as a rich table, then the means."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout, width=100)
    where = f"{report['split']} split ({report['images']} images)"
    console.print(f"{where}, weights of {report['scored']['weights']}", highlight=False)
    table = Table()
    table.add_column("class")
    for column in ("IoU", "precision", "recall", "pixels"):
        table.add_column(column, justify="right")

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for name, row in report["per_class"].items():
        values = (cell(row["IoU"]), cell(row["precision"]), cell(row["recall"]))
        table.add_row(name, *values, str(row["pixels"]))
    console.print(table)
    means = "  ".join(
        f"{k} {cell(report.get(k))}"
        for k in ("mIoU", "boundary_IoU", "boundary_F1", "pixel_acc")
        if k in report
    )
    console.print(means, highlight=False)
    if report["excluded_classes"]:
        excluded = ", ".join(report["excluded_classes"])
        console.print(f"excluded from the means (in neither labels nor predictions): {excluded}")
