"""Baselines and the confirm stage without training: config checks, the Intensifier's
baselines, the arms, the seeds, the winner and the paired interval (issue 19)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import optuna
import pytest
from scipy.stats import t as student_t

from conftest import write_space
from tune_losses.config import ConfigError, Experiment
from tune_losses.space import SearchSpace
from tune_losses.tiny import tiny_experiment
from tune_losses.tracking import (
    ConfirmArm,
    TrialRecord,
    confirm_outcome,
    confirm_story,
    confirm_verdict,
    paired_interval,
)
from tune_losses.tune.cli import main
from tune_losses.tune.confirm import fresh_seeds, pick_arms, score_metric, trial_configs
from tune_losses.tune.intensify import BASELINE_KEY, REPEAT_KEY, Intensifier
from tune_losses.tune.searcher import TellingOptunaSearch
from tune_losses.tune.trainable import CONFIRM_KEY, EXPERIMENT_KEY, SPLIT_KEY

CE = {"decode": {"ce": {"weight": 1.0}}}


def space_with(**search: object) -> SearchSpace:
    raw = tiny_experiment(train={"epochs": 2, "lr": 0.01, "seed": 5})
    raw["loss"] = {"decode": {"ce": {"weight": 1.0}, "dice": {"weight": {"uniform": [0, 1]}}}}
    raw["search"] = search
    return SearchSpace(raw, source="space.yaml")


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("search", "message"),
    [
        (
            {"baselines": {"ce": {"decode": {"cee": {"weight": 1.0}}}}},
            "space.yaml: search.baselines.ce.decode.cee: unknown loss 'cee'",
        ),
        (
            {"baselines": {"ce": {"decode": {"ce": {"weight": -1}}}}},
            "space.yaml: search.baselines.ce.decode.ce.weight: Input should be greater",
        ),
        (
            {"baselines": {"ce": {"decode": {"ce": {"weight": {"uniform": [0, 1]}}}}}},
            "space.yaml: search.baselines.ce: no search markers here",
        ),
        ({"baselines": {"ce": CE}, "scheduler": "pbt"}, "baselines: not with scheduler pbt"),
        ({"confirm": {"seeds": 1}}, "search.confirm.seeds: Input should be greater than or"),
        ({"confirm": {"top_k": 2}, "metric": "train/loss", "mode": "min"}, "confirm: needs"),
        ({"confirm": {"top_k": 2, "split": {"choice": ["a", "b"]}}}, "no search markers"),
    ],
)
def test_bad_baselines_and_confirm_are_one_line_errors(search: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        space_with(**search)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_baseline_is_the_space_with_its_loss_replaced() -> None:
    space = space_with(baselines={"ce": CE}, confirm={"top_k": 1, "seeds": 3})
    ((name, exp),) = space.baselines().items()
    assert name == "ce" and list(exp.loss["decode"]) == ["ce"]
    assert exp.train.seed == 5 and exp.search.confirm.split == "val"


def test_a_split_the_data_lacks_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    space = write_space(
        tmp_path / "space.yaml", search={"num_samples": 2, "confirm": {"split": "test"}}
    )
    assert main(["--space", str(space)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {space}: search.confirm.split: ") and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


# ------------------------------------------------------------------ the Intensifier


def test_baselines_are_handed_out_first_at_every_repeat_seed() -> None:
    space = space_with(baselines={"ce": CE, "ce2": CE})
    inner = TellingOptunaSearch(
        space=space.define_by_run(),
        metric="best_val_mIoU",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    baselines = {k: v.model_dump(mode="json") for k, v in space.baselines().items()}
    s = Intensifier(inner, configs=1, repeats=2, baselines=baselines)
    configs = [s.suggest(t) for t in ("a", "b", "c", "d", "e")]
    marks = [(c.get(BASELINE_KEY), c.get(REPEAT_KEY)) for c in configs[:4]]
    assert marks == [("ce", None), ("ce2", None), ("ce", "a"), ("ce2", "b")]
    assert [c[EXPERIMENT_KEY]["train"]["seed"] for c in configs[:4]] == [5, 5, 6, 6]
    assert BASELINE_KEY not in configs[4] and len(inner._ot_study.trials) == 1  # Optuna's


# ------------------------------------------------------------------ arms and seeds


def record(name: str, trial_id: str, best: float, **tags: str) -> TrialRecord:
    return TrialRecord(
        "r" + trial_id,
        name,
        "FINISHED",
        "completed",
        "2",
        best,
        {},
        [],
        trial_id=trial_id,
        tags=dict(tags),
    )


def test_the_arms_are_the_top_k_configurations_and_every_baseline() -> None:
    trials = [
        record("t02 dice", "b", 60.0),
        record("base ce", "x", 58.0, baseline="ce"),
        record("t01", "a", 55.0),
        record("t03", "c", 50.0),
        record("t02 seed 1", "b1", 61.0, repeat_of="b"),
    ]
    exp = {"train": {"seed": 0}}
    configs = {t.trial_id: {EXPERIMENT_KEY: exp, "p": 1} for t in trials}
    configs["x"] = {EXPERIMENT_KEY: exp, BASELINE_KEY: "ce"}
    arms = pick_arms(trials, configs, top_k=2)
    assert [a["label"] for a in arms] == ["t02", "t01", "base ce"]
    doc = {"arms": arms, "seeds": [2, 3], "split": "test"}
    runs = trial_configs(doc)
    assert len(runs) == 6 and {r[EXPERIMENT_KEY]["train"]["seed"] for r in runs} == {2, 3}
    assert {r[CONFIRM_KEY] for r in runs} == {"t02", "t01", "base ce"}
    assert all(r[SPLIT_KEY] == "test" for r in runs)
    assert arms[0]["config"][EXPERIMENT_KEY]["train"]["seed"] == 0  # the plan is not changed


def test_fresh_seeds_skip_every_seed_the_search_used() -> None:
    assert fresh_seeds([0, 0], repeats=1, count=3) == [1, 2, 3]
    assert fresh_seeds([4, 0], repeats=3, count=2) == [7, 8]  # 4, 5, 6 searched
    # a searched train.seed: past every seed any trial of the search trained at
    assert fresh_seeds([0, 1], repeats=1, count=2, used=[0, 1, 9]) == [10, 11]
    assert fresh_seeds([], repeats=1, count=2) == [0, 1]  # nothing finished: nothing clashes
    assert score_metric("val/mIoU", "test") == "test/mIoU"


# ------------------------------------------------------------------ winner and interval


def test_the_paired_interval_is_the_t_interval_of_the_differences() -> None:
    d = [1.0, 2.5, 0.5, 3.0]
    mean, low, high = paired_interval(d)
    half = student_t.ppf(0.975, 3) * statistics.stdev(d) / math.sqrt(4)
    assert mean == pytest.approx(1.75)
    assert (low, high) == pytest.approx((1.75 - half, 1.75 + half))
    with pytest.raises(ValueError, match="two or more"):
        paired_interval([1.0])


def test_the_winner_is_the_best_mean_and_the_gain_pairs_common_seeds() -> None:
    arms = [
        ConfirmArm("t01", scores={1: 50.0, 2: 54.0, 3: 52.0}),
        ConfirmArm("t02", scores={1: 49.0, 2: 50.0, 3: math.nan}),
        ConfirmArm("base ce", "ce", scores={1: 47.0, 2: 50.0, 3: 49.0}),
        ConfirmArm("base mf", "mf", scores={1: 40.0, 2: 41.0}),
    ]
    out = confirm_outcome(arms, "val/mIoU")
    assert [a.label for a in out.arms] == ["t01", "t02", "base ce", "base mf"]
    assert out.winner.label == "t01" and out.baseline.label == "base ce"
    assert out.gain == pytest.approx(paired_interval([3.0, 4.0, 3.0])) and out.pairs == 3
    out = confirm_outcome(arms, "train/loss", mode="min")
    assert out.winner.label == "base mf" and out.searched.label == "t02"
    assert out.gain == pytest.approx(paired_interval([9.0, 9.0]))
    assert confirm_outcome(arms[:2], "val/mIoU").gain is None


def test_an_arm_scored_at_one_seed_is_not_ranked_and_a_tie_goes_to_the_baseline() -> None:
    arms = [
        ConfirmArm("t01", scores={1: 60.0, 2: math.nan}),  # one lucky draw, one failed run
        ConfirmArm("t02", scores={1: 50.0, 2: 52.0}),
        ConfirmArm("base ce", "ce", scores={1: 52.0, 2: 50.0}),  # the same mean as t02
    ]
    out = confirm_outcome(arms, "val/mIoU")
    assert [a.label for a in out.arms] == ["base ce", "t02", "t01"]
    assert out.winner.label == "base ce" and out.searched.label == "t02"
    assert out.gain == pytest.approx(paired_interval([-2.0, 2.0]))
    story = "\n".join(confirm_story(out, "val"))
    assert "| t01 | 1 | 60.00 | nan |" in story
    assert "Not ranked, fewer than 2 seeds scored" in story and "t01 (1)" in story
    assert "**Winner by confirmed mean: base ce** (a baseline)" in story
    arms.reverse()  # the tie does not depend on the order the runs were read in
    assert confirm_outcome(arms, "val/mIoU").winner.label == "base ce"


def test_the_story_says_why_there_is_no_winner_or_no_interval() -> None:
    apart = [
        ConfirmArm("t02", scores={1: 50.0, 2: 52.0}),
        ConfirmArm("base ce", "ce", scores={3: 49.0, 4: 50.0}),  # no seed in common
    ]
    out = confirm_outcome(apart, "val/mIoU")
    assert out.winner.label == "t02" and out.gain is None and out.pairs == 0
    assert any("share 0 scored seed(s): no interval" in line for line in confirm_verdict(out))
    failed = [ConfirmArm("t02", scores={1: 50.0}), ConfirmArm("base ce", "ce")]
    out = confirm_outcome(failed, "val/mIoU")
    assert out.winner is None and out.searched is None and out.baseline is None
    text = " ".join(confirm_verdict(out))
    assert "No arm was scored at 2 seeds or more: no winner" in text
    assert "No baseline was ranked" in text and "base ce (0), t02 (1)" in text


def test_the_confirm_split_is_checked_whole_and_train_is_the_run_s_train_split(
    tmp_path: Path,
) -> None:
    """``train`` names ``data.train_split`` (here ``training``); a test split whose second
    mask is missing is refused before the search, not after every confirm run's last epoch."""
    from test_data import make_folders

    from tune_losses.engine import Trainer
    from tune_losses.tune.confirm import check_split
    from tune_losses.tune.trainable import split_scores

    (tmp_path / "data").mkdir()
    root = make_folders(tmp_path / "data")
    (root / "train").rename(root / "training")
    data = {"format": "folders", "root": str(root), "batch_size": 2, "train_split": "training"}
    raw = {**tiny_experiment(data=data), "search": {"confirm": {"split": "train", "seeds": 2}}}
    space = SearchSpace(raw, "space.yaml")
    check_split(space)
    scores = split_scores(Trainer(space.experiment), "train")
    assert math.isfinite(scores["train/mIoU"])
    (root / "test").mkdir()
    for part in ("images", "masks"):
        (root / "val" / part).rename(root / "test" / part)
    (root / "test" / "masks" / "001.png").unlink()
    raw["search"]["confirm"]["split"] = "test"
    with pytest.raises(ConfigError, match=r"^space.yaml: search.confirm.split: .*001"):
        check_split(SearchSpace(raw, "space.yaml"))


