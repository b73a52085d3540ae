"""The Ray Tune Tuner of a search: Optuna (TPE, or a grid) proposes
(:mod:`~tune_losses.tune.searcher`), ASHA or FIFO stops (:mod:`~tune_losses.tune.schedulers`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from ray import tune
from ray.tune.search import ConcurrencyLimiter

from tune_losses.config import SearchConfig
from tune_losses.space import SearchSpace
from tune_losses.tune import ray_fixes
from tune_losses.tune.intensify import Intensifier
from tune_losses.tune.schedulers import ReplayASHA, ReplayFIFO, make_scheduler
from tune_losses.tune.searcher import (
    TellingOptunaSearch,
    make_sampler,
    study_storage,
    trial_state,
)
from tune_losses.tune.state import join

# Names of the searcher and schedulers kept here: a search started before they moved
# pickled them (Ray's tuner.pkl) as tune_losses.tune.tuner.<name>, and resumes by that name.
__all__ = [
    "ReplayASHA",
    "ReplayFIFO",
    "TellingOptunaSearch",
    "make_sampler",
    "make_scheduler",
    "new_tuner",
    "restore_tuner",
    "study_storage",
    "trial_state",
]


def new_tuner(
    space: SearchSpace,
    trainable: Callable[..., Any],
    name: str,
    results: str,
    callback: tune.Callback,
    storage: optuna.storages.BaseStorage | None = None,
) -> tune.Tuner:
    """A fresh Tuner over ``space`` writing to ``results``/``name``, trial events to
    ``callback``, the Optuna study (named ``name``) to ``storage``."""
    ray_fixes.apply()
    search = space.experiment.search
    if search.scheduler in ("pbt", "pb2"):
        return _population_tuner(space, trainable, name, results, callback)
    # Optuna learns from the best value so far of search.metric, so that an early-stopped
    # trial is not judged by its last (worse) epochs
    sampler = make_sampler(space)
    searcher = TellingOptunaSearch(
        space=space.define_by_run(),
        metric=search.best_metric,
        mode=search.mode if isinstance(search.metric, str) else [m for _, m in search.objectives],
        sampler=sampler,
        storage=storage,
        study_name=name,
    )
    tpe = isinstance(sampler, optuna.samplers.TPESampler)
    intensifier = Intensifier(
        searcher,
        configs=space.num_trials,
        repeats=search.repeats,
        startup=search.startup_trials if tpe else 0,
        run_dir=join(results, name),
        baselines={k: v.model_dump(mode="json") for k, v in space.baselines().items()},
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(intensifier, max_concurrent=search.max_concurrent),
            scheduler=make_scheduler(search, space.max_epochs),
            num_samples=-1,  # the Intensifier hands out the budget, then says FINISHED
            # a finished trial's worker takes the next trial: no new process that imports
            # torch and the model code again (seconds per trial)
            reuse_actors=True,
        ),
        run_config=_run_config(search, name, results, callback),
    )


def _population_tuner(
    space: SearchSpace,
    trainable: Callable[..., Any],
    name: str,
    results: str,
    callback: tune.Callback,
) -> tune.Tuner:
    """PBT/PB2: the population sampled here, handed to Ray as plain configs."""
    from tune_losses.tune.pbt import initial_population, make_pbt
    from tune_losses.tune.trainable import MEMBER_KEY

    search = space.experiment.search
    members = initial_population(space, search.num_samples, search.seed)
    return tune.Tuner(
        trainable,
        param_space={MEMBER_KEY: tune.grid_search(members)},
        tune_config=tune.TuneConfig(
            scheduler=make_pbt(space, search),
            max_concurrent_trials=search.max_concurrent,
            trial_dirname_creator=_short_dirname,
        ),
        run_config=_run_config(search, name, results, callback),
    )


def _short_dirname(trial: Any) -> str:
    """``<trainable>_<trial id>``: a PBT member's config is too long for a folder name."""
    return f"{trial.trainable_name}_{trial.trial_id}"


def _run_config(
    search: SearchConfig, name: str, results: str, callback: tune.Callback
) -> tune.RunConfig:
    """Where results and checkpoints go, the callback, and one retry of a failed trial.

    PBT/PB2 keep a perturbation interval's worth of checkpoints: an exploit restores the
    donor's checkpoint of the interval's end, which must still be there."""
    keep = search.checkpoint_keep
    if search.scheduler in ("pbt", "pb2"):
        keep = max(keep, search.perturbation_interval + 1)
    return tune.RunConfig(
        name=name,
        storage_path=results,
        callbacks=[callback],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
        failure_config=tune.FailureConfig(max_failures=1),
        verbose=0,
    )


def restore_tuner(run_dir: str, trainable: Callable[..., Any]) -> tune.Tuner:
    """The Tuner of an interrupted search, its unfinished trials continued.

    Errored trials stay errored (FAIL in Optuna, FAILED in MLflow, ERROR in Ray): they had
    their retry (``FailureConfig(max_failures=1)``), and a rerun would finish in MLflow and
    Ray while Optuna, which cannot change a finished trial, keeps it FAIL."""
    ray_fixes.apply()
    return tune.Tuner.restore(run_dir, trainable, resume_unfinished=True, resume_errored=False)
