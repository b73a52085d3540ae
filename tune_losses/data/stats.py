"""Class pixel counts of a split, computed once and cached beside the data.

The cache file is ``{root}/.tune_losses_stats/{hash}.json`` (or ``~/.cache/tune_losses/``
when the root is read-only), keyed by a hash of the file list (relative names, sizes,
mtimes) and of everything that changes how a mask decodes (ignore index, classes, palette).
A cache entry also records that the split passed validation, so an unchanged dataset is
neither re-read nor re-checked on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CACHE_DIRNAME = ".tune_losses_stats"


@dataclass(frozen=True)
class SplitSummary:
    """What one pass over a split learns: per-class pixel counts and the distinct image sizes."""

    counts: np.ndarray  # int64 [C]
    sizes: list[tuple[int, int]]  # distinct (height, width), sorted


def pixel_counts(masks: Iterable[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-class pixel counts (``int64 [C]``) over masks; values >= ``num_classes`` are ignored."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for mask in masks:
        counts += np.bincount(mask.ravel(), minlength=256)[:num_classes]
    return counts


def frequencies(counts: np.ndarray) -> np.ndarray:
    """Counts normalised to sum to 1 (``float64``); all zeros when nothing was counted."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


def file_list_key(root: Path, files: Sequence[Path], extra: Any) -> str:
    """A hash of the files (names relative to ``root``, sizes, mtimes) and ``extra`` settings."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for path in files:
        st = path.stat()
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:
            name = path.as_posix()
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tune_losses`` or ``~/.cache/tune_losses``: the fallback cache folder."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tune_losses"


def _candidates(root: Path, key: str) -> list[Path]:
    return [root / CACHE_DIRNAME / f"{key}.json", user_cache_dir() / f"{key}.json"]


def _read(path: Path, num_classes: int) -> SplitSummary | None:
    try:
        data = json.loads(path.read_text())
        counts = np.asarray(data["counts"], dtype=np.int64)
        sizes = [(int(h), int(w)) for h, w in data["sizes"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return SplitSummary(counts, sizes) if counts.shape == (num_classes,) else None


def _write(paths: list[Path], record: dict[str, Any]) -> Path | None:
    text = json.dumps(record, indent=1)
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            tmp.replace(path)
            return path
        except OSError:
            continue
    return None


def cached_summary(
    root: Path,
    files: Sequence[Path],
    num_classes: int,
    compute: Callable[[], SplitSummary],
    *,
    extra: Any = None,
) -> SplitSummary:
    """A split's summary from the cache, or from ``compute()`` (then written to the cache).

    ``compute`` is expected to validate while it reads; a cached entry therefore also stands
    for a split that passed validation with exactly these files.
    """
    key = file_list_key(root, files, {"num_classes": num_classes, "extra": extra})
    paths = _candidates(root, key)
    for path in paths:
        summary = _read(path, num_classes)
        if summary is not None:
            return summary
    summary = compute()
    record = {
        "counts": np.asarray(summary.counts, dtype=np.int64).tolist(),
        "sizes": [list(s) for s in summary.sizes],
        "num_files": len(files),
        "extra": extra,
    }
    _write(paths, record)
    return summary
