"""The Ray Tune Tuner of a search: Optuna (TPE, or a grid) proposes, ASHA or FIFO stops."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tune_losses.config import SearchConfig
from tune_losses.space import SearchSpace
from tune_losses.tracking import stop_reason
from tune_losses.tune.intensify import DUPLICATE_ATTR, Intensifier
from tune_losses.tune.rungs import ScheduleAwareASHA
from tune_losses.tune.state import STUDY_FILE, join


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
        searcher = _telling_searcher(getattr(tune_controller, "search_alg", None))
        end = searcher.finished_at(trial.trial_id) if searcher is not None else None
        if end is None:
            return decision
        step = int(result.get("training_iteration", 0))
        return TrialScheduler.STOP if step >= end else TrialScheduler.CONTINUE

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        """The wrapped scheduler's choice, after ending (not running) each restored trial
        that had already reached where its Optuna trial ended: run again, it would train
        one epoch more than Optuna and MLflow hold."""
        searcher = _telling_searcher(getattr(tune_controller, "search_alg", None))
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


def _telling_searcher(search_alg: Any) -> Any:
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
    _tolerate_gone_checkpoints()
    return tune.Tuner.restore(run_dir, trainable, resume_unfinished=True, resume_errored=False)


def _tolerate_gone_checkpoints() -> None:
    """Let Ray's checkpoint manager delete a checkpoint that is already gone.

    Ray's snapshot of a trial lists its kept checkpoints as they were up to ~10 s before
    the driver was killed; the killed run may have deleted some since (``num_to_keep``).
    Ray forces a snapshot every ``num_to_keep`` checkpoints, so the one a trial restores
    from is always there, but deleting an older, already deleted one raises
    FileNotFoundError in Ray 2.60 and fails the trial: here that deletion is a no-op."""
    from ray.train._internal import checkpoint_manager

    delete = checkpoint_manager._delete_fs_path
    if getattr(delete, "tolerates_gone", False):
        return

    def tolerant(fs: Any, fs_path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            delete(fs=fs, fs_path=fs_path)

    tolerant.tolerates_gone = True  # type: ignore[attr-defined]
    checkpoint_manager._delete_fs_path = tolerant
