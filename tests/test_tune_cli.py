"""End-to-end searches through the CLI entry point, read back from the MLflow store."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest

from conftest import (
    TinySearch,
    assert_the_story,
    run_cli,
    runs_of,
    search_in,
    sqlite_store,
    write_space,
)
from tune_losses.config import load_experiment
from tune_losses.search import main

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


@pytest.mark.slow
def test_search_end_to_end_logs_every_trial(tiny_search: TinySearch, tmp_path: Path) -> None:
    proc, uri = tiny_search.proc, tiny_search.uri
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Leaderboard" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    summary = proc.stdout[proc.stdout.index("Leaderboard of") : proc.stdout.index("best config:")]
    assert max(len(line) for line in summary.splitlines()) <= 120
    assert "Downloading artifacts" not in proc.stderr

    client, parents, children = runs_of(uri)
    assert len(parents) == 1 and len(children) == 6
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    reasons = []
    for child in children:
        assert child.info.status == "FINISHED"
        params = child.data.params
        assert "loss.decode.dice.weight" in params
        choice = params["loss.aux.ce.weight.choice"]
        if choice == "decay":
            assert params["loss.aux.ce.weight.schedule"] == "linear"
            assert 0.3 <= float(params["loss.aux.ce.weight.start"]) <= 1.0
            assert "loss.aux.ce.weight.constant" not in params
        else:
            assert 0.05 <= float(params["loss.aux.ce.weight"]) <= 1.0
            assert "loss.aux.ce.weight.start" not in params
        history = client.get_metric_history(child.info.run_id, "val/mIoU")
        assert history, "per-epoch val/mIoU missing"
        best = child.data.metrics["best_val_mIoU"]
        assert best == pytest.approx(max(m.value for m in history))
        for key in ("train/loss", "train/loss/decode/ce", "weight/aux/ce", "weight/decode/dice"):
            assert key in child.data.metrics, key
        arts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"trial_config.yaml", "best_epoch", "loss_setup.json", "best_epoch.json"} <= arts
        reasons.append(child.data.tags["stop_reason"])
        epochs = len(history)
        assert child.data.tags["epochs_run"] == str(epochs)
    assert "asha" in reasons, reasons
    for child in children:
        label = child.data.params["loss.decode.extra.choice"]
        assert f"loss.decode.extra.{label}.weight" in child.data.params

    # the stored study: one Optuna trial per Ray trial, told how each really ended
    (run_dir,) = tiny_search.storage.iterdir()
    study = optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert len(study.trials) == len(children) == 6
    by_id = {c.data.tags["ray.trial_id"]: c for c in children}
    states = {}
    for trial in study.trials:
        assert trial.intermediate_values, "every epoch is reported to Optuna"
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    assert states.get("FAIL", 0) == 0 and states.get("RUNNING", 0) == 0
    stopped = sum(c.data.tags["stop_reason"] == "asha" for c in by_id.values())
    assert states.get("PRUNED", 0) == stopped >= 1
    assert states.get("COMPLETE", 0) == len(children) - stopped
    for trial in study.trials:
        if trial.state.name == "COMPLETE":
            assert trial.value == pytest.approx(max(trial.intermediate_values.values()))

    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.csv", "best_config.yaml", "space"} <= arts
    best_file = Path(
        client.download_artifacts(parent.info.run_id, "best_config.yaml", str(tmp_path))
    )
    best = load_experiment(best_file)
    top = max(children, key=lambda c: c.data.metrics["best_val_mIoU"])
    assert parent.data.metrics["best_val_mIoU"] == pytest.approx(top.data.metrics["best_val_mIoU"])
    assert best.loss["decode"]["dice"]["weight"] == pytest.approx(
        float(top.data.params["loss.decode.dice.weight"])
    )
    assert_the_story(client, parent, children, tmp_path)
    report_dir = next(tiny_search.storage.glob("*/report"))
    for name in ("curves.png", "importances.png", "schedules.png", "report.html"):
        assert (report_dir / name).is_file(), name
        assert f"report/{name}" in {
            a.path for a in client.list_artifacts(parent.info.run_id, "report")
        }


@pytest.mark.slow
def test_failing_trials_leave_no_run_running(tmp_path: Path) -> None:
    space = write_space(
        tmp_path / "space.yaml",
        search={"num_samples": 2, "max_concurrent": 2, "scheduler": "fifo"},
        loss={"decode": {"boom": {"term": "failing_loss:boom", "weight": {"uniform": [0.1, 1]}}}},
    )
    # fine on the driver's one-image check, fails on a training batch
    (tmp_path / "failing_loss.py").write_text(
        "def boom(logits, target, *, ignore_index=255):\n"
        "    if logits.shape[0] > 1:\n"
        "        raise RuntimeError('boom from a user loss')\n"
        "    return logits.sum() * 0\n"
    )
    uri = sqlite_store(tmp_path / "mlruns.db")
    proc = run_cli(
        tmp_path,
        *("--space", str(space), "--tracking-uri", uri, "--experiment", "e2e"),
        *("--storage", str(tmp_path / "ray")),
        path=str(tmp_path),
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "boom from a user loss" in proc.stdout
    # every trial failing: exit 1, the first reason one line on stderr
    last = proc.stderr.strip().splitlines()[-1]
    first = "RuntimeError: boom from a user loss"
    assert last == f"error: no trial finished; the first failure: {first}"
    client, parents, children = runs_of(uri)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FAILED"
        assert "boom from a user loss" in child.data.tags["error"]


def test_bad_data_stops_before_any_run(tmp_path: Path) -> None:
    space = write_space(
        tmp_path / "space.yaml",
        data={"format": "folders", "root": str(tmp_path / "nowhere")},
    )
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    proc = run_cli(tmp_path, "--space", str(space), "--tracking-uri", uri)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("error: ") and "nowhere" in err and "\n" not in err
    assert not (tmp_path / "mlruns.db").exists()


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ({"weight": 0.5, "gamma": -1.0}, "loss.decode.focal.gamma: Input should be greater"),
        # a per-class list of the wrong length only fails inside the term, on data
        ({"weight": 0.5, "alpha": [0.5, 0.5]}, "loss: alpha has 2 entries"),
    ],
)
def test_a_loss_that_cannot_run_stops_before_any_run(
    tmp_path: Path, term: dict, expected: str
) -> None:
    space = write_space(
        tmp_path / "space.yaml", loss={"decode": {"ce": {"weight": 1.0}, "focal": term}}
    )
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    proc = run_cli(tmp_path, "--space", str(space), "--tracking-uri", uri)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith(f"error: {space}: {expected}") and "\n" not in err
    assert not (tmp_path / "mlruns.db").exists()


def test_bad_space_writes_nothing(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", train={"epochs": 2, "optimiser": "adam"})
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    proc = run_cli(tmp_path, "--space", str(space), "--tracking-uri", uri)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {space}: train.optimiser: Extra inputs are not permitted"
    assert not (tmp_path / "mlruns.db").exists()
    assert not (tmp_path / "ray_results").exists()


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_dry_run_on_every_space_file(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--space", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "valid;" in out and "--- trial 0" in out


def test_cli_bad_space_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 0}\n")
    assert main(["--space", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: train.epochs:") and "\n" not in err


NAN_LOSS = (
    "def maybe_nan(logits, target, *, fail=False, ignore_index=255):\n"
    "    # finite on the driver's one-image check, NaN on a training batch when fail\n"
    "    bad = fail and logits.shape[0] > 1\n"
    "    return logits.sum() * 0 + (float('nan') if bad else 0.0)\n"
)


@pytest.mark.slow
def test_a_trial_whose_loss_goes_nan_fails_and_the_search_goes_on(tmp_path: Path) -> None:
    (tmp_path / "nan_loss.py").write_text(NAN_LOSS)
    term = {"term": "nan_loss:maybe_nan", "weight": 1.0, "fail": {"grid": [False, True]}}
    space = write_space(
        tmp_path / "space.yaml",
        train={"epochs": 2, "lr": 0.005},
        search={"max_concurrent": 2, "scheduler": "fifo"},
        loss={"decode": {"ce": {"weight": 1.0}, "odd": term}},
    )
    uri = search_in(tmp_path, space, path=str(tmp_path)).uri
    client, parents, children = runs_of(uri)
    assert [p.info.status for p in parents] == ["FINISHED"]
    by_fail = {c.data.params["loss.decode.odd.fail"]: c for c in children}
    assert sorted(by_fail) == ["False", "True"]
    bad, good = by_fail["True"], by_fail["False"]
    assert bad.info.status == "FAILED" and good.info.status == "FINISHED"
    assert bad.data.tags["error_reason"] == "non-finite loss at epoch 1"
    # where it ran comes with a trial's first result (the failed one reported none)
    assert good.data.tags["device"] == "cpu" and good.data.tags["hostname"]
    assert good.data.tags["node_ip"]
    assert "val/mIoU" not in bad.data.metrics
    board = client.download_artifacts(parents[0].info.run_id, "leaderboard.csv", str(tmp_path))
    rows = {r["trial"]: r for r in csv.DictReader(Path(board).open())}
    assert rows[bad.info.run_name]["status"] == "FAILED"
    assert rows[bad.info.run_name]["stop_reason"] == "error: non-finite loss at epoch 1"
