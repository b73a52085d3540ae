"""MLflow layout of a search and of a training run: names, writers, readers, leaderboard.

One parent run per search (tagged ``tune_losses.kind=search``), one child run per trial
(tagged ``mlflow.parentRunId`` and ``ray.trial_id``). A child holds the sampled values
and the resolved config as flat params (``loss.aux.ce.weight.start``), per-epoch metrics
(``val/mIoU``, ``train/loss``, each weighted part, each effective weight),
``best_val_mIoU``, ``trial_config.yaml`` and the best epoch's confusion matrix. The parent
holds the space file, the leaderboard and the best config.

This module is the only owner of those names. It never imports Ray: the search's Tune
callback (:mod:`tune_losses.tune.callback`) adapts trial events to :class:`SearchTracker`,
and :mod:`tune_losses.report` reads the same layout back through :func:`load_trials`.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import math
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Metric, Param, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tune_losses.config import best_metric_name, flatten

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
BEST_METRIC = "best_val_mIoU"
CURVE_METRIC = "val/mIoU"
WEIGHT_PREFIX = "weight/"  # weight/<head>/<term>: the weight applied to a term (epoch mean)
PARAM_PREFIX = "loss."
TRIAL_CONFIG = "trial_config.yaml"
LEADERBOARD = "leaderboard.csv"
BEST_CONFIG = "best_config.yaml"
REPORT_DIR = "report"
PREDICTIONS = "predictions.png"  # a child's best-epoch predictions (engine draws them)
NOTE_TAG = "mlflow.note.content"  # the run's description, rendered as markdown by the UI
GIT_COMMIT_TAG = "mlflow.source.git.commit"
GIT_DIRTY_TAG = "git_dirty"
VERSION_TAG = "version.{}"
TRIALS_COMPLETED = "trials_completed"
TRIALS_PRUNED = "trials_pruned"
TRIALS_FAILED = "trials_failed"
EPOCHS_SPENT = "epochs_spent"
VERSIONED_PACKAGES = ("torch", "ray", "optuna", "segmentation_models_pytorch", "mlflow")
STORY_TOP = 5
_PARAM_MAX = 6000
_BATCH = 100
_PAGE = 1000
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class TrackingError(ValueError):
    """A user error about the store (unknown experiment, run or file): one line, exit 2."""


# --------------------------------------------------------------------------- writing


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
    """The numbers of an epoch's result worth plotting (ours, not Ray's bookkeeping)."""
    keep = ("train/", "val/", "weight/", "time/", "best_")
    extra = ("lr", "epoch")
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
    if int(last_result.get("epoch", 0)) >= int(last_result.get("epochs_max", max_epochs)):
        return "completed"
    return "asha"


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
        """The best epoch's summary (engine's ``Trainer.summary``) as JSON and plots."""
        from tune_losses.plots import plot_confusion_matrix, plot_per_class_iou

        summary = dict(summary)
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


class RunLogger(_Writer):
    """MLflow logging of one ``tune_losses.train`` run (no search, no parent)."""

    def __init__(self, uri: str, experiment: str, run_name: str, params: Mapping[str, Any]) -> None:
        super().__init__(uri, experiment)
        self.run_id = self.client.create_run(self.experiment_id, run_name=run_name).info.run_id
        self.log_params(self.run_id, params)

    def log_epoch(self, result: Mapping[str, Any]) -> None:
        """Log one epoch's numbers at step = epoch."""
        self.log_metrics(self.run_id, result, int(result.get("epoch", 0)), int(time.time() * 1000))

    def log_artifact(self, path: str | Path) -> None:
        """Attach a file to the run."""
        self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str) -> None:
        """Close the run with ``status`` (FINISHED, FAILED or KILLED)."""
        self.client.set_terminated(self.run_id, status)


