"""The Ray Tune function trainable: one trial = one :class:`~tune_losses.engine.Trainer` run.

Reports every epoch with a checkpoint, and resumes from ``tune.get_checkpoint()`` when
Ray retries a failed trial or a search is resumed. MLflow is not touched here: the
driver logs (:mod:`tune_losses.tune.callback`), so workers need no access to the
tracking server.
"""

from __future__ import annotations

import tempfile
from typing import Any

import ray
import torch
from ray import tune

from tune_losses.config import Experiment
from tune_losses.engine import Trainer

EXPERIMENT_KEY = "experiment"


def train_trial(config: dict[str, Any]) -> None:
    """Train the concrete experiment in ``config["experiment"]``, reporting each epoch."""
    exp = Experiment.model_validate(config[EXPERIMENT_KEY])
    if exp.train.threads is None:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(cpus)))
    trainer = Trainer(exp)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load(directory)
    for result in trainer.epochs():
        with tempfile.TemporaryDirectory() as directory:
            trainer.save(directory)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(directory))
