from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest
import torch

from tune_losses.config import Experiment, validate_experiment
from tune_losses.engine import (
    PREDICTIONS_FILE,
    PREVIEW_IMAGES,
    Trainer,
    resolve_amp,
    resolve_device,
)
from tune_losses.metrics import SegmentationMetrics
from tune_losses.plots import predictions_png_size
from tune_losses.tiny import tiny_experiment


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


def _resumable(tiny: dict, **data: Any) -> Experiment:
    """Three epochs with every RNG in play: shuffling, augmentation (scale, pad position,
    crop, flip, colour jitter), aux-head dropout; lovasz sorts its errors, onecycle and the
    step schedule move with progress, patience keeps early-stopping history."""
    tiny["data"].update(data)
    tiny["train"].update(epochs=3, lr_schedule="onecycle")
    tiny["train"]["early_stopping"] = {"patience": 10, "min_delta": 0.0}
    tiny["loss"]["decode"]["lovasz"] = {"weight": 0.5}
    tiny["loss"]["aux"]["ce"]["weight"] = {
        "schedule": "step",
        "values": [0.4, 0.2],
        "milestones": [0.5],
    }
    return validate_experiment(tiny)


def _stop_and_resume(exp: Experiment, directory: Path) -> tuple[list[dict], Trainer]:
    """One epoch, ``save``, then a new Trainer that ``load``s and runs the rest."""
    first = Trainer(exp)
    history = list(itertools.islice(first.epochs(), 1))
    first.save(directory)
    resumed = Trainer(exp)
    resumed.load(directory)
    return history + list(resumed.epochs()), resumed


def _assert_same_run(a: list[dict], b: list[dict], ta: Trainer, tb: Trainer) -> None:
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        assert any(k.startswith("train/loss/") for k in ra) and "val/mIoU" in ra
        for key in ra.keys() - {"time/epoch_s"}:
            assert ra[key] == pytest.approx(rb[key], abs=1e-6, rel=0), (ra["epoch"], key)
    for (name, wa), wb in zip(
        ta.model.state_dict().items(), tb.model.state_dict().values(), strict=True
    ):
        assert torch.allclose(wa.double(), wb.double(), rtol=0, atol=1e-6), name


def test_resume_repeats_the_uninterrupted_run(tiny: dict, tmp_path: Path) -> None:
    """A trial stopped after epoch 1 and resumed logs the same epochs 2 and 3 (and ends with
    the same weights) as one that never stopped: the checkpoint holds every RNG."""
    exp = _resumable(tiny)
    straight = Trainer(exp)
    uninterrupted = list(straight.epochs())
    resumed_history, resumed = _stop_and_resume(exp, tmp_path)
    _assert_same_run(uninterrupted, resumed_history, straight, resumed)


def test_resume_is_exact_with_loader_workers(tiny: dict, tmp_path: Path) -> None:
    """With ``num_workers=2`` too: train workers restart each epoch seeded from the saved
    loader generator, so their shuffling and augmentation repeat after a resume."""
    exp = _resumable(tiny, num_workers=2)
    straight = Trainer(exp)
    uninterrupted = list(straight.epochs())
    resumed_history, resumed = _stop_and_resume(exp, tmp_path)
    _assert_same_run(uninterrupted, resumed_history, straight, resumed)


def test_uncertainty_weighting_trains_and_resumes_exactly(tiny: dict, tmp_path: Path) -> None:
    """``loss.weighting: uncertainty``: the log-variances are optimised with the model (their
    learned weights move from 1 and are logged per epoch) and restored by a resume."""
    tiny["loss"]["weighting"] = "uncertainty"
    exp = _resumable(tiny)
    straight = Trainer(exp)
    uninterrupted = list(straight.epochs())
    assert straight.loss.log_vars is not None
    assert not torch.equal(straight.loss.log_vars.detach(), torch.zeros(3))
    weights = [r["weight/decode/ce"] for r in uninterrupted]
    assert weights[0] != weights[-1] and all(w != 1.0 for w in weights)
    groups = straight.optimizer.param_groups
    assert groups[-1]["params"] == [straight.loss.log_vars] and groups[-1]["weight_decay"] == 0
    resumed_history, resumed = _stop_and_resume(exp, tmp_path)
    _assert_same_run(uninterrupted, resumed_history, straight, resumed)
    torch.testing.assert_close(resumed.loss.log_vars, straight.loss.log_vars, rtol=0, atol=1e-6)


def test_checkpoint_loads_with_weights_only(tiny: dict, tmp_path: Path) -> None:
    trainer = Trainer(validate_experiment(tiny))
    next(trainer.epochs())
    state = torch.load(trainer.save(tmp_path), weights_only=True)
    assert state["epoch"] == 1
    assert set(state["rng"]) >= {"python", "numpy", "torch", "loader", "augment"}
    assert len(state["rng"]["augment"]) == len(list(_transforms(trainer))) > 1


def _transforms(trainer: Trainer) -> list[Any]:
    return [trainer.train_loader.dataset.transform, *trainer.train_loader.dataset.transform]


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
    results = []
    with pytest.raises(FloatingPointError, match=r"^loss is (nan|inf|-inf) at epoch \d+$") as info:
        for result in trainer.epochs():
            results.append(result)
    # the epoch named is the one that failed: after every epoch reported, none counted for it
    assert str(info.value).endswith(f"at epoch {len(results) + 1}")
    assert trainer.epoch == len(results) < 5
    assert all(math.isfinite(r["train/loss"]) for r in results)


