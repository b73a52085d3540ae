from __future__ import annotations

from pathlib import Path

import pytest

from tune_losses.config import (
    ConfigError,
    Experiment,
    apply_overrides,
    dump_experiment,
    flatten,
    load_experiment,
    read_yaml,
    validate_experiment,
)


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_experiment(raw, "space.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_make_a_loss_only_file_valid() -> None:
    exp = validate_experiment({"loss": {"decode": {"focal": {"weight": 0.5, "gamma": 1.0}}}})
    assert exp.data.format == "synthetic"
    assert exp.model.encoder_weights is None
    assert exp.loss["decode"]["focal"].model_dump() == {"weight": 0.5, "gamma": 1.0}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"epoch": 3}}, "space.yaml: train.epoch: Extra inputs are not permitted"),
        ({"train": {"epochs": "many"}}, "space.yaml: train.epochs:"),
        ({"search": {"reduction_factor": 1}}, "search.reduction_factor:"),
        ({"model": {"arch": "Unett"}}, "model.arch: unknown SMP architecture 'Unett'"),
        ({"model": {"encoder": "resnet19"}}, "did you mean"),
        ({"data": {"format": "folders"}}, "data.root is required"),
        ({"data": {"augment": {"crop": [100, 96]}}}, "augment.crop [100, 96] must be a multiple"),
        ({"data": {"augment": {"scale": [2, 1]}}}, "data.augment.scale: expected [low, high]"),
        ({"search": {"metric": "val/miou"}}, "search.metric: unknown metric 'val/miou'"),
        ({"search": {"sampler": "grid"}}, "search.sampler: Input should be 'tpe' or 'random'"),
        ({"loss": {"decode": {"focl": {"weight": 1}}}}, "loss.decode.focl: unknown loss 'focl'"),
        ({"loss": {"decode": {"focal": {"gama": 2}}}}, "loss.decode.focal.gama: Extra inputs"),
        ({"loss": {"decode": {"focal": {"gamma": "x"}}}}, "loss.decode.focal.gamma:"),
        (
            {"loss": {"decode": {"focal": {"gamma": -1}}}},
            "space.yaml: loss.decode.focal.gamma: Input should be greater than or equal to 0",
        ),
        ({"loss": {"decode": {"dice": {"smooth": -1}}}}, "loss.decode.dice.smooth: Input should"),
        ({"loss": {"decode": {"lovasz": {"classes": "some"}}}}, "loss.decode.lovasz.classes:"),
        ({"loss": {"decode": {"tversky": {"beta": 0, "alpha": 0}}}}, "tversky: alpha and beta"),
        ({"loss": {"decode": {"ce": {"weight": True}}}}, "loss.decode.ce.weight: Input should be"),
        ({"loss": {"decode": {"ce": {"weight": -1}}}}, "loss.decode.ce.weight"),
        (
            {"loss": {"decode": {"ce": {"weight": {"schedule": "step", "values": [1, 0]}}}}},
            "len(values) == len(milestones) + 1",
        ),
        (
            {"loss": {"decode": {"ce": {"weight": {"schedule": "wobble", "start": 1}}}}},
            "loss.decode.ce.weight",
        ),
        ({"loss": {"decode": {"dice": {"class_weights": "inverse"}}}}, "takes no class weights"),
        (
            {"model": {"aux_head": False}, "loss": {"aux": {"ce": {"weight": 1}}}},
            "loss.aux: the model has no head 'aux'",
        ),
    ],
)
def test_errors_name_the_field(raw: dict, expected: str) -> None:
    assert expected in error_of(raw)


def test_schedules_and_term_by_dotted_path_validate() -> None:
    raw = {
        "loss": {
            "decode": {
                "ce": {"weight": {"schedule": "linear", "start": 0.5, "end": 0.1}},
                "mine": {"term": "tune_losses.losses:dice", "weight": 0.2, "smooth": 1.0},
            },
            "aux": {
                "lovasz": {"weight": {"schedule": "step", "values": [0, 0.2], "milestones": [0.7]}}
            },
        }
    }
    exp = validate_experiment(raw)
    assert exp.loss["decode"]["mine"]["term"] == "tune_losses.losses:dice"
    assert exp.loss["aux"]["lovasz"]["weight"]["milestones"] == [0.7]


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # trials run in their own folders (Ray changes directory), so paths resolve here, once
    monkeypatch.chdir(tmp_path)
    exp = validate_experiment(
        {
            "data": {"format": "folders", "root": "data/camvid"},
            "model": {"encoder_weights": "w.pth"},
        }
    )
    assert exp.data.root == tmp_path / "data" / "camvid"
    assert exp.model.encoder_weights == str(tmp_path / "w.pth")


