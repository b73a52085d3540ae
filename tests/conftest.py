"""Shared fixtures: a tiny experiment that trains in seconds."""

from __future__ import annotations

from typing import Any

import pytest


def tiny_experiment(**sections: Any) -> dict[str, Any]:
    """A raw experiment (synthetic data, ~0.2 M-parameter model) that trains in seconds."""
    raw: dict[str, Any] = {
        "data": {
            "format": "synthetic",
            "synthetic": {"num_train": 16, "num_val": 8, "size": 32, "num_classes": 4},
            "batch_size": 8,
        },
        "model": {
            "arch": "Unet",
            "encoder": "tu-mobilenetv3_small_050",
            "kwargs": {"decoder_channels": [16, 16, 8, 8, 8]},
            "aux_channels": 8,
        },
        "train": {"epochs": 2, "lr": 0.005, "threads": 1},
        "loss": {"decode": {"ce": {"weight": 1.0}}, "aux": {"ce": {"weight": 0.4}}},
    }
    for key, value in sections.items():
        raw[key] = value
    return raw


@pytest.fixture
def tiny() -> dict[str, Any]:
    return tiny_experiment()


# The aux-head CE weight of aux_weight.yaml: a constant or a decaying schedule.
AUX_CE_WEIGHT: dict[str, Any] = {
    "choice": {
        "constant": {"uniform": [0.05, 1.0]},
        "decay": {
            "schedule": "linear",
            "start": {"uniform": [0.3, 1.0]},
            "end": {"uniform": [0.05, 0.3]},
        },
    }
}
