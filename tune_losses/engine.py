"""One training run in plain PyTorch: build it, train an epoch, evaluate, early-stop, checkpoint.

:func:`build_run` is the one place that turns an :class:`~tune_losses.config.Experiment`
into data, model and loss mix and checks them together on one batch; :class:`Trainer`, the
train CLI and the search's preflight all go through it, so a bad value fails the same way
(a one-line :class:`~tune_losses.config.ConfigError`) before anything is written. No Ray
and no MLflow here: ``tune/trainable.py`` drives :class:`Trainer` for Tune, ``train.py``
from the command line.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tune_losses.config import (
    CLASS_METRIC,
    PHASE_TRAIN_FIELDS,
    ConfigError,
    Experiment,
    Phase,
    TrainConfig,
    best_metric_name,
    class_metric_problem,
)
from tune_losses.data import DatasetInfo, SegmentationDataset, build_loaders
from tune_losses.losses import LossMix
from tune_losses.metrics import SegmentationMetrics
from tune_losses.models import build_model

STATE_FILE = "state.pt"
SUMMARY_FILE = "best.json"
PREDICTIONS_FILE = "predictions.png"
PREVIEW_IMAGES = 3
ONECYCLE_DIV = 25.0  # one-cycle: initial LR = max_lr / ONECYCLE_DIV
ONECYCLE_FINAL_DIV = 1e4  # and final LR = initial LR / ONECYCLE_FINAL_DIV (torch's defaults)


def read_summary(directory: str | Path) -> dict[str, Any] | None:
    """The best-epoch summary a checkpoint folder holds (:meth:`Trainer.save`), if any."""
    path = Path(directory) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run is repeatable on one machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(cfg: TrainConfig) -> torch.device:
    """``auto`` is CUDA when present, else CPU; asking for CUDA without one is an error."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: cuda requested but torch sees no CUDA device")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def resolve_amp(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 (or fp16 where bf16 is missing) on CUDA, none on CPU (fp32)."""
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16" or (cfg.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _lr_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=cfg.lr,
            total_steps=total_steps,
            pct_start=0.1,
            div_factor=ONECYCLE_DIV,
            final_div_factor=ONECYCLE_FINAL_DIV,
        )
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)


@dataclass
class Run:
    """What one training run is built from: its loaders, model and loss mix."""

    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    info: DatasetInfo
    model: nn.Module
    loss: LossMix


def build_run(
    exp: Experiment,
    device: torch.device | None = None,
    data: tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader, DatasetInfo]
    | None = None,
) -> Run:
    """Data (unless ``data`` is given), model and loss mix of ``exp``, checked on one batch.

    The first validation image goes through the model and every loss term (whatever its
    weight at that point of training), so a value that only fails inside a term, e.g. a
    class list longer than the dataset's classes, is a :class:`ConfigError` here rather
    than a traceback in the first training step.
    """
    device = device or torch.device("cpu")
    cfg = exp.train
    train_loader, val_loader, info = data or build_loaders(
        exp.data, device_type=device.type, seed=cfg.seed
    )
    for metric, _ in exp.search.objectives:
        problem = class_metric_problem(metric, info.class_names)
        if problem is not None:
            raise ConfigError(problem)
    try:
        model = build_model(exp.model, info.num_classes).to(device)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"model: {exc}".splitlines()[0]) from None
    try:
        loss = LossMix(
            exp.loss, ignore_index=info.ignore_index, class_frequencies=info.class_frequencies
        ).to(device)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"loss: {exc}".splitlines()[0]) from None
    image, mask = val_loader.dataset[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(image[None].to(device))
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"model: {exc}".splitlines()[0]) from None
    finally:
        model.train(was_training)
    try:
        loss.check(outputs, mask[None].long().to(device))
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"loss: {exc}".splitlines()[0]) from None
    return Run(train_loader, val_loader, info, model, loss)


def preflight(experiments: Sequence[Experiment], source: str = "") -> None:
    """Build and check every experiment of a search on the driver before any trial runs.

    The data is read and validated once per distinct ``data`` section; a bad file or
    value stops the search as a one-line ConfigError naming ``source``.
    """
    data: dict[str, Any] = {}
    for exp in experiments:
        key = exp.data.model_dump_json() + f"seed={exp.train.seed}"
        try:
            if key not in data:
                data[key] = build_loaders(exp.data, seed=exp.train.seed)
            build_run(exp, data=data[key])
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}" if source else str(exc)) from None


def _to_uint8(image: Tensor) -> Tensor:
    """A ``[3,H,W]`` float image rescaled to ``[H,W,3]`` uint8 (min-max), for display."""
    lo, hi = image.min(), image.max()
    scaled = (image - lo) / (hi - lo).clamp_min(1e-8) * 255.0
    return scaled.permute(1, 2, 0).round().to(torch.uint8)


def _settings(exp: Experiment, from_epoch: int) -> dict[str, Any]:
    """What a phase of a run is (:class:`~tune_losses.config.Phase`): from which epoch on
    it trains with which optimiser settings and loss, as plain values."""
    dump = exp.model_dump(mode="json", include={"train", "loss"})
    train = {k: dump["train"][k] for k in PHASE_TRAIN_FIELDS}
    return {"from_epoch": from_epoch, "train": train, "loss": dump["loss"]}


def _same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["train"] == b["train"] and a["loss"] == b["loss"]


class Trainer:
    """Model, loss mix, optimiser and the run's history; iterate :meth:`epochs` to train.

    Every yielded dict is one epoch's metrics (``train/loss``, each weighted part
    ``train/loss/<head>/<term>``, each effective weight ``weight/<head>/<term>``, the mean
    applied LR ``train/lr``, ``val/mIoU`` ... in %), so callers can log or report it as is.

    The run's lineage travels with its state: :attr:`lineage` lists the phases it trained
    in (the settings from epoch 1, then each change: a PBT exploit that loaded another
    run's state under a mutated config, or a configured :class:`~tune_losses.config.Phase`),
    and :attr:`trace` the LR and scheduled weight of every step, so a replay can be checked.
    """

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        cfg = exp.train
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg)
        self.amp_dtype = resolve_amp(cfg, self.device)
        run = build_run(exp, self.device)
        self.train_loader, self.val_loader, self.info = run.train_loader, run.val_loader, run.info
        self.model, self.loss = run.model, run.loss
        if self.device.type == "cuda" and cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        params: list[dict[str, Any]] = [{"params": list(self.model.parameters())}]
        learned = list(self.loss.parameters())  # uncertainty weighting's log-variances
        if learned:  # not decayed: decay would pull them to 0, a weight of 1
            params.append({"params": learned, "weight_decay": 0.0})
        if cfg.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay
            )
        else:
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps_per_epoch = max(1, len(self.train_loader))
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.scheduler = _lr_scheduler(cfg, self.optimizer, self.total_steps)
        self.scaler = torch.amp.GradScaler(enabled=self.amp_dtype == torch.float16)
        self.epoch = 0
        self.best = -math.inf
        self.best_epoch = 0
        self.best_confmat: Tensor | None = None
        self.best_per_class: list[float] = []
        self.search_best: dict[str, float] = {}
        self.weight_history: list[dict[str, float]] = []
        self.lineage: list[dict[str, Any]] = [_settings(exp, 1)]
        self.trace: dict[str, list[float]] = defaultdict(list)  # per step: lr, weight/<key>
        self.best_preview: dict[str, list[Tensor]] | None = None
        self._preview_png: tuple[int, bytes] | None = None  # (best epoch, PNG) drawn last
        self.reference = -math.inf
        self.bad_epochs = 0
        self.stopped_early = False

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        images = images.to(self.device, non_blocking=True)
        if self.device.type == "cuda" and self.exp.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, masks.to(self.device, non_blocking=True)

    def train_one_epoch(self) -> dict[str, float]:
        """One pass over the train loader; returns mean loss, parts and effective weights."""
        self.model.train()
        sums: dict[str, float] = defaultdict(float)
        n = 0
        for step, (images, masks) in enumerate(self.train_loader):
            images, masks = self._to_device(images, masks)
            progress = (self.epoch * self.steps_per_epoch + step) / self.total_steps
            with self._autocast():
                outputs = self.model(images)
            out = self.loss(outputs, masks, progress)
            if not torch.isfinite(out.total):
                raise FloatingPointError(f"loss is {out.total.item()} at epoch {self.epoch + 1}")
            lr = float(self.optimizer.param_groups[0]["lr"])
            self.trace["lr"].append(lr)
            for key, weight in out.scheduled.items():
                self.trace[f"weight/{key}"].append(weight)
            sums["train/lr"] += lr
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out.total).backward()
            if self.exp.train.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.exp.train.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            sums["train/loss"] += out.total.item()
            for key, part in out.parts.items():
                sums[f"train/loss/{key}"] += float(part.detach())
            for key, weight in out.weights.items():
                sums[f"weight/{key}"] += weight
            n += 1
        return {k: v / max(n, 1) for k, v in sums.items()}

    @torch.no_grad()
    def evaluate(
        self, loader: torch.utils.data.DataLoader | None = None
    ) -> tuple[dict[str, float], SegmentationMetrics]:
        """Metrics of the decode head on the validation loader, or on ``loader`` (another
        split, :func:`~tune_losses.data.build_split_loader`), in %, keys ``val/...``."""
        self.model.eval()
        metrics = SegmentationMetrics(self.info.num_classes, self.info.ignore_index)
        for images, masks in self.val_loader if loader is None else loader:
            images, masks = self._to_device(images, masks)
            with self._autocast():
                logits = self.model(images)["decode"]
            metrics.update(logits.argmax(1), masks)
        res = metrics.compute()
        out = {f"val/{k}": float(v) for k, v in res.items() if isinstance(v, int | float)}
        out["val/excluded_classes"] = float(len(res["excluded_classes"]))
        for name, iou in zip(self.info.class_names, res["iou_per_class"], strict=True):
            if not math.isnan(iou):
                out[f"{CLASS_METRIC}{name}"] = float(iou)
        return out, metrics

    @torch.no_grad()
    def preview(self, n: int = PREVIEW_IMAGES) -> dict[str, list[Tensor]]:
        """The first ``n`` validation images (as stored, uint8), their labels and the decode
        head's predictions, cropped to the image: what :data:`PREDICTIONS_FILE` draws.

        Taken at each new best epoch (a few forward passes in eval mode, no RNG drawn), so
        the picture shows the model the run reports, not its last epoch.
        """
        self.model.eval()
        dataset = self.val_loader.dataset
        out: dict[str, list[Tensor]] = {"images": [], "labels": [], "predictions": []}
        for index in range(min(n, len(dataset))):
            tensor, label = dataset[index]
            with self._autocast():
                logits = self.model(tensor[None].to(self.device))["decode"]
            if isinstance(dataset, SegmentationDataset):  # the image before normalisation
                raw, raw_label = dataset.source.load(index)
                image, label = (
                    torch.tensor(raw),  # a copy: the in-memory source is read-only
                    torch.as_tensor(raw_label),
                )
            else:  # a bare dataset: the normalised tensor rescaled to [0, 255]
                image = _to_uint8(tensor)
            height, width = label.shape[:2]
            out["images"].append(image.to(torch.uint8).cpu())
            out["labels"].append(label.to(torch.int64).cpu())
            out["predictions"].append(logits.argmax(1)[0, :height, :width].to(torch.int64).cpu())
        return out

    def set_optimizer(self) -> None:
        """Put ``train.lr`` (the peak LR) and ``train.weight_decay`` into the optimiser and
        its LR schedule, keeping the schedule's shape and position.

        A PBT exploit loads the donor's optimiser state, which holds the donor's LR, one-cycle
        peaks and decay; this applies the member's own. The path a new peak follows is the
        schedule's, rescaled: ``lr_t = lr_t^old * lr_new / lr_old`` at the switch, and the
        schedule's anchors set as it sets them from ``lr_new`` (one-cycle: ``max_lr``,
        ``initial_lr = max_lr / 25``, ``min_lr = initial_lr / 1e4``; cosine and constant: the
        base LR), so from then on ``lr(t) = lr_new * shape(t)`` over the whole run's steps.
        The log-variances of uncertainty weighting (second group) are never decayed.
        """
        cfg = self.exp.train
        self.optimizer.param_groups[0]["weight_decay"] = cfg.weight_decay
        onecycle = isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR)
        for index, group in enumerate(self.optimizer.param_groups):
            old = group["max_lr"] if onecycle else self.scheduler.base_lrs[index]
            if old == cfg.lr:
                continue
            group["lr"] = group["lr"] / old * cfg.lr
            if onecycle:
                group["max_lr"] = cfg.lr
                group["initial_lr"] = cfg.lr / ONECYCLE_DIV
                group["min_lr"] = group["initial_lr"] / ONECYCLE_FINAL_DIV
            else:
                self.scheduler.base_lrs[index] = cfg.lr
                group["initial_lr"] = cfg.lr

    def _enter(self, phase: Phase) -> None:
        """Train on with a phase's optimiser settings and loss (its weight schedules run on
        the whole run's progress; learned log-variances carry over)."""
        train = self.exp.train.model_copy(update=phase.train.model_dump())
        self.exp = self.exp.model_copy(update={"train": train, "loss": phase.loss})
        settings = _settings(self.exp, phase.from_epoch)
        if settings["loss"] != self.lineage[-1]["loss"]:
            mix = LossMix(
                phase.loss,
                ignore_index=self.info.ignore_index,
                class_frequencies=self.info.class_frequencies,
            ).to(self.device)
            if self.loss.log_vars is not None:
                mix.log_vars = self.loss.log_vars  # the optimiser's parameter, state and all
            self.loss = mix
        if not _same_settings(settings, self.lineage[-1]):
            self.lineage.append(settings)
        self.set_optimizer()

    def epochs(self) -> Iterator[dict[str, float]]:
        """Train until ``train.epochs`` (or ``train.stop_after``) or early stopping, entering
        each configured phase at its epoch; yield each epoch's metrics."""
        stop = self.exp.train.early_stopping
        phases = {phase.from_epoch: phase for phase in self.exp.phases}
        while self.epoch < self.exp.train.last_epoch() and not self.stopped_early:
            if self.epoch + 1 in phases:
                self._enter(phases[self.epoch + 1])
            t0 = time.perf_counter()
            result = self.train_one_epoch()
            val, metrics = self.evaluate()
            result.update(val)
            self.epoch += 1
            miou = val["val/mIoU"]
            # patience counts epochs since the last gain of more than min_delta over the
            # score that reset it (so small steady gains do not keep a run alive forever)
            if miou > self.reference + stop.min_delta:
                self.reference, self.bad_epochs = miou, 0
            else:
                self.bad_epochs += 1
            if miou > self.best:
                self.best, self.best_epoch = miou, self.epoch
                self.best_confmat = metrics.confmat.cpu()
                self.best_per_class = list(metrics.compute()["iou_per_class"])
                self.best_preview = self.preview()
            # patience running out at the last scheduled epoch stops nothing: not early
            last = self.epoch >= self.exp.train.epochs
            if stop.patience is not None and self.bad_epochs >= stop.patience and not last:
                self.stopped_early = True
            result.update(
                {
                    "epoch": self.epoch,
                    "best_val_mIoU": self.best,
                    "best_epoch": self.best_epoch,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "time/epoch_s": time.perf_counter() - t0,
                    "early_stopped": float(self.stopped_early),
                    "epochs_max": self.exp.train.epochs,
                }
            )
            self._track_search_best(result)
            prefix = "weight/"
            weights = {k[len(prefix) :]: v for k, v in result.items() if k.startswith(prefix)}
            self.weight_history.append(weights)
            yield result

    def _track_search_best(self, result: dict[str, float]) -> None:
        """Add the best value so far of each ``search.metric`` (per its mode) as
        ``best_<metric>``: what a search ranks and learns from, whatever its metrics."""
        for metric, mode in self.exp.search.objectives:
            value, best = result.get(metric), self.search_best.get(metric)
            if value is not None and math.isfinite(value):
                if best is None or (value > best if mode == "max" else value < best):
                    self.search_best[metric] = float(value)
            if metric in self.search_best:
                result[best_metric_name(metric)] = self.search_best[metric]

    def state_dict(self) -> dict[str, Any]:
        """Everything the next epoch depends on, so a resumed run repeats it exactly.

        Model, optimiser, LR schedule, AMP scaler, early-stopping history and every RNG the
        epoch draws from (see :meth:`rng_state`); only tensors and plain Python values, so
        the checkpoint loads with ``torch.load(..., weights_only=True)``.
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
            "rng": self.rng_state(),
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
        elif not _same_settings(own, self.lineage[-1]):
            # a config other than the one that wrote the state (PBT): it runs from here on
            self.lineage.append({**own, "from_epoch": self.epoch + 1})
            self.set_optimizer()
        self.best_preview = state.get("best_preview")  # absent in older checkpoints
        self._preview_png = None
        if "rng" in state:
            self.load_rng_state(state["rng"])
        else:  # a checkpoint from before exact resume held the torch CPU RNG only
            torch.set_rng_state(state["torch_rng"].cpu())

    def rng_state(self) -> dict[str, Any]:
        """Python, NumPy (global), torch CPU and CUDA RNGs, the train loader's shuffling
        generator and the augmentation pipeline's own generators, as plain values.

        With ``num_workers > 0`` the train workers start each epoch seeded from the loader's
        generator (see :func:`~tune_losses.data.build_loaders`), so that state covers them.
        CUDA RNGs are saved only once CUDA is initialised (before that nothing drew from them).
        """
        numpy_state = np.random.get_state(legacy=False)
        numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": numpy_state,
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        if self.train_loader.generator is not None:
            state["loader"] = self.train_loader.generator.get_state()
        if isinstance(self.train_loader.dataset, SegmentationDataset):
            state["augment"] = self.train_loader.dataset.random_state()
        return state

    def load_rng_state(self, state: dict[str, Any]) -> None:
        """Put every RNG back where :meth:`rng_state` found it."""
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        numpy_state = dict(state["numpy"])
        numpy_state["state"] = dict(numpy_state["state"])
        numpy_state["state"]["key"] = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
        np.random.set_state(numpy_state)
        torch.set_rng_state(state["torch"].cpu())
        if "cuda" in state and torch.cuda.is_available():
            for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state.cpu(), index)
        if "loader" in state and self.train_loader.generator is not None:
            self.train_loader.generator.set_state(state["loader"].cpu())
        if "augment" in state and isinstance(self.train_loader.dataset, SegmentationDataset):
            self.train_loader.dataset.set_random_state(state["augment"])

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
