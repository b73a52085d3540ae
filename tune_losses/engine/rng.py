"""Every RNG an epoch draws from, saved and restored, so a resumed run repeats it exactly."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from tune_losses.data import SegmentationDataset


def rng_state(train_loader: torch.utils.data.DataLoader) -> dict[str, Any]:
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
    if train_loader.generator is not None:
        state["loader"] = train_loader.generator.get_state()
    if isinstance(train_loader.dataset, SegmentationDataset):
        state["augment"] = train_loader.dataset.random_state()
    return state


def load_rng_state(train_loader: torch.utils.data.DataLoader, state: dict[str, Any]) -> None:
    """Put every RNG back where :func:`rng_state` found it."""
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
    if "loader" in state and train_loader.generator is not None:
        train_loader.generator.set_state(state["loader"].cpu())
    if "augment" in state and isinstance(train_loader.dataset, SegmentationDataset):
        train_loader.dataset.set_random_state(state["augment"])
