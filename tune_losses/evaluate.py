"""``python -m tune_losses.evaluate``: score a run's weights on any split of its data.

mIoU, per-class IoU, Boundary IoU, boundary F1, pixel accuracy and per-class precision and
recall of the decode head (:class:`~tune_losses.metrics.SegmentationMetrics`): a table on
the terminal, JSON on disk, and with ``--mlflow`` / ``--log-to`` the numbers as
``<split>/mIoU``, ``<split>/IoU/<class>`` ... and the JSON as an artifact of an MLflow run.

Which weights are scored (a folder keeps one set):

- ``--run DIR``, a ``python -m tune_losses.train`` run folder: its ``config.yaml`` and the
  weights of ``state.pt``, i.e. the **last** epoch trained, not the best val epoch unless
  they coincide (both epochs are printed and written).
- ``--search DIR``, the folder of a search (under ``--storage``, holding
  ``best_config.yaml``): the Ray trial that trained exactly that experiment, at the latest
  checkpoint it kept, i.e. the last epoch it reached (ASHA may have stopped it early), again
  not its best epoch unless they coincide. When no trial trained the winner as written
  (PBT's learned schedules), retrain it with ``python -m tune_losses.train --config
  DIR/best_config.yaml --out RUN`` and score ``--run RUN``.

Example:
    python -m tune_losses.evaluate --run runs/camvid_small --split test
    python -m tune_losses.evaluate --search ray_results/<search> --split val --mlflow
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune_losses.config import ConfigError, Experiment, add_overrides_flag, load_experiment
from tune_losses.data import DataError
from tune_losses.scorecard import mlflow_metrics, print_table, score

SEARCH_STATE = "tune_losses.json"  # tune/state.py's STATE_FILE (the Ray edge is not imported)
_PARAMS = "params.json"  # Ray's copy of a trial's config, in the trial's folder
_ORIGIN = "origin.json"  # tune/trainable.py's ORIGIN_FILE: the trial that wrote a checkpoint


class EvaluateError(ValueError):
    """A bad folder, file or flag: one line, exit 2, nothing written."""


@dataclass
class Target:
    """What to score: the experiment file, the checkpoint folder, and where it came from."""

    config: Path
    checkpoint: Path
    folder: Path
    trial_id: str | None = None


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of ``python -m tune_losses.evaluate``."""
    p = argparse.ArgumentParser(
        prog="python -m tune_losses.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--run",
        type=Path,
        metavar="DIR",
        help="a train run folder (config.yaml + state.pt: last epoch)",
    )
    which.add_argument(
        "--search",
        type=Path,
        metavar="DIR",
        help="a search's folder (best_config.yaml): the winning trial's latest checkpoint",
    )
    p.add_argument(
        "--split",
        default="val",
        help="train, val (data.train_split / data.val_split) or any split folder, e.g. test "
        "(default val; synthetic data has train and val only)",
    )
    p.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="score the split's first N images only (default: all of a split other than the "
        "run's train and val, which keep data.max_train / data.max_val)",
    )
    add_overrides_flag(p, "override the run's config, e.g. data.root=... when the data moved")
    p.add_argument(
        "--out", type=Path, metavar="FILE", help="JSON file (default <folder>/eval_<split>.json)"
    )
    p.add_argument(
        "--mlflow",
        action="store_true",
        help="log to the run's MLflow run (train --mlflow's, or the winning trial's)",
    )
    p.add_argument("--log-to", metavar="RUN_ID", help="log to this MLflow run instead")
    p.add_argument(
        "--tracking-uri", metavar="URI", help="MLflow store of --log-to (default tracking.uri)"
    )
    return p


def _experiment(raw: dict[str, Any]) -> dict[str, Any]:
    """An experiment as plain JSON, defaults filled, for comparing two written forms."""
    return Experiment.model_validate(raw).model_dump(mode="json")


def _latest_checkpoint(trial: Path) -> Path | None:
    """The highest-numbered ``checkpoint_NNNNNN`` folder of a trial holding a state."""
    found = sorted(d for d in trial.glob("checkpoint_*") if (d / "state.pt").is_file())
    return found[-1] if found else None


def run_target(folder: Path) -> Target:
    """A train run folder's config and last state; an incomplete folder is an EvaluateError."""
    for name in ("config.yaml", "state.pt"):
        if not (folder / name).is_file():
            raise EvaluateError(f"{folder / name}: not found (not a tune_losses.train run folder)")
    return Target(folder / "config.yaml", folder, folder)


