from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import tiny_experiment
from tune_losses.config import validate_experiment
from tune_losses.engine import Trainer, resolve_amp, resolve_device
from tune_losses.metrics import SegmentationMetrics


def test_epochs_report_every_part_weight_and_metric(tiny: dict) -> None:
    tiny["loss"]["aux"]["lovasz"] = {
        "weight": {"schedule": "step", "values": [0.0, 0.3], "milestones": [0.5]}
    }
    results = list(Trainer(validate_experiment(tiny)).epochs())
    assert [r["epoch"] for r in results] == [1, 2]
    first, last = results
    parts = [k for k in first if k.startswith("train/loss/")]
    assert sorted(parts) == ["train/loss/aux/ce", "train/loss/aux/lovasz", "train/loss/decode/ce"]
    assert first["train/loss"] == pytest.approx(sum(first[k] for k in parts), rel=1e-5)
    # the step schedule is 0 for the first half of training, 0.3 after
    assert first["weight/aux/lovasz"] == 0.0 and first["train/loss/aux/lovasz"] == 0.0
    assert last["weight/aux/lovasz"] == pytest.approx(0.3)
    assert first["weight/aux/ce"] == pytest.approx(0.4)
    for r in results:
        assert 0.0 <= r["val/mIoU"] <= 100.0
        assert r["best_val_mIoU"] == max(x["val/mIoU"] for x in results[: r["epoch"]])


@pytest.mark.slow
def test_training_learns_the_synthetic_task() -> None:
    raw = tiny_experiment(train={"epochs": 8, "lr": 0.01, "threads": 1})
    raw["data"]["synthetic"].update(num_train=32, size=48)
    results = list(Trainer(validate_experiment(raw)).epochs())
    assert results[-1]["train/loss"] < 0.7 * results[0]["train/loss"]
    assert results[-1]["best_val_mIoU"] > 30.0


def test_early_stopping_uses_patience_and_min_delta(tiny: dict) -> None:
    tiny["train"].update(epochs=6, lr=1e-9, lr_schedule="constant")
    tiny["train"]["early_stopping"] = {"patience": 2, "min_delta": 50.0}
    results = list(Trainer(validate_experiment(tiny)).epochs())
    assert len(results) == 3  # best at epoch 1, then two epochs without +50 points
    assert results[-1]["early_stopped"] == 1.0


def test_checkpoint_resume_continues_the_run(tiny: dict, tmp_path: Path) -> None:
    tiny["train"]["epochs"] = 3
    exp = validate_experiment(tiny)
    full = Trainer(exp)
    first = next(full.epochs())
    full.save(tmp_path)
    resumed = Trainer(exp)
    resumed.load(tmp_path)
    assert resumed.epoch == 1 and resumed.best == first["best_val_mIoU"]
    for a, b in zip(
        full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    rest = list(resumed.epochs())
    assert [r["epoch"] for r in rest] == [2, 3]
    assert rest[-1]["best_val_mIoU"] >= first["best_val_mIoU"]
    summary = resumed.summary()
    assert summary["epochs_run"] == 3 and len(summary["confmat"]) == resumed.info.num_classes
    assert set(summary["loss_setup"]["terms"]) == {"decode/ce", "aux/ce"}
    assert sum(summary["class_frequencies"]) == pytest.approx(1.0)


def test_device_and_amp_resolution() -> None:
    exp = validate_experiment({})
    assert resolve_device(exp.train).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_amp(exp.train, torch.device("cpu")) is None
    if not torch.cuda.is_available():
        cuda = validate_experiment({"train": {"device": "cuda"}}).train
        with pytest.raises(ValueError, match="train.device: cuda requested"):
            resolve_device(cuda)


def test_non_finite_loss_stops_with_a_clear_error(tiny: dict) -> None:
    tiny["train"]["lr"] = 1e6
    tiny["train"]["lr_schedule"] = "constant"
    tiny["train"]["epochs"] = 5
    trainer = Trainer(validate_experiment(tiny))
    with pytest.raises(FloatingPointError, match="loss is"):
        for _ in trainer.epochs():
            pass
    assert not math.isnan(trainer.best) or trainer.epoch == 0


def test_patience_counts_from_the_last_real_gain(
    tiny: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steady gains of 0.9 with min_delta 1.0 add up to real progress: the run goes on
    (a reference that moved with every small gain would stop it after 3 epochs)."""
    tiny["train"]["epochs"] = 8
    tiny["train"]["early_stopping"] = {"patience": 3, "min_delta": 1.0}
    trainer = Trainer(validate_experiment(tiny))
    scores = iter([10.0, 10.9, 11.8, 12.7, 13.6, 13.6, 13.6, 13.6])
    empty = SegmentationMetrics(trainer.info.num_classes)
    monkeypatch.setattr(trainer, "train_one_epoch", lambda: {"train/loss": 1.0})
    monkeypatch.setattr(trainer, "evaluate", lambda: ({"val/mIoU": next(scores)}, empty))
    results = list(trainer.epochs())
    # gains reset patience at 11.8 (over 10.0) and 13.6 (over 11.8); then 3 flat epochs
    assert [r["epoch"] for r in results] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert results[-1]["early_stopped"] == 1.0
