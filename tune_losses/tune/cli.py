"""``python -m tune_losses.search``: flags, the dry run, and a search from start to summary.

Ray is imported only once a search really starts (after ``RAY_AUTH_MODE`` is set for a
cluster); ``--dry-run`` and every input error need neither Ray nor MLflow.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml

from tune_losses.config import ConfigError, add_overrides_flag, apply_overrides, read_yaml
from tune_losses.data import DataError
from tune_losses.engine import preflight
from tune_losses.space import SearchSpace
from tune_losses.tune import state as run_state
from tune_losses.tune.confirm import STAGE_KEY, check_split, confirm_stage
from tune_losses.tune.resume import locate, resume_command, resume_settings
from tune_losses.tune.state import SearchRun
from tune_losses.tune.summary import summarize


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of ``python -m tune_losses.search`` (README's table)."""
    p = argparse.ArgumentParser(
        prog="python -m tune_losses.search",
        description="Search loss weights and schedules of a segmentation model.",
    )
    p.add_argument("--space", required=True, type=Path, help="search-space YAML file")
    p.add_argument("--num-samples", type=int, help="trials to run (search.num_samples)")
    add_overrides_flag(p, "override a config value, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--address", help="Ray cluster to join ('auto' or host:port); local if unset")
    p.add_argument("--storage", help="Ray results folder; shared (NFS, S3) on a multi-node cluster")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (tracking.uri)")
    p.add_argument("--experiment", help="MLflow experiment name (tracking.experiment)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="NAME",
        help="resume a search in --storage (the latest of this space file if no NAME)",
    )
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (search.cpus_per_trial)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (search.gpus_per_trial)")
    p.add_argument("--seed", type=int, help="sampler seed (search.seed)")
    p.add_argument(
        "--scheduler",
        choices=("asha", "fifo", "pbt", "pb2"),
        help="trial scheduler (search.scheduler): ASHA stops, PBT/PB2 mutate the weights",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the space and print a few sampled trial configs; train nothing",
    )
    return p


def load_space(args: argparse.Namespace) -> SearchSpace:
    """The space file with ``--set`` and flag overrides applied, validated in every branch."""
    flags = {
        "search.num_samples": args.num_samples,
        "search.cpus_per_trial": args.cpus_per_trial,
        "search.gpus_per_trial": args.gpus_per_trial,
        "search.seed": args.seed,
        "search.scheduler": args.scheduler,
        "tracking.uri": args.tracking_uri,
        "tracking.experiment": args.experiment,
    }
    overrides = list(args.overrides)
    overrides += [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    raw = apply_overrides(read_yaml(args.space), overrides)
    return SearchSpace(raw, source=str(args.space))


def dry_run(space: SearchSpace, n: int = 3) -> None:
    """Print ``n`` sampled trial configs (validated), without Ray or MLflow."""
    import optuna

    from tune_losses.tune.searcher import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(space))
    total = space.num_trials
    print(f"{space.source}: valid; {len(space.markers)} markers, {total} trials planned")
    search = space.experiment.search
    if search.baselines:
        print(f"baselines (full budget, every search): {', '.join(search.baselines)}")
    if search.confirm is not None:
        c = search.confirm
        print(f"confirm: top {c.top_k} + the baselines at {c.seeds} fresh seeds, on {c.split}")
    for i in range(min(n, total)):
        trial = study.ask()
        concrete = space.sample(trial)
        space.validate(concrete)
        print(f"--- trial {i}: {json.dumps(trial.params)}")
        print(yaml.safe_dump({"loss": concrete["loss"]}, sort_keys=False), end="")
        with contextlib.suppress(RuntimeError):  # an exhausted grid stops the study
            study.tell(trial, 0.0)


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


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI: validate, preflight, then dry-run or search; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.address:  # Ray 2.60 clusters use token auth; set before anything imports ray
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        resumed = resume_settings(args) if args.resume and not args.dry_run else None
        space = load_space(args)
        baselines = space.baselines()  # checked with the space's variants, the data read once
        fields = [""] * len(space.variants) + [f"search.baselines.{n}" for n in baselines]
        preflight([*space.variants, *baselines.values()], space.source, fields)
        check_split(space)
        if not args.address:  # local Ray sees the GPUs torch sees: refuse before any run
            check_resources(space, {"GPU": float(torch.cuda.device_count())}, "this machine")
        if args.dry_run:
            dry_run(space)
            return 0
        return run_search(args, space, resumed)
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def exit_now(code: int) -> NoReturn:
    """End ``python -m tune_losses.search`` with ``code``, skipping the interpreter's teardown.

    Once torch, Ray and MLflow are imported, freeing every module and object at exit takes
    seconds, the longest step of a search's end, and writes nothing. What the usual exit
    does before that teardown is done here in the same order (CPython's own hooks): wait
    for non-daemon threads (MLflow's artifact uploads), run the exit handlers
    (``ray.shutdown``, logging, temporary folders), then flush the output.
    """
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
