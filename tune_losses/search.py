"""``python -m tune_losses.search``: Ray Tune + Optuna (TPE) + ASHA over a loss search space.

Example:
    python -m tune_losses.search --space search_spaces/quickstart.yaml
    python -m tune_losses.search --space search_spaces/aux_weight.yaml --dry-run
    python -m tune_losses.search --space ... --address auto --storage /nfs/ray_results
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml

from tune_losses.config import ConfigError, apply_overrides, read_yaml
from tune_losses.data import DataError
from tune_losses.space import SearchSpace

STATE_FILE = "tune_losses.json"


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of ``python -m tune_losses.search`` (README's table)."""
    p = argparse.ArgumentParser(
        prog="python -m tune_losses.search",
        description="Search loss weights and schedules of a segmentation model.",
    )
    p.add_argument("--space", required=True, type=Path, help="search-space YAML file")
    p.add_argument("--num-samples", type=int, help="trials to run (search.num_samples)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=2 (repeatable)",
    )
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
        "tracking.uri": args.tracking_uri,
        "tracking.experiment": args.experiment,
    }
    overrides = list(args.overrides)
    overrides += [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    raw = apply_overrides(read_yaml(args.space), overrides)
    return SearchSpace(raw, source=str(args.space))


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


def dry_run(space: SearchSpace, n: int = 3) -> None:
    """Print ``n`` sampled trial configs (validated), without Ray or MLflow."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(space))
    exp = space.experiment
    total = space.grid_size() or exp.search.num_samples
    print(f"{space.source}: valid; {len(space.markers)} markers, {total} trials planned")
    for i in range(min(n, total)):
        trial = study.ask()
        concrete = space.sample(trial)
        space.validate(concrete)
        print(f"--- trial {i}: {json.dumps(trial.params)}")
        print(yaml.safe_dump({"loss": concrete["loss"]}, sort_keys=False), end="")
        with contextlib.suppress(RuntimeError):  # an exhausted grid stops the study
            study.tell(trial, 0.0)


def leaderboard(results: Any, max_epochs: int) -> list[dict[str, Any]]:
    """One row per trial, best first: trial, status, epochs run, best val mIoU, sampled values."""
    from tune_losses.tracking import stop_reason

    rows = []
    for res in results:
        cfg = res.config or {}
        last = res.metrics or {}
        best = float("nan")
        df = res.metrics_dataframe
        if df is not None and "val/mIoU" in df:
            best = float(df["val/mIoU"].max())
        rows.append(
            {
                "trial": last.get("trial_id", res.path.rsplit("_", 1)[-1] if res.path else "?"),
                "status": stop_reason(last, max_epochs, failed=res.error is not None),
                "epochs": int(last.get("epoch", 0)),
                "best_val_mIoU": best,
                **{k: v for k, v in cfg.items() if k != "experiment"},
                "_experiment": cfg.get("experiment"),
            }
        )
    rows.sort(key=lambda r: -r["best_val_mIoU"] if r["best_val_mIoU"] == r["best_val_mIoU"] else 1)
    return rows


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The leaderboard's columns: every row's keys in first-seen order, private ones out."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys and not k.startswith("_")]
    return keys


def leaderboard_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The leaderboard as CSV text (the parent run's ``leaderboard.csv``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(rows), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def print_leaderboard(rows: Sequence[dict[str, Any]]) -> None:
    """Print the leaderboard as a table (best first)."""
    from rich.console import Console
    from rich.table import Table

    keys = _columns(rows)
    table = Table(title="Leaderboard (best val mIoU, %)")
    for key in keys:
        table.add_column(key, overflow="fold")
    for row in rows:
        cells = []
        for key in keys:
            value = row.get(key, "")
            cells.append(f"{value:.4g}" if isinstance(value, float) else str(value))
        table.add_row(*cells)
    Console(width=max(120, 24 * len(keys))).print(table)


def _storage(args: argparse.Namespace) -> str:
    if args.storage:
        return args.storage if "://" in args.storage else str(Path(args.storage).resolve())
    return str(Path("ray_results").resolve())


def _resume_dir(storage: str, space_file: Path, name: str) -> Path:
    root = Path(storage)
    if name != "latest":
        path = root / name
        if not (path / STATE_FILE).is_file() or not (path / "tuner.pkl").is_file():
            raise ConfigError(f"--resume {name}: no resumable search of tune_losses in {root}")
        return path
    found = sorted(
        (
            p
            for p in root.glob(f"{space_file.stem}-*/{STATE_FILE}")
            if (p.parent / "tuner.pkl").is_file()
        ),
        key=lambda p: p.stat().st_mtime,
    )
    if not found:
        raise ConfigError(f"--resume: no earlier search of {space_file} in {root}")
    return found[-1].parent


def _new_tuner(space: SearchSpace, trainable: Any, name: str, storage: str, logger: Any) -> Any:
    """Tuner over ``space``: Optuna proposes, ASHA (or FIFO) stops, ``logger`` tracks."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    search = space.experiment.search
    max_epochs = space.max_epochs
    # Optuna learns from a trial's last report: give it the trial's best so far, so that
    # an early-stopped trial is not judged by its last (worse) epochs
    learn_from = "best_val_mIoU" if search.metric == "val/mIoU" else search.metric
    searcher = OptunaSearch(
        space=space.define_by_run(),
        metric=learn_from,
        mode=search.mode,
        sampler=make_sampler(space),
    )
    if search.scheduler == "asha":
        scheduler: Any = ASHAScheduler(
            time_attr="training_iteration",
            metric=search.metric,
            mode=search.mode,
            max_t=max_epochs,
            grace_period=min(search.grace_period, max_epochs),
            reduction_factor=search.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent),
            scheduler=scheduler,
            num_samples=space.grid_size() or search.num_samples,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=[logger],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=search.checkpoint_keep),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    )


