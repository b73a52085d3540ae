"""End-to-end searches through the CLI entry point, read back from the MLflow store."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from conftest import (
    MlflowServer,
    RayCluster,
    TinySearch,
    assert_one_value_per_step,
    png_size,
    process_tree,
    run_cli,
    run_notebook,
    runs_of,
    sigkill_after,
    start_search,
    write_space,
)
from tune_losses.config import load_experiment
from tune_losses.engine import PREVIEW_IMAGES
from tune_losses.plots import predictions_png_size
from tune_losses.search import main
from tune_losses.train import main as train_main

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
    _assert_the_story(client, parent, children, tmp_path)
    report_dir = next(tiny_search.storage.glob("*/report"))
    for name in ("curves.png", "importances.png", "schedules.png", "report.html"):
        assert (report_dir / name).is_file(), name
        assert f"report/{name}" in {
            a.path for a in client.list_artifacts(parent.info.run_id, "report")
        }


def _assert_the_story(client: MlflowClient, parent: Run, children: list[Run], tmp: Path) -> None:
    """What issue 11 asks a parent and its children to tell, read back from the store."""
    trials = sorted(children, key=lambda c: -c.data.metrics.get("best_val_mIoU", -1.0))
    best = trials[0]
    note = parent.data.tags["mlflow.note.content"]
    link = f"#/experiments/{parent.info.experiment_id}/runs/{best.info.run_id}"
    assert f"**Best trial: [{best.info.run_name}]({link})**" in note
    assert "python -m tune_losses.search --space" in note and "python -m tune_losses.train" in note
    reasons = [c.data.tags["stop_reason"] for c in children]
    metrics = parent.data.metrics
    assert metrics["trials_pruned"] == reasons.count("asha")
    assert metrics["trials_failed"] == reasons.count("error") == 0
    assert metrics["trials_completed"] + metrics["trials_pruned"] == len(children)
    assert metrics["epochs_spent"] == sum(int(c.data.tags["epochs_run"]) for c in children)
    tags = parent.data.tags
    assert tags["version.torch"] and tags["version.ray"] and tags["version.mlflow"]
    assert "version.segmentation_models_pytorch" in tags and "version.optuna" in tags
    names = sorted(c.info.run_name for c in children)
    assert [n.split()[0] for n in names] == [f"t{i:02d}" for i in range(1, len(children) + 1)]
    for child in children:
        params = child.data.params
        chosen = [v for k, v in params.items() if k.endswith(".choice")]
        assert sorted(child.info.run_name.split()[1].split("+")) == sorted(chosen)
        png = Path(client.download_artifacts(child.info.run_id, "predictions.png", str(tmp)))
        assert png_size(png.read_bytes()) == predictions_png_size(PREVIEW_IMAGES)


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
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
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


def fifo_search(tmp_path: Path, epochs: int) -> tuple[str, list[str]]:
    """A 3-trial FIFO space of ``epochs`` epochs in ``tmp_path``: the store's URI and the
    search's arguments (space, store, experiment ``e2e``, storage ``tmp_path/ray``)."""
    space = write_space(
        tmp_path / "space.yaml",
        train={"epochs": epochs, "lr": 0.005},
        search={"num_samples": 3, "max_concurrent": 2, "scheduler": "fifo"},
    )
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = ["--space", str(space), "--tracking-uri", uri, "--experiment", "e2e"]
    return uri, [*args, "--storage", str(tmp_path / "ray")]


@pytest.mark.slow
def test_killed_driver_resumes_with_one_value_per_step(tmp_path: Path) -> None:
    """SIGKILL of the driver once a trial has reported twice (Ray's last snapshot may be
    older), then --resume: the reopened runs end FINISHED, no step logged twice."""
    uri, args = fifo_search(tmp_path, epochs=4)
    out = sigkill_after(start_search(tmp_path, *args), "epoch 2/4")
    assert "epoch 2/4" in out, out[-3000:]
    client, parents, children = runs_of(uri)
    assert parents[0].info.status == "RUNNING"  # SIGKILL: nothing could close them
    assert "RUNNING" in {c.info.status for c in children}

    done = run_cli(tmp_path, *args, "--resume")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client, parents, children = runs_of(uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3
    assert len({c.data.tags["ray.trial_id"] for c in children}) == 3
    for child in children:
        assert child.info.status == "FINISHED"
        assert_one_value_per_step(client, child)
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "epoch")]
        assert steps == list(range(1, 5)), steps


