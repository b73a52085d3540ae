"""The tiny experiment: synthetic data and a ~0.2 M-parameter model that train in seconds.

The one home of the settings that the tests, the benchmarks' ``--quick`` runs and the
docs' checks use, so that a change to what "tiny" means is made once.

Example::

    from tune_losses.tiny import tiny_experiment, tiny_space
    raw = tiny_experiment(train={"epochs": 3, "lr": 0.005})
    space = tiny_space(search={"num_samples": 4, "max_concurrent": 2})
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


# the aux CE weight of the tiny search, as in search_spaces/aux_weight.yaml: a constant or
# a linear decay, chosen by the search
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
TINY_SEARCH: dict[str, Any] = {
    "num_samples": 6,
    "max_concurrent": 2,
    "grace_period": 1,
    "reduction_factor": 2,
    "n_startup_trials": 2,
}


def tiny_space(**sections: Any) -> dict[str, Any]:
    """A raw search space on the tiny experiment: 6 trials of 4 epochs, TPE + ASHA, 2 at a
    time, over a Dice weight and the aux CE weight's schedule; each section given in
    ``sections`` replacing that one whole (the end-to-end tests' search and
    ``benchmarks/bench_search_cpu.py``'s)."""
    raw = tiny_experiment(
        train={"epochs": 4, "lr": 0.005},
        search=TINY_SEARCH,
        loss={
            "decode": {"ce": {"weight": 1.0}, "dice": {"weight": {"uniform": [0.0, 1.0]}}},
            "aux": {"ce": {"weight": AUX_CE_WEIGHT}},
        },
    )
    raw.update(copy.deepcopy(sections))
    return raw
