"""``python -m tune_losses.search``: flags, validation, the dry run and the exit codes; the
search itself runs in :mod:`tune_losses.tune.run`.

Ray is imported only once a search really starts (after ``RAY_AUTH_MODE`` is set for a
cluster); ``--dry-run`` and every input error need neither Ray nor MLflow.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import torch
import yaml

from tune_losses.config import ConfigError, add_overrides_flag, apply_overrides, read_yaml
from tune_losses.data import DataError
from tune_losses.engine import preflight
from tune_losses.space import SearchSpace
from tune_losses.tune.confirm import check_split
from tune_losses.tune.resume import resume_settings
from tune_losses.tune.run import check_resources, run_search


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