def search_target(folder: Path) -> Target:
    """The trial of a search that trained ``best_config.yaml`` as written, at its latest
    checkpoint; an EvaluateError when the search keeps no weights of it."""
    config = folder / "best_config.yaml"
    if not config.is_file():
        raise EvaluateError(f"{config}: not found (not a finished search's folder)")
    best = _experiment(load_experiment(config).model_dump(mode="json"))
    matches = []
    for params in sorted(folder.glob(f"*/{_PARAMS}")):
        try:
            raw = json.loads(params.read_text())
            raw = raw.get("member") or raw  # PBT keeps a member's values under "member"
            if _experiment(raw["experiment"]) == best:
                matches.append(params.parent)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # not a trial of ours
    checkpoints = [c for c in map(_latest_checkpoint, matches) if c is not None]
    if not checkpoints:
        what = "no checkpoint" if matches else "no trial folder trained it as written"
        raise EvaluateError(
            f"{config}: {what} under {folder}; retrain it with python -m tune_losses.train "
            f"--config {config} --out RUN and evaluate --run RUN"
        )
    checkpoint = checkpoints[0]
    origin = checkpoint / _ORIGIN
    trial_id = json.loads(origin.read_text())["trial_id"] if origin.is_file() else None
    return Target(config, checkpoint, folder, trial_id)


def _log_target(args: argparse.Namespace, target: Target, exp: Experiment) -> Any:
    """The RunLogger on the run to log to (checked before anything is computed), or None."""
    if not args.mlflow and args.log_to is None:
        return None
    from tune_losses.tracking import RUN_FILE, RunLogger, find_trial_run, open_client

    if args.log_to is not None:
        return RunLogger.attach(args.tracking_uri or exp.tracking.uri, args.log_to)
    if args.run is not None:
        path = target.folder / RUN_FILE
        if not path.is_file():
            raise EvaluateError(
                f"{path}: not found (the run was trained without --mlflow); "
                "name a run with --log-to RUN_ID"
            )
        where = json.loads(path.read_text())
        return RunLogger.attach(where["tracking_uri"], where["run_id"])
    state_file = target.folder / SEARCH_STATE
    if not state_file.is_file() or target.trial_id is None:
        raise EvaluateError(f"{state_file}: no search state or trial id; use --log-to RUN_ID")
    state = json.loads(state_file.read_text())
    client = open_client(state["tracking_uri"])
    run = find_trial_run(client, state["parent_run_id"], target.trial_id)
    return RunLogger.attach(state["tracking_uri"], run.info.run_id)


def main(argv: Sequence[str] | None = None) -> int:
    """Score the weights named on the command line on one split; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit must be at least 1, got {args.limit}", file=sys.stderr)
        return 2
    if args.tracking_uri and args.log_to is None:
        print("error: --tracking-uri goes with --log-to RUN_ID", file=sys.stderr)
        return 2
    try:
        target = run_target(args.run) if args.run is not None else search_target(args.search)
        exp = load_experiment(target.config, args.overrides)
        from tune_losses.data import build_split_loader, split_folder
        from tune_losses.engine import Trainer, read_summary

        try:
            trainer = Trainer(exp)  # builds and checks data, model and loss on one batch
            trainer.load(target.checkpoint)
        except ConfigError as exc:
            raise ConfigError(f"{target.config}: {exc}") from None
        except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as exc:
            # a state that does not fit the model, or a truncated or corrupt file
            first = (str(exc).splitlines() or [f"unreadable ({type(exc).__name__})"])[0]
            raise EvaluateError(f"{target.checkpoint / 'state.pt'}: {first}") from None
        split = split_folder(exp.data, args.split)
        loader = build_split_loader(
            exp.data, args.split, limit=args.limit, device_type=trainer.device.type
        )
        logger = _log_target(args, target, exp)
    except (ConfigError, DataError, ValueError) as exc:  # EvaluateError, TrackingError too
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    summary = read_summary(target.checkpoint) or {}
    best_epoch = summary.get("best_epoch")
    last = f"last epoch ({trainer.epoch})"
    if best_epoch == trainer.epoch:
        last = f"last epoch ({trainer.epoch}), also the best on val"
    elif best_epoch:
        last += f", best val epoch was {best_epoch}"
    trial = f" trial {target.trial_id}" if target.trial_id else ""
    _, metrics = trainer.evaluate(loader)
    report = {
        "split": args.split,
        "data_split": split,
        "images": len(loader.dataset),
        "scored": {
            "folder": str(target.folder),
            "checkpoint": str(target.checkpoint),
            "config": str(target.config),
            "trial_id": target.trial_id,
            "epoch": trainer.epoch,
            "best_val_epoch": best_epoch,
            "weights": f"{target.folder.name}{trial}, {last}",
        },
        **score(metrics.compute(), metrics.confmat.cpu().tolist(), trainer.info.class_names),
    }
    out = args.out or target.folder / f"eval_{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print_table(report)
    print(f"written: {out}")
    if logger is not None:
        logger.log_numbers(mlflow_metrics(report, args.split), trainer.epoch)
        logger.log_artifact(out)
        print(f"logged to MLflow run {logger.run_id} ({logger.uri}) as {args.split}/...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
