"""A search's run folder under ``--storage``: its name, the state ``--resume`` reads back,
and the best config written at the end."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tune_losses.config import ConfigError

STATE_FILE = "tune_losses.json"
TUNER_FILE = "tuner.pkl"  # written by Ray's Tuner; its presence makes a folder resumable
STUDY_FILE = "optuna.db"  # the Optuna study, unless search.optuna_storage names another


def storage_root(storage: str | None) -> str:
    """``--storage`` as an absolute path (or URI as given); ``./ray_results`` by default."""
    if storage:
        return storage if "://" in storage else str(Path(storage).resolve())
    return str(Path("ray_results").resolve())


def new_name(space_file: Path) -> str:
    """``<space stem>-<YYYYmmdd-HHMMSS>``: the Ray run name and the MLflow parent's name."""
    return f"{space_file.stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def resume_dir(storage: str, space_file: Path, name: str) -> Path:
    """The run folder to resume: ``name``, or the latest search of ``space_file``."""
    root = Path(storage)
    if name != "latest":
        path = root / name
        if not (path / STATE_FILE).is_file() or not (path / TUNER_FILE).is_file():
            raise ConfigError(f"--resume {name}: no resumable search of tune_losses in {root}")
        return path
    found = sorted(
        (
            p
            for p in root.glob(f"{space_file.stem}-*/{STATE_FILE}")
            if (p.parent / TUNER_FILE).is_file()
        ),
        key=lambda p: p.stat().st_mtime,
    )
    if not found:
        raise ConfigError(f"--resume: no earlier search of {space_file} in {root}")
    return found[-1].parent


def read_state(run_dir: Path) -> dict[str, Any]:
    """The state a search saved when it started (store, experiment, totals, parent run)."""
    return json.loads((run_dir / STATE_FILE).read_text())


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Save the search's state in its run folder (created if needed)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / STATE_FILE).write_text(json.dumps(state))
