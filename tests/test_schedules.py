"""Loss-weight schedules: values at progress 0, 0.5 and 1, clamping, repr, pickling, validation."""

from __future__ import annotations

import math
import pickle

import pytest
from pydantic import TypeAdapter, ValidationError

from tune_losses.schedules import (
    SCHEDULES,
    Constant,
    Linear,
    Schedule,
    Weight,
    build_schedule,
    played_epoch,
)

CASES = [
    (0.7, (0.7, 0.7, 0.7)),
    ({"schedule": "constant", "value": 0.3}, (0.3, 0.3, 0.3)),
    ({"schedule": "linear", "start": 0.5, "end": 0.1}, (0.5, 0.3, 0.1)),
    ({"schedule": "cosine", "start": 1.0, "end": 0.0}, (1.0, 0.5, 0.0)),
    ({"schedule": "exp", "start": 1.0, "end": 0.01}, (1.0, 0.1, 0.01)),
    ({"schedule": "step", "values": [0.0, 0.2], "milestones": [0.7]}, (0.0, 0.0, 0.2)),
    ({"schedule": "step", "values": [1.0, 2.0, 3.0], "milestones": [0.5, 0.9]}, (1.0, 2.0, 3.0)),
    ({"schedule": "warmup", "value": 1.0, "warmup": 0.2}, (0.0, 1.0, 1.0)),
    ({"schedule": "warmup", "value": 1.0, "warmup": 1.0, "start": 0.5}, (0.5, 0.75, 1.0)),
]


@pytest.mark.parametrize("spec,values", CASES, ids=lambda c: str(c)[:40])
def test_values_at_0_half_1(spec, values):
    schedule = build_schedule(spec)
    got = [schedule(p) for p in (0.0, 0.5, 1.0)]
    assert got == pytest.approx(list(values), rel=1e-12, abs=1e-12)
    assert all(isinstance(v, float) for v in got)


def test_every_schedule_is_covered():
    covered = {c[0]["schedule"] for c in CASES if isinstance(c[0], dict)}
    assert covered == set(SCHEDULES)


def test_progress_is_clamped():
    schedule = build_schedule({"schedule": "linear", "start": 0.0, "end": 2.0})
    assert schedule(-1.0) == 0.0 and schedule(3.0) == 2.0
    assert schedule(0.25) == 0.5


def test_cosine_is_a_half_cosine():
    schedule = build_schedule({"schedule": "cosine", "start": 0.0, "end": 1.0})
    assert schedule(0.25) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)


def test_step_switches_at_the_milestone():
    schedule = build_schedule({"schedule": "step", "values": [0.0, 0.2], "milestones": [0.7]})
    assert schedule(0.6999) == 0.0 and schedule(0.7) == 0.2


def test_repr_is_readable():
    assert repr(build_schedule(1)) == "Constant(value=1.0)"
    text = repr(build_schedule({"schedule": "warmup", "value": 1.0, "warmup": 0.1}))
    assert text == "Warmup(value=1.0, warmup=0.1, start=0.0)"
    assert repr(Linear(start=0.5, end=0.1)) == "Linear(start=0.5, end=0.1)"


def test_a_schedule_passes_through_and_pickles():
    schedule = Constant(value=2.0)
    assert build_schedule(schedule) is schedule and isinstance(schedule, Schedule)
    step = build_schedule({"schedule": "step", "values": [0.0, 0.2], "milestones": [0.7]})
    assert pickle.loads(pickle.dumps(step)) == step


def test_a_weight_dumps_as_written():
    # the dump is what MLflow params and best_config.yaml show: keep it stable
    weight = TypeAdapter(Weight)
    assert weight.dump_python(weight.validate_python(1), mode="json") == 1.0
    linear = weight.validate_python({"schedule": "linear", "start": 0.5, "end": 0.1})
    assert list(weight.dump_python(linear, mode="json").items()) == [
        ("start", 0.5),
        ("end", 0.1),
        ("schedule", "linear"),
    ]
    warmup = weight.validate_python({"schedule": "warmup", "value": 1, "warmup": 0.2})
    assert weight.dump_python(warmup, mode="json") == {
        "schedule": "warmup",
        "value": 1.0,
        "warmup": 0.2,
        "start": 0.0,
    }


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"schedule": "sawtooth"}, "does not match any of the expected tags"),
        ({"schedule": "linear", "start": 1.0}, "end\n  Field required"),
        ({"schedule": "linear", "start": -1.0, "end": 0.0}, "greater than or equal to 0"),
        ({"schedule": "exp", "start": 0.0, "end": 1.0}, "greater than 0"),
        ({"schedule": "step", "values": [1.0], "milestones": [0.5]}, r"len\(values\) =="),
        ({"schedule": "step", "values": [1, 2, 3], "milestones": [0.5, 0.5]}, "strictly"),
        ({"schedule": "step", "values": [1, 2], "milestones": [1.0]}, r"inside \(0, 1\)"),
        ({"schedule": "step", "values": []}, "at least 1 item"),
        ({"schedule": "warmup", "value": 1.0, "warmup": 0.0}, "greater than 0"),
        ({"schedule": "constant", "value": 1.0, "end": 2.0}, "Extra inputs"),
        ({"start": 1.0}, "Unable to extract tag using discriminator 'schedule'"),
        (True, "valid number"),
        ("0.5", "valid number"),
        (-1.0, "greater than or equal to 0"),
    ],
)
def test_bad_weights_raise(spec, match):
    with pytest.raises(ValidationError, match=match):
        build_schedule(spec)
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        TypeAdapter(Weight).validate_python(spec)


@pytest.mark.parametrize(
    "weight,settles",
    [
        (0.7, 0.0),
        ({"schedule": "linear", "start": 0.5, "end": 0.1}, 0.0),  # a ramp runs from step 1
        ({"schedule": "step", "values": [0.0, 0.2], "milestones": [0.7]}, 0.7),
        ({"schedule": "step", "values": [1.0, 2.0, 2.0], "milestones": [0.4, 0.9]}, 0.4),
        ({"schedule": "step", "values": [1.0, 1.0], "milestones": [0.5]}, 0.0),
        ({"schedule": "warmup", "value": 1.0, "warmup": 0.25}, 0.25),
        ({"schedule": "warmup", "value": 1.0, "warmup": 0.25, "start": 1.0}, 0.0),
    ],
)
def test_settles_at_the_last_change(weight, settles):
    assert build_schedule(weight).settles_at() == settles


def test_played_epoch_is_the_first_epoch_wholly_past_the_point():
    # epoch e of 8 covers progress [(e - 1) / 8, e / 8)
    assert played_epoch(0.0, 8) == 0
    assert played_epoch(0.7, 8) == 7  # 0.7 lies in epoch 6 = [0.625, 0.75)
    assert played_epoch(0.75, 8) == 7  # epoch 7 starts at 0.75
    assert played_epoch(0.625, 8) == 6
    assert played_epoch(0.95, 8) == 8  # never later than the last epoch
    assert played_epoch(0.1, 4) == 2
