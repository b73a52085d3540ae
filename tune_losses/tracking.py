"""MLflow layout of a search: one parent run per search, one child run per trial.

Every write happens on the Ray driver (a Tune callback), so trials need no access to
the tracking server and a cluster logs to one store. A child run holds the sampled
values as flat params (``loss.aux.ce.weight.start``), per-epoch metrics (``val/mIoU``,
``train/loss``, each weighted part, each effective weight), ``best_val_mIoU``, the
resolved trial config (``trial_config.yaml``) and the best epoch's confusion matrix.
The parent holds the space file, the leaderboard and the best config.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from ray import tune

from tune_losses.space import flatten

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "ray.trial_id"
_PARAM_MAX = 6000
_BATCH = 100


def _param_value(value: Any) -> str:
    return str(value)[:_PARAM_MAX]


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """Flat params of one trial: the sampled values plus the resolved config (loss first)."""
    exp = config.get("experiment", {})
    params: dict[str, Any] = {k: v for k, v in config.items() if k != "experiment"}
    for section in ("loss", "model", "train", "data"):
        for key, value in flatten(exp.get(section, {}), section).items():
            params.setdefault(key, value)
    return params


def numeric_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a Tune result worth plotting (ours, not Ray's bookkeeping)."""
    keep = ("train/", "val/", "weight/", "time/")
    extra = ("lr", "best_val_mIoU", "best_epoch", "epoch")
    out = {}
    for key, value in result.items():
        if (key.startswith(keep) or key in extra) and isinstance(value, int | float):
            if not isinstance(value, bool) and math.isfinite(value):
                out[key] = float(value)
    return out


def stop_reason(last_result: Mapping[str, Any], max_epochs: int, failed: bool) -> str:
    """How a trial ended: error, early_stopping (patience), completed, or asha (stopped)."""
    if failed:
        return "error"
    if last_result.get("early_stopped"):
        return "early_stopping"
    if int(last_result.get("epoch", 0)) >= max_epochs:
        return "completed"
    return "asha"


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of MLflow experiment ``name``, created if it does not exist yet."""
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Log ``params`` as strings, in batches of the size MLflow accepts."""
    items = [Param(k, _param_value(v)) for k, v in params.items()]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[i : i + _BATCH])


def log_result(
    client: MlflowClient, run_id: str, result: Mapping[str, Any], step: int, ts: int
) -> None:
    """Log the numbers of one reported epoch (:func:`numeric_metrics`) at ``step``."""
    metrics = [Metric(k, v, ts, step) for k, v in numeric_metrics(result).items()]
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _BATCH])


class RunLogger:
    """MLflow logging of one ``tune_losses.train`` run (no search, no parent)."""

    def __init__(self, uri: str, experiment: str, run_name: str, params: Mapping[str, Any]) -> None:
        self.client = MlflowClient(tracking_uri=uri)
        exp_id = experiment_id(self.client, experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        log_params(self.client, self.run_id, params)

    def log_epoch(self, result: Mapping[str, Any]) -> None:
        """Log one epoch's numbers at step = epoch."""
        step = int(result.get("epoch", 0))
        log_result(self.client, self.run_id, result, step, int(time.time() * 1000))

    def log_artifact(self, path: str | Path) -> None:
        """Attach a file to the run."""
        self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str) -> None:
        """Close the run with ``status`` (FINISHED, FAILED or KILLED)."""
        self.client.set_terminated(self.run_id, status)


