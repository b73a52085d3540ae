"""The two fixes to Ray's experiment snapshots (``tune_losses.tune.ray_fixes``), on Ray's
own snapshot manager, syncer and checkpoint deletion."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.fs
import pytest
from ray.train._internal import checkpoint_manager, storage
from ray.train._internal.storage import _FilesystemSyncer
from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

from tune_losses.tune import ray_fixes


def _snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forced: list[bool]
) -> dict[str, Any]:
    """Snapshots in a row through Ray's manager and syncer (one a step, as a search runs;
    ``forced``: whether Ray must copy each), each copy of the staging folder slowed to
    0.3 s; when each was written and copied, and what reached storage."""
    staging, remote = tmp_path / "staging", tmp_path / "remote"
    staging.mkdir()
    launched: list[float] = []  # when each copy was launched (its thread starts later)
    copies: list[tuple[float, float]] = []  # (launched, ended) of each copy
    copy = storage._pyarrow_fs_copy_files

    def slow_copy(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        try:
            return copy(*args, **kwargs)
        finally:
            copies.append((launched[len(copies)], time.monotonic()))

    monkeypatch.setattr(storage, "_pyarrow_fs_copy_files", slow_copy)
    syncer = _FilesystemSyncer(pyarrow.fs.LocalFileSystem(), sync_period=0, sync_timeout=30)
    sync_up = syncer.sync_up

    def timed_sync_up(*args: Any, **kwargs: Any) -> bool:
        launched.append(time.monotonic())
        if not sync_up(*args, **kwargs):
            launched.pop()  # skipped: a copy still runs
            return False
        return True

    syncer.sync_up = timed_sync_up  # type: ignore[method-assign]
    context = SimpleNamespace(
        syncer=syncer,
        experiment_driver_staging_path=str(staging),
        experiment_fs_path=str(remote),
    )
    manager = _ExperimentCheckpointManager(storage=context, checkpoint_period=0)
    writes: list[float] = []
    for i, force in enumerate(forced):

        def save(i: int = i) -> None:
            writes.append(time.monotonic())
            (staging / "experiment_state.json").write_text(f'{{"step": {i}}}')
            tmp = staging / f".tmp-searcher-state-{i}.pkl"  # as Ray's Searcher.save_to_dir
            tmp.write_text(str(i))
            os.replace(tmp, staging / "searcher-state.pkl")

        manager.sync_up_experiment_state(save, force=force)
    syncer.wait()
    return {"copies": copies, "writes": writes, "remote": remote}


def _during_a_copy(run: dict[str, Any]) -> list[float]:
    return [w for w in run["writes"] if any(a <= w <= b for a, b in run["copies"])]


def test_without_the_fix_ray_writes_a_snapshot_while_copying_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the fix exists: Ray's own manager writes over a copy in flight, and skips
    copying that snapshot."""
    fixed = _ExperimentCheckpointManager.sync_up_experiment_state
    original = getattr(fixed, "__wrapped__", fixed)  # Ray's, whether or not fixed here
    monkeypatch.setattr(_ExperimentCheckpointManager, "sync_up_experiment_state", original)
    run = _snapshots(tmp_path, monkeypatch, [False, False, True])
    assert _during_a_copy(run)


def test_no_snapshot_is_written_while_a_copy_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots taken while a copy runs are skipped, as Ray skips their copies; a
    forced one waits for the copy, then is written and copied."""
    ray_fixes.apply()
    ray_fixes.apply()  # once per process, however often a Tuner is built
    fixed = _ExperimentCheckpointManager.sync_up_experiment_state
    assert not getattr(fixed.__wrapped__, ray_fixes._PATCHED, False)  # not wrapped twice
    run = _snapshots(tmp_path, monkeypatch, [False, False, True])
    assert _during_a_copy(run) == []
    assert len(run["writes"]) == 2 and len(run["copies"]) == 2  # the second one skipped
    assert run["writes"][1] >= run["copies"][0][1]  # the forced one after the first copy
    remote = run["remote"]
    assert (remote / "experiment_state.json").read_text() == '{"step": 2}'
    assert (remote / "searcher-state.pkl").read_text() == "2"
    assert not list(remote.glob(".tmp-*"))


def test_a_checkpoint_already_deleted_is_not_an_error(tmp_path: Path) -> None:
    ray_fixes.apply()
    delete = checkpoint_manager._delete_fs_path
    fs = pyarrow.fs.LocalFileSystem()
    kept = tmp_path / "checkpoint_000001"
    kept.mkdir()
    (kept / "state.pt").write_bytes(b"x")
    delete(fs=fs, fs_path=str(kept))
    assert not kept.exists()
    delete(fs=fs, fs_path=str(tmp_path / "checkpoint_000000"))  # gone before: a no-op
    with pytest.raises(FileNotFoundError):  # Ray's own deletion, unpatched
        delete.__wrapped__(fs=fs, fs_path=str(tmp_path / "checkpoint_000000"))