@pytest.mark.slow
def test_search_logs_to_an_mlflow_server(tmp_path: Path, mlflow_server: str) -> None:
    space = write_space(
        tmp_path / "space.yaml",
        train={"epochs": 2, "lr": 0.005},
        search={"num_samples": 2, "max_concurrent": 2, "scheduler": "fifo"},
    )
    proc = run_cli(
        tmp_path,
        *("--space", str(space), "--tracking-uri", mlflow_server, "--experiment", "e2e"),
        *("--storage", str(tmp_path / "ray")),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (tmp_path / "mlruns.db").exists()
    client, parents, children = runs_of(mlflow_server)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    for child in children:
        arts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert "trial_config.yaml" in arts
        text = Path(
            client.download_artifacts(child.info.run_id, "trial_config.yaml", str(tmp_path))
        )
        assert load_experiment(text).train.epochs == 2
    _assert_the_story(client, parents[0], children, tmp_path)
    _assert_the_ui_shows_it(mlflow_server, parents[0].info.experiment_id)


def _rest(url: str, path: str, body: dict | None = None) -> dict:
    """A call to the MLflow server's REST API (what its UI reads), as parsed JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def _assert_the_ui_shows_it(url: str, experiment_id: str) -> None:
    runs = _rest(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parent = next(r for r, t in zip(runs, tags, strict=True) if "mlflow.parentRunId" not in t)
    children = [r for r, t in zip(runs, tags, strict=True) if "mlflow.parentRunId" in t]
    ptags = {t["key"]: t["value"] for t in parent["data"]["tags"]}
    metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
    assert metrics["trials_completed"] + metrics["trials_pruned"] == len(children) == 2
    best = max(
        children,
        key=lambda r: {m["key"]: m["value"] for m in r["data"]["metrics"]}["best_val_mIoU"],
    )
    link = f"#/experiments/{experiment_id}/runs/{best['info']['run_id']}"
    assert f"[{best['info']['run_name']}]({link})" in ptags["mlflow.note.content"]
    for child in children:
        run_id = child["info"]["run_id"]
        assert child["info"]["run_name"].split()[0] in ("t01", "t02")
        listed = _rest(url, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}")
        assert "predictions.png" in {f["path"] for f in listed["files"]}
        query = urllib.parse.urlencode({"path": "predictions.png", "run_uuid": run_id})
        with urllib.request.urlopen(f"{url}/get-artifact?{query}", timeout=30) as resp:
            assert png_size(resp.read()) == predictions_png_size(PREVIEW_IMAGES)
    listed = _rest(
        url, f"/api/2.0/mlflow/artifacts/list?run_id={parent['info']['run_id']}&path=report"
    )
    assert "report/report.html" in {f["path"] for f in listed["files"]}


def ray_results(storage: Path) -> dict[str, list[dict]]:
    """Every result Ray Tune recorded (``result.json``), by trial id."""
    found: dict[str, list[dict]] = {}
    for path in storage.rglob("result.json"):
        for line in path.read_text().splitlines():
            if line.strip():
                result = json.loads(line)
                found.setdefault(result["trial_id"], []).append(result)
    return found


@pytest.mark.slow
def test_search_on_a_two_node_ray_cluster(tmp_path: Path, ray_cluster: RayCluster) -> None:
    # random sampling: both trials start at once (TPE would hold the second back until its
    # start-up trial has ended), one on each node
    space = write_space(
        tmp_path / "space.yaml",
        train={"epochs": 2, "lr": 0.005},
        search={"num_samples": 2, "max_concurrent": 2, "scheduler": "fifo", "sampler": "random"},
    )
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    # the driver joins with the head's token file (RAY_AUTH_TOKEN_PATH), in a home of its own
    env = ray_cluster.driver_env(PYTHONPATH=str(ROOT))
    env.pop("RAY_AUTH_MODE")  # the search sets it itself when --address is given
    assert ray_cluster.head is not None and ray_cluster.worker is not None
    nodes = {"head": ray_cluster.head.pid, "worker": ray_cluster.worker.pid}
    seen: dict[str, set[int]] = {name: set() for name in nodes}  # processes under each node
    with (tmp_path / "driver.log").open("w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tune_losses.search", "--space", str(space)]
            + ["--address", ray_cluster.address, "--storage", str(tmp_path / "shared")]
            + ["--tracking-uri", uri, "--experiment", "e2e"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            for name, pid in nodes.items():
                seen[name].update(p for p, _ in process_tree(pid))
            time.sleep(0.3)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.seek(0)
        out = log.read()
    assert proc.returncode == 0, out[-6000:]
    client, parents, children = runs_of(uri)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(c.info.status for c in children) == ["FINISHED", "FINISHED"]
    # one CPU per node and one per trial: one trial ran on each node (the PIDs Ray
    # recorded with each trial's results, among the processes seen under each node)
    results = ray_results(tmp_path / "shared")
    assert sorted(results) == sorted(c.data.tags["ray.trial_id"] for c in children)
    ran_on = {
        trial: {name for name in nodes if {r["pid"] for r in rs} & seen[name]}
        for trial, rs in results.items()
    }
    assert sorted(map(sorted, ran_on.values())) == [["head"], ["worker"]], ran_on


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


@pytest.mark.slow
def test_pbt_search_learns_a_schedule_that_train_replays(tmp_path: Path) -> None:
    """PBT mutates ``train.lr`` and a ``linear`` weight at the exploit of epoch 2; patience
    stops every member after epoch 3 of 4 (no gain of 1000 points), so the winner stopped
    early. The replay of best_config.yaml logs, step for step, the LR and weights that the
    winner's lineage recorded while it ran (``lineage.yaml``), and per epoch the
    ``train/lr`` and ``weight/*`` that the trial running each phase logged to MLflow."""
    space = write_space(
        tmp_path / "space.yaml",
        train={
            "epochs": 4,
            "lr": {"loguniform": [0.002, 0.01]},
            "threads": 1,
            "early_stopping": {"patience": 2, "min_delta": 1000.0},
        },
        search={
            "scheduler": "pbt",
            "num_samples": 2,
            "max_concurrent": 2,
            "cpus_per_trial": 0.5,
            "perturbation_interval": 2,
        },
        loss={
            "decode": {"ce": {"weight": 1.0}, "dice": {"weight": {"uniform": [0.0, 1.0]}}},
            "aux": {
                "ce": {
                    "weight": {
                        "schedule": "linear",
                        "start": {"uniform": [0.3, 1.0]},
                        "end": {"uniform": [0.05, 0.3]},
                    }
                }
            },
        },
    )
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    storage = tmp_path / "ray"
    args = ["--space", str(space), "--tracking-uri", uri, "--experiment", "e2e"]
    proc = run_cli(tmp_path, *args, "--storage", str(storage))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    client, parents, children = runs_of(uri)
    assert len(parents) == 1 and len(children) == 2
    by_trial = {c.data.tags["ray.trial_id"]: c for c in children}
    assert len(by_trial) == 2
    cloned = [c for c in children if "pbt.cloned_from" in c.data.tags]
    assert len(cloned) == 1, (
        "the worse member copies the better at epoch 2:\n" + proc.stdout[-4000:]
    )
    lr_after = client.get_metric_history(cloned[0].info.run_id, "train/lr")
    assert len({round(m.value, 12) for m in lr_after}) > 1
    for child in children:
        for metric in ("weight/decode/dice", "train/lr"):
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, metric))
            assert steps == [1, 2, 3], "one value per epoch, stopped early after epoch 3"
        assert child.data.tags["stop_reason"] == "early_stopping"

    (run_dir,) = storage.iterdir()
    best = load_experiment(run_dir / "best_config.yaml")
    assert (best.train.epochs, best.train.stop_after) == (4, 3)
    winner = by_trial[best_trial(parents[0])]
    local = tmp_path / "lineage"
    local.mkdir()
    lineage = yaml.safe_load(
        Path(client.download_artifacts(winner.info.run_id, "lineage.yaml", str(local))).read_text()
    )
    phases = lineage["phases"]
    assert [p["from_epoch"] for p in phases] == [1, 3][: len(phases)]
    assert [p.from_epoch for p in best.phases] == [p["from_epoch"] for p in phases[1:]]

    out = tmp_path / "replay"
    assert train_main(["--config", str(run_dir / "best_config.yaml"), "--out", str(out)]) == 0
    replay = json.loads((out / "best.json").read_text())["steps"]
    assert set(replay) == set(lineage["steps"]) >= {"lr", "weight/aux/ce", "weight/decode/dice"}
    for key, recorded in lineage["steps"].items():
        assert len(recorded) == 3 * 2  # 3 epochs of 2 steps (16 images, batch 8)
        assert replay[key] == pytest.approx(recorded, rel=1e-6, abs=0), key
    # per epoch, against what the trial that ran each phase logged to MLflow
    epochs = json.loads((out / "history.json").read_text())
    ends = [p["from_epoch"] for p in phases[1:]] + [4]
    for phase, end in zip(phases, ends, strict=True):
        run_id = by_trial[phase["trial"]].info.run_id
        for metric in ("train/lr", "weight/aux/ce", "weight/decode/dice"):
            logged = {m.step: m.value for m in client.get_metric_history(run_id, metric)}
            for epoch in range(phase["from_epoch"], end):
                expected = logged[epoch]
                assert epochs[epoch - 1][metric] == pytest.approx(expected, rel=1e-6), metric


def best_trial(parent) -> str:
    return parent.data.tags["best_trial"]


@pytest.mark.slow
def test_multi_objective_search_writes_its_pareto_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = write_space(
        tmp_path / "space.yaml",
        train={"epochs": 2, "lr": 0.005},
        search={
            "metric": ["val/mIoU", "val/boundary_IoU"],
            "mode": ["max", "max"],
            "scheduler": "fifo",
            "num_samples": 4,
            "max_concurrent": 2,
            "n_startup_trials": 2,
        },
    )
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    storage = tmp_path / "ray"
    args = ["--space", str(space), "--tracking-uri", uri, "--experiment", "e2e"]
    proc = run_cli(tmp_path, *args, "--storage", str(storage))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    client, parents, children = runs_of(uri)
    values = {
        c.info.run_id: (c.data.metrics["best_val_mIoU"], c.data.metrics["best_val_boundary_IoU"])
        for c in children
    }
    trial_of = {c.info.run_id: c.data.tags["ray.trial_id"] for c in children}
    (run_dir,) = storage.iterdir()
    members = {row["run_id"] for row in csv.DictReader((run_dir / "pareto.csv").open())}
    assert members, "an empty front"

    def dominated(t: str) -> bool:
        return any(
            all(o >= v for o, v in zip(other, values[t], strict=True)) and other != values[t]
            for other in values.values()
        )

    assert not any(dominated(t) for t in members)
    assert all(dominated(t) for t in set(values) - members)
    files = {f"best_config_{trial_of[t]}.yaml" for t in members}
    for file in files:
        assert load_experiment(run_dir / file).search.objectives[1] == ("val/boundary_IoU", "max")
    arts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert "pareto.csv" in arts and files <= arts
    # the review notebook draws the front
    nb = run_notebook(uri, "e2e", tmp_path, monkeypatch)
    (cell,) = [c for c in nb.cells if "tracking.ranking(parent)" in c.source]
    assert any("image/png" in o.get("data", {}) for o in cell.outputs)


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
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = ["--space", str(space), "--tracking-uri", uri, "--experiment", "e2e"]
    proc = run_cli(tmp_path, *args, "--storage", str(tmp_path / "ray"), path=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
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


def test_search_logs_to_a_team_mlflow_on_postgresql(
    tmp_path: Path, mlflow_postgres_server: MlflowServer
) -> None:
    """Four trials at once against an ``mlflow server`` on PostgreSQL that serves the
    artifacts: every child complete (params, one value per epoch per metric, artifacts
    read back through the server), nothing left RUNNING, no "database is locked"."""
    epochs = 3
    space = write_space(
        tmp_path / "space.yaml",
        train={"epochs": epochs, "lr": 0.005},
        search={
            "num_samples": 4,
            "max_concurrent": 4,
            "cpus_per_trial": 0.5,
            "scheduler": "fifo",
            "sampler": "random",  # four at once (TPE holds back all but its start-up trial)
        },
    )
    url = mlflow_postgres_server.url
    proc = run_cli(
        tmp_path,
        *("--space", str(space), "--tracking-uri", url, "--experiment", "e2e"),
        *("--storage", str(tmp_path / "ray")),
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "mlartifacts").exists()
    for text in (output, mlflow_postgres_server.log.read_text()):
        assert "database is locked" not in text

    client, parents, children = runs_of(url)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == 4
    assert len({c.data.tags["ray.trial_id"] for c in children}) == 4
    for child in children:
        run_id = child.info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.tags["epochs_run"] == str(epochs)
        params = child.data.params
        assert 0.0 <= float(params["loss.decode.dice.weight"]) <= 1.0
        assert params["loss.aux.ce.weight.choice"] in ("constant", "decay")
        assert params["train.epochs"] == str(epochs)
        per_epoch = [k for k in child.data.metrics if k.startswith(("train/", "val/", "weight/"))]
        assert {"val/mIoU", "train/loss", "weight/decode/dice", "weight/aux/ce"} <= set(per_epoch)
        for key in [*per_epoch, "best_val_mIoU"]:
            steps = [m.step for m in client.get_metric_history(run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), (key, steps)
        arts = {a.path for a in client.list_artifacts(run_id)}
        assert {"trial_config.yaml", "loss_setup.json", "best_epoch.json", "best_epoch"} <= arts
        local = tmp_path / "download" / run_id
        local.mkdir(parents=True)
        config = Path(client.download_artifacts(run_id, "trial_config.yaml", str(local)))
        assert load_experiment(config).train.epochs == epochs
        best = Path(client.download_artifacts(run_id, "best_epoch.json", str(local)))
        summary = json.loads(best.read_text())
        assert summary["epochs_run"] == epochs
        assert summary["best_val_mIoU"] == pytest.approx(child.data.metrics["best_val_mIoU"])
    # the artifacts went through the server into its --artifacts-destination
    stored = list(mlflow_postgres_server.artifacts.rglob("trial_config.yaml"))
    assert len(stored) == 4, stored


@pytest.mark.slow
def test_a_trial_survives_the_loss_of_its_worker_node(
    tmp_path: Path, ray_cluster: RayCluster
) -> None:
    """Two trials, one CPU each, on a head and a worker node of one CPU each: one trial
    runs on each node. Once the worker node's trial has reported 2 epochs, every process
    of the worker node is SIGKILLed. That trial is retried (FailureConfig) on the head,
    once the head's trial is done, from its last checkpoint, and the search completes
    with one child run per trial, each with one value per epoch per metric.

    Ray registers a reported epoch's checkpoint only after the driver has seen the
    result (a save round trip), so the kill may land before the last printed epoch's
    checkpoint is known: the trial then resumes one epoch earlier and runs that epoch
    again. Never from scratch: epoch 1's checkpoint is registered before epoch 2 runs."""
    epochs = 8
    space = write_space(
        tmp_path / "space.yaml",
        train={"epochs": epochs, "lr": 0.005, "early_stopping": {"patience": None}},
        search={
            "num_samples": 2,
            "max_concurrent": 2,
            "cpus_per_trial": 1,
            "scheduler": "fifo",
            "sampler": "random",  # both at once (TPE holds back all but its start-up trial)
        },
    )
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    storage = tmp_path / "shared"
    env = ray_cluster.driver_env(PYTHONPATH=str(ROOT))
    assert ray_cluster.worker is not None
    worker_node = ray_cluster.worker.pid
    proc = subprocess.Popen(
        [sys.executable, "-m", "tune_losses.search", "--space", str(space)]
        + ["--address", ray_cluster.address, "--storage", str(storage)]
        + ["--tracking-uri", uri, "--experiment", "e2e"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(600, proc.kill)
    watchdog.start()
    lines: list[str] = []
    printed: dict[str, list[int]] = {}  # the epochs the driver printed, by trial
    killed: list[int] = []
    started = kill_time = time.monotonic()
    try:
        for line in proc.stdout:
            lines.append(line)
            found = re.search(r"\] (\S+) epoch (\d+)/", line)
            if found:
                printed.setdefault(found.group(1), []).append(int(found.group(2)))
            if found and not killed:
                # the trial on the worker node: Ray records the PID of each result
                on_node = {pid for pid, _ in process_tree(worker_node)}
                there = [t for t, rs in ray_results(storage).items() if rs[-1]["pid"] in on_node]
                if there and len(printed.get(there[0], [])) >= 2:
                    killed = ray_cluster.kill_worker()
                    kill_time = time.monotonic()
        proc.wait(timeout=60)
        ended = time.monotonic()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert killed, "the worker node's trial never reported 2 epochs:\n" + out[-3000:]
    assert proc.returncode == 0, out[-4000:]
    assert not ray_cluster.worker_alive()
    # Ray's health check marks the node dead some seconds after its processes die; a search
    # that ends quickly (the retry reuses the head's worker) can finish before that
    deadline = time.monotonic() + 120
    while ray_cluster.cpus() != 1.0 and time.monotonic() < deadline:
        time.sleep(2)
    assert ray_cluster.cpus() == 1.0, "the dead worker node is still counted"

    # the trial that ran on the worker node, by the PID Ray recorded with its results
    results = ray_results(storage)
    assert set(results) == set(printed) and len(printed) == 2
    (lost,) = [t for t, rs in results.items() if {r["pid"] for r in rs} & set(killed)]
    before = [r["epoch"] for r in results[lost] if r["pid"] in killed]
    after = [r["epoch"] for r in results[lost] if r["pid"] not in killed]
    assert before and after, "the worker node's trial did not go on after the kill"
    assert 2 <= before[-1] < epochs, before
    # retried from its last checkpoint (or the one before, see above), not from scratch
    assert after[0] in (before[-1], before[-1] + 1), (before, after)
    assert after == list(range(after[0], epochs + 1)), after
    for trial, shown in printed.items():
        assert sorted(set(shown)) == list(range(1, epochs + 1)), (trial, shown)
        assert len(shown) <= epochs + (trial == lost), (trial, shown)

    client, parents, children = runs_of(uri)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(c.data.tags["ray.trial_id"] for c in children) == sorted(printed)
    for child in children:
        run_id = child.info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.tags["epochs_run"] == str(epochs)
        history = client.get_metric_history(run_id, "val/mIoU")
        assert child.data.metrics["best_val_mIoU"] == pytest.approx(max(m.value for m in history))
        for key in child.data.metrics:
            steps = sorted(m.step for m in client.get_metric_history(run_id, key))
            # one value per epoch: an epoch run again after the kill is not logged twice
            assert steps == list(range(1, epochs + 1)), (
                child.data.tags["ray.trial_id"],
                key,
                steps,
            )
    print(
        f"killed {len(killed)} worker-node processes {kill_time - started:.0f} s into the "
        f"search, after {lost}'s epochs {before}; it went on at epoch {after[0]} on the "
        f"head; the search ended {ended - kill_time:.0f} s after the kill"
    )
