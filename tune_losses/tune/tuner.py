"""The Ray Tune Tuner of a search: Optuna (TPE, or a grid) proposes, ASHA or FIFO stops."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tune_losses.config import SearchConfig
from tune_losses.space import SearchSpace
from tune_losses.tracking import BEST_METRIC, CURVE_METRIC


def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    """TPE (seeded) for random markers; an exhaustive grid when every marker is ``grid``."""
    search = space.experiment.search
    if space.grid_only:
        return optuna.samplers.GridSampler(space.grid(), seed=search.seed)
    with warnings.catch_warnings():  # `group` is marked experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=search.seed,
            n_startup_trials=search.n_startup_trials,
            multivariate=True,
            group=True,
        )


def make_scheduler(search: SearchConfig, max_epochs: int) -> TrialScheduler:
    """ASHA on ``search.metric`` (one rung per ``reduction_factor``), or plain FIFO."""
    if search.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=search.metric,
        mode=search.mode,
        max_t=max_epochs,
        grace_period=min(search.grace_period, max_epochs),
        reduction_factor=search.reduction_factor,
    )


def new_tuner(
    space: SearchSpace,
    trainable: Callable[..., Any],
    name: str,
    storage: str,
    callback: tune.Callback,
) -> tune.Tuner:
    """A fresh Tuner over ``space`` whose trial events go to ``callback``."""
    search = space.experiment.search
    # Optuna learns from a trial's last report: give it the trial's best so far, so that
    # an early-stopped trial is not judged by its last (worse) epochs
    learn_from = BEST_METRIC if search.metric == CURVE_METRIC else search.metric
    searcher = OptunaSearch(
        space=space.define_by_run(),
        metric=learn_from,
        mode=search.mode,
        sampler=make_sampler(space),
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent),
            scheduler=make_scheduler(search, space.max_epochs),
            num_samples=space.grid_size() or search.num_samples,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=[callback],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=search.checkpoint_keep),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    )


def restore_tuner(run_dir: Path, trainable: Callable[..., Any]) -> tune.Tuner:
    """The Tuner of an interrupted search, unfinished and errored trials continued."""
    return tune.Tuner.restore(str(run_dir), trainable, resume_unfinished=True, resume_errored=True)
