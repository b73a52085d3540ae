"""The MLflow readers: a store's client, a search's parent run, its children as trial records."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tune_losses.config import best_metric_name
from tune_losses.tracking.leaderboard import pareto_front, ranking
from tune_losses.tracking.names import (
    BASELINE_TAG,
    CONFIRM_TAG,
    CURVE_METRIC,
    EPOCHS_TAG,
    ERROR_REASON_TAG,
    KIND_TAG,
    PARAM_PREFIX,
    PARENT_TAG,
    REPEAT_TAG,
    STOP_TAG,
    TRIAL_TAG,
    WEIGHT_PREFIX,
    TrackingError,
)

_PAGE = 1000
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


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


def failure_reasons(
    client: MlflowClient, experiment_id: str, parent_id: str, tag: str = ""
) -> list[str]:
    """The ``error_reason`` of every FAILED child of a search (with ``tag`` set, e.g. the
    confirm runs), oldest first."""
    query = f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = 'FAILED'"
    if tag:
        query += f" and tags.`{tag}` != ''"
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


def find_trial_run(client: MlflowClient, parent_id: str, trial_id: str) -> Run:
    """The child run of search ``parent_id`` that logged Ray trial ``trial_id``."""
    try:
        parent = client.get_run(parent_id)
    except MlflowException:
        raise TrackingError(f"no run {parent_id} in {client.tracking_uri}") from None
    query = f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'"
    found = search_all(client, parent.info.experiment_id, query)
    if not found:
        raise TrackingError(f"no run of trial {trial_id} under search run {parent_id}")
    return found[-1]  # the oldest: a resumed trial keeps its first run


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
    metric: str = CURVE_METRIC  # the search's (first) metric: ``best`` is its best value
    tags: dict[str, str] = field(default_factory=dict)
    seeds: list[float] = field(default_factory=list)  # final value per seed, when repeated

    @property
    def repeat_of(self) -> str:
        """The trial id of the configuration's first run, for a repeat at another seed."""
        return self.tags.get(REPEAT_TAG, "")

    @property
    def baseline(self) -> str:
        """The baseline's name (``search.baselines``) for a baseline's run, else ``""``."""
        return self.tags.get(BASELINE_TAG, "")


def load_trials(client: MlflowClient, parent: Run) -> list[TrialRecord]:
    """Every child run of ``parent`` with its ``loss.*`` params and ``val/mIoU`` history,
    best first by the search's objectives (:func:`ranking`; the Pareto front first when there
    are several), trials with no value last. ``TrialRecord.best`` is the trial's best value
    of the first metric, ``values`` of each. The confirm stage's runs are not trials (see
    :func:`~tune_losses.tracking.confirm.load_confirm`)."""
    objectives = ranking(parent)
    metric, mode = objectives[0]
    sign = -1.0 if mode == "max" else 1.0
    pid = parent.info.run_id
    children = search_all(client, parent.info.experiment_id, f"tags.`{PARENT_TAG}` = '{pid}'")
    trials = []
    for child in children:
        if CONFIRM_TAG in child.data.tags:
            continue
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
                metric=metric,
                tags=dict(tags),
            )
        )
    _fold_repeats(trials, metric)
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
            bool(t.repeat_of),  # a repeat after every configuration: its first run ranks it
            not t.pareto,
            not math.isfinite(t.best),
            sign * t.best if math.isfinite(t.best) else 0,
        )
    )
    return trials


def _fold_repeats(trials: list[TrialRecord], metric: str) -> None:
    """A configuration trained at several seeds (``search.repeats``) ranks by its seed mean:
    its first run's ``seeds`` gets each FINISHED run's value, its ``best`` their mean."""
    firsts = {t.trial_id: t for t in trials if t.trial_id and not t.repeat_of}
    for t in trials:
        first = firsts.get(t.repeat_of) if t.repeat_of else None
        if first is None or t.status != "FINISHED" or not math.isfinite(t.best):
            continue
        if not first.seeds:
            first.seeds = [first.best]
        first.seeds.append(t.best)
    for first in firsts.values():
        if len(first.seeds) > 1:
            first.best = sum(first.seeds) / len(first.seeds)
            first.values[metric] = first.best


def _stop_text(tags: Mapping[str, str]) -> str:
    """The leaderboard's stop reason: the tag, with the failure's reason when it failed."""
    reason = tags.get(STOP_TAG, "")
    return f"{reason}: {tags[ERROR_REASON_TAG]}" if ERROR_REASON_TAG in tags else reason
