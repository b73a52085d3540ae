"""The data, model and train sections of a run, and the phases a PBT lineage replays."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tune_losses.config.base import Strict
from tune_losses.config.search import class_names_problem
from tune_losses.losses.spec import LossSpec, validate_loss

# ----------------------------------------------------------------------------- data


class SyntheticConfig(Strict):
    """The embedded procedural dataset (``data/synthetic.py``)."""

    num_train: int = Field(48, ge=1)
    num_val: int = Field(16, ge=1)
    size: int = Field(64, ge=16)
    num_classes: int = Field(5, ge=2, le=8)
    seed: int = 0


class AugmentConfig(Strict):
    """Train-time augmentation; validation only pads to ``pad_multiple``."""

    scale: tuple[float, float] = (0.75, 1.25)
    crop: tuple[int, int] | None = None
    hflip: bool = True
    color_jitter: float = Field(0.2, ge=0.0, le=1.0)

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1]:
            raise ValueError(f"expected [low, high] with 0 < low <= high, got {list(v)}")
        return v


class DataConfig(Strict):
    """Where the images come from and how they are batched."""

    format: Literal["synthetic", "folders", "pairs"] = "synthetic"
    root: Path | None = None
    train_split: str = "train"
    val_split: str = "val"
    synthetic: SyntheticConfig = SyntheticConfig()
    augment: AugmentConfig = AugmentConfig()
    pad_multiple: int = Field(32, ge=1)
    scale: float = Field(1.0, gt=0.0, le=1.0)
    """Downscale every image and mask by this factor first (0.5: half resolution), for
    searches on a small machine; masks use nearest-neighbour, so no label is invented."""
    classes: list[str] | None = None
    palette: list[tuple[int, int, int]] | None = None
    ignore_index: int = 255
    in_memory: bool = True
    max_train: int | None = Field(None, ge=1)
    max_val: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    num_workers: int = Field(0, ge=0)

    @field_validator("classes")
    @classmethod
    def _storable_classes(cls, v: list[str] | None) -> list[str] | None:
        problem = None if v is None else class_names_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v

    @field_validator("root")
    @classmethod
    def _absolute_root(cls, v: Path | None) -> Path | None:
        # trials run in their own folders (Ray changes directory): resolve against ours
        return None if v is None else v.expanduser().absolute()

    @model_validator(mode="after")
    def _root_for_files(self) -> DataConfig:
        if self.format != "synthetic" and self.root is None:
            raise ValueError(f"data.root is required for data.format={self.format!r}")
        crop = self.augment.crop
        if crop is not None and any(side % self.pad_multiple for side in crop):
            raise ValueError(
                f"augment.crop {list(crop)} must be a multiple of "
                f"data.pad_multiple={self.pad_multiple} (the encoder's output stride)"
            )
        return self


# ----------------------------------------------------------------------------- model


class ModelConfig(Strict):
    """An SMP model by name, plus an optional auxiliary FCN head."""

    arch: str = "Unet"
    encoder: str = "resnet18"
    encoder_weights: str | None = None
    kwargs: dict[str, Any] = {}
    aux_head: bool = True
    aux_stage: int = -2
    aux_channels: int = Field(64, ge=1)

    @field_validator("encoder_weights")
    @classmethod
    def _absolute_weights_file(cls, v: str | None) -> str | None:
        if v is not None and Path(v).suffix in (".pth", ".pt", ".bin"):
            return str(Path(v).expanduser().absolute())
        return v

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        from segmentation_models_pytorch import MODEL_ARCHITECTURES_MAPPING

        if v.lower() not in MODEL_ARCHITECTURES_MAPPING:
            known = ", ".join(sorted(m.__name__ for m in MODEL_ARCHITECTURES_MAPPING.values()))
            raise ValueError(f"unknown SMP architecture {v!r}; known: {known}")
        return v

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, v: str) -> str:
        import difflib

        from segmentation_models_pytorch.encoders import get_encoder_names

        names = get_encoder_names()
        if v.startswith("tu-") or v in names:
            return v
        close = difflib.get_close_matches(v, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown SMP encoder {v!r}{hint} (timm encoders: 'tu-<name>')")


# ----------------------------------------------------------------------------- train


class EarlyStoppingConfig(Strict):
    """Stop when val mIoU (in %) has not improved by ``min_delta`` for ``patience`` epochs."""

    patience: int | None = Field(5, ge=1)
    min_delta: float = Field(0.1, ge=0.0)


class TrainConfig(Strict):
    """One training run: optimiser, schedule, device."""

    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr_schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    grad_clip: float | None = Field(None, gt=0.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: bool = True
    threads: int | None = Field(None, ge=1)
    seed: int = 0
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    stop_after: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _stop_within(self) -> TrainConfig:
        if self.stop_after is not None and self.stop_after > self.epochs:
            raise ValueError(f"stop_after ({self.stop_after}) exceeds epochs ({self.epochs})")
        return self

    def last_epoch(self) -> int:
        """The epoch the run ends at: ``stop_after`` (a replay of a run that stopped early)
        or ``epochs``; the LR path and weight progress always span ``epochs``."""
        return self.stop_after or self.epochs


PHASE_TRAIN_FIELDS = ("lr", "weight_decay", "grad_clip")  # what a phase may change in train


class PhaseTrain(Strict):
    """The optimiser settings of a :class:`Phase` (the mutable part of ``train``)."""

    lr: float = Field(gt=0.0)
    weight_decay: float = Field(ge=0.0)
    grad_clip: float | None = Field(None, gt=0.0)


class Phase(Strict):
    """From epoch ``from_epoch`` on (1-based), the run trains with these optimiser settings
    and this loss: what a PBT exploit switched a member to, so a retrain replays its lineage.

    The weight schedules keep running on the whole run's progress (a ``linear`` weight of a
    phase from epoch 3 starts at its value at that progress, not at ``start``); the LR keeps
    its schedule's shape, rescaled to the phase's peak ``lr`` (see ``Trainer.set_optimizer``).
    """

    from_epoch: int = Field(ge=2)
    train: PhaseTrain
    loss: LossSpec

    @field_validator("loss", mode="before")
    @classmethod
    def _check_loss(cls, raw: Any) -> LossSpec:
        return validate_loss(raw)
