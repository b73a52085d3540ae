"""tune_losses.report on a fake search written straight into a sqlite MLflow store (no Ray)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from matplotlib.image import imread
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from conftest import TinySearch, sqlite_store
from tune_losses.report import (
    TrialRecord,
    equal_budget,
    main,
    param_importances,
    print_leaderboard,
)

DICE = "loss.decode.dice.weight"
CHOICE = "loss.aux.ce.weight.choice"
# name, dice weight, choice, status; best val mIoU = 40 + 30 * dice weight (choice: no effect)
TRIALS = [
    ("trial_0", 0.1, "constant", "FINISHED"),
    ("trial_1", 0.7, "decay", "FINISHED"),
    ("trial_2", 0.4, "constant", "FAILED"),  # one epoch, no best_val_mIoU metric
    ("trial_3", 0.9, "constant", "FINISHED"),
    ("trial_4", 0.3, "decay", "FINISHED"),
]
EXPECTED_ORDER = ["trial_3", "trial_1", "trial_4", "trial_0", "trial_2"]


def _best(weight: float) -> float:
    return 40.0 + 30.0 * weight


def _child(
    client: MlflowClient,
    exp_id: str,
    parent_id: str,
    name: str,
    params: dict[str, Any],
    curve: list[float],
    status: str,
    stop_reason: str,
    best: float | None,
) -> str:
    run = client.create_run(exp_id, run_name=name, tags={"mlflow.parentRunId": parent_id})
    rid = run.info.run_id
    metrics = [Metric("val/mIoU", v, 1000 * step, step) for step, v in enumerate(curve, 1)]
    for step in range(1, len(curve) + 1):  # the applied weights: dice constant, aux ce decays
        aux = 0.5 - 0.1 * step if params[CHOICE] == "decay" else 0.4
        metrics.append(Metric("weight/decode/dice", float(params[DICE]), 1000 * step, step))
        metrics.append(Metric("weight/aux/ce", aux, 1000 * step, step))
    if best is not None:
        metrics.append(Metric("best_val_mIoU", best, 5000, 0))
    client.log_batch(
        rid,
        metrics=metrics,
        params=[Param(k, str(v)) for k, v in params.items()],
        tags=[RunTag("stop_reason", stop_reason), RunTag("epochs_run", str(len(curve)))],
    )
    client.set_terminated(rid, status)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("mlflow")
    uri = sqlite_store(root / "m.db")
    client = MlflowClient(uri)
    exp_id = client.create_experiment("tune_losses", artifact_location=(root / "a").as_uri())
    old = client.create_run(exp_id, run_name="search-old", tags={"tune_losses.kind": "search"})
    client.set_terminated(old.info.run_id, "FINISHED")
    parent = client.create_run(
        exp_id,
        run_name="search-a",
        tags={"tune_losses.kind": "search"},
        start_time=old.info.start_time + 1000,
    )
    pid = parent.info.run_id
    children = {}
    for name, weight, choice, status in TRIALS:
        best = _best(weight)
        params = {DICE: weight, CHOICE: choice, "loss.decode.ce.weight": 1.0, "train.lr": 0.005}
        if status == "FAILED":
            children[name] = _child(
                client, exp_id, pid, name, params, [0.8 * best], status, "error", None
            )
        else:
            curve = [0.8 * best, 0.95 * best, best]
            children[name] = _child(
                client, exp_id, pid, name, params, curve, status, "completed", best
            )
    client.set_terminated(pid, "FINISHED")

    empty_exp = client.create_experiment("empty", artifact_location=(root / "e").as_uri())
    empty = client.create_run(
        empty_exp, run_name="search-empty", tags={"tune_losses.kind": "search"}
    )
    _child(
        client,
        empty_exp,
        empty.info.run_id,
        "trial_x",
        {DICE: 0.5, CHOICE: "constant"},
        [30.0],
        "RUNNING",
        "",
        None,
    )
    return {"uri": uri, "client": client, "parent": pid, "children": children, "root": root}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_latest_search(store, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--tracking-uri", store["uri"], "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "search-a" in printed
    positions = [printed.index(name) for name in EXPECTED_ORDER]
    assert positions == sorted(positions), printed
    assert "train.lr" not in printed  # only loss.* params
    assert "constant across trials (or aliases) not shown" in printed  # loss.decode.ce.weight

    rows = _rows(out / "leaderboard.csv")
    assert [r["trial"] for r in rows] == EXPECTED_ORDER
    assert rows[0]["run_id"] == store["children"]["trial_3"]
    assert math.isclose(float(rows[0]["best_val_mIoU"]), _best(0.9))
    assert rows[0][DICE] == "0.9" and rows[0]["stop_reason"] == "completed"
    assert rows[-1]["status"] == "FAILED" and rows[-1]["epochs_run"] == "1"
    assert math.isclose(float(rows[-1]["best_val_mIoU"]), 0.8 * _best(0.4))  # from the history
    assert "train.lr" not in rows[0]

    data = json.loads((out / "importances.json").read_text())
    assert data["parent_run_id"] == store["parent"]
    assert data["n_trials"] == 4  # the FAILED trial is left out
    imp = data["importances"]
    assert set(imp) == {DICE, CHOICE}
    assert max(imp, key=imp.get) == DICE and imp[DICE] > 0.5
    assert data["skipped_params"] == {"loss.decode.ce.weight": "constant"}
    assert printed.index("Parameter importances") < printed.index(DICE, printed.index("Parameter"))

    for name in ("curves.png", "importances.png"):
        image = imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    assert imread(out / "schedules.png").shape[1] > 400  # one panel per term
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    for name, run_id in store["children"].items():  # every leaderboard row
        assert f"<td>{name}</td>" in html and run_id in html
    assert html.count("data:image/png;base64,") == 3 and 'src="http' not in html

    logged = store["client"].list_artifacts(store["parent"], "report")
    assert {Path(f.path).name for f in logged} == {
        "leaderboard.csv",
        "trust.json",
        "importances.json",
        "curves.png",
        "importances.png",
        "schedules.png",
        "report.html",
    }


@pytest.mark.parametrize("by", ["name", "id"])
def test_report_named_run_top(store, tmp_path, capsys, by):
    run = "search-a" if by == "name" else store["parent"]
    out = tmp_path / "out"
    args = ["--tracking-uri", store["uri"], "--run", run, "--out", str(out), "--top", "2"]
    code = main([*args, "--no-log"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "trial_3" in printed and "trial_1" in printed
    assert "trial_4" not in printed and "3 more in the CSV" in printed
    assert len(_rows(out / "leaderboard.csv")) == 5  # the CSV keeps every trial


def test_report_default_out_folder(store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--tracking-uri", store["uri"], "--no-log"]) == 0
    assert (tmp_path / "report" / "search-a" / "leaderboard.csv").is_file()


def test_report_empty_search(store, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--tracking-uri", store["uri"], "--experiment", "empty", "--out", str(out)]
    code = main([*args, "--no-log"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "trial_x" in printed and "RUNNING" in printed
    assert "importances need >= 3 finished trials" in printed
    assert json.loads((out / "importances.json").read_text())["importances"] == {}
    assert (out / "curves.png").is_file() and not (out / "importances.png").exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--run", "no-such-search"], "no search run"),
        (["--run", "0" * 32], "no search run"),
        (["--experiment", "nope"], "no experiment 'nope'"),
        (["--run", "CHILD"], "is not a search"),
    ],
)
def test_report_user_errors(store, tmp_path, capsys, extra, needle):
    extra = [store["children"]["trial_0"] if x == "CHILD" else x for x in extra]
    code = main(["--tracking-uri", store["uri"], "--out", str(tmp_path / "o"), *extra])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert not (tmp_path / "o").exists()


def test_report_missing_store_is_not_created(tmp_path, capsys):
    db = tmp_path / "missing.db"
    assert main(["--tracking-uri", f"sqlite:///{db}"]) == 2
    assert capsys.readouterr().err.startswith("error: no MLflow store")
    assert not db.exists()


def _trial(i: int, best: float, status: str = "FINISHED", **params: str) -> TrialRecord:
    history = [] if math.isnan(best) else [(1, 0.8 * best), (2, best)]
    return TrialRecord(f"r{i}", f"t{i}", status, "", "", best, dict(params), history)


def test_importances_are_computed_at_equal_budget():
    """A trial ASHA stopped at epoch 2 is compared with the others at epoch 2, not with
    their final values: here the weight that wins late explains nothing at epoch 2."""
    late = [(1, 10.0), (2, 20.0), (3, 60.0), (4, 80.0)]
    trials = [
        TrialRecord("a", "a", "FINISHED", "completed", "4", 80.0, {"loss.w": "0.9"}, late),
        TrialRecord(
            "b", "b", "FINISHED", "asha", "2", 30.0, {"loss.w": "0.1"}, late[:1] + [(2, 30.0)]
        ),
        TrialRecord("c", "c", "FINISHED", "completed", "4", 70.0, {"loss.w": "0.8"}, late),
    ]
    budget, values = equal_budget(trials)
    assert budget == 2 and values == {"a": 20.0, "b": 30.0, "c": 20.0}
    imp = param_importances(trials)
    assert imp.budget == 2 and "up to epoch 2" in imp.to_json()["objective"]


def test_importances_conditional_alias_and_too_few():
    trials = [
        _trial(0, 50.0, **{"loss.a": "0.1", "loss.a.choice": "0.1", "loss.c": "x", "loss.k": "1"}),
        _trial(1, 60.0, **{"loss.a": "0.5", "loss.a.choice": "0.5", "loss.c": "y", "loss.k": "1"}),
        _trial(2, 70.0, **{"loss.a": "0.9", "loss.a.choice": "0.9", "loss.k": "1"}),
        _trial(3, 55.0, **{"loss.a": "0.3", "loss.a.choice": "0.3", "loss.k": "1"}),
        _trial(4, math.nan, **{"loss.a": "0.7", "loss.a.choice": "0.7", "loss.k": "1"}),
    ]
    imp = param_importances(trials)
    assert imp.message is None and imp.n_trials == 4
    assert imp.params == ["loss.a"] and imp.aliases == {"loss.a": ["loss.a.choice"]}
    assert imp.skipped["loss.c"].startswith("conditional") and imp.skipped["loss.k"] == "constant"
    assert imp.values == pytest.approx({"loss.a": 1.0})

    few = param_importances(trials[:2] + [_trial(5, 40.0, "FAILED", **{"loss.a": "0.2"})])
    assert few.values == {} and "(have 2)" in (few.message or "")
    flat = param_importances([_trial(i, 50.0 + i, **{"loss.k": "1"}) for i in range(4)])
    assert flat.values == {} and "varies" in (flat.message or "")


def test_leaderboard_fits_120_columns_with_many_params() -> None:
    """aux_weight-like store: 25 trials, 17 searched params with long names, long run names."""
    keys = [f"loss.{h}.{t}.weight" for h in ("decode", "aux") for t in ("ce", "lovasz_softmax")]
    keys = [f"{k}.{s}" for k in keys for s in ("start", "end", "gamma", "value")] + [CHOICE]
    trials = []
    for i in range(25):
        params = {k: str(0.123456789 * (i + j)) for j, k in enumerate(keys)}
        params[CHOICE] = ["none", "a_label_that_is_rather_long_indeed"][i % 2]
        params["loss.decode.ce.weight"] = "1.0"
        name = f"t{i:02d} lovasz+decay+a_very_long_option_label"
        trials.append(
            TrialRecord(f"r{i}", name, "FINISHED", "early_stopping", "12", 90.0 - i, params)
        )
    buffer = io.StringIO()
    print_leaderboard(
        trials,
        "Leaderboard of aux_weight-20250101-120000 (best val mIoU, %)",
        file=buffer,
        csv="report/aux_weight-20250101-120000/leaderboard.csv",
    )
    text = buffer.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 120, text
    assert "t00 lovasz" in text and "t09 lovasz" in text and "t10 lovasz" not in text
    assert "15 more in the CSV" in text and "leaderboard.csv" in text
    assert "aux.ce.weight" in text  # the choice, first and without the shared "loss."
    assert "loss.decode" not in text and "more searched params" in text


@pytest.mark.slow
def test_report_on_a_real_tiny_search(tiny_search: TinySearch, tmp_path: Path, capsys) -> None:
    assert tiny_search.proc.returncode == 0, tiny_search.proc.stderr[-3000:]
    out = tmp_path / "report"
    args = ["--tracking-uri", tiny_search.uri, "--experiment", tiny_search.experiment]
    assert main([*args, "--out", str(out), "--no-log"]) == 0
    printed = capsys.readouterr().out
    assert max(len(line) for line in printed.splitlines()) <= 120
    schedules = imread(out / "schedules.png")
    assert schedules.shape[0] > 200 and schedules.shape[1] > 400
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and len(html) > 50_000  # the pictures inline
    rows = _rows(out / "leaderboard.csv")
    assert len(rows) == 6
    for row in rows:  # every leaderboard row is on the page
        assert f"<td>{row['trial']}</td>" in html and row["run_id"] in html
    pictures = {p.name for p in out.glob("*.png")}  # importances.png only with importances
    assert {"curves.png", "schedules.png", "best_predictions.png"} <= pictures
    assert html.count("data:image/png;base64,") == len(pictures)
