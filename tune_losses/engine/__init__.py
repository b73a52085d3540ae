"""One training run in plain PyTorch: build it, train an epoch, evaluate, early-stop, checkpoint.

One job a module, everything re-exported here:

- :mod:`~tune_losses.engine.build`: :func:`build_run` (data, model and loss mix checked on
  one batch), :func:`preflight`, device, AMP, seeds and the LR schedule;
- :mod:`~tune_losses.engine.trainer`: :class:`Trainer`, the epoch loop;
- :mod:`~tune_losses.engine.checkpoint`: its state, summary and files, :func:`read_summary`;
- :mod:`~tune_losses.engine.rng`: every RNG an epoch draws from;
- :mod:`~tune_losses.engine.lineage`: the phases a run trained in.

No Ray and no MLflow here: ``tune/trainable.py`` drives :class:`Trainer` for Tune,
``train.py`` from the command line.
"""

from __future__ import annotations

from tune_losses.engine.build import (
    ONECYCLE_DIV,
    ONECYCLE_FINAL_DIV,
    Run,
    build_run,
    lr_scheduler,
    preflight,
    resolve_amp,
    resolve_device,
    seed_everything,
)
from tune_losses.engine.checkpoint import (
    PREDICTIONS_FILE,
    STATE_FILE,
    SUMMARY_FILE,
    Checkpointing,
    read_summary,
)
from tune_losses.engine.trainer import PREVIEW_IMAGES, Trainer

__all__ = [
    "ONECYCLE_DIV",
    "ONECYCLE_FINAL_DIV",
    "PREDICTIONS_FILE",
    "PREVIEW_IMAGES",
    "STATE_FILE",
    "SUMMARY_FILE",
    "Checkpointing",
    "Run",
    "Trainer",
    "build_run",
    "lr_scheduler",
    "preflight",
    "read_summary",
    "resolve_amp",
    "resolve_device",
    "seed_everything",
]
