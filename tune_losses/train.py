"""``python -m tune_losses.train``: one training run, no Ray (e.g. retrain a search's winner).

Example:
    python -m tune_losses.train --config ray_results/<search>/best_config.yaml --set train.epochs=30
    python -m tune_losses.train --config configs/camvid_unet.yaml --out runs/camvid
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tune_losses.config import (
    ConfigError,
    add_overrides_flag,
    dump_experiment,
    flatten,
    load_experiment,
)
from tune_losses.data import DataError


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of ``python -m tune_losses.train``."""
    p = argparse.ArgumentParser(prog="python -m tune_losses.train", description=__doc__)
    p.add_argument("--config", required=True, type=Path, help="experiment YAML (no markers)")
    add_overrides_flag(p, "override a config value, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--out", type=Path, help="folder for the history, summary and last state")
    p.add_argument("--mlflow", action="store_true", help="also log the run to tracking.uri")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Train one experiment, print each epoch, write the run folder; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        exp = load_experiment(args.config, args.overrides)
        from tune_losses.engine import PREDICTIONS_FILE, Trainer

        try:
            trainer = Trainer(exp)  # builds and checks data, model and loss on one batch
        except ConfigError as exc:
            raise ConfigError(f"{args.config}: {exc}") from None
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / f"{args.config.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_experiment(exp))
    info = trainer.info
    print(
        f"training {exp.model.arch}/{exp.model.encoder} on {exp.data.format} "
        f"({len(trainer.train_loader.dataset)} train, {len(trainer.val_loader.dataset)} val, "
        f"{info.num_classes} classes) on {trainer.device} for {exp.train.epochs} epochs -> {out}",
        flush=True,
    )
    run = None
    if args.mlflow:
        from tune_losses.tracking import RUN_FILE, RunLogger

        params = flatten(exp.model_dump(mode="json", exclude={"search", "tracking"}))
        run = RunLogger(exp.tracking.uri, exp.tracking.experiment, f"train-{out.name}", params)
        # where the run went, so that ``tune_losses.evaluate --mlflow`` can add to it
        (out / RUN_FILE).write_text(json.dumps({"tracking_uri": run.uri, "run_id": run.run_id}))
    history = []
    status = "FAILED"
    try:
        for result in trainer.epochs():
            history.append(result)
            print(
                f"epoch {result['epoch']:>3}/{exp.train.epochs}  "
                f"loss {result['train/loss']:.4f}  val mIoU {result['val/mIoU']:.2f}  "
                f"best {result['best_val_mIoU']:.2f}  ({result['time/epoch_s']:.1f} s)",
                flush=True,
            )
            if run is not None:
                run.log_epoch(result)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        trainer.save(out)
        (out / "history.json").write_text(json.dumps(history, indent=1))
        if run is not None:
            run.log_artifact(str(out / "config.yaml"))
            run.log_artifact(str(out / "best.json"))
            if (out / PREDICTIONS_FILE).is_file():
                run.log_artifact(str(out / PREDICTIONS_FILE))
            run.end(status)
    summary = trainer.summary()
    if summary["confmat"] is not None:
        from tune_losses.plots import plot_confusion_matrix, plot_per_class_iou

        plot_confusion_matrix(summary["confmat"], info.class_names, out / "confmat.png")
        plot_per_class_iou(summary["iou_per_class"], info.class_names, out / "iou.png")
    ious = dict(zip(info.class_names, summary["iou_per_class"], strict=True))
    print(f"best val mIoU {summary['best_val_mIoU']:.2f} at epoch {summary['best_epoch']}")
    print("per-class IoU: " + ", ".join(f"{n} {v:.1f}" for n, v in ious.items()))
    absent = [name for name, iou in ious.items() if math.isnan(iou)]
    if absent:
        print(f"excluded from the means (in neither labels nor predictions): {', '.join(absent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
