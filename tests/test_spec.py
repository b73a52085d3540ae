"""The loss section's schema: TermSpec dumps exactly as before, reads like a mapping, errors."""

from __future__ import annotations

import json

import pytest
import yaml

from tune_losses.config import dump_experiment, load_experiment, validate_experiment
from tune_losses.losses import TermSpec, validate_loss
from tune_losses.schedules import Linear

# raw loss section -> its dump (what MLflow params and best_config.yaml hold), key order included
DUMPS = [
    ({"decode": {"ce": {}}}, '{"decode": {"ce": {"weight": 1.0}}}'),
    (
        {"decode": {"ce": {"label_smoothing": 0.1, "class_weights": "sqrt_inverse", "weight": 1}}},
        '{"decode": {"ce": {"weight": 1.0, "class_weights": "sqrt_inverse", '
        '"label_smoothing": 0.1}}}',
    ),
    (
        {"decode": {"focal": {"alpha": [0.25, 1], "gamma": 2, "class_weights": None}}},
        '{"decode": {"focal": {"weight": 1.0, "gamma": 2.0, "alpha": [0.25, 1.0]}}}',
    ),
    (
        {"decode": {"dice": {"weight": {"schedule": "linear", "start": 0.5, "end": 0}}}},
        '{"decode": {"dice": {"weight": {"start": 0.5, "end": 0.0, "schedule": "linear"}}}}',
    ),
    (
        {"decode": {"lovasz": {"weight": {"schedule": "step", "values": [1]}, "classes": [0, 2]}}},
        '{"decode": {"lovasz": {"weight": {"schedule": "step", "values": [1.0], '
        '"milestones": []}, "classes": [0, 2]}}}',
    ),
    (
        {"aux": {"b": {"per_image": True, "term": "lovasz_hinge", "weight": 0.3}}},
        '{"aux": {"b": {"weight": 0.3, "term": "lovasz_hinge", "per_image": true}}}',
    ),
    (
        {"decode": {"mine": {"term": "tune_losses.losses:dice", "smooth": 1}, "off": None}},
        '{"decode": {"mine": {"weight": 1.0, "term": "tune_losses.losses:dice", "smooth": 1.0}}}',
    ),
]


@pytest.mark.parametrize("raw,dumped", DUMPS, ids=lambda c: str(c)[:30])
def test_dump_is_the_normalised_mapping(raw, dumped):
    exp = validate_experiment({"loss": raw})
    assert json.dumps(exp.model_dump(mode="json")["loss"]) == dumped
    python = {h: {k: t.model_dump() for k, t in s.items()} for h, s in exp.loss.items()}
    assert python == json.loads(dumped)
    assert validate_experiment(exp.model_dump(mode="json")) == exp


def test_yaml_round_trip_keeps_specs_equal(tmp_path):
    raw = {"loss": {h: t for raw, _ in DUMPS for h, t in raw.items() if h == "decode"}}
    raw["loss"]["decode"]["ce"] = {"weight": {"schedule": "warmup", "value": 1, "warmup": 0.2}}
    exp = validate_experiment(raw)
    path = tmp_path / "best.yaml"
    path.write_text(dump_experiment(exp))
    assert load_experiment(path) == exp
    assert yaml.safe_load(path.read_text())["loss"]["decode"]["ce"]["weight"]["start"] == 0.0


def test_a_spec_holds_models_and_reads_like_its_mapping():
    spec = validate_loss({"aux": {"ce": {"weight": {"schedule": "linear", "start": 1, "end": 0}}}})
    term = spec["aux"]["ce"]
    assert isinstance(term, TermSpec) and term.weight == Linear(start=1.0, end=0.0)
    assert term.name("ce") == "ce" and term.options == {}
    assert term["weight"] == {"start": 1.0, "end": 0.0, "schedule": "linear"}
    assert {**term, "weight": 0.5} == {"weight": 0.5}  # as search's preflight builds it
    assert validate_loss({"aux": {"ce": {**term, "weight": 0.5}}})["aux"]["ce"].weight == 0.5


def test_switched_off_terms_are_left_out():
    assert validate_loss({"decode": {"ce": None}, "aux": {}}) == {"decode": {}, "aux": {}}


def test_a_validated_spec_passes_through():
    spec = validate_loss({"decode": {"focal": {"gamma": 1}}})
    assert validate_loss(spec)["decode"]["focal"] is spec["decode"]["focal"]


@pytest.mark.parametrize(
    "raw,message",
    [
        ([], "loss must map head names to terms"),
        ({"decode": {"ce": 3}}, "loss.decode.ce: expected a mapping of term options, got 3"),
        ({"decode": {"focal": {"gamma": -1}}}, "loss.decode.focal.gamma: Input should be greater"),
        (
            {"decode": {"ce": {"class_weights": "inv"}}},
            "loss.decode.ce.class_weights: Input should be 'inverse', 'sqrt_inverse' or",
        ),
        (
            {"decode": {"ce": {"weight": {"schedule": "exp", "start": 0, "end": 1}}}},
            "loss.decode.ce.weight.exp.start: Input should be greater than 0",
        ),
        ({"decode": {"tversky": {"alpha": 0, "beta": 0}}}, "loss.decode.tversky: alpha and beta"),
    ],
)
def test_errors_are_one_line_naming_the_field(raw, message):
    with pytest.raises(ValueError) as info:
        validate_loss(raw)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
