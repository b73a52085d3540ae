"""The search and tracking sections: metrics a search may rank by, the sampler and scheduler
settings, baselines and the confirm stage, and where MLflow writes."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tune_losses.config.base import Strict
from tune_losses.losses.spec import LossSpec, validate_loss
from tune_losses.names import mlflow_name_problem

SEARCH_METRICS = (
    "val/mIoU",
    "val/mDice",
    "val/pixel_acc",
    "val/mean_acc",
    "val/boundary_IoU",
    "val/boundary_F1",
    "train/loss",
)


CLASS_METRIC = "val/IoU/"  # + a class name: that class's IoU, per epoch


def class_names_problem(names: Sequence[str]) -> str | None:
    """Why the per-class metrics of ``names`` (``val/IoU/<class>``) cannot be logged: a name
    MLflow refuses, or two classes of one name; None when they can."""
    for name in names:
        problem = mlflow_name_problem(f"{CLASS_METRIC}{name}")
        if problem is not None:
            return f"class {name!r}: {problem}"
    twice = sorted({n for n in names if list(names).count(n) > 1})
    return f"class names must differ, found twice: {', '.join(twice)}" if twice else None


def class_metric_problem(metric: str, class_names: Sequence[str]) -> str | None:
    """Why ``search.metric`` names no class of the data (with the close names), or None;
    the class list is known once the data is read, so the run builder asks this."""
    if not metric.startswith(CLASS_METRIC) or metric[len(CLASS_METRIC) :] in class_names:
        return None
    name = metric[len(CLASS_METRIC) :]
    close = difflib.get_close_matches(name, class_names, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(repr(CLASS_METRIC + c) for c in close)}?)" if close else ""
    return f"search.metric: the data has no class {name!r}{hint}; classes: {', '.join(class_names)}"


def best_metric_name(metric: str) -> str:
    """The best-so-far value of ``metric`` that a trial reports and MLflow keeps:
    ``val/mIoU`` -> ``best_val_mIoU``, ``val/boundary_IoU`` -> ``best_val_boundary_IoU``."""
    return "best_" + metric.replace("/", "_")


Mode = Literal["max", "min"]


def default_startup_trials(num_samples: int) -> int:
    """TPE's random start-up trials when the space does not say: a third of the budget, at
    most 10 (Optuna's own default), at least 1, so the search always has TPE trials."""
    return max(1, min(10, num_samples // 3))


class ConfirmConfig(Strict):
    """The confirm stage: the ``top_k`` configurations and every baseline trained again at
    ``seeds`` fresh training seeds, each scored at its end on ``split``."""

    top_k: int = Field(2, ge=1)
    seeds: int = Field(3, ge=2, le=50)  # two at least: the interval needs n - 1 >= 1
    split: str = Field("val", min_length=1)


class SearchConfig(Strict):
    """Ray Tune settings: Optuna TPE proposes, ASHA stops the weak trials.

    ``metric`` may list several metrics (with ``mode`` one per metric, or one for all): the
    search is then multi-objective (Optuna's multi-objective TPE, FIFO: ASHA and PBT need
    one metric) and ranks trials by their Pareto front.

    ``sampler`` unset: TPE, or every point once when all markers are ``grid``. ``tpe`` or
    ``random`` samples ``num_samples`` trials even from a grid-only space (grid markers are
    then categorical choices), so that a sampler can be compared with the full grid on the
    same space file.
    """

    metric: str | list[str] = "val/mIoU"
    mode: Mode | list[Mode] = "max"

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str | list[str]) -> str | list[str]:
        for name in [v] if isinstance(v, str) else v:
            if name not in SEARCH_METRICS and not name.startswith((CLASS_METRIC, "train/loss")):
                raise ValueError(
                    f"unknown metric {name!r}; known: {', '.join(SEARCH_METRICS)}, val/IoU/<class>"
                )
        if isinstance(v, list) and (len(v) < 2 or len(set(v)) != len(v)):
            raise ValueError(f"a list of metrics needs two or more distinct ones, got {v}")
        return v

    num_samples: int = Field(8, ge=1)
    sampler: Literal["tpe", "random"] | None = None
    max_concurrent: int = Field(2, ge=1)
    scheduler: Literal["asha", "fifo", "pbt", "pb2"] = "asha"
    perturbation_interval: int = Field(2, ge=1)
    optuna_storage: str | None = None
    grace_period: int = Field(1, ge=1)
    schedule_aware: bool = True  # ASHA judges no trial before its weight schedules played
    repeats: int = Field(1, ge=1, le=10)  # seeds a would-be best runs before it is declared
    reduction_factor: int = Field(2, ge=2)
    n_startup_trials: int | None = Field(None, ge=1)
    seed: int = 0
    cpus_per_trial: float = Field(1.0, gt=0.0)
    gpus_per_trial: float = Field(0.0, ge=0.0)
    checkpoint_keep: int = Field(2, ge=1)
    baselines: dict[str, LossSpec] = {}  # name -> a loss section trained in every search
    confirm: ConfirmConfig | None = None

    @field_validator("baselines", mode="before")
    @classmethod
    def _check_baselines(cls, raw: Any) -> dict[str, LossSpec]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise ValueError("search.baselines: expected a mapping of name -> loss section")
        out = {}
        for name, loss in raw.items():
            problem = mlflow_name_problem(str(name))
            if problem is not None:
                raise ValueError(f"search.baselines: baseline {problem}")
            try:
                out[str(name)] = validate_loss(loss)
            except ValueError as exc:
                text = str(exc).splitlines()[0]
                where = f"search.baselines.{name}"
                text = f"{where}.{text[5:]}" if text.startswith("loss.") else f"{where}: {text}"
                raise ValueError(text) from None
        return out

    @model_validator(mode="after")
    def _objectives(self) -> SearchConfig:
        metrics = [self.metric] if isinstance(self.metric, str) else self.metric
        if isinstance(self.mode, list) and isinstance(self.metric, str):
            raise ValueError(
                f"mode: a list ({', '.join(self.mode)}) goes with a list of metrics; "
                f"for one metric ({self.metric}) give one mode, e.g. mode: {self.mode[0]}"
            )
        if isinstance(self.mode, list) and len(self.mode) != len(metrics):
            raise ValueError(f"mode: one per metric ({len(metrics)}), got {self.mode}")
        if len(metrics) > 1 and self.scheduler != "fifo":
            raise ValueError(
                f"scheduler: {self.scheduler} needs one metric; with several "
                f"({', '.join(metrics)}) use scheduler: fifo"
            )
        if self.repeats > 1 and (len(metrics) > 1 or self.scheduler in ("pbt", "pb2")):
            raise ValueError(
                f"repeats: {self.repeats} seeds a contender needs one metric and scheduler "
                "asha or fifo (a Pareto front or PBT population has no single incumbent)"
            )
        self._check_stages(metrics)
        n = self.n_startup_trials
        if n is not None and n >= self.num_samples and self.sampler != "random":
            raise ValueError(
                f"n_startup_trials: {n} random start-up trials of num_samples "
                f"{self.num_samples} leave TPE none to propose; use fewer (the default is "
                f"{default_startup_trials(self.num_samples)}) or sampler: random"
            )
        return self

    def _check_stages(self, metrics: list[str]) -> None:
        """Baselines and the confirm stage need one metric and a scheduler that trains a
        fixed configuration (PBT/PB2 mutate every member); confirm ranks a ``val/`` metric
        (scored on its split as ``<split>/...``)."""
        for what, on in (("baselines", bool(self.baselines)), ("confirm", bool(self.confirm))):
            if on and self.scheduler in ("pbt", "pb2"):
                raise ValueError(
                    f"{what}: not with scheduler {self.scheduler} (it mutates every member's "
                    "weights; a baseline or a confirmed configuration must stay fixed)"
                )
        if self.baselines and len(metrics) > 1:
            raise ValueError(
                f"baselines: need one metric to be ranked against, got {', '.join(metrics)} "
                "(a Pareto front has no single best to beat)"
            )
        if self.confirm is not None and (len(metrics) > 1 or not metrics[0].startswith("val/")):
            raise ValueError(
                f"confirm: needs one metric of the val split (val/...), got {', '.join(metrics)}"
            )

    @property
    def startup_trials(self) -> int:
        """TPE's random start-up trials: ``n_startup_trials``, else
        :func:`default_startup_trials` of ``num_samples``."""
        return self.n_startup_trials or default_startup_trials(self.num_samples)

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """``[(metric, mode), ...]``: one for a single-metric search, several for a Pareto one."""
        metrics = [self.metric] if isinstance(self.metric, str) else self.metric
        modes = self.mode if isinstance(self.mode, list) else [self.mode] * len(metrics)
        return list(zip(metrics, modes, strict=True))

    @property
    def best_metric(self) -> str | list[str]:
        """What Optuna learns from: :func:`best_metric_name` of each metric."""
        names = [best_metric_name(m) for m, _ in self.objectives]
        return names[0] if isinstance(self.metric, str) else names


class TrackingConfig(Strict):
    """MLflow: where runs go and what the parent run is called."""

    uri: str = "sqlite:///mlruns.db"
    experiment: str = "tune_losses"
    run_name: str | None = None
