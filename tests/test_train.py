from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import sqlite_store
from tune_losses.config import load_experiment
from tune_losses.tiny import tiny_experiment
from tune_losses.train import main


def test_train_cli_writes_history_summary_and_plots(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    raw = tiny_experiment()
    raw["tracking"] = {"uri": sqlite_store(tmp_path / "m.db"), "experiment": "train"}
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["--config", str(config), "--out", str(out), "--mlflow"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    best = json.loads((out / "best.json").read_text())
    assert best["best_val_mIoU"] == pytest.approx(max(h["val/mIoU"] for h in history))
    assert (out / "confmat.png").stat().st_size > 0 and (out / "state.pt").is_file()
    assert load_experiment(out / "config.yaml").train.epochs == 2
    client = MlflowClient(raw["tracking"]["uri"])
    run = client.search_runs([client.get_experiment_by_name("train").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "val/mIoU")) == 2


def test_train_cli_bad_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"data": {"format": "folders", "root": str(tmp_path)}}))
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_train_cli_loss_that_cannot_run_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A per-class option of the wrong length only fails inside the term: the preflight
    batch of ``build_run`` catches it before the run folder exists."""
    config = tmp_path / "bad.yaml"
    raw = tiny_experiment()
    raw["loss"] = {"decode": {"focal": {"weight": 1.0, "alpha": [0.5, 0.5]}}}
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {config}: loss: ") and "alpha" in err and "\n" not in err
    assert not out.exists()
