"""The two fixes to Ray's experiment snapshots (``tune_losses.tune.ray_fixes``), on Ray's
own snapshot manager, syncer and checkpoint deletion."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.fs
import pytest
from ray.train._internal import checkpoint_manager, storage
from ray.train._internal.storage import _FilesystemSyncer
from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

from tune_losses.tune import ray_fixes


def _manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, dict[str, Any]]:
    """Ray's snapshot manager on a real syncer from ``tmp_path/staging`` to ``remote``,
    forcing a copy after each trial checkpoint (``num_to_keep=1``); each copy waits for
    ``run["release"]`` and is logged as (launched, ended) in ``run["copies"]``."""
    staging, remote = tmp_path / "staging", tmp_path / "remote"
    staging.mkdir()
    run: dict[str, Any] = {"copies": [], "writes": [], "staging": staging, "remote": remote}
    run["release"] = release = threading.Event()
    launched: list[float] = []  # when each copy was launched (its thread starts later)
    copy = storage._pyarrow_fs_copy_files

    def held_copy(*args: Any, **kwargs: Any) -> Any:
        release.wait(timeout=30)
        try:
            return copy(*args, **kwargs)
        finally:
            run["copies"].append((launched[len(run["copies"])], time.monotonic()))

    monkeypatch.setattr(storage, "_pyarrow_fs_copy_files", held_copy)
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
    manager = _ExperimentCheckpointManager(
        storage=context, checkpoint_period=0, sync_every_n_trial_checkpoints=1
    )
    return manager, run


def _save(run: dict[str, Any], i: int) -> Callable[[], None]:
    """Snapshot ``i`` as Ray writes one: the experiment state in place, the searcher's
    state to a temporary file renamed over the last (``Searcher.save_to_dir``)."""

    def save() -> None:
        staging = run["staging"]
        run["writes"].append(time.monotonic())
        (staging / "experiment_state.json").write_text(f'{{"step": {i}}}')
        tmp = staging / f".tmp-searcher-state-{i}.pkl"
        tmp.write_text(str(i))
        os.replace(tmp, staging / "searcher-state.pkl")

    return save


def _steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: list[str]) -> dict[str, Any]:
    """One snapshot a step, as a search takes them (``plain``; ``force``d; after a trial
    ``checkpoint``, which makes Ray force one). The first copy is held until a step that
    Ray must copy, so the plain steps before it come while it runs."""
    manager, run = _manager(tmp_path, monkeypatch)
    for i, step in enumerate(steps):
        if step == "checkpoint":
            manager.on_trial_checkpoint("a trial")
        if step != "plain":
            run["release"].set()
        manager.sync_up_experiment_state(_save(run, i), force=step == "force")
    run["release"].set()
    manager._storage.syncer.wait()
    return run


def _during_a_copy(run: dict[str, Any]) -> list[float]:
    return [w for w in run["writes"] if any(a <= w <= b for a, b in run["copies"])]


def _unfixed(monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = _ExperimentCheckpointManager.sync_up_experiment_state
    original = getattr(fixed, "__wrapped__", fixed)  # Ray's, whether or not fixed here
    monkeypatch.setattr(_ExperimentCheckpointManager, "sync_up_experiment_state", original)


def test_without_the_fix_ray_writes_a_snapshot_while_copying_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the fix exists: Ray's own manager writes over a copy in flight."""
    _unfixed(monkeypatch)
    run = _steps(tmp_path, monkeypatch, ["plain", "plain", "force"])
    assert _during_a_copy(run)


def test_no_snapshot_is_written_while_a_copy_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step's snapshot while a copy runs is skipped, as Ray skips its copy; a forced
    one waits for the copy, then is written and copied."""
    ray_fixes.apply()
    ray_fixes.apply()  # once per process, however often a Tuner is built
    fixed = _ExperimentCheckpointManager.sync_up_experiment_state
    assert not getattr(fixed.__wrapped__, ray_fixes._PATCHED, False)  # not wrapped twice
    run = _steps(tmp_path, monkeypatch, ["plain", "plain", "force"])
    assert _during_a_copy(run) == []
    assert len(run["writes"]) == 2 and len(run["copies"]) == 2  # the second step skipped
    assert run["writes"][1] >= run["copies"][0][1]  # the forced one after the first copy
    remote = run["remote"]
    assert (remote / "experiment_state.json").read_text() == '{"step": 2}'
    assert (remote / "searcher-state.pkl").read_text() == "2"
    assert not list(remote.glob(".tmp-*"))


def test_a_snapshot_after_num_to_keep_checkpoints_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray forces a copy once a trial made ``num_to_keep`` checkpoints since the last, so
    that the state on storage never lists a checkpoint the trial already rotated away:
    that snapshot is never skipped, even while a copy runs."""
    ray_fixes.apply()
    run = _steps(tmp_path, monkeypatch, ["plain", "checkpoint"])
    assert _during_a_copy(run) == [] and len(run["copies"]) == 2
    assert (run["remote"] / "experiment_state.json").read_text() == '{"step": 1}'


def test_a_skipped_snapshot_leaves_ray_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Skipping is decided once: a copy that ends between that decision and Ray's own
    check must not make Ray copy the stale folder and reset its checkpoint count."""
    ray_fixes.apply()
    manager, run = _manager(tmp_path, monkeypatch)
    manager._sync_every_n_trial_checkpoints = 3
    manager.on_trial_checkpoint("a trial")
    answers = iter([True, False])  # a copy runs at the first look, not at the second
    syncer = manager._storage.syncer
    monkeypatch.setattr(syncer, "_should_continue_existing_sync", lambda: next(answers, False))
    manager.sync_up_experiment_state(_save(run, 0))
    assert run["writes"] == [] and syncer._sync_process is None  # nothing written or copied
    assert dict(manager._trial_num_checkpoints_since_last_sync) == {"a trial": 1}


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
