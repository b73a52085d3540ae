"""What every data format hands to the dataset: the class list and a split's samples.

A *source* yields undecorated ``(image uint8 [H,W,3], mask uint8 [H,W])`` pairs by index;
:class:`ArraySource` keeps them decoded in memory, the file formats add lazy sources that
decode on access. ``SplitData`` carries a source together with its pass over the split
(pixel counts and image sizes), which was validated when it was made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tune_losses.config import DataConfig, class_names_problem
from tune_losses.data.stats import SplitSummary
from tune_losses.data.validate import DataError


class Source(Protocol):
    """Samples of one split, by index."""

    names: list[str]

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


class ArraySource:
    """Samples decoded once and kept as uint8 arrays in memory."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], names: list[str]) -> None:
        self.images, self.masks, self.names = images, masks, names

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[index], self.masks[index]


@dataclass(frozen=True)
class SplitData:
    """A split ready for a dataset: its samples and its (validated) summary."""

    source: Source
    summary: SplitSummary


@dataclass(frozen=True)
class ClassSpec:
    """Classes of a file dataset, merged from the config and ``{root}/classes.json``.

    ``file_ignore`` is the ignore value stored in the mask files; loaders emit
    ``ignore_index`` (the config's) instead, so the two may differ.
    """

    names: list[str]
    ignore_index: int
    file_ignore: int
    palette: list[tuple[int, int, int]] | None
    ignore_colour: tuple[int, int, int] | None = None


def data_root(cfg: DataConfig) -> Path:
    """``data.root`` as a Path; a file format without a root is a configuration error."""
    if cfg.root is None:
        raise ValueError(f"data.root is required for data.format={cfg.format!r}")
    return Path(cfg.root)


def _rgb(value: Any, path: Path, what: str) -> tuple[int, int, int]:
    try:
        r, g, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {what} must be an RGB triple, found {value!r}") from None
    return r, g, b


def read_classes(cfg: DataConfig) -> ClassSpec:
    """Class names, ignore values and palette from ``classes.json``, overridden by the config."""
    path = data_root(cfg) / "classes.json"
    data: dict = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable classes file ({exc})") from None
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object, found {type(data).__name__}")
    file_names = data.get("classes")
    names = list(cfg.classes) if cfg.classes is not None else file_names
    if not names and cfg.palette is not None:
        names = [f"class_{i}" for i in range(len(cfg.palette))]
    if not names:
        raise DataError(f"{path}: not found or without 'classes', and data.classes is not set")
    problem = class_names_problem([str(n) for n in names]) if cfg.classes is None else None
    if problem is not None:  # data.classes is checked with the config
        raise DataError(f"{path}: {problem}")
    if cfg.classes is not None and file_names is not None and len(file_names) != len(names):
        raise DataError(f"{path}: {len(file_names)} classes but data.classes lists {len(names)}")
    palette_raw = cfg.palette if cfg.palette is not None else data.get("palette")
    palette = None
    if palette_raw is not None:
        palette = [_rgb(c, path, "a palette colour") for c in palette_raw]
        if len(palette) != len(names):
            raise DataError(f"{path}: palette needs {len(names)} RGB colours, found {len(palette)}")
    ignore_index = int(cfg.ignore_index)
    if not len(names) <= ignore_index <= 255:
        raise ValueError(
            f"data.ignore_index must be in [{len(names)}, 255] for {len(names)} classes,"
            f" got {ignore_index}"
        )
    colour = data.get("ignore_colour", data.get("ignore_color"))
    return ClassSpec(
        names=[str(n) for n in names],
        ignore_index=ignore_index,
        file_ignore=int(data.get("ignore_index", ignore_index)),
        palette=palette,
        ignore_colour=_rgb(colour, path, "ignore_colour") if colour is not None else None,
    )
