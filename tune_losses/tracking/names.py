"""The MLflow layout's names (tags, metrics, files) and the values a trial's run gets under them."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from tune_losses.config import flatten
from tune_losses.scorecard import SCORED_SPLIT

KIND_TAG = "tune_losses.kind"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "ray.trial_id"
STOP_TAG = "stop_reason"
EPOCHS_TAG = "epochs_run"
ERROR_TAG = "error"
ERROR_REASON_TAG = "error_reason"  # one line: "non-finite loss at epoch 3", "out of memory"
NODE_IP_TAG = "node_ip"  # where the trial last ran (its node, host and torch device)
HOSTNAME_TAG = "hostname"
DEVICE_TAG = "device"
STEP_METRIC = "epoch"  # logged at every step: its history tells the last step logged
CLONED_TAG = "pbt.cloned_from"  # the last PBT exploit: "<donor trial>@<epoch>"
LINEAGE_TAG = "pbt.lineage"  # every exploit, oldest first, comma-separated
REPEAT_TAG = "repeat_of"  # a repeat at another seed: the trial id of the configuration's first run
BASELINE_TAG = "baseline"  # a baseline's run (search.baselines): its name
CONFIRM_TAG = "confirm"  # a run of the confirm stage: its arm (``t03``, ``base ce``)
SEED_TAG = "seed"  # a confirm run's training seed
CONFIRM_FILE = "confirm.csv"  # each confirmed arm's mean and sd (parent artifact, run folder)
LINEAGE_FILE = "lineage.yaml"  # what a child really ran: phases and per-step LR, weights
BEST_METRIC = "best_val_mIoU"
CURVE_METRIC = "val/mIoU"
WEIGHT_PREFIX = "weight/"  # weight/<head>/<term>: the weight applied to a term (epoch mean)
PARAM_PREFIX = "loss."
TRIAL_CONFIG = "trial_config.yaml"
LEADERBOARD = "leaderboard.csv"
BEST_CONFIG = "best_config.yaml"
REPORT_DIR = "report"
RUN_FILE = "mlflow_run.json"  # in a train run folder: the store and run it was logged to
PREDICTIONS = "predictions.png"  # a child's best-epoch predictions (engine draws them)
NOTE_TAG = "mlflow.note.content"  # the run's description, rendered as markdown by the UI
GIT_COMMIT_TAG = "mlflow.source.git.commit"
GIT_DIRTY_TAG = "git_dirty"
VERSION_TAG = "version.{}"
TRIALS_COMPLETED = "trials_completed"
TRIALS_PRUNED = "trials_pruned"
TRIALS_FAILED = "trials_failed"
EPOCHS_SPENT = "epochs_spent"
TRIALS_DUPLICATE = "trials_duplicate"  # proposals told a trained configuration's value
TRIALS_REPEATED = "trials_repeated"  # runs of a contender at a further seed (search.repeats)
EPOCHS_REPEATED = "epochs_repeated"  # their epochs (also in epochs_spent)


class TrackingError(ValueError):
    """A user error about the store (unknown experiment, run or file): one line, exit 2."""


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """Flat params of one trial: the sampled values plus the resolved config (loss first)."""
    exp = config.get("experiment", {})
    params = {k: v for k, v in config.items() if k != "experiment"}
    for section in ("loss", "model", "train", "data"):
        for key, value in flatten(exp.get(section, {}), section).items():
            params.setdefault(key, value)
    return params


CHOICE_SUFFIXES = (".choice", ".grid")
_OFF_LABELS = {"none", "null", "off"}


def trial_run_name(number: int, config: Mapping[str, Any]) -> str:
    """A child run's name a person can tell apart in the runs table: the trial's number in
    the search and the chosen options of the space's choices, e.g. ``t03 lovasz+decay``.

    The sampled values are the keys of the trial config other than ``experiment``; those
    ending in ``.choice`` (or ``.grid``) hold an option's label. Options meaning "off"
    (``none``) are left out; with no choice in the space the name is ``t03``.
    """
    name = f"t{number:02d}"
    labels = [
        str(value)
        for key, value in config.items()
        if key != "experiment" and key.endswith(CHOICE_SUFFIXES)
    ]
    chosen = [label for label in labels if label.lower() not in _OFF_LABELS]
    return f"{name} {'+'.join(chosen)}" if chosen else name


def numeric_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of an epoch's result worth plotting (ours, not Ray's bookkeeping), with
    the scores on another split (``test/mIoU``) where the result names it (:data:`SCORED_SPLIT`)."""
    keep: tuple[str, ...] = ("train/", "val/", "weight/", "time/", "best_")
    split = result.get(SCORED_SPLIT)
    if isinstance(split, str) and split:
        keep += (f"{split}/",)
    extra = ("lr", "epoch")
    out = {}
    for key, value in result.items():
        if (key.startswith(keep) or key in extra) and isinstance(value, int | float):
            if not isinstance(value, bool) and math.isfinite(value):
                out[key] = float(value)
    return out


def stop_reason(last_result: Mapping[str, Any], max_epochs: int, failed: bool) -> str:
    """How a trial ended: error, completed (ran every scheduled epoch, even when patience
    ran out at the last one), early_stopping (patience, before the last epoch), or asha."""
    if failed:
        return "error"
    if int(last_result.get("epoch", 0)) >= int(last_result.get("epochs_max", max_epochs)):
        return "completed"
    if last_result.get("early_stopped"):
        return "early_stopping"
    return "asha"


_FAILURE_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+): (.+)$")


def error_reason(error: str | None) -> str:
    """One line saying why a trial failed, from Ray's error text: the message of a
    ``TrialFailed`` (``non-finite loss at epoch 3``, ``out of memory at epoch 1``), else
    the last ``Type: message`` line of the traceback."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    found = [m for m in map(_FAILURE_LINE.match, lines) if m]
    for match in reversed(found):
        if match.group(1) == "TrialFailed":
            return match.group(2)[:500]
    if found:
        return f"{found[-1].group(1)}: {found[-1].group(2)}"[:500]
    return lines[-1][:500] if lines else "unknown error"
