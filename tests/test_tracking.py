"""tune_losses.tracking against a sqlite MLflow store: the layout written, then read back."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import sqlite_store
from tune_losses import tracking
from tune_losses.tiny import tiny_experiment
from tune_losses.tracking import (
    LEADERBOARD_COLUMNS,
    SearchTracker,
    find_parent,
    leaderboard_csv,
    leaderboard_rows,
    load_trials,
    pareto_front,
    stop_reason,
)


def _trial_config(dice: float) -> dict:
    exp = tiny_experiment()
    exp["loss"]["decode"]["dice"] = {"weight": dice}
    return {"loss.decode.dice.weight": dice, "experiment": exp}


def _result(epoch: int, miou: float, best: float) -> dict:
    return {"epoch": epoch, "val/mIoU": miou, "best_val_mIoU": best, "training_iteration": epoch}


@pytest.fixture
def search(tmp_path: Path) -> SearchTracker:
    space = tmp_path / "space.yaml"
    space.write_text("loss: {}\n")
    tracker = SearchTracker(sqlite_store(tmp_path / "m.db"), "e")
    tracker.start("search-1", {"search.num_samples": 3}, space)
    return tracker


def _run_trial(tracker: SearchTracker, trial_id: str, curve: list[float], max_epochs: int) -> None:
    tracker.trial_started(trial_id, f"train_{trial_id}", _trial_config(0.1 * len(curve)))
    best = -math.inf
    for epoch, value in enumerate(curve, 1):
        best = max(best, value)
        tracker.trial_result(trial_id, _result(epoch, value, best), epoch)
    last = _result(len(curve), curve[-1], best)
    tracker.trial_ended(
        trial_id, failed=False, last_result=last, max_epochs=max_epochs, summary=None
    )


def test_search_layout_reads_back_best_first(search: SearchTracker) -> None:
    _run_trial(search, "a", [10.0, 20.0, 15.0], max_epochs=3)
    _run_trial(search, "b", [30.0], max_epochs=3)
    _run_trial(search, "c", [5.0, 6.0, 7.0], max_epochs=3)
    client = search.client
    parent = find_parent(client, "e")
    assert parent.info.run_id == search.parent_id
    trials = load_trials(client, parent)
    assert [t.trial_id for t in trials] == ["b", "a", "c"]
    assert [t.best for t in trials] == [30.0, 20.0, 7.0]
    assert [t.stop_reason for t in trials] == ["asha", "completed", "completed"]
    assert trials[1].history == [(1, 10.0), (2, 20.0), (3, 15.0)]
    assert trials[0].params["loss.decode.dice.weight"] == "0.1"
    # the resolved config is flattened beside the sampled values
    assert trials[0].params["loss.aux.ce.weight"] == "0.4"

    rows = leaderboard_rows(trials)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert list(rows[0])[: len(LEADERBOARD_COLUMNS)] == list(LEADERBOARD_COLUMNS)
    parsed = list(csv.DictReader(io.StringIO(leaderboard_csv(rows))))
    assert [r["trial"] for r in parsed] == ["train_b", "train_a", "train_c"]
    assert parsed[0]["loss.decode.dice.weight"] == "0.1"


def test_reopen_pages_through_every_child(search: SearchTracker, monkeypatch) -> None:
    """A search with more children than one page of ``search_runs`` (1000) keeps them all:
    shown here with a page of 2 runs."""
    for trial_id in "abcde":
        search.trial_started(trial_id, trial_id, _trial_config(0.5))
    monkeypatch.setattr(tracking.readers, "_PAGE", 2)
    again = SearchTracker(search.uri, search.experiment)
    again.reopen(search.parent_id)
    assert sorted(again.children) == list("abcde")
    assert len(again.open_children()) == 5
    again.abort("KILLED")
    assert again.open_children() == []
    client = MlflowClient(search.uri)
    assert client.get_run(search.parent_id).info.status == "KILLED"


def test_stop_reason() -> None:
    assert stop_reason({"epoch": 2}, 4, failed=True) == "error"
    assert stop_reason({"epoch": 2, "early_stopped": 1.0}, 4, failed=False) == "early_stopping"
    assert stop_reason({"epoch": 4}, 4, failed=False) == "completed"
    assert stop_reason({"epoch": 2}, 4, failed=False) == "asha"
    # patience that runs out at the last scheduled epoch stopped nothing: the run completed
    last = {"epoch": 4, "epochs_max": 4, "early_stopped": 1.0}
    assert stop_reason(last, 4, failed=False) == "completed"


def test_pareto_front_per_mode() -> None:
    points = {"a": (50.0, 10.0), "b": (40.0, 20.0), "c": (45.0, 9.0), "d": (50.0, 10.0)}
    assert pareto_front(points, ["max", "max"]) == {"a", "b", "d"}  # c is dominated by a
    assert pareto_front(points, ["max", "min"]) == {"a", "c", "d"}  # b: lower and higher
    assert pareto_front({}, ["max", "max"]) == set()


def test_trial_run_name_shows_the_number_and_chosen_options() -> None:
    config = {
        "loss.decode.dice.weight": 0.3,
        "loss.aux.extra.choice": "lovasz",
        "loss.aux.ce.weight.choice": "decay",
        "loss.aux.ce.weight.start": 0.8,
        "experiment": {"loss.x.choice": "not sampled"},
    }
    assert tracking.trial_run_name(3, config) == "t03 lovasz+decay"
    off = {"loss.aux.extra.choice": "none", "loss.a.grid": "ce"}
    assert tracking.trial_run_name(12, off) == "t12 ce"
    assert tracking.trial_run_name(104, {"loss.w": 0.1}) == "t104"


def test_parent_tells_the_story(search: SearchTracker) -> None:
    _run_trial(search, "a", [10.0, 20.0, 15.0], max_epochs=3)
    _run_trial(search, "b", [30.0], max_epochs=3)  # stopped by ASHA after one epoch
    search.trial_started("c", "t03", _trial_config(0.7))
    search.trial_ended("c", failed=True, last_result={"epoch": 1}, max_epochs=3, summary=None)
    trials = load_trials(search.client, find_parent(search.client, "e"))
    assert tracking.trial_counts(trials) == {
        "trials_completed": 1.0,
        "trials_pruned": 1.0,
        "trials_failed": 1.0,
        "epochs_spent": 5.0,
    }
    search.tell_story(trials, reproduce="python -m tune_losses.search --space s.yaml", retrain="R")
    search.log_environment({"torch": "9.9"}, {tracking.GIT_COMMIT_TAG: "abc"})
    parent = search.client.get_run(search.parent_id)
    note = parent.data.tags[tracking.NOTE_TAG]
    best = trials[0]
    assert best.trial_id == "b"
    link = f"#/experiments/{search.experiment_id}/runs/{best.run_id}"
    assert f"**Best trial: [train_b]({link})**" in note
    assert note.index("train_b") < note.index("train_a") < note.index("t03")
    assert "| 1 | [train_b]" in note and "| asha | 1 |" in note and "| error: " in note
    assert "python -m tune_losses.search --space s.yaml" in note and "```bash\nR\n```" in note
    assert parent.data.metrics["trials_failed"] == 1.0 and parent.data.metrics["epochs_spent"] == 5
    assert parent.data.tags["version.torch"] == "9.9"
    assert parent.data.tags["mlflow.source.git.commit"] == "abc"


def test_environment_tags_name_real_versions_and_the_checkout() -> None:
    versions = tracking.package_versions()
    assert set(versions) == set(tracking.VERSIONED_PACKAGES)
    assert versions["mlflow"][0].isdigit() and versions["ray"][0].isdigit()
    if (Path(tracking.__file__).parents[2] / ".git").exists():  # run from a checkout
        assert len(tracking.git_tags()[tracking.GIT_COMMIT_TAG]) == 40
    assert tracking.git_tags(Path("/")) == {}


def test_a_rerun_epoch_is_not_logged_twice(search: SearchTracker) -> None:
    """A resumed trial reruns the epochs after its last kept checkpoint: each step keeps
    one value, the first, in this driver and in a new one that adopts the child."""
    search.trial_started("a", "train_a", _trial_config(0.5))
    for epoch, value in ((1, 10.0), (2, 20.0), (3, 30.0)):
        search.trial_result("a", _result(epoch, value, value), epoch)
    search.trial_result("a", _result(3, 99.0, 99.0), 3)  # retried in this driver
    again = SearchTracker(search.uri, search.experiment)
    again.reopen(search.parent_id)  # the driver was killed; --resume adopts the child
    for epoch, value in ((2, 21.0), (3, 31.0), (4, 40.0)):
        again.trial_result("a", _result(epoch, value, value), epoch)
    run_id = again.children["a"]
    for key in ("val/mIoU", "epoch", "best_val_mIoU"):
        steps = [m.step for m in again.client.get_metric_history(run_id, key)]
        assert steps == [1, 2, 3, 4], (key, steps)
    values = [m.value for m in again.client.get_metric_history(run_id, "val/mIoU")]
    assert values == [10.0, 20.0, 30.0, 40.0]


def test_an_adopted_child_gets_its_missing_params(search: SearchTracker) -> None:
    """A child created but killed before (all) its params were logged gets them on resume;
    a param already logged is not written again (MLflow refuses another value)."""
    config = _trial_config(0.5)
    run = search.client.create_run(
        search.experiment_id,
        tags={tracking.PARENT_TAG: search.parent_id, tracking.TRIAL_TAG: "a"},
    )
    search.client.log_param(run.info.run_id, "loss.decode.dice.weight", "0.5")
    again = SearchTracker(search.uri, search.experiment)
    again.reopen(search.parent_id)
    again.trial_started("a", "train_a", config)
    params = again.client.get_run(run.info.run_id).data.params
    assert params == {k: str(v) for k, v in tracking.trial_params(config).items()}
    arts = [a.path for a in again.client.list_artifacts(run.info.run_id)]
    assert arts == [tracking.TRIAL_CONFIG]
    again.trial_started("a", "train_a", config)  # nothing missing: nothing logged
    assert again.client.get_run(run.info.run_id).data.params == params


def test_placement_and_failure_reason_tags(search: SearchTracker) -> None:
    search.trial_started("a", "train_a", _trial_config(0.5))
    search.trial_placed("a", node_ip="10.0.0.2", hostname="gpu-7", device="cuda:0 (NVIDIA H100)")
    search.trial_result("a", _result(1, 10.0, 10.0), 1)
    error = (
        "Failure # 1 (occurred at 2025-01-01)\nray::train_trial() (pid=1, ip=10.0.0.2)\n"
        '  File "trainable.py", line 9, in _epochs\n'
        "tune_losses.tune.trainable.TrialFailed: non-finite loss at epoch 2\n"
    )
    search.trial_ended(
        "a",
        failed=True,
        last_result=_result(1, 10.0, 10.0),
        max_epochs=3,
        summary=None,
        error=error,
    )
    run = search.client.get_run(search.children["a"])
    tags = run.data.tags
    assert (tags["node_ip"], tags["hostname"]) == ("10.0.0.2", "gpu-7")
    assert tags["device"] == "cuda:0 (NVIDIA H100)"
    assert tags["error_reason"] == "non-finite loss at epoch 2"
    assert run.info.status == "FAILED"
    (trial,) = load_trials(search.client, search.client.get_run(search.parent_id))
    assert trial.stop_reason == "error: non-finite loss at epoch 2"
    assert leaderboard_rows([trial])[0]["status"] == "FAILED"
    assert tracking.failure_reasons(search.client, search.experiment_id, search.parent_id) == [
        "non-finite loss at epoch 2"
    ]


def test_error_reason_of_any_error() -> None:
    assert tracking.error_reason("Traceback:\n  x\nRuntimeError: boom from a user loss\n") == (
        "RuntimeError: boom from a user loss"
    )
    assert tracking.error_reason(None) == "unknown error"


def test_a_search_on_another_metric_names_its_best_by_it(tmp_path: Path) -> None:
    """``search.metric: train/loss`` (mode min): the leaderboard, the story and the
    terminal table name the value they rank by after that metric, not ``best_val_mIoU``."""
    from tune_losses.report import print_leaderboard

    space = tmp_path / "space.yaml"
    space.write_text("loss: {}\n")
    tracker = SearchTracker(sqlite_store(tmp_path / "m.db"), "e")
    tracker.start("search-1", {"search.metric": "train/loss", "search.mode": "min"}, space)
    for trial_id, losses, mious in (
        ("a", [0.9, 0.4375, 0.6], [10.0, 12.0, 40.0]),
        ("b", [0.7], [50.0]),
    ):
        tracker.trial_started(trial_id, f"train_{trial_id}", _trial_config(0.1 * len(losses)))
        for epoch, (loss, miou) in enumerate(zip(losses, mious, strict=True), 1):
            result = _result(epoch, miou, max(mious[:epoch]))
            result.update({"train/loss": loss, "best_train_loss": min(losses[:epoch])})
            tracker.trial_result(trial_id, result, epoch)
        tracker.trial_ended(trial_id, failed=False, last_result=result, max_epochs=3, summary=None)
    trials = load_trials(tracker.client, find_parent(tracker.client, "e"))
    assert [(t.trial_id, t.best) for t in trials] == [("a", 0.4375), ("b", 0.7)]

    (row, _) = leaderboard_rows(trials)
    assert row["best_train_loss"] == 0.4375 and "best_val_mIoU" not in row
    header = leaderboard_csv(leaderboard_rows(trials)).splitlines()[0].split(",")
    assert header[: len(LEADERBOARD_COLUMNS)] == [*LEADERBOARD_COLUMNS[:-1], "best_train_loss"]

    tracker.tell_story(trials, reproduce="python -m tune_losses.search", retrain="R")
    note = tracker.client.get_run(tracker.parent_id).data.tags[tracking.NOTE_TAG]
    assert "best_train_loss **0.4375**" in note and "| # | trial | best_train_loss |" in note
    assert "mIoU" not in note

    buffer = io.StringIO()
    print_leaderboard(trials, "Leaderboard", file=buffer)
    table = buffer.getvalue()
    assert "best train/loss" in table and "0.4375" in table and "mIoU" not in table
