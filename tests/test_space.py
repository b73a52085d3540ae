from __future__ import annotations

import contextlib

import optuna
import pytest

from conftest import AUX_CE_WEIGHT
from tune_losses.config import ConfigError
from tune_losses.space import SearchSpace

AUX = {
    "decode": {"ce": {"weight": 1.0}},
    "aux": {
        "ce": {"weight": AUX_CE_WEIGHT},
        "extra": {
            "choice": [
                None,
                {"term": "focal", "weight": {"uniform": [0.0, 1.0]}, "gamma": 2.0},
                {"term": "lovasz", "weight": {"loguniform": [0.01, 1.0]}},
            ]
        },
    },
}


def sample(space: SearchSpace, **fixed: object) -> tuple[dict, dict]:
    """Sample once with some params fixed; returns (params, concrete tree)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(fixed, skip_if_exists=False)
    trial = study.ask()
    concrete = space.sample(trial)
    return trial.params, concrete


def test_conditional_subtrees_are_sampled_only_when_chosen() -> None:
    space = SearchSpace({"loss": AUX})
    params, tree = sample(
        space, **{"loss.aux.ce.weight.choice": "decay", "loss.aux.extra.choice": "none"}
    )
    assert set(params) == {
        "loss.aux.ce.weight.choice",
        "loss.aux.ce.weight.decay.start",
        "loss.aux.ce.weight.decay.end",
        "loss.aux.extra.choice",
    }
    weight = tree["loss"]["aux"]["ce"]["weight"]
    assert weight["schedule"] == "linear" and 0.3 <= weight["start"] <= 1.0
    assert tree["loss"]["aux"]["extra"] is None
    assert space.validate(tree).loss["aux"].keys() == {"ce"}

    params, tree = sample(
        space, **{"loss.aux.ce.weight.choice": "constant", "loss.aux.extra.choice": "focal"}
    )
    assert set(params) == {
        "loss.aux.ce.weight.choice",
        "loss.aux.ce.weight.constant",
        "loss.aux.extra.choice",
        "loss.aux.extra.focal.weight",
    }
    assert tree["loss"]["aux"]["ce"]["weight"] == params["loss.aux.ce.weight.constant"]
    assert tree["loss"]["aux"]["extra"]["gamma"] == 2.0


def test_options_never_share_a_parameter() -> None:
    """The same sub-path in two options (focal's weight uniform, dice's loguniform) gives two
    Optuna parameters, so TPE neither pools them nor refuses their different distributions."""
    extra = {
        "choice": {
            "focal": {"term": "focal", "weight": {"uniform": [0.1, 1.0]}},
            "dice": {"term": "dice", "weight": {"loguniform": [0.01, 1.0]}},
        }
    }
    space = SearchSpace({"loss": {"decode": {"ce": {"weight": 1.0}, "extra": extra}}})
    names = [name for name, _ in space.markers]
    assert names == [
        "loss.decode.extra",
        "loss.decode.extra.focal.weight",
        "loss.decode.extra.dice.weight",
    ]
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    for i in range(8):
        trial = study.ask()
        tree = space.sample(trial)
        label = trial.params["loss.decode.extra.choice"]
        assert (
            tree["loss"]["decode"]["extra"]["weight"]
            == trial.params[f"loss.decode.extra.{label}.weight"]
        )
        study.tell(trial, float(i))


def test_marker_kinds_sample_within_bounds() -> None:
    raw = {
        "train": {"epochs": {"int": [2, 4]}, "lr": {"loguniform": [1e-4, 1e-2]}},
        "data": {"batch_size": {"choice": [4, 8]}},
        "loss": {"decode": {"ce": {"weight": {"uniform": [0.2, 0.3]}}}},
    }
    space = SearchSpace(raw)
    for seed in range(5):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        exp = space.validate(space.sample(study.ask()))
        assert 2 <= exp.train.epochs <= 4 and isinstance(exp.train.epochs, int)
        assert 1e-4 <= exp.train.lr <= 1e-2
        assert exp.data.batch_size in (4, 8)
        assert 0.2 <= exp.loss["decode"]["ce"]["weight"] <= 0.3


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        (
            {"decode": {"ce": {"weight": {"uniform": [1.0, 0.5]}}}},
            "loss.decode.ce.weight: uniform needs low < high",
        ),
        ({"decode": {"ce": {"weight": {"loguniform": [0.0, 1.0]}}}}, "loguniform needs low > 0"),
        ({"decode": {"ce": {"weight": {"uniform": [0.1]}}}}, "uniform expects [low, high]"),
        ({"decode": {"ce": {"weight": {"choice": []}}}}, "needs at least one option"),
        # a typo in a branch that the first sample might never draw is still caught at load
        (
            {"decode": {"ce": {}, "x": {"choice": [None, {"term": "focal", "gama": 2.0}]}}},
            "loss.decode.x.gama: Extra inputs are not permitted",
        ),
    ],
)
def test_space_errors_name_the_field(loss: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        SearchSpace({"loss": loss}, source="s.yaml")
    assert expected in str(info.value)
    assert str(info.value).startswith("s.yaml: ")


def test_upper_bounds_are_validated_and_bound_max_epochs() -> None:
    with pytest.raises(ConfigError, match="data.augment.color_jitter: Input should be less"):
        SearchSpace({"data": {"augment": {"color_jitter": {"uniform": [0.5, 2.0]}}}})
    space = SearchSpace({"train": {"epochs": {"int": [3, 9]}}})
    assert space.experiment.train.epochs == 3 and space.max_epochs == 9


def test_grid_only_space_is_exhaustive() -> None:
    raw = {
        "loss": {
            "decode": {
                "ce": {"weight": {"grid": [0.5, 1.0]}},
                "extra": {"grid": {"none": None, "dice": {"term": "dice", "weight": 0.3}}},
            }
        }
    }
    space = SearchSpace(raw)
    assert space.grid_only and space.grid_size() == 4
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space.grid(), seed=0))
    seen = set()
    for _ in range(4):
        trial = study.ask()
        tree = space.sample(trial)
        dec = tree["loss"]["decode"]
        seen.add((dec["ce"]["weight"], dec["extra"] is None))
        with contextlib.suppress(RuntimeError):  # the grid, exhausted, stops the study
            study.tell(trial, 0.0)
    assert seen == {(0.5, True), (0.5, False), (1.0, True), (1.0, False)}
    assert len(list(space.grid_points())) == 4
    assert space.exhaustive and space.num_trials == 4


def test_loss_weighting_can_be_searched() -> None:
    """``loss.weighting`` is not a head: a choice over it samples and validates as a string."""
    space = SearchSpace(
        {
            "loss": {
                "weighting": {"choice": {"fixed": "fixed", "uncertainty": "uncertainty"}},
                "decode": {"ce": {"weight": {"uniform": [0.1, 1.0]}}},
            }
        }
    )
    params, tree = sample(space, **{"loss.weighting": "uncertainty"})
    exp = space.validate(tree)
    assert exp.loss["weighting"] == "uncertainty" and list(exp.loss) == ["weighting", "decode"]


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_named_sampler_samples_a_grid_space_as_choices(sampler: str) -> None:
    raw = {
        "loss": {"decode": {"ce": {"weight": {"grid": [0.5, 1.0]}}}},
        "search": {"sampler": sampler, "num_samples": 5},
    }
    space = SearchSpace(raw)
    assert space.grid_only and not space.exhaustive
    assert space.num_trials == 5
    params, tree = sample(space)
    assert set(params) == {"loss.decode.ce.weight.grid"}  # a categorical of the grid's labels
    assert float(params["loss.decode.ce.weight.grid"]) == tree["loss"]["decode"]["ce"]["weight"]
