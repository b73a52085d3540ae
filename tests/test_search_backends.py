"""A search against the servers and clusters a team runs it on: an MLflow server (its
UI's REST API), one on PostgreSQL, a two-node Ray cluster, the loss of a worker node."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import (
    MlflowServer,
    RayCluster,
    assert_the_story,
    png_size,
    process_tree,
    run_cli,
    runs_of,
    sqlite_store,
    write_space,
)
from tune_losses.config import load_experiment
from tune_losses.engine import PREVIEW_IMAGES
from tune_losses.plots import predictions_png_size

ROOT = Path(__file__).resolve().parents[1]


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
    assert_the_story(client, parents[0], children, tmp_path)
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
    # start-up trial has ended), one on each node. Eight epochs, no early stop: on a loaded
    # machine the worker node's actor may take longer to start than a 2-epoch trial on the
    # head takes to end, and Ray would then hand the second trial to the head's idle actor
    # (reuse_actors)
    space = write_space(
        tmp_path / "space.yaml",
        train={"epochs": 8, "lr": 0.005, "early_stopping": {"patience": None}},
        search={"num_samples": 2, "max_concurrent": 2, "scheduler": "fifo", "sampler": "random"},
    )
    uri = sqlite_store(tmp_path / "mlruns.db")
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


def _in_postgresql(server: MlflowServer, query: str, *params: object) -> list[tuple]:
    """Rows of ``query`` read straight from the team server's PostgreSQL database."""
    import psycopg

    with psycopg.connect(server.backend) as conn:
        return conn.execute(query, params).fetchall()


@pytest.mark.slow
def test_a_team_mlflow_keeps_its_store_in_postgresql(mlflow_postgres_server: MlflowServer) -> None:
    """The team's server answers, and what it serves is the PostgreSQL database: MLflow's
    schema is there, and the experiments the server lists are the database's rows."""
    server = mlflow_postgres_server
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as resp:
        assert resp.status == 200
    assert _in_postgresql(server, "SELECT version_num FROM alembic_version")
    listed = _rest(server.url, "/api/2.0/mlflow/experiments/search", {"max_results": 100})
    stored = _in_postgresql(
        server, "SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = %s", "active"
    )
    assert "Default" in {name for _, name in stored}
    assert {(e["experiment_id"], e["name"]) for e in listed["experiments"]} == {
        (str(i), name) for i, name in stored
    }


@dataclass
class TeamSearch:
    """A search logged to the team's MLflow on PostgreSQL: its folder, output and server."""

    root: Path
    proc: subprocess.CompletedProcess[str]
    server: MlflowServer


TEAM_EPOCHS = 3


@pytest.fixture(scope="module")
def team_search(
    tmp_path_factory: pytest.TempPathFactory, mlflow_postgres_server: MlflowServer
) -> TeamSearch:
    """Four trials, two at a time (every MLflow write goes through the driver), against an
    ``mlflow server`` on PostgreSQL that serves the artifacts."""
    root = tmp_path_factory.mktemp("team_search")
    space = write_space(
        root / "space.yaml",
        train={"epochs": TEAM_EPOCHS, "lr": 0.005},
        search={
            "num_samples": 4,
            "max_concurrent": 2,
            "scheduler": "fifo",
            "sampler": "random",  # two at once (TPE holds back all but its start-up trial)
        },
    )
    url = mlflow_postgres_server.url
    proc = run_cli(
        root,
        *("--space", str(space), "--tracking-uri", url, "--experiment", "e2e"),
        *("--storage", str(root / "ray")),
    )
    return TeamSearch(root, proc, mlflow_postgres_server)


@pytest.mark.slow
def test_search_logs_to_a_team_mlflow_on_postgresql(team_search: TeamSearch) -> None:
    """Every child complete (params, one value per epoch per metric), nothing left RUNNING,
    no "database is locked", no local store."""
    proc, epochs = team_search.proc, TEAM_EPOCHS
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    root = team_search.root
    assert not (root / "mlruns.db").exists() and not (root / "mlartifacts").exists()
    for text in (output, team_search.server.log.read_text()):
        assert "database is locked" not in text

    client, parents, children = runs_of(team_search.server.url)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == 4
    stored = _in_postgresql(
        team_search.server,
        "SELECT run_uuid, status FROM runs WHERE experiment_id = %s",
        int(parents[0].info.experiment_id),
    )  # the database holds them: the parent and its four children, all FINISHED
    assert dict(stored) == {r.info.run_id: "FINISHED" for r in [*parents, *children]}
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


@pytest.mark.slow
def test_a_team_mlflow_serves_every_childs_artifacts(team_search: TeamSearch) -> None:
    """Each child's artifacts, read back through the server, and stored in its
    ``--artifacts-destination``."""
    proc, epochs = team_search.proc, TEAM_EPOCHS
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    client, _, children = runs_of(team_search.server.url)
    assert len(children) == 4
    for child in children:
        run_id = child.info.run_id
        arts = {a.path for a in client.list_artifacts(run_id)}
        assert {"trial_config.yaml", "loss_setup.json", "best_epoch.json", "best_epoch"} <= arts
        local = team_search.root / "download" / run_id
        local.mkdir(parents=True)
        config = Path(client.download_artifacts(run_id, "trial_config.yaml", str(local)))
        assert load_experiment(config).train.epochs == epochs
        best = Path(client.download_artifacts(run_id, "best_epoch.json", str(local)))
        summary = json.loads(best.read_text())
        assert summary["epochs_run"] == epochs
        assert summary["best_val_mIoU"] == pytest.approx(child.data.metrics["best_val_mIoU"])
    # the artifacts went through the server into its --artifacts-destination
    stored = list(team_search.server.artifacts.rglob("trial_config.yaml"))
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
    uri = sqlite_store(tmp_path / "mlruns.db")
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
