"""A run's lineage: the phases it trained in, each from an epoch on with its optimiser
settings and loss, as plain values a replay can be checked against."""

from __future__ import annotations

from typing import Any

from tune_losses.config import PHASE_TRAIN_FIELDS, Experiment


def phase_settings(exp: Experiment, from_epoch: int) -> dict[str, Any]:
    """What a phase of a run is (:class:`~tune_losses.config.Phase`): from which epoch on
    it trains with which optimiser settings and loss, as plain values."""
    dump = exp.model_dump(mode="json", include={"train", "loss"})
    train = {k: dump["train"][k] for k in PHASE_TRAIN_FIELDS}
    return {"from_epoch": from_epoch, "train": train, "loss": dump["loss"]}


def same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two phases train alike (their first epochs aside)."""
    return a["train"] == b["train"] and a["loss"] == b["loss"]
