"""Experiment configuration: the schema of a run or search, YAML loading and ``--set`` overrides.

Everything a user writes is validated here, once, with the rules of the modules that own them
(loss terms and their options: ``losses/``; weights and schedules: ``schedules.py``); inner
code trusts what it gets. A space file may hold only the ``loss`` part: every other section
has defaults.

One job a module, everything re-exported here:

- :mod:`~tune_losses.config.base`: :class:`ConfigError`, the strict section model;
- :mod:`~tune_losses.config.sections`: data, model, train and phases;
- :mod:`~tune_losses.config.search`: search metrics, search, confirm and tracking;
- :mod:`~tune_losses.config.experiment`: :class:`Experiment`, YAML, ``--set``, flattening.
"""

from __future__ import annotations

from tune_losses.config.base import ConfigError, Strict
from tune_losses.config.experiment import (
    Experiment,
    add_overrides_flag,
    apply_overrides,
    dump_experiment,
    flatten,
    format_validation_error,
    load_experiment,
    read_yaml,
    validate_experiment,
)
from tune_losses.config.search import (
    CLASS_METRIC,
    SEARCH_METRICS,
    ConfirmConfig,
    Mode,
    SearchConfig,
    TrackingConfig,
    best_metric_name,
    class_metric_problem,
    class_names_problem,
    default_startup_trials,
)
from tune_losses.config.sections import (
    PHASE_TRAIN_FIELDS,
    AugmentConfig,
    DataConfig,
    EarlyStoppingConfig,
    ModelConfig,
    Phase,
    PhaseTrain,
    SyntheticConfig,
    TrainConfig,
)

__all__ = [
    "CLASS_METRIC",
    "PHASE_TRAIN_FIELDS",
    "SEARCH_METRICS",
    "AugmentConfig",
    "ConfigError",
    "ConfirmConfig",
    "DataConfig",
    "EarlyStoppingConfig",
    "Experiment",
    "Mode",
    "ModelConfig",
    "Phase",
    "PhaseTrain",
    "SearchConfig",
    "Strict",
    "SyntheticConfig",
    "TrackingConfig",
    "TrainConfig",
    "add_overrides_flag",
    "apply_overrides",
    "best_metric_name",
    "class_metric_problem",
    "class_names_problem",
    "default_startup_trials",
    "dump_experiment",
    "flatten",
    "format_validation_error",
    "load_experiment",
    "read_yaml",
    "validate_experiment",
]