class SearchTracker:
    """Owns the parent run and every child run of one search; never leaves one RUNNING."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.client = MlflowClient(tracking_uri=uri)
        self.uri, self.experiment = uri, experiment
        self.experiment_id = experiment_id(self.client, experiment)
        self.parent_id: str | None = None
        self.children: dict[str, str] = {}

    # ------------------------------------------------------------------ parent
    def start(self, run_name: str, params: Mapping[str, Any], space_file: Path) -> str:
        """Open the search's parent run with its settings and the space file."""
        run = self.client.create_run(
            self.experiment_id, run_name=run_name, tags={"tune_losses.kind": "search"}
        )
        self.parent_id = run.info.run_id
        log_params(self.client, self.parent_id, params)
        self.client.log_artifact(self.parent_id, str(space_file), "space")
        return self.parent_id

    def reopen(self, parent_id: str) -> None:
        """Continue a resumed search's parent run and adopt its existing children."""
        self.parent_id = parent_id
        self.client.update_run(parent_id, status="RUNNING")
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'"
        )
        self.children = {r.data.tags[TRIAL_TAG]: r.info.run_id for r in runs}

    def finish(
        self, leaderboard_csv: str, best_config_yaml: str | None, best: Mapping[str, Any]
    ) -> None:
        """Attach the leaderboard and best config to the parent and close it FINISHED."""
        pid = self._parent()
        self.client.log_text(pid, leaderboard_csv, "leaderboard.csv")
        if best_config_yaml is not None:
            self.client.log_text(pid, best_config_yaml, "best_config.yaml")
        for key, value in best.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self.client.log_metric(pid, key, float(value))
            else:
                self.client.set_tag(pid, key, str(value))
        self.client.set_terminated(pid, "FINISHED")

    def open_children(self) -> list[str]:
        """Child runs of this search still RUNNING (trials interrupted mid-way)."""
        if self.parent_id is None:
            return []
        query = f"tags.`{PARENT_TAG}` = '{self.parent_id}' and attributes.status = 'RUNNING'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query)
        return [r.info.run_id for r in runs]

    def abort(self, status: str = "KILLED") -> None:
        """End every open child run and the parent with ``status`` (FAILED or KILLED)."""
        for run_id in self.open_children():
            self.client.set_terminated(run_id, status)
        if self.parent_id is not None:
            if self.client.get_run(self.parent_id).info.status == "RUNNING":
                self.client.set_terminated(self.parent_id, status)

    def _parent(self) -> str:
        if self.parent_id is None:
            raise RuntimeError("SearchTracker.start() was not called")
        return self.parent_id

    # ------------------------------------------------------------------ children
    def trial_started(self, trial_id: str, name: str, config: Mapping[str, Any]) -> None:
        """Open the trial's child run (or reopen it after a restore): params and config."""
        if trial_id in self.children:  # restored or retried: same run continues
            self.client.update_run(self.children[trial_id], status="RUNNING")
            return
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={PARENT_TAG: self._parent(), TRIAL_TAG: trial_id},
        )
        run_id = run.info.run_id
        self.children[trial_id] = run_id
        log_params(self.client, run_id, trial_params(config))
        text = yaml.safe_dump(config.get("experiment", {}), sort_keys=False)
        self.client.log_text(run_id, text, "trial_config.yaml")

    def trial_result(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """Log one reported epoch of a trial."""
        run_id = self.children.get(trial_id)
        if run_id is None:
            return
        step = int(result.get("training_iteration", result.get("epoch", 0)))
        log_result(self.client, run_id, result, step, int(1000 * float(result.get("timestamp", 0))))

    def trial_ended(
        self,
        trial_id: str,
        *,
        failed: bool,
        last_result: Mapping[str, Any],
        max_epochs: int,
        checkpoint_dir: str | None,
        error: str | None = None,
    ) -> str:
        """Close a child run: FINISHED (tagged how it stopped) or FAILED with the error;
        returns how it stopped (completed, asha, early_stopping, error)."""
        run_id = self.children.get(trial_id)
        if run_id is None:
            return "unknown"
        epochs = int(last_result.get("epoch", 0))
        reason = stop_reason(last_result, max_epochs, failed)
        self.client.set_tag(run_id, "stop_reason", reason)
        self.client.set_tag(run_id, "epochs_run", str(epochs))
        if error:
            self.client.set_tag(run_id, "error", error[:5000])
        if "best_val_mIoU" in last_result:
            self.client.log_metric(run_id, "best_val_mIoU", float(last_result["best_val_mIoU"]))
        if checkpoint_dir is not None:
            self._log_best_epoch(run_id, Path(checkpoint_dir))
        status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
        self.client.set_terminated(run_id, status)
        return reason

    def _log_best_epoch(self, run_id: str, directory: Path) -> None:
        from tune_losses.engine import SUMMARY_FILE
        from tune_losses.plots import plot_confusion_matrix, plot_per_class_iou

        path = directory / SUMMARY_FILE
        if not path.is_file():
            return
        summary = json.loads(path.read_text())
        names = summary["class_names"]
        self.client.log_dict(run_id, summary.pop("loss_setup", {}), "loss_setup.json")
        self.client.log_dict(run_id, summary, "best_epoch.json")
        with tempfile.TemporaryDirectory() as tmp:
            if summary.get("confmat") is not None:
                png = plot_confusion_matrix(summary["confmat"], names, Path(tmp) / "confmat.png")
                self.client.log_artifact(run_id, str(png), "best_epoch")
            if summary.get("iou_per_class"):
                png = plot_per_class_iou(summary["iou_per_class"], names, Path(tmp) / "iou.png")
                self.client.log_artifact(run_id, str(png), "best_epoch")


class TrialLogger(tune.Callback):
    """Tune callback forwarding trial events to a :class:`SearchTracker` (driver side)."""

    def __init__(self, tracker: SearchTracker, max_epochs: int, verbose: bool = True) -> None:
        self.tracker = tracker
        self.max_epochs = max_epochs
        self.verbose = verbose

    def __getstate__(self) -> dict[str, Any]:
        """Ray pickles the run config with its callbacks (for ``Tuner.restore``): keep the
        addresses only, and reconnect to the same parent run on unpickling."""
        t = self.tracker
        return {
            "uri": t.uri,
            "experiment": t.experiment,
            "parent_id": t.parent_id,
            "max_epochs": self.max_epochs,
            "verbose": self.verbose,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        tracker = SearchTracker(state["uri"], state["experiment"])
        if state["parent_id"] is not None:
            tracker.reopen(state["parent_id"])
        self.tracker, self.max_epochs, self.verbose = tracker, state["max_epochs"], state["verbose"]

    def _say(self, text: str) -> None:
        if self.verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def on_trial_start(
        self, iteration: int, trials: Sequence[Any], trial: Any, **info: Any
    ) -> None:
        self.tracker.trial_started(trial.trial_id, str(trial), trial.config)
        sampled = {k: v for k, v in trial.config.items() if k != "experiment"}
        shown = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sampled.items()
        )
        self._say(f"{trial.trial_id} started: {shown}")

    def on_trial_result(
        self, iteration: int, trials: Sequence[Any], trial: Any, result: dict, **info: Any
    ) -> None:
        self.tracker.trial_result(trial.trial_id, result)
        self._say(
            f"{trial.trial_id} epoch {result.get('epoch')}/{self.max_epochs}"
            f"  val mIoU {result.get('val/mIoU', math.nan):.2f}"
            f"  best {result.get('best_val_mIoU', math.nan):.2f}"
            f"  train loss {result.get('train/loss', math.nan):.4f}"
        )

    def _end(self, trial: Any, failed: bool) -> None:
        checkpoint = trial.checkpoint
        directory = None
        if checkpoint is not None and Path(checkpoint.path).is_dir():
            directory = checkpoint.path
        reason = self.tracker.trial_ended(
            trial.trial_id,
            failed=failed,
            last_result=trial.last_result or {},
            max_epochs=self.max_epochs,
            checkpoint_dir=directory,
            error=_error_text(trial) if failed else None,
        )
        if not failed:
            best = (trial.last_result or {}).get("best_val_mIoU", math.nan)
            self._say(f"{trial.trial_id} ended ({reason}): best val mIoU {best:.2f}")

    def on_trial_complete(
        self, iteration: int, trials: Sequence[Any], trial: Any, **info: Any
    ) -> None:
        self._end(trial, failed=False)

    def on_trial_error(
        self, iteration: int, trials: Sequence[Any], trial: Any, **info: Any
    ) -> None:
        self._end(trial, failed=True)
        text = (_error_text(trial) or "").strip().splitlines()
        self._say(f"{trial.trial_id} failed: {text[-1] if text else 'unknown error'}")


def _error_text(trial: Any) -> str | None:
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text()
    return None
