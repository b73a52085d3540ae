"""The Ray Tune function trainable: one trial = one :class:`~tune_losses.engine.Trainer` run.

Reports every epoch with a checkpoint, and resumes from ``tune.get_checkpoint()`` when
Ray retries a failed trial, a search is resumed, or PBT clones another trial's checkpoint
(then the first result names the donor and epoch). MLflow is not touched here: the
driver logs (:mod:`tune_losses.tune.callback`), so workers need no access to the
tracking server and start without importing MLflow.
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from tune_losses.config import Experiment
from tune_losses.engine import Trainer
from tune_losses.scorecard import SCORED_SPLIT

EXPERIMENT_KEY = "experiment"
CONFIRM_KEY = "confirm"  # in a confirm run's config: its arm (``t03``, ``base ce``)
SPLIT_KEY = "confirm_split"  # in a confirm run's config: the split its final weights score on
MEMBER_KEY = "member"  # PBT/PB2: a member's sampled values and experiment, under one key
ORIGIN_FILE = "origin.json"  # which trial wrote a checkpoint, at which epoch
CLONED_FROM = "pbt/cloned_from"  # in the first result after a PBT exploit: "<trial>@<epoch>"
NODE_IP = "where/node_ip"  # in the first result of every run of the trainable: where it runs
HOSTNAME = "where/hostname"
DEVICE = "where/device"
CHECKPOINT_TIME = "time/checkpoint_s"  # writing the epoch's checkpoint (beside time/epoch_s)


class TrialFailed(RuntimeError):
    """A trial that cannot go on (non-finite loss, out of memory), with a one-line reason
    that the driver tags the child run with (``error_reason``)."""


def placement(device: torch.device) -> dict[str, str]:
    """Where this trial runs: node IP, host name and torch device (``cuda:0 (GPU name)``)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        label = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    else:
        label = str(device)
    return {NODE_IP: ray.util.get_node_ip_address(), HOSTNAME: socket.gethostname(), DEVICE: label}


def failure_reason(exc: BaseException, epoch: int) -> str | None:
    """The one-line reason of a failure that retrying cannot cure, else ``None``."""
    if isinstance(exc, FloatingPointError):
        return f"non-finite loss at epoch {epoch}"
    if isinstance(exc, torch.OutOfMemoryError):
        return f"out of memory at epoch {epoch}"
    return None


def trial_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's sampled values (Optuna names) and ``experiment``, whichever the scheduler:
    Optuna puts them at the top of the config, PBT under ``member``."""
    return dict(config.get(MEMBER_KEY) or config)


def train_trial(config: dict[str, Any]) -> None:
    """Train the concrete experiment of the trial's config, reporting each epoch (a confirm
    run's last epoch also holds its final weights' scores on its split)."""
    values = trial_values(config)
    exp = Experiment.model_validate(values[EXPERIMENT_KEY])
    split = values.get(SPLIT_KEY)
    if exp.train.threads is None:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(cpus)))
    trainer = Trainer(exp)
    me = tune.get_context().get_trial_id()
    origin: dict[str, Any] = {}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load(directory)
            path = Path(directory) / ORIGIN_FILE
            if path.is_file():
                origin = json.loads(path.read_text())
    for phase in trainer.lineage:  # which trial ran each phase (a donor's, after an exploit)
        phase.setdefault("trial", me)
    where: dict[str, Any] = placement(trainer.device)
    for result in _epochs(trainer):
        if origin.get("trial_id") not in (None, me):  # PBT cloned this trial from another
            result[CLONED_FROM] = f"{origin['trial_id']}@{origin['epoch']}"
        origin = {}
        if split not in (None, "val") and _last_epoch(trainer):
            result.update(split_scores(trainer, split))
        result.update(where)
        where = {}
        with tempfile.TemporaryDirectory() as directory:
            start = time.perf_counter()
            trainer.save(directory)
            origin_of = {"trial_id": me, "epoch": trainer.epoch}
            (Path(directory) / ORIGIN_FILE).write_text(json.dumps(origin_of))
            result[CHECKPOINT_TIME] = time.perf_counter() - start
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(directory))


def _epochs(trainer: Trainer) -> Iterator[dict[str, Any]]:
    """``trainer.epochs()``, a non-finite loss or an out-of-memory error raised as
    :class:`TrialFailed` with its one-line reason (the trial ends FAILED, the search goes on)."""
    try:
        yield from trainer.epochs()
    except (FloatingPointError, torch.OutOfMemoryError) as exc:
        reason = failure_reason(exc, trainer.epoch + 1)
        raise TrialFailed(reason) from None


def _last_epoch(trainer: Trainer) -> bool:
    """Whether the epoch just trained is the run's last (its schedule's end, or patience)."""
    return trainer.epoch >= trainer.exp.train.last_epoch() or trainer.stopped_early


def split_scores(trainer: Trainer, split: str) -> dict[str, Any]:
    """The trainer's current weights scored on ``split`` (a data folder, e.g. ``test``):
    :meth:`Trainer.evaluate`'s metrics renamed from ``val/...`` to ``<split>/...``, and the
    split under :data:`~tune_losses.scorecard.SCORED_SPLIT` so that the child run keeps them."""
    from tune_losses.data import build_split_loader

    loader = build_split_loader(trainer.exp.data, split, device_type=trainer.device.type)
    scores, _ = trainer.evaluate(loader=loader)
    out: dict[str, Any] = {f"{split}/{k.removeprefix('val/')}": v for k, v in scores.items()}
    out[SCORED_SPLIT] = split
    return out