def test_a_null_term_is_switched_off() -> None:
    exp = validate_experiment({"loss": {"decode": {"ce": {"weight": 1}, "extra": None}}})
    assert list(exp.loss["decode"]) == ["ce"]


def test_overrides_parse_yaml_values() -> None:
    raw = apply_overrides(
        {"train": {"epochs": 5}},
        ["train.epochs=2", "loss.decode.ce.weight={uniform: [0.1, 1.0]}", "data.max_train=4"],
    )
    assert raw["train"]["epochs"] == 2
    assert raw["loss"]["decode"]["ce"]["weight"] == {"uniform": [0.1, 1.0]}
    assert raw["data"]["max_train"] == 4
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(ConfigError, match="'epochs' is not a section"):
        apply_overrides({"train": {"epochs": 5}}, ["train.epochs.x=1"])


def test_yaml_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.yaml: cannot read file"):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: {decode: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+ invalid YAML"):
        read_yaml(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_yaml(scalar)


def test_dump_and_load_round_trip(tmp_path: Path, tiny: dict) -> None:
    exp = validate_experiment(tiny)
    path = tmp_path / "best.yaml"
    path.write_text(dump_experiment(exp))
    assert load_experiment(path) == exp
    assert load_experiment(path, ["train.epochs=7"]).train.epochs == 7
    assert isinstance(exp, Experiment)


def test_flatten_gives_mlflow_style_keys() -> None:
    tree = {"loss": {"aux": {"ce": {"weight": {"schedule": "linear", "start": 0.5, "end": 0.1}}}}}
    assert flatten(tree) == {
        "loss.aux.ce.weight.schedule": "linear",
        "loss.aux.ce.weight.start": 0.5,
        "loss.aux.ce.weight.end": 0.1,
    }


def test_several_metrics_need_fifo_and_one_mode_each() -> None:
    ok = validate_experiment(
        {"search": {"metric": ["val/mIoU", "val/boundary_IoU"], "scheduler": "fifo"}}
    )
    assert ok.search.objectives == [("val/mIoU", "max"), ("val/boundary_IoU", "max")]
    assert ok.search.best_metric == ["best_val_mIoU", "best_val_boundary_IoU"]
    assert "use scheduler: fifo" in error_of({"search": {"metric": ["val/mIoU", "val/mDice"]}})
    two_modes = {"metric": ["val/mIoU", "val/mDice"], "mode": ["max"], "scheduler": "fifo"}
    assert "one per metric" in error_of({"search": two_modes})


def test_start_up_trials_scale_with_the_budget_and_never_swallow_it() -> None:
    # a third of num_samples, within [1, 10], when the space does not say
    by_budget = {3: 1, 8: 2, 24: 8, 100: 10, 1: 1}
    for samples, startup in by_budget.items():
        search = validate_experiment({"search": {"num_samples": samples}}).search
        assert search.startup_trials == startup
    given = validate_experiment({"search": {"num_samples": 8, "n_startup_trials": 5}})
    assert given.search.startup_trials == 5
    message = error_of({"search": {"num_samples": 8, "n_startup_trials": 8}})
    assert message.startswith("space.yaml: search: n_startup_trials: 8 random start-up trials")
    assert "the default is 2" in message
    # a random search has no TPE trials to leave
    random = {"num_samples": 4, "n_startup_trials": 4, "sampler": "random"}
    assert validate_experiment({"search": random}).search.sampler == "random"


def test_repeats_need_one_incumbent() -> None:
    assert validate_experiment({"search": {"repeats": 3}}).search.repeats == 3
    message = error_of({"search": {"repeats": 2, "scheduler": "pbt"}})
    assert message.startswith("space.yaml: search: repeats: 2 seeds a contender needs one metric")
    pareto = {"repeats": 2, "metric": ["val/mIoU", "val/mDice"], "scheduler": "fifo"}
    assert "one metric" in error_of({"search": pareto})
    assert "less than or equal to 10" in error_of({"search": {"repeats": 11}})
