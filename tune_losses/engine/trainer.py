"""The epoch loop of one run: train, evaluate, early-stop, enter phases, keep the best.

No Ray and no MLflow here: ``tune/trainable.py`` drives :class:`Trainer` for Tune,
``train.py`` from the command line.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from tune_losses.config import CLASS_METRIC, Experiment, Phase, best_metric_name
from tune_losses.data import SegmentationDataset
from tune_losses.engine.build import (
    ONECYCLE_DIV,
    ONECYCLE_FINAL_DIV,
    build_run,
    lr_scheduler,
    resolve_amp,
    resolve_device,
    seed_everything,
)
from tune_losses.engine.checkpoint import Checkpointing
from tune_losses.engine.lineage import phase_settings, same_settings
from tune_losses.losses import LossMix
from tune_losses.metrics import SegmentationMetrics

PREVIEW_IMAGES = 3


def _to_uint8(image: Tensor) -> Tensor:
    """A ``[3,H,W]`` float image rescaled to ``[H,W,3]`` uint8 (min-max), for display."""
    lo, hi = image.min(), image.max()
    scaled = (image - lo) / (hi - lo).clamp_min(1e-8) * 255.0
    return scaled.permute(1, 2, 0).round().to(torch.uint8)


class Trainer(Checkpointing):
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
        self.scheduler = lr_scheduler(cfg, self.optimizer, self.total_steps)
        self.scaler = torch.amp.GradScaler(enabled=self.amp_dtype == torch.float16)
        self.epoch = 0
        self.best = -math.inf
        self.best_epoch = 0
        self.best_confmat: Tensor | None = None
        self.best_per_class: list[float] = []
        self.search_best: dict[str, float] = {}
        self.weight_history: list[dict[str, float]] = []
        self.lineage: list[dict[str, Any]] = [phase_settings(exp, 1)]
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
        settings = phase_settings(self.exp, phase.from_epoch)
        if settings["loss"] != self.lineage[-1]["loss"]:
            mix = LossMix(
                phase.loss,
                ignore_index=self.info.ignore_index,
                class_frequencies=self.info.class_frequencies,
            ).to(self.device)
            if self.loss.log_vars is not None:
                mix.log_vars = self.loss.log_vars  # the optimiser's parameter, state and all
            self.loss = mix
        if not same_settings(settings, self.lineage[-1]):
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
