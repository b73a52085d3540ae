"""Population Based Training over the loss weights (Jaderberg et al. 2017; PB2, Parker-Holder
et al. 2020): the population, the explore step, and the learned schedule of the winner.

Ray refuses a search algorithm beside PBT, so the initial population is sampled from the
space here (one Optuna ``ask()`` per member) and handed to Ray as plain configs. A member's
``choice`` labels stay as sampled; its numeric markers mutate within their bounds at every
exploit, and its ``experiment`` is rebuilt from the mutated values. The applied weight of
each term per epoch travels with the checkpoint (``Trainer.weight_history``), so the winner's
weights along its lineage become ``step`` schedules that ``tune_losses.train`` replays.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.pb2 import PB2
from ray.tune.schedulers.pbt import PopulationBasedTraining

from tune_losses.config import ConfigError, SearchConfig
from tune_losses.losses.spec import loss_heads
from tune_losses.schedules import step_values
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


def make_pbt(space: SearchSpace, search: SearchConfig) -> TrialScheduler:
    """PBT (random perturbation) or PB2 (GP-bandit over the unconditional markers)."""
    common = {
        "time_attr": "training_iteration",
        "metric": search.metric,
        "mode": search.mode,
        "perturbation_interval": search.perturbation_interval,
    }
    if search.scheduler == "pb2":
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


def learned_experiment(
    experiment: Mapping[str, Any], history: Sequence[Mapping[str, float]]
) -> dict[str, Any]:
    """``experiment`` with every loss weight replaced by the ``step`` schedule of the weights
    it was applied with per epoch (``history[e]["<head>/<term>"]``), and ``train.epochs``
    set to the epochs of that history, so a retrain replays the learned schedule."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in experiment.items()}
    out["train"] = {**out["train"], "epochs": len(history)}
    loss: dict[str, Any] = {}
    for head, terms in loss_heads(experiment["loss"]).items():  # weights learned: fixed sum
        loss[head] = {}
        for key, spec in terms.items():
            values = [float(epoch[f"{head}/{key}"]) for epoch in history]
            loss[head][key] = {**spec, "weight": step_values(values)}
    out["loss"] = loss
    return out
