"""Shared fixtures: a tiny experiment that trains in seconds, and the real data folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; skips when absent unless TUNE_LOSSES_REQUIRE_DATA=1 (CI)."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("TUNE_LOSSES_REQUIRE_DATA") == "1":
            pytest.fail(f"TUNE_LOSSES_REQUIRE_DATA=1 but {SHARED_DATA} is missing")
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
