"""Schedule-aware ASHA: a trial is judged only at a rung its weight schedules have played."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tune_losses.tiny import tiny_experiment
from tune_losses.tune.rungs import ScheduleAwareASHA, first_judged_epoch

EPOCHS = 8
CONSTANT = {"decode": {"ce": {"weight": 1.0}}}
# Lovasz switched on at 70 % of 8 epochs: progress 0.7 lies in epoch 6 ([0.625, 0.75)), so
# epoch 7 is the first trained wholly with it on
LATE = {
    "decode": {
        "ce": {"weight": 1.0},
        "lovasz": {"weight": {"schedule": "step", "values": [0.0, 0.5], "milestones": [0.7]}},
    }
}
# a warm-up over the first quarter: epoch 3 ([0.25, 0.375)) is the first wholly warm one
WARM = {"decode": {"ce": {"weight": {"schedule": "warmup", "value": 1.0, "warmup": 0.25}}}}


def trial(name: str, loss: dict[str, Any]) -> Any:
    raw = tiny_experiment(train={"epochs": EPOCHS, "lr": 0.01}, loss=loss)
    return SimpleNamespace(trial_id=name, config={"experiment": raw})


def scheduler(cls: type[ASHAScheduler] = ScheduleAwareASHA) -> ASHAScheduler:
    return cls(
        time_attr="training_iteration",
        metric="val",
        mode="max",
        max_t=EPOCHS,
        grace_period=1,
        reduction_factor=2,
    )


def report(sched: ASHAScheduler, t: Any, epoch: int, value: float) -> str:
    return sched.on_trial_result(None, t, {"training_iteration": epoch, "val": value})


def recorded(sched: ASHAScheduler) -> dict[int, dict[str, float]]:
    return {int(m): dict(r) for m, r in sched._brackets[0]._rungs}


def test_first_judged_epoch_by_hand() -> None:
    assert first_judged_epoch(trial("a", CONSTANT).config) == 0
    assert first_judged_epoch(trial("b", LATE).config) == 7
    assert first_judged_epoch(trial("c", WARM).config) == 3


def test_a_late_switch_on_is_never_judged_before_it_played() -> None:
    """Plain ASHA stops the late switch-on at rung 1 (its weight never applied); the
    schedule-aware one lets it run: no rung from 7 on lies below the last epoch."""
    for cls, expected in ((ASHAScheduler, TrialScheduler.STOP), (ScheduleAwareASHA, None)):
        sched = scheduler(cls)
        good, late = trial("good", CONSTANT), trial("late", LATE)
        for t in (good, late):
            sched.on_trial_add(None, t)
        assert report(sched, good, 1, 0.9) == TrialScheduler.CONTINUE
        decisions = [report(sched, late, epoch, 0.1) for epoch in range(1, EPOCHS)]
        if expected == TrialScheduler.STOP:
            assert decisions[0] == TrialScheduler.STOP
        else:
            assert decisions == [TrialScheduler.CONTINUE] * (EPOCHS - 1)
            assert "late" not in recorded(sched)[1] and "late" not in recorded(sched)[4]
            # the last epoch ends it, as for every trial
            assert report(sched, late, EPOCHS, 0.1) == TrialScheduler.STOP


def test_a_warm_up_is_judged_at_the_first_rung_after_it_against_that_rung() -> None:
    sched = scheduler()
    good, warm = trial("good", CONSTANT), trial("warm", WARM)
    for t in (good, warm):
        sched.on_trial_add(None, t)
    for epoch, value in ((1, 0.5), (2, 0.6), (4, 0.8)):
        assert report(sched, good, epoch, value) == TrialScheduler.CONTINUE
    # epochs 1-3 pass rungs 1 and 2 unjudged, however bad
    assert [report(sched, warm, e, 0.01) for e in (1, 2, 3)] == [TrialScheduler.CONTINUE] * 3
    # epoch 4: judged at rung 4 against good's epoch-4 value (0.8), not rung 2's 0.6
    assert report(sched, warm, 4, 0.7) == TrialScheduler.STOP
    assert recorded(sched)[4] == {"good": pytest.approx(0.8), "warm": pytest.approx(0.7)}
    assert "warm" not in recorded(sched)[2] and "warm" not in recorded(sched)[1]


def test_a_trial_ended_before_its_rung_records_no_rung() -> None:
    sched = scheduler()
    late = trial("late", LATE)
    sched.on_trial_add(None, late)
    report(sched, late, 3, 0.2)
    sched.on_trial_complete(None, late, {"training_iteration": 3, "val": 0.2})
    assert all(not r for r in recorded(sched).values())


def test_a_repeat_at_another_seed_is_never_judged() -> None:
    for aware in (True, False):
        sched = ScheduleAwareASHA(
            schedule_aware=aware, time_attr="training_iteration", metric="val", mode="max",
            max_t=EPOCHS, grace_period=1, reduction_factor=2,
        )  # fmt: skip
        good, repeat = trial("good", CONSTANT), trial("repeat", CONSTANT)
        repeat.config["repeat_of"] = "good"
        for t in (good, repeat):
            sched.on_trial_add(None, t)
        report(sched, good, 1, 0.9)
        assert [report(sched, repeat, e, 0.1) for e in range(1, EPOCHS)] == ["CONTINUE"] * 7
        # plain ASHA (schedule_aware=False) judges the late switch-on at rung 1 again
        late = trial("late", LATE)
        sched.on_trial_add(None, late)
        expected = TrialScheduler.CONTINUE if aware else TrialScheduler.STOP
        assert report(sched, late, 1, 0.1) == expected
