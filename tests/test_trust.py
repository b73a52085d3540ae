"""What a search can trust: rank lines of rungs, the seed-noise ceiling, option importances."""

from __future__ import annotations

import math

import pytest

from tune_losses.report import measure_trust, param_importances, spearman
from tune_losses.report.trust import rungs_of
from tune_losses.tracking import REPEAT_TAG, TrialRecord


def run(name: str, curve: list[float], stop: str = "completed", **tags: str) -> TrialRecord:
    history = [(e, v) for e, v in enumerate(curve, 1)]
    return TrialRecord(
        f"r-{name}", name, "FINISHED", stop, str(len(curve)), max(curve), {}, history,
        trial_id=name, tags=dict(tags),
    )  # fmt: skip


def test_spearman_by_hand() -> None:
    # ranks 1 2 3 4 against 1 3 2 4: rho = 1 - 6 * (0 + 1 + 1 + 0) / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2], [2, 1])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_rank_lines_the_noise_ceiling_and_the_trusted_rung() -> None:
    """Four configurations over 4 epochs; rung 1 swaps b and c (0.8), rung 2 ranks like the
    end (1.0). Three are repeated at another seed; their second seeds order a, c, b against
    the first seeds' a, b, c: rho = 1 - 6 * (0 + 1 + 1) / (3 * 8) = 0.5."""
    trials = [
        run("a", [10, 20, 30, 40]),
        run("b", [30, 40, 50, 60]),
        run("c", [20, 45, 55, 70]),
        run("d", [40, 60, 70, 80]),
        run("x", [5, 6], stop="asha"),  # pruned: not a full-budget configuration
        run("a2", [1, 2, 3, 41], **{REPEAT_TAG: "a"}),
        run("b2", [1, 2, 3, 75], **{REPEAT_TAG: "b"}),
        run("c2", [1, 2, 3, 65], **{REPEAT_TAG: "c"}),
    ]
    trust = measure_trust(trials, rungs=[1, 2, 4])
    assert trust.full_budget == 4
    assert trust.lines == {1: (pytest.approx(0.8), 4), 2: (pytest.approx(1.0), 4)}
    assert trust.ceiling == (pytest.approx(0.5), 3)
    assert trust.trusted == 1  # the lowest rung at or above the ceiling
    assert trust.seeds == {"a": [40, 41], "b": [60, 75], "c": [70, 65]}
    assert trust.sentence() == (
        "rung 1 ranks like the full budget at 0.80 over 4 configurations; rung 2 ranks like "
        "the full budget at 1.00 over 4 configurations; two seeds of the full budget agree "
        "at 0.50 over 3"
    )
    # without repeats, 0.7 stands in for the ceiling; none reached: the full budget
    alone = measure_trust(trials[:4], rungs=[1])
    assert alone.ceiling is None and alone.trusted == 1
    swapped = [run("a", [10, 50]), run("b", [20, 40]), run("c", [30, 35])]  # rung 1: -1
    assert measure_trust(swapped, rungs=[1]).trusted == 2


def test_rungs_from_the_parent_params() -> None:
    params = {"search.grace_period": "1", "search.reduction_factor": "2"}
    assert rungs_of(params, 8) == [1, 2, 4]
    assert rungs_of({"search.grace_period": "2", "search.reduction_factor": "3"}, 12) == [2, 6]


def test_importances_cover_the_weights_inside_each_choice_option() -> None:
    """In the ``decay`` option only ``start`` matters; in ``constant`` the value does. The
    top level cannot use either (each exists in one option only)."""
    choice = "loss.aux.ce.weight.choice"
    trials = []
    for i, start in enumerate((0.3, 0.5, 0.7, 0.9)):
        end = (0.2, 0.05, 0.15, 0.1)[i]
        params = {choice: "decay", "loss.aux.ce.weight.decay.start": str(start)}
        params["loss.aux.ce.weight.decay.end"] = str(end)
        value = 50 + 40 * start
        trials.append(
            TrialRecord(f"d{i}", f"d{i}", "FINISHED", "completed", "1", value, params,
                        [(1, value)])
        )  # fmt: skip
    for i, value in enumerate((0.1, 0.4, 0.8)):
        params = {choice: "constant", "loss.aux.ce.weight.constant": str(value)}
        trials.append(
            TrialRecord(f"c{i}", f"c{i}", "FINISHED", "completed", "1", 60 - 10 * value,
                        params, [(1, 60 - 10 * value)])
        )  # fmt: skip
    imp = param_importances(trials, budget=1)
    assert imp.params == [choice]
    assert "inside" not in imp.skipped and imp.skipped["loss.aux.ce.weight.decay.start"].startswith(
        "conditional"
    )
    decay = imp.options[f"{choice}=decay"]
    assert decay.n_trials == 4
    assert set(decay.values) == {"loss.aux.ce.weight.decay.start", "loss.aux.ce.weight.decay.end"}
    assert decay.values["loss.aux.ce.weight.decay.start"] > 0.5
    constant = imp.options[f"{choice}=constant"]
    assert constant.n_trials == 3 and constant.values == pytest.approx(
        {"loss.aux.ce.weight.constant": 1.0}
    )
    assert "the rung the search trusts" in imp.objective


def test_a_folded_first_run_keeps_its_own_value() -> None:
    """load_trials folds repeats into the first run (``best`` the seed mean, ``seeds`` each
    value): the rank lines and the ceiling still use each run's own value."""
    trials = [run(n, c) for n, c in (("a", [1, 40]), ("b", [2, 60]), ("c", [3, 70]))]
    reps = [run(f"{n}2", [0, v], **{REPEAT_TAG: n}) for n, v in (("a", 41), ("b", 75), ("c", 65))]
    for first, rep in zip(trials, reps, strict=True):
        first.seeds = [first.best, rep.best]
        first.best = (first.best + rep.best) / 2
    trust = measure_trust(trials + reps, rungs=[1])
    assert trust.lines == {1: (pytest.approx(1.0), 3)}
    assert trust.ceiling == (pytest.approx(0.5), 3)
