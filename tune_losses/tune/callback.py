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
    BASELINE_TAG,
    CONFIRM_TAG,
    CURVE_METRIC,
    REPEAT_TAG,
    SEED_TAG,
    SearchTracker,
    best_metric_name,
    format_best,
    short_names,
    trial_run_name,
)
from tune_losses.tune.intensify import BASELINE_KEY, REPEAT_KEY
from tune_losses.tune.trainable import (
    CLONED_FROM,
    CONFIRM_KEY,
    DEVICE,
    EXPERIMENT_KEY,
    HOSTNAME,
    NODE_IP,
    SPLIT_KEY,
    trial_values,
)

MARK_KEYS = (REPEAT_KEY, BASELINE_KEY, CONFIRM_KEY, SPLIT_KEY)  # in a config, not sampled


class TrialLogger(tune.Callback):
    """Forwards trial events to a :class:`SearchTracker` and prints progress, each trial's
    best value named after the search's (first) ``metric``; ``confirm``: the logger of the
    confirm stage (on resume it retires only the confirm runs Ray does not know)."""

    def __init__(
        self,
        tracker: SearchTracker,
        max_epochs: int,
        verbose: bool = True,
        metric: str = CURVE_METRIC,
        confirm: bool = False,
    ) -> None:
        self.tracker = tracker
        self.max_epochs = max_epochs
        self.verbose = verbose
        self.metric = metric
        self.confirm = confirm

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
            "confirm": self.confirm,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        tracker = SearchTracker(state["uri"], state["experiment"])
        if state["parent_id"] is not None:
            tracker.reopen(state["parent_id"])
        self.tracker, self.max_epochs, self.verbose = tracker, state["max_epochs"], state["verbose"]
        self.metric = state.get("metric", CURVE_METRIC)  # a search started before it was kept
        self.confirm = state.get("confirm", False)
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
            confirms = self.tracker.confirms
            mine = [t for t in self.tracker.children if (t in confirms) == self.confirm]
            gone = self.tracker.retire([t for t in mine if t not in known])
            if gone:
                self._say(f"{len(gone)} trial run(s) Ray did not save deleted; rerun as new")
        values = trial_values(trial.config)
        restarted = trial.trial_id in self.tracker.children  # resumed, retried or PBT-cloned
        name, tags = self._name_and_tags(values)
        if restarted:
            name = "restarted"
        elif not name:
            name = trial_run_name(self.tracker.next_trial_number(), values)
        logged = {k: v for k, v in values.items() if k not in MARK_KEYS}
        self.tracker.trial_started(trial.trial_id, name, logged, tags)
        sampled = {k: v for k, v in logged.items() if k != EXPERIMENT_KEY}
        names = short_names(list(sampled))
        shown = ", ".join(
            f"{names[k]}={v:.3g}" if isinstance(v, float) else f"{names[k]}={v}"
            for k, v in sampled.items()
        )
        self._say(f"{trial.trial_id} ({name}) started: {shown}")

    def _name_and_tags(self, values: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
        """The run name and tags of a confirm run (``confirm t03 seed 7``), a baseline
        (``base ce``, ``base ce seed 1``) or a repeat (``t03 seed 1``); ``""`` for a
        configuration's first run (named by its number)."""
        seed = values[EXPERIMENT_KEY]["train"]["seed"]
        first, base, arm = (values.get(k) for k in (REPEAT_KEY, BASELINE_KEY, CONFIRM_KEY))
        if arm is not None:  # a baseline's arm is tagged with its name too
            tags = {CONFIRM_TAG: str(arm), SEED_TAG: str(seed)}
            tags.update({BASELINE_TAG: str(base)} if base is not None else {})
            return f"confirm {arm} seed {seed}", tags
        tags = {REPEAT_TAG: str(first)} if first is not None else {}
        if base is not None:
            tags[BASELINE_TAG] = str(base)
            return f"base {base}" + (f" seed {seed}" if first else ""), tags
        if first is not None:  # a contender at a further seed: named after its first run
            return f"{self.tracker.run_name(first).split()[0]} seed {seed}", tags
        return "", tags

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
