"""The search's other schedulers end to end: PBT (its learned schedule replayed by
``train``) and a multi-objective search (its Pareto front)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from conftest import (
    run_notebook,
    runs_of,
    search_in,
    write_space,
)
from tune_losses.config import load_experiment
from tune_losses.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]


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
    searched = search_in(tmp_path, space)
    uri, run_dir = searched.uri, searched.run_dir

    client, parents, children = runs_of(uri)
    assert len(parents) == 1 and len(children) == 2
    by_trial = {c.data.tags["ray.trial_id"]: c for c in children}
    assert len(by_trial) == 2
    cloned = [c for c in children if "pbt.cloned_from" in c.data.tags]
    assert len(cloned) == 1, (
        "the worse member copies the better at epoch 2:\n" + searched.out[-4000:]
    )
    lr_after = client.get_metric_history(cloned[0].info.run_id, "train/lr")
    assert len({round(m.value, 12) for m in lr_after}) > 1
    for child in children:
        for metric in ("weight/decode/dice", "train/lr"):
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, metric))
            assert steps == [1, 2, 3], "one value per epoch, stopped early after epoch 3"
        assert child.data.tags["stop_reason"] == "early_stopping"

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
    searched = search_in(tmp_path, space)
    uri, run_dir = searched.uri, searched.run_dir

    client, parents, children = runs_of(uri)
    values = {
        c.info.run_id: (c.data.metrics["best_val_mIoU"], c.data.metrics["best_val_boundary_IoU"])
        for c in children
    }
    trial_of = {c.info.run_id: c.data.tags["ray.trial_id"] for c in children}
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
