"""The one leaderboard: how a search ranks trials, their rows and CSV, the columns worth showing."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import yaml
from mlflow.entities import Run

from tune_losses.config import best_metric_name
from tune_losses.tracking.names import (
    BEST_METRIC,
    CHOICE_SUFFIXES,
    CURVE_METRIC,
    EPOCHS_TAG,
    STOP_TAG,
)

if TYPE_CHECKING:  # readers imports ranking and pareto_front from here
    from tune_losses.tracking.readers import TrialRecord

# the leaderboard's first columns; the last is named after the search's metric
# (``best_val_mIoU`` for the default ``val/mIoU``, ``best_train_loss`` ...)
LEADERBOARD_COLUMNS = ("rank", "trial", "run_id", "status", STOP_TAG, EPOCHS_TAG, BEST_METRIC)


def best_label(metric: str) -> str:
    """A short table header for the best value of ``metric``: ``best mIoU`` for
    ``val/mIoU``, ``best boundary_IoU``, ``best train/loss``."""
    return f"best {metric.removeprefix('val/')}"


def format_best(value: float, metric: str) -> str:
    """A best value as tables print it: ``-`` when missing, a loss (``train/...``) with 4
    significant digits, the validation metrics (in %) with 2 decimals."""
    if not math.isfinite(value):
        return "-"
    return f"{value:.4g}" if metric.startswith("train/") else f"{value:.2f}"


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


def leaderboard_rows(trials: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    """The leaderboard: one dict a trial, in the order given (best first), every ``loss.*``
    param as a column (and ``baseline``, the baseline's name, when the search has some).
    The search's summary, ``leaderboard.csv`` and the report use it.
    The best value's column is named after the search's metric (``best_train_loss``)."""
    keys = sorted({k for t in trials for k in t.params})
    repeated = any(t.repeat_of for t in trials)
    baselines = any(t.baseline for t in trials)
    names = {t.trial_id: t.name for t in trials}
    best = best_metric_name(trials[0].metric) if trials else BEST_METRIC
    columns = (*LEADERBOARD_COLUMNS[:-1], best)
    rows = []
    for rank, t in enumerate(trials, 1):
        values = (rank, t.name, t.run_id, t.status, t.stop_reason, t.epochs_run, t.best)
        row: dict[str, Any] = dict(zip(columns, values, strict=True))
        if baselines:  # a baseline's name (search.baselines): never the search's winner
            row["baseline"] = t.baseline
        if len(t.values) > 1:  # a multi-objective search: each objective and the front
            row.update({best_metric_name(k): v for k, v in t.values.items()})
            row["pareto"] = t.pareto
        if repeated:  # the seeds a configuration ran: value per seed, spread, whose repeat
            row["seeds"] = " ".join(f"{v:.2f}" for v in t.seeds) if t.seeds else ""
            row["seed_sd"] = statistics.stdev(t.seeds) if len(t.seeds) > 1 else ""
            row["repeat_of"] = names.get(t.repeat_of, t.repeat_of)
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