def test_scores_on_another_split_reach_the_child_run(tmp_path: Path) -> None:
    """A confirm run scored on ``test``: the trainable's scores carry their split, so the
    child run keeps ``test/...`` (Ray's bookkeeping and unnamed splits stay out)."""
    import shutil

    from test_data import make_folders

    from tune_losses.engine import Trainer
    from tune_losses.tracking import numeric_metrics
    from tune_losses.tune.trainable import split_scores

    (tmp_path / "data").mkdir()
    root = make_folders(tmp_path / "data")
    shutil.copytree(root / "val", root / "test")
    raw = tiny_experiment(data={"format": "folders", "root": str(root), "batch_size": 2})
    trainer = Trainer(Experiment.model_validate(raw))
    result = {"val/mIoU": 10.0, "training_iteration": 1, **split_scores(trainer, "test")}
    kept = numeric_metrics(result)
    val, _ = trainer.evaluate()  # test is a copy of val: the same scores
    assert kept["test/mIoU"] == pytest.approx(val["val/mIoU"])
    assert {k for k in kept if k.startswith("test/IoU/")} == {
        f"test/{k[4:]}" for k in val if k.startswith("val/IoU/")
    }
    assert "training_iteration" not in kept
    assert not any(k.startswith("test/") for k in numeric_metrics({"test/mIoU": 1.0}))


