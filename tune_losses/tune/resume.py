"""Which run folder a search command starts or ``--resume``s, and the command lines that
run it again and resume it (printed, and saved in the run folder's state)."""

from __future__ import annotations

import argparse
import shlex
import sys

from tune_losses.space import SearchSpace
from tune_losses.tune import state as run_state
from tune_losses.tune.state import SearchRun

# --flag -> (argparse attribute, key of the saved state): the settings a search saves and
# --resume restores (omitted) or checks (repeated)
RESUMED_FLAGS = {
    "--num-samples": ("num_samples", "num_samples"),
    "--seed": ("seed", "seed"),
    "--scheduler": ("scheduler", "scheduler"),
    "--cpus-per-trial": ("cpus_per_trial", "cpus_per_trial"),
    "--gpus-per-trial": ("gpus_per_trial", "gpus_per_trial"),
    "--tracking-uri": ("tracking_uri", "tracking_uri"),
    "--experiment": ("experiment", "experiment"),
}


def locate(args: argparse.Namespace, space: SearchSpace) -> SearchRun:
    """The run folder and state: a new search's, or the saved one for ``--resume``."""
    storage = run_state.storage_root(args.storage)
    if args.address and "://" not in storage:
        print(
            f"note: --storage {storage} must be shared by every node of the cluster",
            file=sys.stderr,
        )
    if args.resume:
        return resume_settings(args)
    exp = space.experiment
    name = run_state.new_name(args.space)
    state = {
        "tracking_uri": exp.tracking.uri,
        "experiment": exp.tracking.experiment,
        "space": str(args.space),
        "space_sha256": run_state.space_hash(args.space),
        "overrides": list(args.overrides),
        "num_samples": exp.search.num_samples,
        "seed": exp.search.seed,
        "scheduler": exp.search.scheduler,
        "cpus_per_trial": exp.search.cpus_per_trial,
        "gpus_per_trial": exp.search.gpus_per_trial,
        "total": space.num_trials,
        "max_epochs": space.max_epochs,
        "command": reproduce_command(args),
    }
    if not run_state.is_uri(storage) and exp.search.optuna_storage is None:
        state["study"] = run_state.STUDY_FILE  # checked on --resume
    return SearchRun(name, storage, run_state.join(storage, name), state)


def resume_settings(args: argparse.Namespace) -> SearchRun:
    """The saved search ``--resume`` names, its settings put into ``args`` where the command
    omits them (``--set``, ``--seed``, ``--scheduler``, ...), so the space loads as it did;
    refused in one line where the command contradicts it (another space file, other
    ``--set``, another flag value) or where it cannot go on (Ray's state or the study gone)."""
    storage = run_state.storage_root(args.storage)
    run_dir = run_state.resume_dir(storage, args.space, args.resume)
    state = run_state.read_state(run_dir)
    flags = {flag: (key, getattr(args, attr)) for flag, (attr, key) in RESUMED_FLAGS.items()}
    name = run_dir.rstrip("/").rsplit("/", 1)[-1]
    run_state.check_resume(
        state, name, space_file=args.space, overrides=args.overrides, flags=flags
    )
    run_state.check_resumable(run_dir, name)
    if not args.overrides:
        args.overrides = list(state.get("overrides", []))
    for attr, key in RESUMED_FLAGS.values():
        if getattr(args, attr) is None and state.get(key) is not None:
            setattr(args, attr, state[key])
    return SearchRun(name, storage, run_dir, state)


def _command_parts(args: argparse.Namespace, storage: str | None) -> list[str]:
    """``python -m tune_losses.search`` with the space, every flag given and each ``--set``."""
    parts = ["python", "-m", "tune_losses.search", "--space", str(args.space)]
    flags = {
        "--num-samples": args.num_samples,
        "--seed": args.seed,
        "--scheduler": args.scheduler,
        "--cpus-per-trial": args.cpus_per_trial,
        "--gpus-per-trial": args.gpus_per_trial,
        "--address": args.address,
        "--storage": storage,
        "--tracking-uri": args.tracking_uri,
        "--experiment": args.experiment,
    }
    for flag, value in flags.items():
        if value is not None:
            parts += [flag, str(value)]
    for override in args.overrides:
        parts += ["--set", override]
    return parts


def reproduce_command(args: argparse.Namespace) -> str:
    """The command line that runs this search again (same space, flags and overrides)."""
    return shlex.join(_command_parts(args, args.storage))


def resume_command(args: argparse.Namespace, search: SearchRun) -> str:
    """The command line that resumes this search, naming every setting it runs with."""
    return shlex.join([*_command_parts(args, search.storage), "--resume", search.name])
