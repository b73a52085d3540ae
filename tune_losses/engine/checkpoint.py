"""A run's checkpoint: the state the next epoch depends on (``state.pt``), the best
epoch's summary (``best.json``) and its predictions (``predictions.png``)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from tune_losses.engine.lineage import same_settings
from tune_losses.engine.rng import load_rng_state, rng_state

STATE_FILE = "state.pt"
SUMMARY_FILE = "best.json"
PREDICTIONS_FILE = "predictions.png"


def read_summary(directory: str | Path) -> dict[str, Any] | None:
    """The best-epoch summary a checkpoint folder holds (:meth:`Checkpointing.save`), if any."""
    path = Path(directory) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class Checkpointing:
    """The state, summary and files of :class:`~tune_losses.engine.Trainer` (its base):
    what a resumed run needs to repeat the next epoch exactly."""

    # set by the trainer
    model: Any
    loss: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    train_loader: Any
    info: Any
    exp: Any
    epoch: int
    best: float
    best_epoch: int
    lineage: list[dict[str, Any]]
    _preview_png: tuple[int, bytes] | None

    def state_dict(self) -> dict[str, Any]:
        """Everything the next epoch depends on, so a resumed run repeats it exactly.

        Model, optimiser, LR schedule, AMP scaler, early-stopping history and every RNG the
        epoch draws from (:func:`~tune_losses.engine.rng.rng_state`); only tensors and plain
        Python values, so the checkpoint loads with ``torch.load(..., weights_only=True)``.
        """
        return {
            "model": self.model.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_confmat": self.best_confmat,
            "best_per_class": self.best_per_class,
            "best_preview": self.best_preview,
            "reference": self.reference,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "search_best": self.search_best,
            "weight_history": self.weight_history,
            "lineage": self.lineage,
            "trace": dict(self.trace),
            "rng": rng_state(self.train_loader),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output (model, optimiser, schedule, history, RNGs)."""
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state.get("loss", {}))  # absent in older checkpoints
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for key in ("epoch", "best", "best_epoch", "best_confmat", "best_per_class", "reference"):
            setattr(self, key, state[key])
        self.bad_epochs, self.stopped_early = state["bad_epochs"], state["stopped_early"]
        self.search_best = dict(state.get("search_best") or {})
        self.weight_history = list(state.get("weight_history", []))
        own = self.lineage[-1]
        self.lineage = list(state.get("lineage") or [own])  # the donor's, after a PBT exploit
        self.trace = defaultdict(list, {k: list(v) for k, v in state.get("trace", {}).items()})
        begun = [p for p in self.exp.phases if p.from_epoch <= self.epoch]
        if begun:  # a replay resumed inside one of its phases
            self._enter(begun[-1])
        elif not same_settings(own, self.lineage[-1]):
            # a config other than the one that wrote the state (PBT): it runs from here on
            self.lineage.append({**own, "from_epoch": self.epoch + 1})
            self.set_optimizer()
        self.best_preview = state.get("best_preview")  # absent in older checkpoints
        self._preview_png = None
        if "rng" in state:
            load_rng_state(self.train_loader, state["rng"])
        else:  # a checkpoint from before exact resume held the torch CPU RNG only
            torch.set_rng_state(state["torch_rng"].cpu())

    def summary(self) -> dict[str, Any]:
        """The best epoch in plain JSON (mIoU, per-class IoU, confusion matrix) and the loss
        as resolved (schedules, class weights computed from the train frequencies)."""
        return {
            "best_val_mIoU": self.best,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epoch,
            "stopped_early": self.stopped_early,
            "class_names": self.info.class_names,
            "iou_per_class": self.best_per_class,
            "confmat": None if self.best_confmat is None else self.best_confmat.tolist(),
            "class_frequencies": [float(f) for f in self.info.class_frequencies],
            "loss_setup": self.loss.describe(),
            "weight_history": self.weight_history,
            "lineage": self.lineage,
            "steps": dict(self.trace),
        }

    def save(self, directory: str | Path) -> Path:
        """Write the state (``state.pt``), the best epoch's summary (``best.json``) and,
        once there is a best epoch, its predictions (``predictions.png``)."""
        path = Path(directory) / STATE_FILE
        torch.save(self.state_dict(), path)
        (Path(directory) / SUMMARY_FILE).write_text(json.dumps(self.summary()))
        png = self.predictions_png()
        if png is not None:
            (Path(directory) / PREDICTIONS_FILE).write_bytes(png)
        return path

    def predictions_png(self) -> bytes | None:
        """The best epoch's :meth:`preview` drawn as a PNG (redrawn only when the best epoch
        changed, since a search saves every epoch); None before the first epoch."""
        if self.best_preview is None:
            return None
        if self._preview_png is None or self._preview_png[0] != self.best_epoch:
            from tune_losses.plots import plot_predictions

            title = f"best epoch {self.best_epoch}: val mIoU {self.best:.1f}%"
            png = plot_predictions(
                **self.best_preview,
                class_names=self.info.class_names,
                palette=self.info.palette,
                ignore_index=self.info.ignore_index,
                title=title,
            )
            self._preview_png = (self.best_epoch, png)
        return self._preview_png[1]

    def load(self, directory: str | Path) -> None:
        """Continue from a checkpoint folder written by :meth:`save`.

        Loads on the CPU with ``weights_only=True`` (no code runs from the file); the model
        and optimiser state move to :attr:`device` as they load, RNG states must stay on CPU.
        """
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
        self.load_state_dict(state)
