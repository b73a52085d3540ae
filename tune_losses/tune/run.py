"""A search from start to summary: its MLflow parent, Ray, the Tuner, the confirm stage and
the summary; started or resumed by :mod:`tune_losses.tune.cli`.

Ray and MLflow are imported inside the functions that use them, once a search really
starts (after the CLI set ``RAY_AUTH_MODE`` for a cluster).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tune_losses.config import ConfigError
from tune_losses.space import SearchSpace
from tune_losses.tune import state as run_state
from tune_losses.tune.confirm import STAGE_KEY, confirm_stage
from tune_losses.tune.resume import locate, resume_command
from tune_losses.tune.state import SearchRun
from tune_losses.tune.summary import summarize


def check_resources(space: SearchSpace, available: Mapping[str, float], where: str) -> None:
    """Refuse a trial that asks for more CPUs or GPUs (of those in ``available``) than
    ``where`` has: Ray would keep every trial pending forever."""
    cfg = space.experiment.search
    for key in available:
        field = f"search.{key.lower()}s_per_trial"
        asked = {"CPU": cfg.cpus_per_trial, "GPU": cfg.gpus_per_trial}.get(key, 0.0)
        if asked > available[key]:
            raise ConfigError(
                f"{space.source}: {field}: {asked:g} {key} per trial, but {where} has "
                f"{available[key]:g}; no trial could start"
            )


def _connect(search: SearchRun) -> Any:
    """The search's MLflow tracker on the store its state names (nothing opened yet)."""
    from mlflow.exceptions import MlflowException

    from tune_losses.tracking import SearchTracker

    uri = search.state["tracking_uri"]
    if "parent_run_id" in search.state and uri.startswith("sqlite:///"):
        store = Path(uri.removeprefix("sqlite:///"))
        if not store.is_file():
            raise ConfigError(
                f"--resume {search.name}: its MLflow store {uri} is gone (deleted or moved?); "
                "put it back, or start a new search"
            )
    try:
        return SearchTracker(uri, search.state["experiment"])
    except MlflowException as exc:
        raise ConfigError(f"tracking.uri {uri}: {exc}") from None


def _open_parent(
    args: argparse.Namespace, space: SearchSpace, search: SearchRun, tracker: Any
) -> None:
    """Open the parent run (and save the state for --resume), or reopen it on --resume."""
    if args.resume:
        from mlflow.exceptions import MlflowException

        parent = search.state["parent_run_id"]
        try:
            tracker.reopen(parent)
        except MlflowException:
            raise ConfigError(
                f"--resume {search.name}: its parent run {parent} is not in the MLflow store "
                f"{search.state['tracking_uri']} (deleted?); start a new search"
            ) from None
        return
    exp = space.experiment
    params = {"space_file": str(args.space), "ray_name": search.name, "storage": search.storage}
    params.update({f"search.{k}": v for k, v in exp.search.model_dump().items()})
    tracker.start(exp.tracking.run_name or search.name, params, args.space)
    from tune_losses.tracking import git_tags, package_versions

    tracker.log_environment(package_versions(), git_tags())
    search.state["parent_run_id"] = tracker.parent_id
    run_state.write_state(search.run_dir, search.state)


def _start_ray(args: argparse.Namespace, space: SearchSpace) -> None:
    """Start (or join) Ray and check the trial's resources against it."""
    import ray

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's snapshot of the experiment after every step, not every ~10 s: a trial's kept
    # checkpoints rotate (search.checkpoint_keep), and a snapshot older than the rotation
    # names a checkpoint the killed run already deleted, which --resume cannot restore
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    # "local" starts a fresh instance even where `ray start` left a cluster address behind
    ray.init(address=args.address or "local", ignore_reinit_error=True, log_to_driver=False)
    check_resources(space, ray.cluster_resources(), "the Ray cluster")
    # after ray.init, which installs its own: a SIGTERM (a job scheduler, a timeout)
    # ends the search like Ctrl-C, runs KILLED and the state saved for --resume
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))


def _fit(args: argparse.Namespace, space: SearchSpace, search: SearchRun, tracker: Any) -> Any:
    """Build (or restore) the Tuner, run every trial; returns Ray's results."""
    from ray import tune

    from tune_losses.tune.callback import TrialLogger
    from tune_losses.tune.searcher import study_storage
    from tune_losses.tune.trainable import train_trial
    from tune_losses.tune.tuner import new_tuner, restore_tuner

    cfg = space.experiment.search
    resources = {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial}
    trainable = tune.with_resources(train_trial, resources)
    print(
        f"search {search.name}: {search.state['total']} trials, up to {cfg.max_concurrent} at "
        f"a time, {search.state['max_epochs']} epochs max; results in {search.run_dir}",
        flush=True,
    )
    if args.resume:
        tuner = restore_tuner(search.run_dir, trainable)
    else:
        logger = TrialLogger(tracker, search.state["max_epochs"], metric=cfg.objectives[0][0])
        if not search.local and cfg.optuna_storage is None:
            print(
                f"note: the Optuna study is kept in memory (--storage {search.storage} is "
                "not a local folder); set search.optuna_storage to store it",
                file=sys.stderr,
            )
        study = study_storage(cfg, Path(search.run_dir) if search.local else None)
        tuner = new_tuner(space, trainable, search.name, search.storage, logger, study)
    return tuner.fit()


def run_search(
    args: argparse.Namespace, space: SearchSpace, search: SearchRun | None = None
) -> int:
    """Run (or resume) the search; returns the process exit code. ``search``: the saved
    search that :func:`resume_settings` found, for ``--resume``."""
    search = search or locate(args, space)
    tracker = _connect(search)
    try:
        _open_parent(args, space, search, tracker)
    except ConfigError:
        raise  # a resume that cannot go on: nothing was changed
    except BaseException:
        tracker.abort("FAILED")
        raise
    try:
        _start_ray(args, space)
        results: Any = []
        if search.state.get(STAGE_KEY) != "confirm":
            results = _fit(args, space, search, tracker)
            if tracker.open_children() or not _all_started(search, space, results):
                return _interrupted(args, search, tracker)
        confirmed = None
        if space.experiment.search.confirm is not None:
            confirmed = confirm_stage(space, search.run_dir, search.state, tracker, results)
            if confirmed is None:
                return _interrupted(args, search, tracker)
        print(f"search {search.name}: every trial ended; writing the summary", flush=True)
        code = summarize(search, tracker, results, space.experiment.search.scheduler, confirmed)
    except KeyboardInterrupt:
        tracker.abort("KILLED")
        raise
    except ConnectionError as exc:
        tracker.abort("FAILED")
        raise ConfigError(f"--address {args.address}: {exc}") from None
    except BaseException:
        tracker.abort("FAILED")
        raise
    return code


def _interrupted(args: argparse.Namespace, search: SearchRun, tracker: Any) -> int:
    """End the open runs KILLED and print the command that resumes the search: exit 130."""
    tracker.abort("KILLED")
    print(f"search interrupted; continue it with: {resume_command(args, search)}", file=sys.stderr)
    return 130


def _all_started(search: SearchRun, space: SearchSpace, results: Any) -> bool:
    """Whether the search handed out its whole budget: PBT's population all ran, or the
    searcher said FINISHED (it writes :data:`~tune_losses.tune.intensify.DONE_FILE`;
    Ray's ``fit`` returns as well when Ctrl-C stopped it between trials)."""
    from tune_losses.tune.intensify import DONE_FILE

    if space.experiment.search.scheduler in ("pbt", "pb2"):
        return len(results) >= search.state["total"]
    return run_state.has_file(search.run_dir, DONE_FILE)
