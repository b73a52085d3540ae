"""The Tune callback that turns trial events into MLflow runs (driver side).

Ray calls it on the driver for every trial start, reported epoch, completion and error;
it forwards them to :class:`~tune_losses.tracking.SearchTracker`, which owns the MLflow
layout, and prints one progress line per event.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray import tune

from tune_losses.engine import PREDICTIONS_FILE, SUMMARY_FILE, read_summary
from tune_losses.tracking import (
    CURVE_METRIC,
    REPEAT_TAG,
    SearchTracker,
    best_metric_name,
    format_best,
    short_names,
    trial_run_name,
)
from tune_losses.tune.intensify import REPEAT_KEY
from tune_losses.tune.trainable import (
    CLONED_FROM,
    DEVICE,
    EXPERIMENT_KEY,
    HOSTNAME,
    NODE_IP,
    trial_values,
)


class TrialLogger(tune.Callback):
    """Forwards trial events to a :class:`SearchTracker` and prints progress, each trial's
    best value named after the search's (first) ``metric``."""

    def __init__(
        self,
        tracker: SearchTracker,
        max_epochs: int,
        verbose: bool = True,
        metric: str = CURVE_METRIC,
    ) -> None:
        self.tracker = tracker
        self.max_epochs = max_epochs
        self.verbose = verbose
        self.metric = metric

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
            "metric": self.metric,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        tracker = SearchTracker(state["uri"], state["experiment"])
        if state["parent_id"] is not None:
            tracker.reopen(state["parent_id"])
        self.tracker, self.max_epochs, self.verbose = tracker, state["max_epochs"], state["verbose"]
        self.metric = state.get("metric", CURVE_METRIC)  # a search started before it was kept
        self.adopted = True

    adopted = False  # children adopted from an earlier run, not yet checked against Ray's

    def _say(self, text: str) -> None:
        if self.verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def on_trial_start(
        self, iteration: int, trials: Sequence[Any], trial: Any, **info: Any
    ) -> None:
        if self.adopted:  # the first start after --resume: Ray's trials are all known now
            self.adopted = False
            known = {t.trial_id for t in trials}
            gone = self.tracker.retire([t for t in self.tracker.children if t not in known])
            if gone:
                self._say(f"{len(gone)} trial run(s) Ray did not save deleted; rerun as new")
        values = trial_values(trial.config)
        restarted = trial.trial_id in self.tracker.children  # resumed, retried or PBT-cloned
        first = values.get(REPEAT_KEY)
        if restarted:
            name = "restarted"
        elif first is not None:  # a contender at a further seed: named after its first run
            seed = values[EXPERIMENT_KEY]["train"]["seed"]
            name = f"{self.tracker.run_name(first).split()[0]} seed {seed}"
        else:
            name = trial_run_name(self.tracker.next_trial_number(), values)
        self.tracker.trial_started(trial.trial_id, name, values)
        if first is not None:
            self.tracker.trial_tagged(trial.trial_id, {REPEAT_TAG: str(first)})
        sampled = {k: v for k, v in values.items() if k not in (EXPERIMENT_KEY, REPEAT_KEY)}
        names = short_names(list(sampled))
        shown = ", ".join(
            f"{names[k]}={v:.3g}" if isinstance(v, float) else f"{names[k]}={v}"
            for k, v in sampled.items()
        )
        self._say(f"{trial.trial_id} ({name}) started: {shown}")

    def on_trial_result(
        self, iteration: int, trials: Sequence[Any], trial: Any, result: dict, **info: Any
    ) -> None:
        step = int(result.get("training_iteration", result.get("epoch", 0)))
        self.tracker.trial_result(trial.trial_id, result, step)
        if NODE_IP in result:  # the first result of a (re)started trainable
            self.tracker.trial_placed(
                trial.trial_id,
                node_ip=str(result[NODE_IP]),
                hostname=str(result.get(HOSTNAME, "")),
                device=str(result.get(DEVICE, "")),
            )
        if CLONED_FROM in result:
            self.tracker.trial_cloned(trial.trial_id, str(result[CLONED_FROM]))
            self._say(f"{trial.trial_id} cloned from {result[CLONED_FROM]} (PBT exploit)")
        epoch = f"epoch {result.get('epoch')}/{self.max_epochs}"
        self._say(f"{trial.trial_id} {epoch}  {progress_line(result, self.metric)}")

    def _end(self, trial: Any, failed: bool) -> str:
        summary = None
        with tempfile.TemporaryDirectory() as directory:
            if trial.checkpoint is not None:
                fetch_best_epoch(trial.checkpoint, directory)
                summary = read_summary(directory)
                picture = Path(directory) / PREDICTIONS_FILE
                if picture.is_file():
                    self.tracker.log_predictions(trial.trial_id, picture)
        return self.tracker.trial_ended(
            trial.trial_id,
            failed=failed,
            last_result=trial.last_result or {},
            max_epochs=self.max_epochs,
            summary=summary,
            error=_error_text(trial) if failed else None,
        )

    def on_trial_complete(
        self, iteration: int, trials: Sequence[Any], trial: Any, **info: Any
    ) -> None:
        reason = self._end(trial, failed=False)
        best = (trial.last_result or {}).get(best_metric_name(self.metric), math.nan)
        shown = format_best(best, self.metric)
        self._say(f"{trial.trial_id} ended ({reason}): best {self.metric} {shown}")

    def on_trial_error(
        self, iteration: int, trials: Sequence[Any], trial: Any, **info: Any
    ) -> None:
        self._end(trial, failed=True)
        text = (_error_text(trial) or "").strip().splitlines()
        self._say(f"{trial.trial_id} failed: {text[-1] if text else 'unknown error'}")


def progress_line(result: Mapping[str, Any], metric: str = CURVE_METRIC) -> str:
    """An epoch's numbers as the progress line prints them: val mIoU, the best value so far
    of the search's ``metric`` (named when it is not val mIoU) and the train loss."""
    best = format_best(result.get(best_metric_name(metric), math.nan), metric)
    label = "best" if metric == CURVE_METRIC else f"best {metric}"
    return (
        f"val mIoU {result.get(CURVE_METRIC, math.nan):.2f}  {label} {best}"
        f"  train loss {result.get('train/loss', math.nan):.4f}"
    )


def fetch_best_epoch(checkpoint: tune.Checkpoint, directory: str | Path) -> list[str]:
    """Copy a checkpoint's best-epoch files (``best.json``, ``predictions.png``) into the
    local ``directory`` through the checkpoint's own filesystem (local, ``s3://``,
    ``gs://``), without the model state; returns the names of the files it found."""
    from pyarrow.fs import FileType

    fs, root = checkpoint.filesystem, checkpoint.path.rstrip("/")
    names = [SUMMARY_FILE, PREDICTIONS_FILE]
    infos = fs.get_file_info([f"{root}/{name}" for name in names])
    found = [name for name, info in zip(names, infos, strict=True) if info.type == FileType.File]
    for name in found:
        with fs.open_input_stream(f"{root}/{name}") as stream:
            (Path(directory) / name).write_bytes(stream.read())
    return found


def _error_text(trial: Any) -> str | None:
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text()
    return None