def test_scores_missing_from_a_confirm_run_are_logged_from_ray(tmp_path: Path) -> None:
    """Ray's last result of a confirm trial holds its ``test/...`` scores; a child run that
    lacks them (a driver killed between the two, an older version) gets them, once."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from conftest import sqlite_store
    from tune_losses.tracking import PARENT_TAG, TRIAL_TAG
    from tune_losses.tune.confirm import log_missing_scores

    client = MlflowClient(sqlite_store(tmp_path / "m.db"))
    exp = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(exp).info.run_id
    runs = {}
    for trial in ("a", "b"):
        runs[trial] = client.create_run(exp, tags={PARENT_TAG: parent, TRIAL_TAG: trial})
        client.log_metric(runs[trial].info.run_id, "val/mIoU", 30.0, step=4)
    client.log_metric(runs["b"].info.run_id, "test/mIoU", 33.0, step=4)  # b logged its own
    last = {"training_iteration": 4, "val/mIoU": 30.0, "test/mIoU": 41.5, "test/IoU/road": 90.0}
    results = [
        SimpleNamespace(metrics={**last, "trial_id": "a"}),
        SimpleNamespace(metrics={**last, "trial_id": "b"}),
        SimpleNamespace(metrics={"trial_id": "c", "test/mIoU": 1.0}),  # no run: passed over
    ]
    assert log_missing_scores(client, parent, results, "test") == 2
    a = client.get_run(runs["a"].info.run_id).data.metrics
    assert (a["test/mIoU"], a["test/IoU/road"]) == (41.5, 90.0)
    history = client.get_metric_history(runs["a"].info.run_id, "test/mIoU")
    assert [(m.step, m.value) for m in history] == [(4, 41.5)]
    b = client.get_run(runs["b"].info.run_id).data.metrics
    assert b["test/mIoU"] == 33.0 and b["test/IoU/road"] == 90.0  # what it had is kept
    assert log_missing_scores(client, parent, results, "test") == 0


def test_failed_confirm_runs_list_their_arm_unranked_and_name_the_failure(
    tmp_path: Path,
) -> None:
    """An arm whose confirm runs failed is read back with nan scores (listed, not ranked),
    a seed's finished run wins over a failed one, and the failure the search exits with is
    a confirm run's, not an earlier search trial's."""
    from mlflow.tracking import MlflowClient

    from conftest import sqlite_store
    from tune_losses.tracking import (
        BASELINE_TAG,
        CONFIRM_TAG,
        PARENT_TAG,
        SEED_TAG,
        failure_reasons,
        load_confirm,
    )
    from tune_losses.tracking.names import ERROR_REASON_TAG

    client = MlflowClient(sqlite_store(tmp_path / "m.db"))
    exp = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(exp)

    def child(status: str, reason: str = "", score: float | None = None, **tags: str) -> None:
        run = client.create_run(exp, tags={PARENT_TAG: parent.info.run_id, **tags})
        if score is not None:
            client.log_metric(run.info.run_id, "test/mIoU", score, step=2)
        if reason:
            client.set_tag(run.info.run_id, ERROR_REASON_TAG, reason)
        client.set_terminated(run.info.run_id, status)

    child("FAILED", "search trial: out of memory")  # a search trial, not a confirm run
    for seed, score in ((3, 41.0), (4, 43.0)):
        child("FINISHED", score=score, **{CONFIRM_TAG: "t01", SEED_TAG: str(seed)})
    child("FAILED", "retried, then finished", **{CONFIRM_TAG: "t01", SEED_TAG: "4"})
    for seed in (3, 4):
        tags = {CONFIRM_TAG: "base ce", BASELINE_TAG: "ce", SEED_TAG: str(seed)}
        child("FAILED", f"ce seed {seed}: bad mask", **tags)
    arms = {a.label: a for a in load_confirm(client, parent, "test/mIoU")}
    assert arms["t01"].scores == {3: 41.0, 4: 43.0}
    assert arms["base ce"].baseline == "ce" and arms["base ce"].scored == 0
    out = confirm_outcome(list(arms.values()), "test/mIoU")
    assert out.winner.label == "t01" and out.baseline is None
    assert any("base ce (0)" in line for line in confirm_verdict(out))
    run_id = parent.info.run_id
    confirm = failure_reasons(client, exp, run_id, CONFIRM_TAG)
    assert sorted(confirm) == [
        "ce seed 3: bad mask",
        "ce seed 4: bad mask",
        "retried, then finished",
    ]
    assert failure_reasons(client, exp, run_id)[0] == "search trial: out of memory"


def test_a_search_resumed_in_its_confirm_stage_keeps_the_search_s_best_config() -> None:
    """No arm ranked after a resume (the search stage's results are not reloaded): the plan
    holds the search's best configuration, which becomes ``best_config.yaml``."""
    import yaml

    from tune_losses.tune.confirm import confirmed_best

    best_exp = tiny_experiment(train={"epochs": 2, "seed": 0})
    doc = {
        "arms": [
            {"label": "t02", "trial_id": "b", "baseline": False, "config": {"x": 1}},
            {
                "label": "t01",
                "trial_id": "a",
                "baseline": False,
                "config": {EXPERIMENT_KEY: best_exp},
            },
        ],
        "split": "val",
    }
    outcome = confirm_outcome([ConfirmArm("t01", scores={5: 40.0})], "val/mIoU")
    configs, best = confirmed_best((outcome, doc), {}, {"best_trial": "a"})
    assert yaml.safe_load(configs["best_config.yaml"]) == best_exp
    assert best == {"best_trial": "a"} and "confirm.csv" in configs


def test_searches_pickled_before_the_tuner_split_still_load() -> None:
    """Ray's ``tuner.pkl`` of a search started before ``tune/tuner.py`` was split names its
    scheduler and searcher as ``tune_losses.tune.tuner.<class>``."""
    import pickle

    from tune_losses.tune.schedulers import ReplayASHA, ReplayFIFO

    for cls in (ReplayASHA, ReplayFIFO, TellingOptunaSearch):
        old = f"ctune_losses.tune.tuner\n{cls.__name__}\n.".encode()
        assert pickle.loads(old) is cls  # noqa: S301 - our own names, built in this test