class SearchTracker(_Writer):
    """Owns the parent run and every child run of one search; never leaves one RUNNING."""

    def __init__(self, uri: str, experiment: str) -> None:
        super().__init__(uri, experiment)
        self.parent_id: str | None = None
        self.children: dict[str, str] = {}
        self.logged_through: dict[str, int] = {}  # trial id -> last step logged

    # ------------------------------------------------------------------ parent
    def start(self, run_name: str, params: Mapping[str, Any], space_file: Path) -> str:
        """Open the search's parent run with its settings and the space file."""
        run = self.client.create_run(
            self.experiment_id, run_name=run_name, tags={KIND_TAG: "search"}
        )
        self.parent_id = run.info.run_id
        self.log_params(self.parent_id, params)
        self.client.log_artifact(self.parent_id, str(space_file), "space")
        return self.parent_id

    def reopen(self, parent_id: str) -> None:
        """Continue a resumed search's parent run and adopt its existing children."""
        self.parent_id = parent_id
        self.client.update_run(parent_id, status="RUNNING")
        runs = search_all(self.client, self.experiment_id, f"tags.`{PARENT_TAG}` = '{parent_id}'")
        self.children = {r.data.tags[TRIAL_TAG]: r.info.run_id for r in runs}

    def finish(
        self, leaderboard_csv: str, best_config_yaml: str | None, best: Mapping[str, Any]
    ) -> None:
        """Attach the leaderboard and best config to the parent and close it FINISHED."""
        pid = self._parent()
        self.client.log_text(pid, leaderboard_csv, LEADERBOARD)
        if best_config_yaml is not None:
            self.client.log_text(pid, best_config_yaml, BEST_CONFIG)
        for key, value in best.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self.client.log_metric(pid, key, float(value))
            else:
                self.client.set_tag(pid, key, str(value))
        self.client.set_terminated(pid, "FINISHED")

    def attach(self, texts: Mapping[str, str]) -> None:
        """Log text files on the parent run (``pareto.csv``, one best config per member)."""
        for path, text in texts.items():
            self.client.log_text(self._parent(), text, path)

    def log_environment(self, versions: Mapping[str, str], commit: Mapping[str, str]) -> None:
        """Tag the parent with package versions (``version.torch`` ...) and the project's
        git commit (:func:`git_tags`), so a search can be traced to the code that ran it."""
        tags = {VERSION_TAG.format(name): value for name, value in versions.items()}
        tags.update(commit)
        for key, value in tags.items():
            self.client.set_tag(self._parent(), key, value)

    def tell_story(self, trials: Sequence[TrialRecord], reproduce: str, retrain: str) -> None:
        """The parent's description (:func:`search_story`) and its trial counts
        (:func:`trial_counts`), so the runs table and run page say how the search went."""
        pid = self._parent()
        story = search_story(trials, self.experiment_id, reproduce=reproduce, retrain=retrain)
        self.client.set_tag(pid, NOTE_TAG, story)
        for key, value in trial_counts(trials).items():
            self.client.log_metric(pid, key, value)

    def open_children(self) -> list[str]:
        """Child runs of this search still RUNNING (trials interrupted mid-way)."""
        if self.parent_id is None:
            return []
        query = f"tags.`{PARENT_TAG}` = '{self.parent_id}' and attributes.status = 'RUNNING'"
        return [r.info.run_id for r in search_all(self.client, self.experiment_id, query)]

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
    def next_trial_number(self) -> int:
        """The number of a trial not seen yet: 1 + the child runs this search has (resumed
        searches included), in the order trials start."""
        return len(self.children) + 1

    def trial_started(self, trial_id: str, name: str, config: Mapping[str, Any]) -> None:
        """Open the trial's child run (or reopen it after a restore): params and config."""
        if trial_id in self.children:  # restored or retried: same run continues
            self.client.update_run(self.children[trial_id], status="RUNNING")
            self._complete_params(self.children[trial_id], config)
            return
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={PARENT_TAG: self._parent(), TRIAL_TAG: trial_id},
        )
        run_id = run.info.run_id
        self.children[trial_id] = run_id
        self.logged_through[trial_id] = 0
        self.log_params(run_id, trial_params(config))
        text = yaml.safe_dump(config.get("experiment", {}), sort_keys=False)
        self.client.log_text(run_id, text, TRIAL_CONFIG)

    def log_predictions(self, trial_id: str, png: str | Path) -> None:
        """Attach the best epoch's predictions picture to a trial's child run as
        :data:`PREDICTIONS`, whatever the file is called."""
        run_id = self.children.get(trial_id)
        if run_id is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / PREDICTIONS
            target.write_bytes(Path(png).read_bytes())
            self.client.log_artifact(run_id, str(target))

    def _complete_params(self, run_id: str, config: Mapping[str, Any]) -> None:
        """Log the params an adopted child lacks (its search was killed before they were
        all written); MLflow refuses a param logged again with another value."""
        logged = self.client.get_run(run_id).data.params
        missing = {k: v for k, v in trial_params(config).items() if k not in logged}
        if not missing:
            return
        self.log_params(run_id, missing)
        if not any(a.path == TRIAL_CONFIG for a in self.client.list_artifacts(run_id)):
            text = yaml.safe_dump(config.get("experiment", {}), sort_keys=False)
            self.client.log_text(run_id, text, TRIAL_CONFIG)

    def _last_step(self, trial_id: str, run_id: str) -> int:
        """The last step logged for a trial: remembered, or read back from MLflow (the
        ``epoch`` history) for a child adopted on resume."""
        if trial_id not in self.logged_through:
            history = self.client.get_metric_history(run_id, STEP_METRIC)
            self.logged_through[trial_id] = max((int(m.step) for m in history), default=0)
        return self.logged_through[trial_id]

    def trial_result(self, trial_id: str, result: Mapping[str, Any], step: int) -> None:
        """Log one reported epoch of a trial at ``step``, unless that step is logged already.

        A trial resumed from a checkpoint older than its last report (the driver was
        killed, a worker lost) reruns those epochs exactly; MLflow would keep both values,
        so one value per step stays in the store: the first."""
        run_id = self.children.get(trial_id)
        if run_id is None or step <= self._last_step(trial_id, run_id):
            return
        ts = int(1000 * float(result.get("timestamp", time.time())))
        self.log_metrics(run_id, result, step, ts)
        self.logged_through[trial_id] = step

    def trial_placed(self, trial_id: str, *, node_ip: str, hostname: str, device: str) -> None:
        """Tag the trial's child run with where it (last) ran: node IP, host, torch device."""
        run_id = self.children.get(trial_id)
        if run_id is None:
            return
        tags = {NODE_IP_TAG: node_ip, HOSTNAME_TAG: hostname, DEVICE_TAG: device}
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def trial_cloned(self, trial_id: str, donor: str) -> None:
        """Record that PBT restarted the trial from ``donor`` (``"<trial>@<epoch>"``)."""
        run_id = self.children.get(trial_id)
        if run_id is None:
            return
        lineage = self.client.get_run(run_id).data.tags.get(LINEAGE_TAG)
        self.client.set_tag(run_id, CLONED_TAG, donor)
        self.client.set_tag(run_id, LINEAGE_TAG, f"{lineage},{donor}" if lineage else donor)

    def trial_ended(
        self,
        trial_id: str,
        *,
        failed: bool,
        last_result: Mapping[str, Any],
        max_epochs: int,
        summary: Mapping[str, Any] | None,
        error: str | None = None,
    ) -> str:
        """Close a child run: FINISHED (tagged how it stopped) or FAILED with the error;
        returns how it stopped (completed, asha, early_stopping, error)."""
        run_id = self.children.get(trial_id)
        if run_id is None:
            return "unknown"
        reason = stop_reason(last_result, max_epochs, failed)
        self.client.set_tag(run_id, STOP_TAG, reason)
        self.client.set_tag(run_id, EPOCHS_TAG, str(int(last_result.get("epoch", 0))))
        if error:
            self.client.set_tag(run_id, ERROR_TAG, error[:5000])
        if failed:
            self.client.set_tag(run_id, ERROR_REASON_TAG, error_reason(error))
        if summary is not None:
            self.log_best_epoch(run_id, summary)
        status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
        self.client.set_terminated(run_id, status)
        return reason


