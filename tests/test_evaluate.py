"""Tests for ``python -m tune_losses.evaluate``: a tiny trained run scored on its splits, a
search folder's winner, MLflow logging read back, and bad input as one line, exit 2."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import yaml
from test_data import real_data

from conftest import sqlite_store
from tune_losses import evaluate, train
from tune_losses.tiny import tiny_experiment
from tune_losses.tracking import SearchTracker, open_client


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch tiny run trained with ``--mlflow`` into its own sqlite store."""
    root = tmp_path_factory.mktemp("evaluate")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment()))
    uri = sqlite_store(root / "mlruns.db")
    out = root / "run"
    rc = train.main(
        ["--config", str(config), "--out", str(out), "--mlflow"]
        + ["--set", f"tracking.uri={uri}", "--set", "tracking.experiment=ev"]
    )
    assert rc == 0
    return out


def _copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def test_val_score_is_the_last_epochs_val_mIoU(tiny_run: Path, tmp_path: Path, capsys) -> None:
    run = _copy_run(tiny_run, tmp_path / "run")
    assert evaluate.main(["--run", str(run)]) == 0
    report = json.loads((run / "eval_val.json").read_text())
    last = json.loads((run / "history.json").read_text())[-1]
    assert report["mIoU"] == pytest.approx(last["val/mIoU"], abs=1e-9)
    assert report["boundary_IoU"] == pytest.approx(last["val/boundary_IoU"], abs=1e-9)
    assert report["pixel_acc"] == pytest.approx(last["val/pixel_acc"], abs=1e-9)
    for name, row in report["per_class"].items():
        assert row["IoU"] == pytest.approx(last[f"val/IoU/{name}"], abs=1e-9)
    assert report["scored"]["epoch"] == 2 and report["images"] == 8
    # precision = TP / (TP + FP) over the column, recall = TP / (TP + FN) over the row
    cm = report["confmat"]
    for i, row in enumerate(report["per_class"].values()):
        tp = cm[i][i]
        predicted = sum(line[i] for line in cm)
        labelled = sum(cm[i])
        assert row["pixels"] == labelled
        assert row["precision"] == pytest.approx(100 * tp / predicted)
        assert row["recall"] == pytest.approx(100 * tp / labelled)
    out = capsys.readouterr().out
    assert "precision" in out and "recall" in out and f"mIoU {report['mIoU']:.2f}" in out
    assert "last epoch (2)" in out


