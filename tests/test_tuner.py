"""The sampler and scheduler a search is built with (``tune_losses.tune.tuner``)."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from tune_losses.space import SearchSpace
from tune_losses.tune.tuner import make_sampler

GRID = {"loss": {"decode": {"ce": {"weight": {"grid": [0.5, 1.0]}}}}}
RANDOM = {"loss": {"decode": {"ce": {"weight": {"uniform": [0.5, 1.0]}}}}}


@pytest.mark.parametrize(
    ("raw", "sampler", "expected"),
    [
        (GRID, None, optuna.samplers.GridSampler),
        (GRID, "tpe", optuna.samplers.TPESampler),
        (GRID, "random", optuna.samplers.RandomSampler),
        (RANDOM, None, optuna.samplers.TPESampler),
        (RANDOM, "random", optuna.samplers.RandomSampler),
    ],
)
def test_search_sampler_picks_the_optuna_sampler(
    raw: dict[str, Any], sampler: str | None, expected: type
) -> None:
    space = SearchSpace({**raw, "search": {"sampler": sampler}})
    assert type(make_sampler(space)) is expected


def test_a_seeded_random_sampler_repeats_its_trials() -> None:
    space = SearchSpace({**GRID, "search": {"sampler": "random", "seed": 3}})

    def draws() -> list[Any]:
        study = optuna.create_study(sampler=make_sampler(space))
        return [space.sample(study.ask())["loss"]["decode"]["ce"]["weight"] for _ in range(8)]

    assert draws() == draws()