def package_versions(names: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` from their metadata (nothing is imported, so Ray's
    version can be read without importing Ray); a missing package is ``not installed``."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_tags(root: Path | None = None) -> dict[str, str]:
    """``mlflow.source.git.commit`` (and ``git_dirty`` when files differ from it) of the
    project checkout at ``root`` (default: the folder above this package); empty when the
    code does not run from a git checkout or git is missing."""
    root = root or Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return {}
    try:
        commit = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {GIT_COMMIT_TAG: commit, GIT_DIRTY_TAG: str(bool(dirty)).lower()}


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


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


# --------------------------------------------------------------------------- reading


def search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """Every run matching ``filter_string``, newest first, page by page (no 1000-run cap)."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            order_by=["attributes.start_time DESC"],
            max_results=_PAGE,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def failure_reasons(client: MlflowClient, experiment_id: str, parent_id: str) -> list[str]:
    """The ``error_reason`` of every FAILED child of a search, oldest first."""
    query = f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = 'FAILED'"
    runs = reversed(search_all(client, experiment_id, query))
    return [r.data.tags.get(ERROR_REASON_TAG, "unknown error") for r in runs]


def open_client(uri: str) -> MlflowClient:
    """An MLflow client on ``uri``; a missing sqlite file is an error, not a new empty store."""
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        path = Path(uri[len("sqlite:///") :])
        if not path.is_file():
            raise TrackingError(f"no MLflow store at {uri} (file {path} does not exist)")
    return MlflowClient(tracking_uri=uri)


def find_parent(client: MlflowClient, experiment: str, run: str | None = None) -> Run:
    """The parent run of a search: by id or name, else the latest one of ``experiment``.

    A run id of a search in another experiment is accepted too.
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        raise TrackingError(f"no experiment {experiment!r} in {client.tracking_uri}")
    kind = f"tags.`{KIND_TAG}` = 'search'"
    if run is None:
        found = client.search_runs(
            [exp.experiment_id],
            filter_string=kind,
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not found:
            raise TrackingError(
                f"no search in experiment {experiment!r} (no run tagged {KIND_TAG}=search)"
            )
        return found[0]
    for parent in search_all(client, exp.experiment_id, kind):  # newest first
        if run in (parent.info.run_id, parent.info.run_name):
            return parent
    if _RUN_ID.match(run):
        try:
            other = client.get_run(run)
        except MlflowException:
            other = None
        if other is not None:
            if other.data.tags.get(KIND_TAG) != "search":
                raise TrackingError(f"run {run} is not a search (no tag {KIND_TAG}=search)")
            return other
    raise TrackingError(f"no search run with id or name {run!r} in experiment {experiment!r}")


def metric_history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of a metric, by step; an epoch logged twice (a retried or resumed
    trial) keeps its last value."""
    by_step: dict[int, float] = {}
    history = client.get_metric_history(run_id, key)
    for m in sorted(history, key=lambda m: m.timestamp):
        by_step[int(m.step)] = float(m.value)
    return sorted(by_step.items())


def weight_histories(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """The applied weight of each loss term per epoch, ``{"<head>/<term>": [(epoch, w)]}``,
    from the ``weight/<head>/<term>`` metrics of a run."""
    keys = sorted(k for k in client.get_run(run_id).data.metrics if k.startswith(WEIGHT_PREFIX))
    return {k[len(WEIGHT_PREFIX) :]: metric_history(client, run_id, k) for k in keys}


@dataclass
class TrialRecord:
    """One child run of a search as read back from MLflow."""

    run_id: str
    name: str
    status: str
    stop_reason: str
    epochs_run: str
    best: float
    params: dict[str, str]
    history: list[tuple[int, float]] = field(default_factory=list)
    trial_id: str = ""
    values: dict[str, float] = field(default_factory=dict)
    pareto: bool = False


def ranking(parent: Run) -> list[tuple[str, str]]:
    """``[(metric, mode), ...]`` a search ranks its trials by, from its ``search.metric`` and
    ``search.mode`` params (``val/mIoU``, ``max`` for a search that did not log them)."""
    params = parent.data.params
    metrics = yaml.safe_load(params.get("search.metric", CURVE_METRIC))
    modes = yaml.safe_load(params.get("search.mode", "max"))
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    modes = [modes] * len(metrics) if isinstance(modes, str) else list(modes)
    return list(zip(metrics, modes, strict=True))


def pareto_front(points: Mapping[str, Sequence[float]], modes: Sequence[str]) -> set[str]:
    """The keys of ``points`` that no other point dominates (at least as good in every
    objective per its mode, better in one)."""
    signs = [1.0 if mode == "max" else -1.0 for mode in modes]
    scored = {k: [s * v for s, v in zip(signs, p, strict=True)] for k, p in points.items()}

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and a != b

    return {k for k, p in scored.items() if not any(dominates(q, p) for q in scored.values())}


def load_trials(client: MlflowClient, parent: Run) -> list[TrialRecord]:
    """Every child run of ``parent`` with its ``loss.*`` params and ``val/mIoU`` history,
    best first by the search's objectives (:func:`ranking`; the Pareto front first when there
    are several), trials with no value last. ``TrialRecord.best`` is the trial's best value
    of the first metric, ``values`` of each."""
    objectives = ranking(parent)
    metric, mode = objectives[0]
    sign = -1.0 if mode == "max" else 1.0
    pid = parent.info.run_id
    children = search_all(client, parent.info.experiment_id, f"tags.`{PARENT_TAG}` = '{pid}'")
    trials = []
    for child in children:
        curve = metric_history(client, child.info.run_id, CURVE_METRIC)
        values = {
            name: float(child.data.metrics.get(best_metric_name(name), math.nan))
            for name, _ in objectives
        }
        if math.isnan(values[metric]) and metric == CURVE_METRIC:
            values[metric] = max((v for _, v in curve if math.isfinite(v)), default=math.nan)
        tags = child.data.tags
        trials.append(
            TrialRecord(
                run_id=child.info.run_id,
                name=child.info.run_name or child.info.run_id[:8],
                status=child.info.status,
                stop_reason=_stop_text(tags),
                epochs_run=tags.get(EPOCHS_TAG, ""),
                best=values[metric],
                params={k: v for k, v in child.data.params.items() if k.startswith(PARAM_PREFIX)},
                history=curve,
                trial_id=tags.get(TRIAL_TAG, ""),
                values=values,
            )
        )
    if len(objectives) > 1:
        done = {
            t.run_id: list(t.values.values())
            for t in trials
            if t.status == "FINISHED" and all(math.isfinite(v) for v in t.values.values())
        }
        front = pareto_front(done, [m for _, m in objectives])
        for t in trials:
            t.pareto = t.run_id in front
    trials.sort(
        key=lambda t: (
            not t.pareto,
            not math.isfinite(t.best),
            sign * t.best if math.isfinite(t.best) else 0,
        )
    )
    return trials


def _stop_text(tags: Mapping[str, str]) -> str:
    """The leaderboard's stop reason: the tag, with the failure's reason when it failed."""
    reason = tags.get(STOP_TAG, "")
    return f"{reason}: {tags[ERROR_REASON_TAG]}" if ERROR_REASON_TAG in tags else reason


LEADERBOARD_COLUMNS = ("rank", "trial", "run_id", "status", STOP_TAG, EPOCHS_TAG, BEST_METRIC)


def leaderboard_rows(trials: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    """The leaderboard: one dict a trial, in the order given (best first), every ``loss.*``
    param as a column. The search's summary, ``leaderboard.csv`` and the report use it."""
    keys = sorted({k for t in trials for k in t.params})
    rows = []
    for rank, t in enumerate(trials, 1):
        values = (rank, t.name, t.run_id, t.status, t.stop_reason, t.epochs_run, t.best)
        row: dict[str, Any] = dict(zip(LEADERBOARD_COLUMNS, values, strict=True))
        if len(t.values) > 1:  # a multi-objective search: each objective and the front
            row.update({best_metric_name(k): v for k, v in t.values.items()})
            row["pareto"] = t.pareto
        row.update({k: t.params.get(k, "") for k in keys})
        rows.append(row)
    return rows


def varying_params(trials: Sequence[TrialRecord]) -> list[str]:
    """``loss.*`` params that take more than one value (or are missing somewhere): what a
    search searched, as opposed to the resolved config's constants."""
    keys = sorted({k for t in trials for k in t.params})
    if len(trials) < 2:
        return keys
    return [k for k in keys if len({t.params.get(k) for t in trials}) > 1]


def searched_params(trials: Sequence[TrialRecord]) -> list[str]:
    """The params worth a column: :func:`varying_params` without aliases (a sampled value
    and the config value it resolves to hold the same values in every trial: the shortest
    name is kept): the chosen options (``.choice``) first since they tell trials apart, then
    the values every trial has before those of one branch."""
    groups: dict[tuple[str | None, ...], str] = {}
    for key in sorted(varying_params(trials), key=lambda k: (len(k), k)):
        groups.setdefault(tuple(t.params.get(key) for t in trials), key)
    present = {k: sum(k in t.params for t in trials) for k in groups.values()}
    return sorted(groups.values(), key=lambda k: (not k.endswith(CHOICE_SUFFIXES), -present[k], k))


def short_names(keys: Sequence[str], keep: int = 2) -> dict[str, str]:
    """Each dotted name without the components every name shares at the start, keeping
    at least the last ``keep`` components (``loss.decode.dice.weight`` -> ``decode.dice.weight``
    beside ``loss.aux.ce.weight.choice``)."""
    if not keys:
        return {}
    parts = [k.split(".") for k in keys]
    shared = 0
    while all(len(p) > shared + keep for p in parts) and len({p[shared] for p in parts}) == 1:
        shared += 1
    return {k: ".".join(p[shared:]) for k, p in zip(keys, parts, strict=True)}


def short_value(value: str) -> str:
    """A param value as MLflow keeps it (a string), with floats cut to 4 significant digits."""
    try:
        number = float(value)
    except ValueError:
        return value
    if not math.isfinite(number) or value.lstrip("-").isdigit():
        return value
    return f"{number:.4g}"


def leaderboard_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The leaderboard rows as CSV text (header: the union of the rows' keys)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys or list(LEADERBOARD_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# --------------------------------------------------------------------------- the story


def trial_counts(trials: Sequence[TrialRecord]) -> dict[str, float]:
    """How the trials ended: failed (error), pruned (stopped by ASHA), completed (the rest:
    ran all epochs or stopped early on their own), and the epochs trained in all."""
    failed = sum(t.status == "FAILED" or t.stop_reason.startswith("error") for t in trials)
    pruned = sum(t.stop_reason == "asha" and t.status != "FAILED" for t in trials)
    epochs = sum(int(t.epochs_run) if t.epochs_run.isdigit() else len(t.history) for t in trials)
    return {
        TRIALS_COMPLETED: float(len(trials) - failed - pruned),
        TRIALS_PRUNED: float(pruned),
        TRIALS_FAILED: float(failed),
        EPOCHS_SPENT: float(epochs),
    }


def run_link(experiment_id: str, run_id: str) -> str:
    """The MLflow UI's address of a run, relative to the UI's root (works in a description)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def search_story(
    trials: Sequence[TrialRecord],
    experiment_id: str,
    *,
    reproduce: str,
    retrain: str,
    top: int = STORY_TOP,
) -> str:
    """The parent run's markdown description: the winner with a link to its run, how the
    trials ended, the ``top`` trials with their searched values and stop reasons, and the
    commands that reproduce the search and retrain the winner. ``trials`` are best first."""
    counts = trial_counts(trials)
    lines = []
    best = next((t for t in trials if math.isfinite(t.best)), None)
    if best is None:
        lines.append("**No trial reported a val mIoU.**")
    else:
        link = run_link(experiment_id, best.run_id)
        lines.append(
            f"**Best trial: [{best.name}]({link})**, {BEST_METRIC} **{best.best:.2f}** "
            f"(run `{best.run_id}`, {best.stop_reason or best.status.lower()})."
        )
    lines.append(
        f"{len(trials)} trials: {counts[TRIALS_COMPLETED]:.0f} completed, "
        f"{counts[TRIALS_PRUNED]:.0f} pruned by ASHA, {counts[TRIALS_FAILED]:.0f} failed; "
        f"{counts[EPOCHS_SPENT]:.0f} epochs trained."
    )
    searched = searched_params(trials)
    names = short_names(searched)
    shown = trials[:top]
    if shown:
        header = ["#", "trial", BEST_METRIC, "ended", "epochs", *(names[k] for k in searched)]
        lines += ["", f"### Top {len(shown)}", "", _md_row(header), _md_row(["---"] * len(header))]
        for rank, t in enumerate(shown, 1):
            value = f"{t.best:.2f}" if math.isfinite(t.best) else "-"
            cells = [str(rank), f"[{t.name}]({run_link(experiment_id, t.run_id)})", value]
            cells += [t.stop_reason or t.status.lower(), t.epochs_run]
            cells += [short_value(t.params.get(k, "")) or "-" for k in searched]
            lines.append(_md_row(cells))
    lines += ["", "### Reproduce the search", "", "```bash", reproduce, "```"]
    lines += ["", "### Retrain the winner", "", "```bash", retrain, "```"]
    lines += [
        "",
        f"Every trial is in `{LEADERBOARD}`; plots and `report.html` under `{REPORT_DIR}/`.",
    ]
    return "\n".join(lines) + "\n"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
