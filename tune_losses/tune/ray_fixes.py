"""Two fixes to Ray Tune 2.60's experiment snapshots, applied before a Tuner runs.

A search snapshots its experiment after every step (``TUNE_GLOBAL_CHECKPOINT_S=0``, set in
:mod:`tune_losses.tune.run`), so that a killed driver leaves a state ``--resume`` can
finish. Ray writes each snapshot into the driver's staging folder, then copies that folder
to the storage path in a background thread; two of its paths break under that pace:

- :func:`snapshot_after_last_copy`: Ray writes the next snapshot while the last copy may
  still run. The copy lists the folder, then opens each file, and fails on the searcher's
  temporary file renamed in between (``FileNotFoundError ... -tmp-searcher-state-*.pkl``,
  logged with a traceback), or copies a half-written ``experiment_state-*.json``, the file
  ``--resume`` reads first. Here no snapshot is written while a copy runs.
- :func:`tolerate_gone_checkpoints`: after a kill, Ray's snapshot may list a checkpoint the
  killed run already rotated away, and deleting it again failed the trial.

Both patch private Ray functions, once per process (idempotent); each is checked by a
test that fails on Ray's own behaviour (``tests/test_ray_fixes.py``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_PATCHED = "tune_losses_patched"  # marks a function these fixes already replaced


def apply() -> None:
    """Both fixes (once per process)."""
    snapshot_after_last_copy()
    tolerate_gone_checkpoints()


def snapshot_after_last_copy() -> None:
    """Never write an experiment snapshot while the last one is being copied to storage.

    Ray skips launching a copy while one runs, but not writing the files that copy reads.
    Here a step's snapshot is skipped whole while a copy runs (Ray would skip its copy;
    the next step snapshots again), decided once before Ray's own code runs so that Ray
    neither copies a stale folder nor resets its count of checkpoints since the last copy.
    A snapshot Ray must copy (``force``, ``wait``, or ``num_to_keep`` checkpoints of a trial
    since the last copy) waits for the running copy to end first; a failed copy is logged
    as Ray logs it."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as Manager

    sync_up = Manager.sync_up_experiment_state
    if getattr(sync_up, _PATCHED, False):
        return

    @functools.wraps(sync_up)
    def sync_up_after_last_copy(
        self: Any, save_fn: Callable[[], None], force: bool = False, wait: bool = False
    ) -> None:
        syncer = self._storage.syncer if self._storage is not None else None
        if syncer is not None and syncer._should_continue_existing_sync():
            if not (force or wait or self._should_force_sync_up):
                return
            try:
                syncer.wait()
            except Exception:
                logger.error(
                    "copying the experiment state to %s failed; this snapshot copies it",
                    self._storage.experiment_fs_path,
                    exc_info=True,
                )
        sync_up(self, save_fn, force=force, wait=wait)

    setattr(sync_up_after_last_copy, _PATCHED, True)
    Manager.sync_up_experiment_state = sync_up_after_last_copy


def tolerate_gone_checkpoints() -> None:
    """Let Ray's checkpoint manager delete a checkpoint that is already gone.

    Ray's snapshot of a trial lists its kept checkpoints as they were up to ~10 s before
    the driver was killed; the killed run may have deleted some since (``num_to_keep``).
    Ray forces a snapshot every ``num_to_keep`` checkpoints, so the one a trial restores
    from is always there, but deleting an older, already deleted one raises
    FileNotFoundError in Ray 2.60 and fails the trial: here that deletion is a no-op."""
    from ray.train._internal import checkpoint_manager

    delete = checkpoint_manager._delete_fs_path
    if getattr(delete, _PATCHED, False):
        return

    @functools.wraps(delete)
    def tolerant(fs: Any, fs_path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            delete(fs=fs, fs_path=fs_path)

    setattr(tolerant, _PATCHED, True)
    checkpoint_manager._delete_fs_path = tolerant
