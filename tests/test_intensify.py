"""The Intensifier: repeats for contenders, no duplicate retrained, the start-up gate,
read back from the Optuna study it tells."""

from __future__ import annotations

import math
from typing import Any

import optuna
from ray.tune.search import Searcher

from tune_losses.space import SearchSpace
from tune_losses.tiny import tiny_experiment
from tune_losses.tune.intensify import DUPLICATE_ATTR, REPEAT_KEY, Intensifier
from tune_losses.tune.searcher import TellingOptunaSearch
from tune_losses.tune.trainable import EXPERIMENT_KEY

METRIC = "best_val_mIoU"
EPOCHS = 2


def searcher(weights: list[float], *, repeats: int, configs: int, startup: int = 0) -> Intensifier:
    """An Intensifier over a one-marker space (the Dice weight, a choice of ``weights``),
    around the real Optuna searcher with a seeded random sampler."""
    raw = tiny_experiment(train={"epochs": EPOCHS, "lr": 0.01, "seed": 7})
    raw["loss"] = {"decode": {"ce": {"weight": 1.0}, "dice": {"weight": {"choice": weights}}}}
    space = SearchSpace(raw)
    inner = TellingOptunaSearch(
        space=space.define_by_run(),
        metric=METRIC,
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    return Intensifier(inner, configs=configs, repeats=repeats, startup=startup)


def weight(config: dict[str, Any]) -> float:
    return config[EXPERIMENT_KEY]["loss"]["decode"]["dice"]["weight"]


def seed(config: dict[str, Any]) -> int:
    return config[EXPERIMENT_KEY]["train"]["seed"]


def run(s: Intensifier, trial_id: str, config: dict[str, Any], value: float) -> None:
    """Report every epoch of a whole run (its best value ``value``) and end it."""
    for epoch in range(1, EPOCHS + 1):
        result = {"epoch": epoch, "epochs_max": EPOCHS, "training_iteration": epoch}
        result[METRIC] = value - (EPOCHS - epoch)
        s.on_trial_result(trial_id, result)
    s.on_trial_complete(trial_id, result)


def study(s: Intensifier) -> optuna.Study:
    return s.searcher._ot_study


def test_a_contender_is_repeated_and_optuna_holds_its_seed_mean() -> None:
    s = searcher([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], repeats=3, configs=2)
    first = s.suggest("a")
    run(s, "a", first, 50.0)  # the first configuration is the best so far: a contender
    assert study(s).trials[0].state == optuna.trial.TrialState.RUNNING  # not told yet
    repeats = [s.suggest("a1"), s.suggest("a2")]
    assert [seed(c) for c in repeats] == [8, 9] and all(c[REPEAT_KEY] == "a" for c in repeats)
    assert {weight(c) for c in repeats} == {weight(first)}
    run(s, "a1", repeats[0], 44.0)
    run(s, "a2", repeats[1], 47.0)
    told = study(s).trials[0]
    assert told.state == optuna.trial.TrialState.COMPLETE
    assert told.value == (50.0 + 44.0 + 47.0) / 3 and s.seed_values("a") == [50.0, 44.0, 47.0]
    # a second configuration below the incumbent's mean (47) is told at once, no repeat
    second = s.suggest("b")
    run(s, "b", second, 46.0)
    assert study(s).trials[1].value == 46.0 and study(s).trials[1].state.is_finished()
    assert s.suggest("c") == Searcher.FINISHED  # two configurations: the budget


def test_a_duplicate_is_told_the_stored_outcome_and_never_trained() -> None:
    s = searcher([0.25, 0.75], repeats=1, configs=5)
    trained = {}
    for name in "abcde":
        config = s.suggest(name)
        if config in (None, Searcher.FINISHED):
            break
        assert weight(config) not in trained  # never the same configuration twice
        trained[weight(config)] = name
        run(s, name, config, 40.0 + 10 * weight(config))
    assert sorted(trained) == [0.25, 0.75]
    assert config == Searcher.FINISHED  # the two points are all the space has
    trials = study(s).trials
    duplicates = [t for t in trials if DUPLICATE_ATTR in t.user_attrs]
    assert s.duplicates == len(duplicates) >= 1
    for t in duplicates:  # each told what its first run was told, epochs included
        original = next(o for o in trials if o.params == t.params and o not in duplicates)
        assert t.state == original.state and t.value == original.value
        assert t.intermediate_values == original.intermediate_values


def test_no_more_random_start_up_trials_than_asked_while_they_run() -> None:
    s = searcher([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], repeats=1, configs=6, startup=2)
    a, b = s.suggest("a"), s.suggest("b")
    assert a is not None and b is not None
    assert s.suggest("c") is None  # both start-up trials still running: wait
    run(s, "a", a, 40.0)
    assert s.suggest("c") is None
    run(s, "b", b, 41.0)
    assert s.suggest("c") not in (None, Searcher.FINISHED)


def test_a_pruned_first_run_is_not_a_contender() -> None:
    s = searcher([0.1, 0.2, 0.3], repeats=3, configs=2)
    a = s.suggest("a")
    result = {"epoch": 1, "epochs_max": EPOCHS, "training_iteration": 1, METRIC: 60.0}
    s.on_trial_result("a", result)
    s.on_trial_complete("a", result)  # stopped by ASHA after epoch 1
    assert a is not None and study(s).trials[0].state == optuna.trial.TrialState.PRUNED
    nxt = s.suggest("b")
    assert nxt is not None and REPEAT_KEY not in nxt and not math.isnan(weight(nxt))
