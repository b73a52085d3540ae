"""A search's run folder under ``--storage``: its name, the state ``--resume`` reads back
and checks the command against, and the best config written at the end.

``--storage`` is a local path or a URI (``s3://``, ``gs://``, ``file://``): every file goes
through ``pyarrow.fs`` (as Ray's own results do), so a search resumes from either.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune_losses.config import ConfigError

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

STATE_FILE = "tune_losses.json"
TUNER_FILE = "tuner.pkl"  # written by Ray's Tuner; its presence makes a folder resumable
STUDY_FILE = "optuna.db"  # the Optuna study, unless search.optuna_storage names another


@dataclass
class SearchRun:
    """One search being run: where its files go and what ``--resume`` needs."""

    name: str
    storage: str
    run_dir: str  # a path or a URI (read and written through pyarrow.fs alike)
    state: dict[str, Any]

    @property
    def local(self) -> bool:
        return not is_uri(self.storage)


def storage_root(storage: str | None) -> str:
    """``--storage`` as an absolute path (or URI as given); ``./ray_results`` by default."""
    if storage:
        return storage if is_uri(storage) else str(Path(storage).resolve())
    return str(Path("ray_results").resolve())


def is_uri(storage: str) -> bool:
    """Whether ``storage`` is a URI (``s3://``, ``file://`` ...) rather than a local path."""
    return "://" in storage


def join(root: str, name: str) -> str:
    """``root/name`` for a path or a URI alike (``Path`` would fold ``s3://`` to ``s3:/``)."""
    return f"{root.rstrip('/')}/{name}"


def _fs(location: str) -> tuple[FileSystem, str]:
    """The pyarrow filesystem of a path or URI and the path inside it."""
    from pyarrow.fs import FileSystem

    return FileSystem.from_uri(location)


def new_name(space_file: Path) -> str:
    """``<space stem>-<YYYYmmdd-HHMMSS>``: the Ray run name and the MLflow parent's name."""
    return f"{space_file.stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _resumable(fs: FileSystem, path: str) -> bool:
    """Whether the run folder ``path`` holds our state and Ray's tuner."""
    from pyarrow.fs import FileType

    infos = fs.get_file_info([join(path, STATE_FILE), join(path, TUNER_FILE)])
    return all(info.type == FileType.File for info in infos)


def resume_dir(storage: str, space_file: Path, name: str) -> str:
    """The run folder to resume: ``name`` (a folder directly under ``storage``), or the
    latest search of ``space_file`` there."""
    from pyarrow.fs import FileSelector, FileType

    fs, root = _fs(storage)
    if name != "latest":
        if name in ("", ".", "..") or "/" in name or "\\" in name or Path(name).is_absolute():
            raise ConfigError(f"--resume {name}: give a search's folder name inside --storage")
        if not _resumable(fs, join(root, name)):
            raise ConfigError(f"--resume {name}: no resumable search of tune_losses in {storage}")
        return join(storage, name)
    infos = fs.get_file_info(FileSelector(root, allow_not_found=True))
    folders = [
        i
        for i in infos
        if i.type == FileType.Directory and i.base_name.startswith(space_file.stem + "-")
    ]
    found = [i for i in folders if _resumable(fs, i.path)]
    if not found:
        raise ConfigError(f"--resume: no earlier search of {space_file} in {storage}")
    mtime = {i.path: fs.get_file_info(join(i.path, STATE_FILE)).mtime for i in found}
    latest = max(found, key=lambda i: (mtime[i.path], i.base_name))
    return join(storage, latest.base_name)


def read_text(run_dir: str, filename: str) -> str:
    """A text file of the run folder."""
    fs, path = _fs(run_dir)
    with fs.open_input_stream(join(path, filename)) as stream:
        return stream.read().decode()


def has_file(run_dir: str, filename: str) -> bool:
    """Whether the run folder holds ``filename``."""
    from pyarrow.fs import FileType

    fs, path = _fs(run_dir)
    return fs.get_file_info(join(path, filename)).type == FileType.File


def write_text(run_dir: str, filename: str, text: str) -> str:
    """Write a text file into the run folder (created if needed); returns its location."""
    fs, path = _fs(run_dir)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(join(path, filename)) as stream:
        stream.write(text.encode())
    return join(run_dir, filename)


def read_state(run_dir: str) -> dict[str, Any]:
    """The state a search saved when it started (store, experiment, totals, parent run)."""
    return json.loads(read_text(run_dir, STATE_FILE))


def write_state(run_dir: str, state: dict[str, Any]) -> None:
    """Save the search's state in its run folder (created if needed)."""
    write_text(run_dir, STATE_FILE, json.dumps(state))


def space_hash(space_file: Path) -> str:
    """SHA-256 of the space file's bytes: a resumed search must run the same file."""
    return hashlib.sha256(space_file.read_bytes()).hexdigest()


def check_resume(
    state: dict[str, Any],
    name: str,
    *,
    space_file: Path,
    overrides: Sequence[str],
    flags: dict[str, Any],
) -> None:
    """Refuse a ``--resume`` whose command contradicts the saved search: another space
    file content, other ``--set`` values, or a flag (``--num-samples``, ``--seed``,
    ``--scheduler``, ``--cpus-per-trial``, ``--gpus-per-trial``, ``--tracking-uri``,
    ``--experiment``: ``flags`` maps each to its state key and the given value) other than
    the saved value. Omitted ones take the saved values."""
    where = f"--resume {name}"
    saved_hash = state.get("space_sha256")
    if saved_hash is not None and saved_hash != space_hash(space_file):
        raise ConfigError(
            f"{where}: {space_file} is not the space file the search started with "
            f"({state.get('space')}, changed since?); start a new search instead"
        )
    saved_sets = state.get("overrides", [])
    if overrides and list(overrides) != list(saved_sets):
        raise ConfigError(
            f"{where}: --set {' '.join(overrides)} differs from the saved search's "
            f"{' '.join(saved_sets) or 'none'}; resume without --set"
        )
    for flag, (key, value) in flags.items():
        if value is not None and key in state and value != state[key]:
            raise ConfigError(
                f"{where}: {flag} {value} contradicts the saved {state[key]}; resume without {flag}"
            )


def check_resumable(run_dir: str, name: str) -> None:
    """Refuse a ``--resume`` that cannot go on: Ray's experiment state is missing from the
    run folder, or its local Optuna study (``optuna.db``, when the search had one) is gone."""
    from pyarrow.fs import FileSelector, FileType

    fs, path = _fs(run_dir)
    files = {i.base_name for i in fs.get_file_info(FileSelector(path)) if i.type == FileType.File}
    if not any(f.startswith("experiment_state-") and f.endswith(".json") for f in files):
        raise ConfigError(
            f"--resume {name}: Ray's experiment state (experiment_state-*.json) is missing "
            f"from {run_dir}; the search cannot go on, start a new one"
        )
    if read_state(run_dir).get("study") == STUDY_FILE and STUDY_FILE not in files:
        raise ConfigError(
            f"--resume {name}: its Optuna study {join(run_dir, STUDY_FILE)} is gone; put it "
            "back, or start a new search"
        )
