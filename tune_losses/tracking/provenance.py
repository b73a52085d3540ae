"""Where a search's code came from: installed package versions and the project's git commit."""

from __future__ import annotations

import importlib.metadata
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tune_losses.tracking.names import GIT_COMMIT_TAG, GIT_DIRTY_TAG

VERSIONED_PACKAGES = ("torch", "ray", "optuna", "segmentation_models_pytorch", "mlflow")


def package_versions(names: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` from their metadata (nothing is imported, so Ray's
    version can be read without importing Ray); a missing package is ``not installed``."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_tags(root: Path | None = None) -> dict[str, str]:
    """``mlflow.source.git.commit`` (and ``git_dirty`` when files differ from it) of the
    project checkout at ``root`` (default: the folder above ``tune_losses``); empty when the
    code does not run from a git checkout or git is missing."""
    root = root or Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return {}
    try:
        commit = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {GIT_COMMIT_TAG: commit, GIT_DIRTY_TAG: str(bool(dirty)).lower()}


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()
