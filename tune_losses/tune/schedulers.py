"""The trial scheduler of a search: ASHA (schedule-aware rungs) or FIFO, each made to end a
trial that a resumed search reruns where its Optuna trial ended."""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tune_losses.config import SearchConfig
from tune_losses.tune.rungs import ScheduleAwareASHA
from tune_losses.tune.searcher import telling_searcher


def make_scheduler(search: SearchConfig, max_epochs: int) -> TrialScheduler:
    """ASHA on ``search.metric`` (one rung per ``reduction_factor``; schedule-aware unless
    ``search.schedule_aware`` is false), or plain FIFO (PBT and PB2:
    :func:`tune_losses.tune.pbt.make_pbt`); either ends a trial that a resumed search
    reruns where its Optuna trial ended (:class:`ReplayAware`)."""
    if search.scheduler != "asha":
        return ReplayFIFO()
    return ReplayASHA(
        schedule_aware=search.schedule_aware,
        time_attr="training_iteration",
        metric=search.metric,
        mode=search.mode,
        max_t=max_epochs,
        grace_period=min(search.grace_period, max_epochs),
        reduction_factor=search.reduction_factor,
    )


class ReplayAware:
    """Scheduler mixin: a trial whose Optuna trial is already finished (told COMPLETE or
    PRUNED before the driver was killed, but Ray's older snapshot still had it running)
    ends where Optuna says it ended, whatever the restored scheduler would decide.

    The rerun starts from an earlier checkpoint and reproduces the same epochs (resume is
    exact); it goes on until the last step Optuna holds for it, then stops, so a trial
    ASHA pruned is not run on, nor one that completed pruned at another rung."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """The wrapped scheduler's decision, except for a trial Optuna has finished."""
        decision = super().on_trial_result(tune_controller, trial, result)  # type: ignore[misc]
        searcher = telling_searcher(getattr(tune_controller, "search_alg", None))
        end = searcher.finished_at(trial.trial_id) if searcher is not None else None
        if end is None:
            return decision
        step = int(result.get("training_iteration", 0))
        return TrialScheduler.STOP if step >= end else TrialScheduler.CONTINUE

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        """The wrapped scheduler's choice, after ending (not running) each restored trial
        that had already reached where its Optuna trial ended: run again, it would train
        one epoch more than Optuna and MLflow hold."""
        searcher = telling_searcher(getattr(tune_controller, "search_alg", None))
        checked = self.__dict__.setdefault("_replay_checked", set())
        for trial in tune_controller.get_trials() if searcher is not None else ():
            if trial.status != "PENDING" or trial.trial_id in checked:
                continue
            checked.add(trial.trial_id)
            end = searcher.finished_at(trial.trial_id)
            step = int((trial.last_result or {}).get("training_iteration", 0))
            if end is not None and step >= end:
                tune_controller.stop_trial(trial)
        return super().choose_trial_to_run(tune_controller)  # type: ignore[misc]


class ReplayASHA(ReplayAware, ScheduleAwareASHA):
    """:class:`~tune_losses.tune.rungs.ScheduleAwareASHA` that ends a rerun trial where
    Optuna ended it."""


class ReplayFIFO(ReplayAware, FIFOScheduler):
    """:class:`FIFOScheduler` that ends a rerun trial where Optuna ended it."""
