"""What a training run is built from, checked together before anything trains.

:func:`build_run` is the one place that turns an :class:`~tune_losses.config.Experiment`
into data, model and loss mix and checks them together on one batch; the trainer, the
train CLI and the search's preflight all go through it, so a bad value fails the same way
(a one-line :class:`~tune_losses.config.ConfigError`) before anything is written.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tune_losses.config import ConfigError, Experiment, TrainConfig, class_metric_problem
from tune_losses.data import DatasetInfo, build_loaders
from tune_losses.losses import LossMix
from tune_losses.models import build_model

ONECYCLE_DIV = 25.0  # one-cycle: initial LR = max_lr / ONECYCLE_DIV
ONECYCLE_FINAL_DIV = 1e4  # and final LR = initial LR / ONECYCLE_FINAL_DIV (torch's defaults)


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


def lr_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The LR schedule of ``train.lr_schedule`` over ``total_steps`` optimiser steps."""
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


def preflight(
    experiments: Sequence[Experiment], source: str = "", fields: Sequence[str] = ()
) -> None:
    """Build and check every experiment of a search on the driver before any trial runs.

    The data is read and validated once per distinct ``data`` section; a bad file or
    value stops the search as a one-line ConfigError naming ``source`` and, where given,
    the experiment's ``fields[i]`` (a baseline's ``search.baselines.<name>``).
    """
    data: dict[str, Any] = {}
    for i, exp in enumerate(experiments):
        key = exp.data.model_dump_json() + f"seed={exp.train.seed}"
        try:
            if key not in data:
                data[key] = build_loaders(exp.data, seed=exp.train.seed)
            build_run(exp, data=data[key])
        except ConfigError as exc:
            where = [w for w in (source, fields[i] if i < len(fields) else "") if w]
            raise ConfigError(": ".join([*where, str(exc)])) from None
