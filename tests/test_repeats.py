"""A search with repeats, a late switch-on and a small categorical space, read back from
MLflow, the stored Optuna study and the report (issue 18)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from conftest import Searched, runs_of, search_in, write_space
from tune_losses.report import main as report_main
from tune_losses.tune.intensify import DUPLICATE_ATTR

EPOCHS = 4
LATE = {"schedule": "step", "values": [0.0, 0.5], "milestones": [0.5]}
LOSS = {
    "decode": {
        "ce": {"weight": 1.0},
        "extra": {
            "choice": {
                "late": {"term": "lovasz", "weight": LATE},  # switched on at half-time
                "dice": {"term": "dice", "weight": {"choice": [0.2, 0.8]}},
            }
        },
    },
    "aux": {"ce": {"weight": {"choice": [0.2, 0.4]}}},
}


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Searched:
    """6 configurations in the space, 7 asked, repeats 2, ASHA from epoch 1 (rungs 1, 2)."""
    root = tmp_path_factory.mktemp("repeats")
    space = write_space(
        root / "space.yaml",
        train={"epochs": EPOCHS, "lr": 0.005},
        search={
            "num_samples": 7,
            "max_concurrent": 2,
            "grace_period": 1,
            "reduction_factor": 2,
            "repeats": 2,
            "n_startup_trials": 2,
        },
        loss=LOSS,
    )
    return search_in(root, space)


def config_of(child) -> tuple[str, ...]:
    keys = ("loss.decode.extra.choice", "loss.decode.extra.dice.weight.choice")
    return (
        *(child.data.params.get(k, "") for k in keys),
        child.data.params["loss.aux.ce.weight.choice"],
    )


@pytest.mark.slow
def test_the_incumbent_ran_at_two_seeds_and_optuna_holds_its_mean(searched: Searched) -> None:
    client, parents, children = runs_of(searched.uri)
    firsts = [c for c in children if "repeat_of" not in c.data.tags]
    repeats = [c for c in children if "repeat_of" in c.data.tags]
    assert repeats, "no contender was repeated"
    by_trial = {c.data.tags["ray.trial_id"]: c for c in children}
    seeds: dict[str, list[float]] = {c.data.tags["ray.trial_id"]: [] for c in firsts}
    for rep in repeats:
        first = by_trial[rep.data.tags["repeat_of"]]
        assert config_of(rep) == config_of(first)
        assert rep.data.params["train.seed"] == str(int(first.data.params["train.seed"]) + 1)
        seeds[first.data.tags["ray.trial_id"]].append(rep.data.metrics["best_val_mIoU"])
    means = {
        t: statistics.fmean([by_trial[t].data.metrics["best_val_mIoU"], *v]) if v else math.nan
        for t, v in seeds.items()
    }
    # the incumbent: the best seed mean (a single draw never beats it: it would be repeated)
    incumbent = max((t for t in means if math.isfinite(means[t])), key=means.get)
    parent = parents[0]
    assert parent.data.tags["best_trial"] == incumbent
    assert parent.data.metrics["best_val_mIoU"] == pytest.approx(means[incumbent])
    assert parent.data.metrics["trials_repeated"] == len(repeats)
    # Optuna was told each repeated configuration's seed mean, once
    told = [t for t in searched.study().trials if DUPLICATE_ATTR not in t.user_attrs]
    assert len(told) == len(firsts)
    for t in told:
        first = next(c for c in firsts if config_of(c) == _config_of_params(t.params))
        expected = means[first.data.tags["ray.trial_id"]]
        if math.isfinite(expected):
            assert t.value == pytest.approx(expected)
        else:
            assert t.value == pytest.approx(first.data.metrics["best_val_mIoU"])
    board = client.download_artifacts(parent.info.run_id, "leaderboard.csv", str(searched.run_dir))
    text = Path(board).read_text()
    assert "seeds" in text.splitlines()[0] and "seed_sd" in text.splitlines()[0]


def _config_of_params(params: dict) -> tuple[str, ...]:
    return (
        str(params.get("loss.decode.extra.choice", "")),
        str(params.get("loss.decode.extra.dice.weight.choice", "")),
        str(params["loss.aux.ce.weight.choice"]),
    )


@pytest.mark.slow
def test_a_late_switch_on_is_never_stopped_before_it_played(searched: Searched) -> None:
    """Switched on at progress 0.5 of 4 epochs: first judged at epoch 4 (no rung below it),
    so it always runs every epoch, while ASHA may stop the others at rungs 1 and 2."""
    _, _, children = runs_of(searched.uri)
    late = [c for c in children if c.data.params.get("loss.decode.extra.choice") == "late"]
    assert late
    for child in late:
        assert child.data.tags["epochs_run"] == str(EPOCHS), child.data.tags
        assert child.data.tags["stop_reason"] == "completed"


@pytest.mark.slow
def test_no_configuration_is_trained_twice_at_one_seed(searched: Searched) -> None:
    _, parents, children = runs_of(searched.uri)
    trained = [(config_of(c), c.data.params["train.seed"]) for c in children]
    assert len(trained) == len(set(trained))
    assert len({config_of(c) for c in children if "repeat_of" not in c.data.tags}) == 6
    trials = searched.study().trials
    duplicates = [t for t in trials if DUPLICATE_ATTR in t.user_attrs]
    assert duplicates and parents[0].data.metrics["trials_duplicate"] == len(duplicates)
    for dup in duplicates:  # told what the configuration's first run was told
        original = next(
            t for t in trials if t.params == dup.params and DUPLICATE_ATTR not in t.user_attrs
        )
        assert (dup.state, dup.value) == (original.state, original.value)
    assert (
        "proposals repeated a configuration already trained"
        in parents[0].data.tags["mlflow.note.content"]
    )


@pytest.mark.slow
def test_the_report_gives_the_rank_lines_and_importances_inside_options(
    searched: Searched, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    assert report_main(["--tracking-uri", searched.uri, "--experiment", "e2e", "--out", str(out),
                        "--no-log"]) == 0  # fmt: skip
    trust = json.loads((out / "trust.json").read_text())
    assert set(trust["rank_lines"]) == {"1", "2"}
    assert trust["noise_ceiling"]["n"] >= 1
    assert "rung 1 ranks like the full budget" in trust["sentence"]
    importances = json.loads((out / "importances.json").read_text())
    inside = importances["options"]["loss.decode.extra.choice=dice"]
    assert inside["n_trials"] >= 3
    # the Dice weight exists only in the dice option: importances there, over its trials
    assert inside["message"] is None
    assert set(inside["importances"]) & {
        "loss.decode.extra.dice.weight.choice",
        "loss.decode.extra.dice.weight",
    }
