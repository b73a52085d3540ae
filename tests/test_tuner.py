"""The sampler and scheduler a search is built with (``tune.searcher``, ``tune.schedulers``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from tune_losses.space import SearchSpace
from tune_losses.tune.searcher import make_sampler

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


GRID4 = {"loss": {"decode": {"ce": {"weight": {"grid": [0.1, 0.2, 0.3, 0.4]}}}}}
CE = "loss.decode.ce.weight.grid"  # grid options are stored as their text


def _searcher(space: SearchSpace, url: str) -> Any:
    from tune_losses.tune.searcher import TellingOptunaSearch

    return TellingOptunaSearch(
        space=space.define_by_run(),
        metric="best_val_mIoU",
        mode="max",
        sampler=make_sampler(space),
        storage=optuna.storages.RDBStorage(url),
        study_name="s",
    )


def _result(epoch: int) -> dict[str, Any]:
    return {"best_val_mIoU": 0.1 * epoch, "training_iteration": epoch, "epoch": epoch}


def test_a_restored_searcher_tells_nothing_twice_and_replays_unsaved_trials(
    tmp_path: Path,
) -> None:
    """Ray's snapshot of the searcher is older than the study: after a restore, a trial
    Optuna has finished is not told again (and says where it ended), and the trial started
    after the snapshot is replayed by the next new Ray trial (same grid point)."""
    space = SearchSpace({**GRID4, "search": {"seed": 0}})
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = _searcher(space, url)
    first.suggest("a")
    first.suggest("b")
    first.save(str(tmp_path / "snapshot.pkl"))  # Ray's last snapshot
    first.on_trial_result("a", _result(1))
    first.on_trial_complete("a", {**_result(2), "epochs_max": 4})  # ASHA stopped it
    unsaved = first.suggest("c")

    restored = _searcher(space, url)
    restored.restore(str(tmp_path / "snapshot.pkl"))
    assert restored.finished_at("a") == 2 and restored.finished_at("b") is None
    restored.on_trial_result("a", _result(1))  # the rerun reports again: ignored
    restored.on_trial_complete("a", {**_result(2), "epochs_max": 4})
    assert restored.suggest("d") == unsaved  # the unsaved trial's point, replayed
    restored.suggest("e")
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    assert [t.state.name for t in trials] == ["PRUNED", "RUNNING", "RUNNING", "RUNNING"]
    assert sorted(t.system_attrs["grid_id"] for t in trials) == [0, 1, 2, 3]
    assert sorted(float(t.params[CE]) for t in trials) == [0.1, 0.2, 0.3, 0.4]
