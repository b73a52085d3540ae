"""The tiny experiment: synthetic data and a ~0.2 M-parameter model that train in seconds.

The one home of the settings that the tests, the benchmarks' ``--quick`` runs and the
docs' checks use, so that a change to what "tiny" means is made once.

Example::

    from tune_losses.tiny import tiny_experiment
    raw = tiny_experiment(train={"epochs": 3, "lr": 0.005})
"""

from __future__ import annotations

import copy
from typing import Any

TINY_DATA: dict[str, Any] = {
    "format": "synthetic",
    "synthetic": {"num_train": 16, "num_val": 8, "size": 32, "num_classes": 4},
    "batch_size": 8,
}
TINY_MODEL: dict[str, Any] = {
    "arch": "Unet",
    "encoder": "tu-mobilenetv3_small_050",
    "kwargs": {"decoder_channels": [16, 16, 8, 8, 8]},
    "aux_channels": 8,
}
TINY_TRAIN: dict[str, Any] = {"epochs": 2, "lr": 0.005, "threads": 1}
TINY_LOSS: dict[str, Any] = {"decode": {"ce": {"weight": 1.0}}, "aux": {"ce": {"weight": 0.4}}}


def tiny_experiment(**sections: Any) -> dict[str, Any]:
    """A raw experiment (the tiny data, model, train and loss sections, deep-copied), with
    each section given in ``sections`` replacing the tiny one whole."""
    raw: dict[str, Any] = {
        "data": TINY_DATA,
        "model": TINY_MODEL,
        "train": TINY_TRAIN,
        "loss": TINY_LOSS,
    }
    raw.update(sections)
    return copy.deepcopy(raw)
