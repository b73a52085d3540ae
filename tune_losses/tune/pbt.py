"""Population Based Training over the loss weights (Jaderberg et al. 2017; PB2, Parker-Holder
et al. 2020): the population, the explore step, and the learned schedule of the winner.

Ray refuses a search algorithm beside PBT, so the initial population is sampled from the
space here (one Optuna ``ask()`` per member) and handed to Ray as plain configs. A member's
``choice`` labels stay as sampled; its numeric markers mutate within their bounds at every
exploit, and its ``experiment`` is rebuilt from the mutated values. The applied weight of
phase (loss and optimiser settings, from the epoch an exploit switched to them) and the LR
and weight of every step travel with the checkpoint (``Trainer.lineage``, ``Trainer.trace``),
so the winner's lineage becomes ``phases`` that ``tune_losses.train`` replays step for step.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Mapping
from typing import Any

import optuna
from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.pbt import PopulationBasedTraining

from tune_losses.config import PHASE_TRAIN_FIELDS, ConfigError, SearchConfig
from tune_losses.space import SearchSpace
from tune_losses.tune.trainable import EXPERIMENT_KEY, MEMBER_KEY

PERTURBATION_FACTORS = (0.8, 1.2)
RESAMPLE_PROBABILITY = 0.25


def initial_population(space: SearchSpace, size: int, seed: int) -> list[dict[str, Any]]:
    """``size`` trial configs: the sampled values (Optuna names) and the experiment."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    members = []
    for _ in range(size):
        trial = study.ask()
        exp = space.validate(space.sample(trial))
        members.append({**trial.params, EXPERIMENT_KEY: exp.model_dump(mode="json")})
    return members


def unconditional_markers(space: SearchSpace) -> dict[str, tuple[str, float, float]]:
    """The numeric markers every member has (none inside a ``choice`` option)."""
    choices = [name for name, node in space.markers if name not in space.numeric_markers()]
    return {
        name: bounds
        for name, bounds in space.numeric_markers().items()
        if not any(name.startswith(f"{c}.") for c in choices)
    }


class Explorer:
    """PBT's explore step: each numeric marker of the member is resampled (probability
    ``RESAMPLE_PROBABILITY``) or multiplied by 0.8 or 1.2, within its bounds; the member's
    experiment is then rebuilt. ``mutate=False`` only rebuilds (PB2 picks the values)."""

    def __init__(self, space: SearchSpace, seed: int, mutate: bool = True) -> None:
        self.space, self.mutate = space, mutate
        self.rng = random.Random(seed)

    def _perturb(self, value: float, kind: str, low: float, high: float) -> float:
        if self.rng.random() < RESAMPLE_PROBABILITY:
            if kind == "loguniform":
                value = math.exp(self.rng.uniform(math.log(low), math.log(high)))
            else:
                value = self.rng.uniform(low, high)
        else:
            value = value * self.rng.choice(PERTURBATION_FACTORS)
        value = min(high, max(low, value))
        return round(value) if kind == "int" else value

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        values = config[MEMBER_KEY]
        if self.mutate:
            for name, (kind, low, high) in self.space.numeric_markers().items():
                if name in values:  # markers of the member's own choice options only
                    values[name] = self._perturb(float(values[name]), kind, low, high)
        values[EXPERIMENT_KEY] = self.space.resolve(values).model_dump(mode="json")
        return config


def _mutable(name: str) -> bool:
    """Whether a marker may change at an exploit: a loss value or an optimiser setting."""
    return name.startswith("loss.") or name in {f"train.{f}" for f in PHASE_TRAIN_FIELDS}


def make_pbt(space: SearchSpace, search: SearchConfig) -> TrialScheduler:
    """PBT (random perturbation) or PB2 (GP-bandit over the unconditional markers)."""
    common = {
        "time_attr": "training_iteration",
        "metric": search.metric,
        "mode": search.mode,
        "perturbation_interval": search.perturbation_interval,
    }
    fixed = [n for n in space.numeric_markers() if not _mutable(n)]
    if fixed:
        raise ConfigError(
            f"search.scheduler {search.scheduler} mutates its markers during training, and only "
            f"loss.* and train.{{{','.join(PHASE_TRAIN_FIELDS)}}} can change mid-run: {fixed[0]}"
        )
    if search.scheduler == "pb2":
        from ray.tune.schedulers.pb2 import PB2  # imports scikit-learn: only for PB2

        bounds = unconditional_markers(space)
        if not bounds:
            raise ConfigError(
                "search.scheduler pb2 needs a uniform/loguniform/int marker outside any choice"
            )
        return PB2(
            **common,
            hyperparam_bounds={MEMBER_KEY: {n: [lo, hi] for n, (_, lo, hi) in bounds.items()}},
            custom_explore_fn=Explorer(space, search.seed, mutate=False),
        )
    if not space.numeric_markers():
        raise ConfigError("search.scheduler pbt needs a uniform/loguniform/int marker to mutate")
    return PopulationBasedTraining(
        **common,
        hyperparam_mutations={},
        custom_explore_fn=Explorer(space, search.seed),
        # synchronous: members exploit at the same epoch, so a donor's checkpoint is its
        # latest one (an asynchronous donor runs on and its checkpoint may be rotated away)
        synch=True,
    )


def learned_experiment(experiment: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, Any]:
    """``experiment`` (the winner's last config) rewritten to replay the winner's lineage
    exactly, from the ``lineage`` and ``epochs_run`` of its summary (``Trainer.summary``).

    The settings it started with (its first ancestor's loss and optimiser values) become
    ``loss`` and ``train``, each later one a :class:`~tune_losses.config.Phase` from the epoch
    an exploit switched to it: per step, every weight is the schedule that ran then at the
    same progress (a ``linear`` weight stays linear within its epochs), the LR follows the
    same path (``train.epochs``, the length of the LR and weight schedules, is kept; a run
    that stopped early gets ``train.stop_after`` instead), and focal gamma or any other term
    option changes at the same epoch. Early stopping is off in the replay (``stop_after``
    says where the winner stopped), so the replay runs the winner's epochs, no more, no less.
    """
    lineage = [dict(phase) for phase in summary["lineage"]]
    epochs_run = int(summary["epochs_run"])
    out = copy.deepcopy(dict(experiment))
    train = out["train"]
    train.update(lineage[0]["train"])
    train["early_stopping"] = {**train.get("early_stopping", {}), "patience": None}
    train["stop_after"] = epochs_run if epochs_run < int(train["epochs"]) else None
    out["loss"] = lineage[0]["loss"]
    out["phases"] = [
        {"from_epoch": p["from_epoch"], "train": p["train"], "loss": p["loss"]}
        for p in lineage[1:]
        if p["from_epoch"] <= epochs_run  # an exploit that never trained an epoch
    ]
    return out
