"""The MLflow writers: a client on one experiment with batched logging; a training run's logger."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tune_losses.tracking.names import LINEAGE_FILE, TrackingError, numeric_metrics

_PARAM_MAX = 6000
_BATCH = 100


def log_scores(client: MlflowClient, run_id: str, scores: Mapping[str, Any], step: int) -> None:
    """Log the finite numbers of ``scores`` to ``run_id`` at ``step``, whatever their names
    (a confirm run's ``test/...`` scores read back from Ray)."""
    ts = int(time.time() * 1000)
    metrics = [
        Metric(k, float(v), ts, step)
        for k, v in scores.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _BATCH])


class _Writer:
    """An MLflow client on one store and experiment, with batched params and metrics."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = uri, experiment
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id if found else self.client.create_experiment(experiment)
        )

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log ``params`` as strings, in batches of the size MLflow accepts."""
        items = [Param(k, str(v)[:_PARAM_MAX]) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[i : i + _BATCH])

    def log_metrics(self, run_id: str, result: Mapping[str, Any], step: int, ts: int) -> None:
        """Log the numbers of one epoch (:func:`numeric_metrics`) at ``step``."""
        metrics = [Metric(k, v, ts, step) for k, v in numeric_metrics(result).items()]
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + _BATCH])

    def log_best_epoch(self, run_id: str, summary: Mapping[str, Any]) -> None:
        """The best epoch's summary (engine's ``Trainer.summary``) as JSON and plots, and
        what the run really ran as :data:`LINEAGE_FILE`: its phases (the settings from epoch
        1, then each PBT exploit's: which trial, from which epoch, its loss and optimiser
        values; a child's params keep its first ones) and the LR and scheduled weight of
        every step (``steps``), along the lineage."""
        from tune_losses.plots import plot_confusion_matrix, plot_per_class_iou

        summary = dict(summary)
        names = summary["class_names"]
        self.client.log_dict(run_id, summary.pop("loss_setup", {}), "loss_setup.json")
        lineage = {"phases": summary.pop("lineage", None), "steps": summary.pop("steps", None)}
        if lineage["phases"]:
            self.client.log_text(run_id, yaml.safe_dump(lineage, sort_keys=False), LINEAGE_FILE)
        self.client.log_dict(run_id, summary, "best_epoch.json")
        with tempfile.TemporaryDirectory() as tmp:
            if summary.get("confmat") is not None:
                png = plot_confusion_matrix(summary["confmat"], names, Path(tmp) / "confmat.png")
                self.client.log_artifact(run_id, str(png), "best_epoch")
            if summary.get("iou_per_class"):
                png = plot_per_class_iou(summary["iou_per_class"], names, Path(tmp) / "iou.png")
                self.client.log_artifact(run_id, str(png), "best_epoch")


class RunLogger(_Writer):
    """MLflow logging of one ``tune_losses.train`` run (no search, no parent)."""

    def __init__(self, uri: str, experiment: str, run_name: str, params: Mapping[str, Any]) -> None:
        super().__init__(uri, experiment)
        self.run_id = self.client.create_run(self.experiment_id, run_name=run_name).info.run_id
        self.log_params(self.run_id, params)

    @classmethod
    def attach(cls, uri: str, run_id: str) -> RunLogger:
        """A logger on an existing run (a finished training run that an evaluation adds
        to); a run or a sqlite store that is not there is a :class:`TrackingError` (no
        empty store is made)."""
        from tune_losses.tracking.readers import open_client

        client = open_client(uri)
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise TrackingError(f"no MLflow run {run_id} in {uri}") from None
        logger = cls.__new__(cls)
        logger.uri, logger.client, logger.run_id = uri, client, run_id
        logger.experiment_id = run.info.experiment_id
        logger.experiment = client.get_experiment(run.info.experiment_id).name
        return logger

    def log_numbers(self, numbers: Mapping[str, float], step: int) -> None:
        """Log every finite number of ``numbers`` at ``step``, whatever its name
        (``test/mIoU``: :meth:`log_epoch` keeps an epoch's ``train/`` and ``val/`` names only)."""
        log_scores(self.client, self.run_id, numbers, step)

    def log_epoch(self, result: Mapping[str, Any]) -> None:
        """Log one epoch's numbers at step = epoch."""
        self.log_metrics(self.run_id, result, int(result.get("epoch", 0)), int(time.time() * 1000))

    def log_artifact(self, path: str | Path) -> None:
        """Attach a file to the run."""
        self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str) -> None:
        """Close the run with ``status`` (FINISHED, FAILED or KILLED)."""
        self.client.set_terminated(self.run_id, status)