def run_search(args: argparse.Namespace, space: SearchSpace) -> int:
    """Run (or resume) the search; returns the process exit code."""
    import ray
    from mlflow.exceptions import MlflowException
    from ray import tune

    from tune_losses.tracking import SearchTracker, TrialLogger
    from tune_losses.trainable import train_trial

    exp = space.experiment
    search = exp.search
    storage = _storage(args)
    if args.address and "://" not in storage:
        print(
            f"note: --storage {storage} must be shared by every node of the cluster",
            file=sys.stderr,
        )
    if args.resume:
        run_dir = _resume_dir(storage, args.space, args.resume)
        name = run_dir.name
        state = json.loads((run_dir / STATE_FILE).read_text())
    else:
        name = f"{args.space.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(storage) / name
        state = {
            "tracking_uri": exp.tracking.uri,
            "experiment": exp.tracking.experiment,
            "space": str(args.space),
            "total": space.grid_size() or search.num_samples,
            "max_epochs": space.max_epochs,
        }
    total, max_epochs = state["total"], state["max_epochs"]
    try:
        tracker = SearchTracker(state["tracking_uri"], state["experiment"])
    except MlflowException as exc:
        raise ConfigError(f"tracking.uri {state['tracking_uri']}: {exc}") from None
    try:
        if args.resume:
            tracker.reopen(state["parent_run_id"])
        else:
            params = {"space_file": str(args.space), "ray_name": name, "storage": storage}
            params.update({f"search.{k}": v for k, v in search.model_dump().items()})
            tracker.start(exp.tracking.run_name or name, params, args.space)
            if "://" not in storage:
                run_dir.mkdir(parents=True, exist_ok=True)
                state["parent_run_id"] = tracker.parent_id
                (run_dir / STATE_FILE).write_text(json.dumps(state))
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        # "local" starts a fresh instance even where `ray start` left a cluster address behind
        ray.init(address=args.address or "local", ignore_reinit_error=True, log_to_driver=False)
        # after ray.init, which installs its own: a SIGTERM (a job scheduler, a timeout)
        # ends the search like Ctrl-C, runs KILLED and the state saved for --resume
        signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        trainable = tune.with_resources(
            train_trial, {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial}
        )
        print(
            f"search {name}: {total} trials, up to {search.max_concurrent} at a time, "
            f"{max_epochs} epochs max; results in {run_dir}",
            flush=True,
        )
        if args.resume:
            tuner = tune.Tuner.restore(
                str(run_dir), trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = _new_tuner(space, trainable, name, storage, TrialLogger(tracker, max_epochs))
        results = tuner.fit()
    except KeyboardInterrupt:
        tracker.abort("KILLED")
        raise
    except ConnectionError as exc:
        tracker.abort("FAILED")
        raise ConfigError(f"--address {args.address}: {exc}") from None
    except BaseException:
        tracker.abort("FAILED")
        raise
    if tracker.open_children() or len(results) < total:
        tracker.abort("KILLED")
        print(
            f"search interrupted; continue it with: python -m tune_losses.search "
            f"--space {args.space} --storage {storage} --resume {name}",
            file=sys.stderr,
        )
        return 130
    rows = leaderboard(results, max_epochs)
    ok = [r for r in rows if r["status"] != "error" and r["best_val_mIoU"] == r["best_val_mIoU"]]
    best_yaml = yaml.safe_dump(ok[0]["_experiment"], sort_keys=False) if ok else None
    best = {"best_val_mIoU": ok[0]["best_val_mIoU"], "best_trial": ok[0]["trial"]} if ok else {}
    tracker.finish(leaderboard_csv(rows), best_yaml, best)
    print_leaderboard(rows)
    if best_yaml is not None and "://" not in storage:
        (run_dir / "best_config.yaml").write_text(best_yaml)
        print(f"best config: {run_dir / 'best_config.yaml'}")
    print(f"review it:  mlflow ui --backend-store-uri {exp.tracking.uri}")
    return 0 if ok else 1


def preflight(space: SearchSpace) -> None:
    """Build once, on the driver, what every trial builds: the data (files read and
    validated), the model, and the loss mix of every checked variant of the space on one
    validation image. A bad file or option value then stops the search before any run is
    opened, as a one-line error, instead of failing every trial."""
    import torch

    from tune_losses.data import build_datasets
    from tune_losses.losses import LossMix
    from tune_losses.models import build_model

    exp = space.experiment
    _, val_ds, info = build_datasets(exp.data)
    image, mask = val_ds[0]
    outputs: dict[str, dict[str, torch.Tensor]] = {}
    for variant in space.variants:
        key = variant.model.model_dump_json()
        if key not in outputs:
            try:
                model = build_model(variant.model, info.num_classes).eval()
                with torch.no_grad():
                    outputs[key] = model(image[None])
            except (ValueError, TypeError, RuntimeError) as exc:
                raise ConfigError(f"{space.source}: model: {exc}".splitlines()[0]) from None
        spec = {
            h: {k: {**t, "weight": 1.0} for k, t in terms.items()}
            for h, terms in variant.loss.items()
        }
        try:
            mix = LossMix(
                spec, ignore_index=info.ignore_index, class_frequencies=info.class_frequencies
            )
            mix(outputs[key], mask[None].long(), 0.5)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ConfigError(f"{space.source}: loss: {exc}".splitlines()[0]) from None


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI: validate, preflight, then dry-run or search; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.address:  # Ray 2.60 clusters use token auth; set before anything imports ray
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        space = load_space(args)
        preflight(space)
        if args.dry_run:
            dry_run(space)
            return 0
        return run_search(args, space)
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
