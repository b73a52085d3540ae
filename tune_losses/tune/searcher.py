"""The Optuna searcher of a search: the sampler, and a Ray searcher that tells Optuna how
each trial really ended and survives a driver killed between Ray's snapshots."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from tune_losses.config import SearchConfig
from tune_losses.space import SearchSpace
from tune_losses.tracking import stop_reason
from tune_losses.tune.intensify import DUPLICATE_ATTR
from tune_losses.tune.state import STUDY_FILE


def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The seeded sampler of ``search.sampler``: TPE by default, Optuna's random sampler for
    ``random``, and an exhaustive grid when every marker is ``grid`` and none is named."""
    search = space.experiment.search
    if space.exhaustive:
        return optuna.samplers.GridSampler(space.grid(), seed=search.seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    with warnings.catch_warnings():  # `group` is marked experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=search.seed,
            n_startup_trials=search.startup_trials,
            multivariate=True,
            group=True,
        )


def telling_searcher(search_alg: Any) -> Any:
    """The outermost searcher inside Ray's wrappers that knows where a trial's Optuna
    trial ended (``SearchGenerator`` -> ``ConcurrencyLimiter`` -> :class:`Intensifier`,
    which maps Ray's trial ids to the Optuna searcher's), or None."""
    for _ in range(5):
        if search_alg is None or hasattr(search_alg, "finished_at"):
            return search_alg
        search_alg = getattr(search_alg, "searcher", None)
    return None


class TellingOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna how each trial really ended.

    Ray's searcher reports every epoch as an intermediate value but then tells COMPLETE,
    with the last value, for a trial the scheduler stopped, so TPE ranks a 2-epoch trial's
    value as final. Here a trial that stopped before its own ``train.epochs`` without early
    stopping is PRUNED (Optuna then takes its last intermediate value and ranks it below
    complete trials, as for its own pruners), an errored trial is FAIL, and a completed or
    early-stopped trial is COMPLETE.

    Resume-safe: Ray snapshots the searcher every ~10 s while the study is stored at once,
    so a resumed search may rerun a trial Optuna has already finished (its reports and end
    are then ignored: nothing is told twice), and the study may hold trials the restored
    searcher never saw (started after the snapshot): each new Ray trial takes one of those
    first, replaying its stored point (a grid point keeps its grid id), instead of asking
    for a new one, so the study holds one trial per Ray trial.
    """

    def suggest(self, trial_id: str) -> dict | None:
        """Ray's suggestion, from an Optuna trial no Ray trial holds if there is one."""
        if callable(self._space) and trial_id not in self._ot_trials:
            orphan = self._orphan()
            if orphan is not None:
                self._ot_trials[trial_id] = optuna.Trial(self._ot_study, orphan)
        return super().suggest(trial_id)

    def _orphan(self) -> int | None:
        """The storage id of the first study trial no Ray trial holds (None if none); a
        duplicate proposal, told its stored outcome without training, is nobody's."""
        held = {t._trial_id for t in self._ot_trials.values()}
        trials = self._ot_study.get_trials(deepcopy=False)
        orphans = (t for t in trials if t._trial_id not in held)
        return next((t._trial_id for t in orphans if DUPLICATE_ATTR not in t.user_attrs), None)

    def _stored(self, trial_id: str) -> optuna.trial.FrozenTrial | None:
        """The stored Optuna trial of a Ray trial once it is finished (None before)."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return None
        frozen = self._ot_study._storage.get_trial(ot_trial._trial_id)
        return frozen if frozen.state.is_finished() else None

    def finished_at(self, trial_id: str) -> int | None:
        """The last step of a Ray trial whose Optuna trial is COMPLETE or PRUNED (where a
        rerun must stop); None while it runs, for a failed one, or without steps."""
        frozen = self._stored(trial_id)
        if frozen is None or frozen.state.name == "FAIL" or not frozen.intermediate_values:
            return None
        return max(frozen.intermediate_values)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Report the epoch, unless the Optuna trial is already finished (a rerun)."""
        if trial_id in self._completed_trials or self._stored(trial_id) is not None:
            return None
        return super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Tell Optuna how the trial ended (nothing if it was told before a resume)."""
        if trial_id not in self._completed_trials and self._stored(trial_id) is not None:
            self._completed_trials.add(trial_id)
            return None
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        state = trial_state(result, error)
        ot_trial = self._ot_trials[trial_id]
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [(result or {}).get(m) for m in metrics]
        step = (result or {}).get("training_iteration")
        if state != "FAIL" and (None in values or step is None):
            state = "FAIL"  # nothing to rank it by
        if state != "FAIL" and len(values) == 1:
            # a trial's last epoch (where it completed or was stopped) reaches
            # on_trial_complete only: report it too, so the study holds every epoch
            ot_trial.report(float(values[0]), int(step))
        if state == "COMPLETE":
            return super().on_trial_complete(trial_id, result, error)
        # GridSampler calls study.stop() once the grid is exhausted, which raises outside
        # study.optimize; the state is stored first, so the search just goes on (as
        # Ray's own tell path does, which catches it)
        with contextlib.suppress(RuntimeError):
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState[state])
        self._completed_trials.add(trial_id)
        return None


def trial_state(result: dict[str, Any] | None, error: bool) -> str:
    """The Optuna state of a finished Ray trial, from how it stopped
    (:func:`~tune_losses.tracking.stop_reason`): FAIL for an error, PRUNED when the scheduler
    stopped it before its ``train.epochs``, COMPLETE when it ran them or stopped on patience."""
    reason = stop_reason(result or {}, max_epochs=0, failed=error or not result)
    return {"error": "FAIL", "asha": "PRUNED"}.get(reason, "COMPLETE")


def study_storage(search: SearchConfig, run_dir: Path | None) -> optuna.storages.BaseStorage | None:
    """The Optuna storage of a search: ``search.optuna_storage`` (e.g. the team's
    PostgreSQL), else ``sqlite:///<run dir>/optuna.db`` for a local run folder."""
    url = search.optuna_storage
    if url is None and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{run_dir / STUDY_FILE}"
    if url is None:
        return None
    return optuna.storages.RDBStorage(url)