def test_a_non_finite_loss_is_caught_before_the_step_that_would_apply_it(tiny: dict) -> None:
    """A loss that turns NaN at the first step of epoch 2 raises before backward and the
    optimiser step: the parameters stay those the last finite step left."""
    tiny["train"]["epochs"] = 3
    trainer = Trainer(validate_experiment(tiny))
    forward = trainer.loss.forward

    def nan_from_epoch_2(outputs: Any, target: torch.Tensor, progress: float) -> Any:
        out = forward(outputs, target, progress)
        if progress >= 1 / 3:
            out.total = out.total * float("nan")
        return out

    trainer.loss.forward = nan_from_epoch_2  # type: ignore[method-assign]
    epochs = trainer.epochs()
    first = next(epochs)
    after_epoch_1 = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    with pytest.raises(FloatingPointError, match="^loss is nan at epoch 2$"):
        next(epochs)
    assert first["epoch"] == 1 and trainer.epoch == 1
    for key, value in trainer.model.named_parameters():  # (BN statistics move in forward)
        torch.testing.assert_close(value, after_epoch_1[key], rtol=0, atol=0, msg=key)


def test_patience_counts_from_the_last_real_gain(
    tiny: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steady gains of 0.9 with min_delta 1.0 add up to real progress: the run goes on
    (a reference that moved with every small gain would stop it after 3 epochs)."""
    tiny["train"]["epochs"] = 9
    tiny["train"]["early_stopping"] = {"patience": 3, "min_delta": 1.0}
    trainer = Trainer(validate_experiment(tiny))
    scores = iter([10.0, 10.9, 11.8, 12.7, 13.6, 13.6, 13.6, 13.6, 13.6])
    empty = SegmentationMetrics(trainer.info.num_classes)
    monkeypatch.setattr(trainer, "train_one_epoch", lambda: {"train/loss": 1.0})
    monkeypatch.setattr(trainer, "evaluate", lambda: ({"val/mIoU": next(scores)}, empty))
    results = list(trainer.epochs())
    # gains reset patience at 11.8 (over 10.0) and 13.6 (over 11.8); then 3 flat epochs
    assert [r["epoch"] for r in results] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert results[-1]["early_stopped"] == 1.0


def test_patience_running_out_at_the_last_epoch_is_no_early_stop(
    tiny: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three flat epochs with patience 2 run out of patience at epoch 3 of 3: the run
    trained every scheduled epoch, so it did not stop early."""
    tiny["train"]["epochs"] = 3
    tiny["train"]["early_stopping"] = {"patience": 2, "min_delta": 1.0}
    trainer = Trainer(validate_experiment(tiny))
    empty = SegmentationMetrics(trainer.info.num_classes)
    monkeypatch.setattr(trainer, "train_one_epoch", lambda: {"train/loss": 1.0})
    monkeypatch.setattr(trainer, "evaluate", lambda: ({"val/mIoU": 10.0}, empty))
    results = list(trainer.epochs())
    assert [r["epoch"] for r in results] == [1, 2, 3]
    assert [r["early_stopped"] for r in results] == [0.0, 0.0, 0.0]
    assert trainer.summary()["stopped_early"] is False


def test_save_draws_the_best_epochs_predictions(tiny: dict, tmp_path: Path) -> None:
    trainer = Trainer(validate_experiment(tiny))
    (tmp_path / "before").mkdir()
    trainer.save(tmp_path / "before")  # no epoch yet: nothing to draw
    assert not (tmp_path / "before" / PREDICTIONS_FILE).exists()
    next(trainer.epochs())
    preview = trainer.best_preview
    assert preview is not None and len(preview["images"]) == PREVIEW_IMAGES
    image, label, pred = (preview[k][0] for k in ("images", "labels", "predictions"))
    assert image.dtype == torch.uint8 and image.shape == (32, 32, 3)  # as stored, unpadded
    assert label.shape == pred.shape == (32, 32)
    assert int(pred.max()) < trainer.info.num_classes
    trainer.save(tmp_path)
    png = tmp_path / PREDICTIONS_FILE
    height, width = matplotlib.image.imread(png).shape[:2]
    assert (width, height) == predictions_png_size(PREVIEW_IMAGES)
    resumed = Trainer(validate_experiment(tiny))
    resumed.load(tmp_path)  # the best epoch's picture survives a resume
    assert resumed.predictions_png() == png.read_bytes()


def test_schedules_run_at_the_progress_the_readme_states(tiny: dict) -> None:
    """Each step's weight is the schedule at ``(epoch * steps + step) / (epochs * steps)``,
    from 0 to 1 - 1/(epochs * steps), never 1: the README's example (linear 1.0 -> 0.1, 2
    epochs of 4 steps, last weight 0.2125) is what a run applies."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "`linear` from 1.0 to 0.1 over 2 epochs of 4 steps ends at 0.2125" in readme
    tiny["train"]["epochs"] = 2
    tiny["data"]["batch_size"] = 4  # 16 train images: 4 steps an epoch
    tiny["loss"]["aux"]["ce"]["weight"] = {"schedule": "linear", "start": 1.0, "end": 0.1}
    trainer = Trainer(validate_experiment(tiny))
    assert trainer.steps_per_epoch == 4
    seen: list[float] = []
    forward = trainer.loss.forward

    def recording(outputs: Any, target: torch.Tensor, progress: float) -> Any:
        out = forward(outputs, target, progress)
        seen.append(out.weights["aux/ce"])
        return out

    trainer.loss.forward = recording  # type: ignore[method-assign]
    results = list(trainer.epochs())
    # 1.0 - 0.9 * k / 8 for k = 0..7, by hand
    expected = [1.0, 0.8875, 0.775, 0.6625, 0.55, 0.4375, 0.325, 0.2125]
    assert seen == pytest.approx(expected)
    assert [r["weight/aux/ce"] for r in results] == pytest.approx([0.83125, 0.38125])