def test_train_split_and_out_file(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores" / "train.json"
    assert evaluate.main(["--run", str(tiny_run), "--split", "train", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["split"] == "train" and report["images"] == 16
    assert 0.0 <= report["mIoU"] <= 100.0


def test_split_the_data_lacks_is_one_line(tiny_run: Path, tmp_path: Path, capsys) -> None:
    run = _copy_run(tiny_run, tmp_path / "run")
    before = sorted(p.name for p in run.iterdir())
    assert evaluate.main(["--run", str(run), "--split", "test"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'test'" in err and "train and val" in err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written


@pytest.mark.parametrize(
    ("remove", "flags", "message"),
    [
        ("state.pt", [], "state.pt: not found"),
        ("config.yaml", [], "config.yaml: not found"),
        ("mlflow_run.json", ["--mlflow"], "mlflow_run.json: not found"),
        (None, ["--set", "train.lr=-1"], "train.lr"),
        (None, ["--log-to", "0123456789abcdef0123456789abcdef"], "no MLflow run"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tiny_run: Path, tmp_path: Path, capsys, remove: str | None, flags: list[str], message: str
) -> None:
    run = _copy_run(tiny_run, tmp_path / "run")
    if remove:
        (run / remove).unlink()
    before = sorted(p.name for p in run.iterdir())
    assert evaluate.main(["--run", str(run), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in run.iterdir()) == before


@pytest.mark.parametrize("cut", [0, 100], ids=["empty", "truncated"])
def test_a_damaged_checkpoint_is_one_line(tiny_run: Path, tmp_path: Path, capsys, cut: int) -> None:
    run = _copy_run(tiny_run, tmp_path / "run")
    state = run / "state.pt"
    state.write_bytes(state.read_bytes()[:cut])
    assert evaluate.main(["--run", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {state}: "), err
    assert not (run / "eval_val.json").exists()


def test_log_to_a_store_that_is_not_there_makes_none(
    tiny_run: Path, tmp_path: Path, capsys
) -> None:
    store = tmp_path / "elsewhere" / "mlruns.db"
    store.parent.mkdir()
    flags = ["--log-to", "0" * 32, "--tracking-uri", f"sqlite:///{store}"]
    assert evaluate.main(["--run", str(tiny_run), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no MLflow store" in err, err
    assert list(store.parent.iterdir()) == []


def test_mlflow_logs_to_the_training_run(tiny_run: Path, tmp_path: Path) -> None:
    run = _copy_run(tiny_run, tmp_path / "run")
    where = json.loads((run / "mlflow_run.json").read_text())
    assert evaluate.main(["--run", str(run), "--mlflow"]) == 0
    report = json.loads((run / "eval_val.json").read_text())
    client = open_client(where["tracking_uri"])
    logged = client.get_run(where["run_id"]).data.metrics
    assert logged["val/mIoU"] == pytest.approx(report["mIoU"])
    assert logged["val/boundary_IoU"] == pytest.approx(report["boundary_IoU"])
    for name, row in report["per_class"].items():
        assert logged[f"val/precision/{name}"] == pytest.approx(row["precision"])
        assert logged[f"val/recall/{name}"] == pytest.approx(row["recall"])
    steps = client.get_metric_history(where["run_id"], "val/precision/background")
    assert [m.step for m in steps] == [2]  # the epoch of the weights scored
    files = [f.path for f in client.list_artifacts(where["run_id"])]
    assert "eval_val.json" in files


def _fake_search(run: Path, root: Path) -> Path:
    """A search folder as the search writes it (best_config.yaml, Ray's trial folders with
    params.json and checkpoint_NNNNNN) around ``run``'s weights: trial aaaa0001 trained
    another loss, bbbb0002 the winner."""
    folder = root / "ray" / "space-1"
    config = yaml.safe_load((run / "config.yaml").read_text())
    other = json.loads(json.dumps(config))
    other["loss"]["aux"]["ce"]["weight"] = 0.9
    folder.mkdir(parents=True)
    (folder / "best_config.yaml").write_text(yaml.safe_dump(config))
    for trial_id, experiment in (("aaaa0001", other), ("bbbb0002", config)):
        trial = folder / f"train_trial_{trial_id}"
        for epoch in (0, 1):  # the latest checkpoint is the one scored
            checkpoint = trial / f"checkpoint_00000{epoch}"
            checkpoint.mkdir(parents=True)
            for name in ("state.pt", "best.json"):
                shutil.copy(run / name, checkpoint / name)
            origin = {"trial_id": trial_id, "epoch": epoch + 1}
            (checkpoint / "origin.json").write_text(json.dumps(origin))
        (trial / "params.json").write_text(json.dumps({"experiment": experiment}))
    return folder


def _track_search(folder: Path, uri: str) -> None:
    """The search's MLflow store (parent and one child a trial), written by the tracking
    writers, and ``tune_losses.json`` pointing at it."""
    tracker = SearchTracker(uri, "ev")
    tracker.start("space-1", {"search.metric": "val/mIoU"}, folder / "best_config.yaml")
    for params in sorted(folder.glob("*/params.json")):
        trial_id = params.parent.name.rsplit("_", 1)[-1]
        tracker.trial_started(trial_id, params.parent.name, json.loads(params.read_text()))
        result = {"epoch": 2, "val/mIoU": 20.0, "timestamp": time.time()}
        tracker.trial_result(trial_id, result, 2)
        tracker.trial_ended(trial_id, failed=False, last_result=result, max_epochs=2, summary=None)
    tracker.finish("trial\n", None, {"best_val_mIoU": 20.0})
    state = {"tracking_uri": uri, "parent_run_id": tracker.parent_id}
    (folder / "tune_losses.json").write_text(json.dumps(state))


def test_search_winner_scored_and_logged_to_its_trial(tiny_run: Path, tmp_path: Path) -> None:
    folder = _fake_search(tiny_run, tmp_path)
    uri = sqlite_store(tmp_path / "search.db")
    _track_search(folder, uri)
    assert evaluate.main(["--search", str(folder), "--mlflow"]) == 0
    report = json.loads((folder / "eval_val.json").read_text())
    scored = report["scored"]
    assert scored["trial_id"] == "bbbb0002"
    assert scored["checkpoint"].endswith("train_trial_bbbb0002/checkpoint_000001")
    last = json.loads((tiny_run / "history.json").read_text())[-1]
    assert report["mIoU"] == pytest.approx(last["val/mIoU"], abs=1e-9)
    client = open_client(uri)
    experiment_id = client.get_experiment_by_name("ev").experiment_id
    runs = client.search_runs([experiment_id], "tags.`ray.trial_id` = 'bbbb0002'")
    child = runs[0]
    assert child.data.metrics["val/mIoU"] == pytest.approx(report["mIoU"])


def test_search_without_the_winners_weights_is_one_line(
    tiny_run: Path, tmp_path: Path, capsys
) -> None:
    folder = _fake_search(tiny_run, tmp_path)
    shutil.rmtree(folder / "train_trial_bbbb0002")
    assert evaluate.main(["--search", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no trial folder trained it" in err
    assert "python -m tune_losses.train" in err
    assert not (folder / "eval_val.json").exists()


def test_camvid_test_split(tmp_path: Path) -> None:
    """A tiny model on 4 CamVid frames for one epoch, scored on 16 test frames."""
    root = real_data("camvid")
    raw = tiny_experiment(
        data={
            "format": "folders",
            "root": str(root),
            "scale": 0.25,
            "max_train": 4,
            "max_val": 2,
            "batch_size": 4,
        },
        train={"epochs": 1, "lr": 0.005, "threads": 2},
    )
    config = tmp_path / "camvid.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert train.main(["--config", str(config), "--out", str(tmp_path / "run")]) == 0
    args = ["--run", str(tmp_path / "run"), "--split", "test", "--limit", "16"]
    assert evaluate.main(args) == 0
    report = json.loads((tmp_path / "run" / "eval_test.json").read_text())
    assert report["images"] == 16
    assert len(report["per_class"]) == 11
    assert math.isfinite(report["mIoU"]) and report["data_split"] == "test"
