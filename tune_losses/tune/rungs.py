"""Schedule-aware ASHA: no trial is judged at a rung before its weight schedules have played.

Every weight schedule runs over training progress 0 -> 1, so a run cut at epoch 2 of 8 has
trained a late switch-on (``step`` at 0.7) as plain CE and a warm-up only half warm; plain
ASHA would judge (and Optuna learn) values that never ran. Here a trial whose schedules
settle at progress ``p`` (:func:`~tune_losses.losses.spec.settles_at`) is first judged at
the lowest rung at or after :func:`~tune_losses.schedules.played_epoch` (the first epoch
trained wholly past ``p``); before that it always continues, and it is judged against the
other trials' values at that same rung, never against an earlier one.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tune_losses.config import Experiment
from tune_losses.losses.spec import settles_at
from tune_losses.schedules import played_epoch
from tune_losses.tune.intensify import BASELINE_KEY, REPEAT_KEY
from tune_losses.tune.trainable import EXPERIMENT_KEY, trial_values


def first_judged_epoch(config: dict[str, Any]) -> int:
    """The epoch from which a trial's schedules have played (0: from the first epoch)."""
    exp = Experiment.model_validate(trial_values(config)[EXPERIMENT_KEY])
    return played_epoch(settles_at(exp.loss), exp.train.epochs)


class ScheduleAwareASHA(ASHAScheduler):
    """:class:`ASHAScheduler` that lets a trial pass every rung below the one where its
    weight schedules have played (see the module docstring; ``schedule_aware=False``:
    plain ASHA), and never judges a baseline or a repeat of a contender at another seed."""

    def __init__(self, *, schedule_aware: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.schedule_aware = schedule_aware
        self._judged_from: dict[str, int] = {}  # trial id -> first rung it may be judged at

    def rungs(self) -> list[int]:
        """The rung milestones (epochs), lowest first."""
        return sorted(int(milestone) for milestone, _ in self._brackets[0]._rungs)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        if REPEAT_KEY in trial.config or BASELINE_KEY in trial.config:  # never judged or pruned
            self._judged_from[trial.trial_id] = self._max_t
            return
        played = first_judged_epoch(trial.config) if self.schedule_aware else 0
        later = [r for r in self.rungs() if r >= played]
        self._judged_from[trial.trial_id] = min(later, default=self._max_t)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        step = result.get(self._time_attr)
        judged_from = self._judged_from.get(trial.trial_id, 0)
        if step is not None and step < min(judged_from, self._max_t):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        judged_from = self._judged_from.pop(trial.trial_id, 0)
        step = (result or {}).get(self._time_attr)
        if step is not None and step < min(judged_from, self._max_t):
            # ended (early stopping) before its schedules played: its value is not a rung's
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_remove(tune_controller, trial)
        self._judged_from.pop(trial.trial_id, None)
