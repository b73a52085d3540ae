"""Experiment configuration: the schema of a run or search, YAML loading and ``--set`` overrides.

Everything a user writes is validated here, once, with the rules of the modules that own them
(loss terms and their options: ``losses/``; weights and schedules: ``schedules.py``); inner
code trusts what it gets. A space file may hold only the ``loss`` part: every other section
has defaults.
"""

from __future__ import annotations

import argparse
import copy
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tune_losses.losses.spec import LossSpec, loss_heads, loss_weighting, validate_loss
from tune_losses.names import mlflow_name_problem


class ConfigError(ValueError):
    """A user-facing configuration error; its message is one line naming file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- data


class SyntheticConfig(_Strict):
    """The embedded procedural dataset (``data/synthetic.py``)."""

    num_train: int = Field(48, ge=1)
    num_val: int = Field(16, ge=1)
    size: int = Field(64, ge=16)
    num_classes: int = Field(5, ge=2, le=8)
    seed: int = 0


class AugmentConfig(_Strict):
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


class DataConfig(_Strict):
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


class ModelConfig(_Strict):
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


class EarlyStoppingConfig(_Strict):
    """Stop when val mIoU (in %) has not improved by ``min_delta`` for ``patience`` epochs."""

    patience: int | None = Field(5, ge=1)
    min_delta: float = Field(0.1, ge=0.0)


class TrainConfig(_Strict):
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


class PhaseTrain(_Strict):
    """The optimiser settings of a :class:`Phase` (the mutable part of ``train``)."""

    lr: float = Field(gt=0.0)
    weight_decay: float = Field(ge=0.0)
    grad_clip: float | None = Field(None, gt=0.0)


class Phase(_Strict):
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


# ----------------------------------------------------------------------------- search


SEARCH_METRICS = (
    "val/mIoU",
    "val/mDice",
    "val/pixel_acc",
    "val/mean_acc",
    "val/boundary_IoU",
    "val/boundary_F1",
    "train/loss",
)


CLASS_METRIC = "val/IoU/"  # + a class name: that class's IoU, per epoch


def class_names_problem(names: Sequence[str]) -> str | None:
    """Why the per-class metrics of ``names`` (``val/IoU/<class>``) cannot be logged: a name
    MLflow refuses, or two classes of one name; None when they can."""
    for name in names:
        problem = mlflow_name_problem(f"{CLASS_METRIC}{name}")
        if problem is not None:
            return f"class {name!r}: {problem}"
    twice = sorted({n for n in names if list(names).count(n) > 1})
    return f"class names must differ, found twice: {', '.join(twice)}" if twice else None


def class_metric_problem(metric: str, class_names: Sequence[str]) -> str | None:
    """Why ``search.metric`` names no class of the data (with the close names), or None;
    the class list is known once the data is read, so the run builder asks this."""
    if not metric.startswith(CLASS_METRIC) or metric[len(CLASS_METRIC) :] in class_names:
        return None
    name = metric[len(CLASS_METRIC) :]
    close = difflib.get_close_matches(name, class_names, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(repr(CLASS_METRIC + c) for c in close)}?)" if close else ""
    return f"search.metric: the data has no class {name!r}{hint}; classes: {', '.join(class_names)}"


def best_metric_name(metric: str) -> str:
    """The best-so-far value of ``metric`` that a trial reports and MLflow keeps:
    ``val/mIoU`` -> ``best_val_mIoU``, ``val/boundary_IoU`` -> ``best_val_boundary_IoU``."""
    return "best_" + metric.replace("/", "_")


Mode = Literal["max", "min"]


def default_startup_trials(num_samples: int) -> int:
    """TPE's random start-up trials when the space does not say: a third of the budget, at
    most 10 (Optuna's own default), at least 1, so the search always has TPE trials."""
    return max(1, min(10, num_samples // 3))


class ConfirmConfig(_Strict):
    """The confirm stage: the ``top_k`` configurations and every baseline trained again at
    ``seeds`` fresh training seeds, each scored at its end on ``split``."""

    top_k: int = Field(2, ge=1)
    seeds: int = Field(3, ge=2, le=50)  # two at least: the interval needs n - 1 >= 1
    split: str = Field("val", min_length=1)


class SearchConfig(_Strict):
    """Ray Tune settings: Optuna TPE proposes, ASHA stops the weak trials.

    ``metric`` may list several metrics (with ``mode`` one per metric, or one for all): the
    search is then multi-objective (Optuna's multi-objective TPE, FIFO: ASHA and PBT need
    one metric) and ranks trials by their Pareto front.

    ``sampler`` unset: TPE, or every point once when all markers are ``grid``. ``tpe`` or
    ``random`` samples ``num_samples`` trials even from a grid-only space (grid markers are
    then categorical choices), so that a sampler can be compared with the full grid on the
    same space file.
    """

    metric: str | list[str] = "val/mIoU"
    mode: Mode | list[Mode] = "max"

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str | list[str]) -> str | list[str]:
        for name in [v] if isinstance(v, str) else v:
            if name not in SEARCH_METRICS and not name.startswith((CLASS_METRIC, "train/loss")):
                raise ValueError(
                    f"unknown metric {name!r}; known: {', '.join(SEARCH_METRICS)}, val/IoU/<class>"
                )
        if isinstance(v, list) and (len(v) < 2 or len(set(v)) != len(v)):
            raise ValueError(f"a list of metrics needs two or more distinct ones, got {v}")
        return v

    num_samples: int = Field(8, ge=1)
    sampler: Literal["tpe", "random"] | None = None
    max_concurrent: int = Field(2, ge=1)
    scheduler: Literal["asha", "fifo", "pbt", "pb2"] = "asha"
    perturbation_interval: int = Field(2, ge=1)
    optuna_storage: str | None = None
    grace_period: int = Field(1, ge=1)
    schedule_aware: bool = True  # ASHA judges no trial before its weight schedules played
    repeats: int = Field(1, ge=1, le=10)  # seeds a would-be best runs before it is declared
    reduction_factor: int = Field(2, ge=2)
    n_startup_trials: int | None = Field(None, ge=1)
    seed: int = 0
    cpus_per_trial: float = Field(1.0, gt=0.0)
    gpus_per_trial: float = Field(0.0, ge=0.0)
    checkpoint_keep: int = Field(2, ge=1)
    baselines: dict[str, LossSpec] = {}  # name -> a loss section trained in every search
    confirm: ConfirmConfig | None = None

    @field_validator("baselines", mode="before")
    @classmethod
    def _check_baselines(cls, raw: Any) -> dict[str, LossSpec]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise ValueError("search.baselines: expected a mapping of name -> loss section")
        out = {}
        for name, loss in raw.items():
            problem = mlflow_name_problem(str(name))
            if problem is not None:
                raise ValueError(f"search.baselines: baseline {problem}")
            try:
                out[str(name)] = validate_loss(loss)
            except ValueError as exc:
                text = str(exc).splitlines()[0]
                where = f"search.baselines.{name}"
                text = f"{where}.{text[5:]}" if text.startswith("loss.") else f"{where}: {text}"
                raise ValueError(text) from None
        return out

    @model_validator(mode="after")
    def _objectives(self) -> SearchConfig:
        metrics = [self.metric] if isinstance(self.metric, str) else self.metric
        if isinstance(self.mode, list) and isinstance(self.metric, str):
            raise ValueError(
                f"mode: a list ({', '.join(self.mode)}) goes with a list of metrics; "
                f"for one metric ({self.metric}) give one mode, e.g. mode: {self.mode[0]}"
            )
        if isinstance(self.mode, list) and len(self.mode) != len(metrics):
            raise ValueError(f"mode: one per metric ({len(metrics)}), got {self.mode}")
        if len(metrics) > 1 and self.scheduler != "fifo":
            raise ValueError(
                f"scheduler: {self.scheduler} needs one metric; with several "
                f"({', '.join(metrics)}) use scheduler: fifo"
            )
        if self.repeats > 1 and (len(metrics) > 1 or self.scheduler in ("pbt", "pb2")):
            raise ValueError(
                f"repeats: {self.repeats} seeds a contender needs one metric and scheduler "
                "asha or fifo (a Pareto front or PBT population has no single incumbent)"
            )
        self._check_stages(metrics)
        n = self.n_startup_trials
        if n is not None and n >= self.num_samples and self.sampler != "random":
            raise ValueError(
                f"n_startup_trials: {n} random start-up trials of num_samples "
                f"{self.num_samples} leave TPE none to propose; use fewer (the default is "
                f"{default_startup_trials(self.num_samples)}) or sampler: random"
            )
        return self

    def _check_stages(self, metrics: list[str]) -> None:
        """Baselines and the confirm stage need one metric and a scheduler that trains a
        fixed configuration (PBT/PB2 mutate every member); confirm ranks a ``val/`` metric
        (scored on its split as ``<split>/...``)."""
        for what, on in (("baselines", bool(self.baselines)), ("confirm", bool(self.confirm))):
            if on and self.scheduler in ("pbt", "pb2"):
                raise ValueError(
                    f"{what}: not with scheduler {self.scheduler} (it mutates every member's "
                    "weights; a baseline or a confirmed configuration must stay fixed)"
                )
        if self.confirm is not None and (len(metrics) > 1 or not metrics[0].startswith("val/")):
            raise ValueError(
                f"confirm: needs one metric of the val split (val/...), got {', '.join(metrics)}"
            )

    @property
    def startup_trials(self) -> int:
        """TPE's random start-up trials: ``n_startup_trials``, else
        :func:`default_startup_trials` of ``num_samples``."""
        return self.n_startup_trials or default_startup_trials(self.num_samples)

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """``[(metric, mode), ...]``: one for a single-metric search, several for a Pareto one."""
        metrics = [self.metric] if isinstance(self.metric, str) else self.metric
        modes = self.mode if isinstance(self.mode, list) else [self.mode] * len(metrics)
        return list(zip(metrics, modes, strict=True))

    @property
    def best_metric(self) -> str | list[str]:
        """What Optuna learns from: :func:`best_metric_name` of each metric."""
        names = [best_metric_name(m) for m, _ in self.objectives]
        return names[0] if isinstance(self.metric, str) else names


class TrackingConfig(_Strict):
    """MLflow: where runs go and what the parent run is called."""

    uri: str = "sqlite:///mlruns.db"
    experiment: str = "tune_losses"
    run_name: str | None = None


# ----------------------------------------------------------------------------- experiment


class Experiment(_Strict):
    """One training run, or the template of a search: data, model, train, loss, search, tracking."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    loss: LossSpec = Field({"decode": {"ce": {"weight": 1.0}}}, validate_default=True)
    search: SearchConfig = SearchConfig()
    tracking: TrackingConfig = TrackingConfig()
    phases: list[Phase] = []

    @field_validator("loss", mode="before")
    @classmethod
    def _check_loss(cls, raw: Any) -> LossSpec:
        return validate_loss(raw)  # the terms' rules live in losses/ and schedules.py

    @model_validator(mode="after")
    def _check_heads(self) -> Experiment:
        heads = {"decode", "aux"} if self.model.aux_head else {"decode"}
        losses = {"loss": self.loss}
        losses.update({f"search.baselines.{k}": v for k, v in self.search.baselines.items()})
        for where, loss in losses.items():
            for head in loss_heads(loss):
                if head not in heads:
                    hint = " (set model.aux_head: true)" if head == "aux" else ""
                    raise ValueError(f"{where}.{head}: the model has no head {head!r}{hint}")
        if not any(loss_heads(self.loss).values()):  # a head with no term is off; a loss needs one
            raise ValueError("loss: every term is switched off; a run needs at least one term")
        self._check_phases()
        return self

    def _check_phases(self) -> None:
        """Phases start in order inside the run and keep the loss's terms and weighting (the
        learned log-variances of ``weighting: uncertainty`` carry over, one per term)."""
        terms = {h: list(t) for h, t in loss_heads(self.loss).items()}
        previous = 1
        for index, phase in enumerate(self.phases):
            where = f"phases.{index}"
            if not previous < phase.from_epoch <= self.train.last_epoch():
                raise ValueError(
                    f"{where}.from_epoch: {phase.from_epoch} must be after {previous} and at "
                    f"most the last epoch ({self.train.last_epoch()})"
                )
            previous = phase.from_epoch
            theirs = {h: list(t) for h, t in loss_heads(phase.loss).items()}
            if theirs != terms or loss_weighting(phase.loss) != loss_weighting(self.loss):
                raise ValueError(
                    f"{where}.loss: a phase must keep the loss's heads, terms and weighting"
                )


# ----------------------------------------------------------------------------- loading


def format_validation_error(exc: ValidationError, source: str = "") -> str:
    """One line: ``source: field.path: message`` for the first error."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if msg.startswith(("loss.", "search.baselines")) or not loc:
        where = msg
    else:
        where = f"{loc}: {msg}"
    return f"{source}: {where}" if source else where


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing, unreadable, non-UTF-8 or non-mapping file is a
    ConfigError naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def add_overrides_flag(parser: argparse.ArgumentParser, help: str) -> None:
    """The ``--set KEY=VALUE`` flag of every CLI (repeatable, into ``overrides``), which
    :func:`apply_overrides` applies."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a copy of ``raw``."""
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def validate_experiment(raw: Mapping[str, Any], source: str = "") -> Experiment:
    """Validate a concrete (marker-free) experiment mapping; errors become one-line ConfigErrors."""
    try:
        return Experiment.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """Load a concrete experiment YAML (e.g. a search's ``best_config.yaml``)."""
    raw = apply_overrides(read_yaml(path), overrides)
    return validate_experiment(raw, str(path))


def dump_experiment(exp: Experiment) -> str:
    """The experiment as YAML that :func:`load_experiment` reads back to an equal object."""
    return yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become strings (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name))
        elif isinstance(value, list | tuple):
            out[name] = str(list(value))
        else:
            out[name] = value
    return out
