"""The experiment (every section of a run or a search's template), read from YAML with
``--set`` overrides and validated once, each error one line naming file and field."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from tune_losses.config.base import ConfigError, Strict
from tune_losses.config.search import SearchConfig, TrackingConfig
from tune_losses.config.sections import DataConfig, ModelConfig, Phase, TrainConfig
from tune_losses.losses.spec import LossSpec, loss_heads, loss_weighting, validate_loss


class Experiment(Strict):
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
