"""The ``pairs`` format: one image per sample, photo on the left half, colour labels on the right.

This is the layout of the popular "cityscapes image pairs" set: ``{root}/{split}/*.jpg|png``.
The label half is usually JPEG-compressed, so each label pixel maps to the NEAREST palette
colour (squared RGB distance, vectorised) rather than to an exact match. The palette comes
from ``data.palette`` or ``{root}/classes.json``; an optional ``ignore_colour`` there maps
to the ignore index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tune_losses.config import DataConfig
from tune_losses.data.sources import ArraySource, ClassSpec, SplitData, data_root
from tune_losses.data.stats import SplitSummary, cached_summary, pixel_counts
from tune_losses.data.validate import DataError, check_not_empty, list_images, read_rgb


def nearest_ids(
    rgb: np.ndarray, palette: Sequence[Sequence[int]], ids: Sequence[int] | None = None
) -> np.ndarray:
    """``uint8 [H,W]``: for each pixel, the id of the nearest palette colour (L2 in RGB).

    ``ids[i]`` is the id of ``palette[i]`` (default ``i``). Uses
    ``|p - c|^2 = |p|^2 - 2 p.c + |c|^2`` with one matrix product, no per-class loop.
    """
    pal = np.asarray(palette, dtype=np.float32).reshape(-1, 3)
    pixels = rgb.reshape(-1, 3).astype(np.float32)
    dist = (pal * pal).sum(1)[None, :] - 2.0 * pixels @ pal.T
    nearest = dist.argmin(axis=1)
    lut = np.asarray(ids if ids is not None else range(len(pal)), dtype=np.uint8)
    return lut[nearest].reshape(rgb.shape[:2])


def split_pair(pair: np.ndarray, path: Path, spec: ClassSpec) -> tuple[np.ndarray, np.ndarray]:
    """Cut a decoded pair into ``(image uint8 [H,W,3], mask uint8 [H,W])``."""
    if spec.palette is None:
        raise DataError(f"{path}: the pairs format needs a palette (classes.json or data.palette)")
    height, width = pair.shape[:2]
    if width % 2:
        raise DataError(
            f"{path}: pair width {width} is odd; expected photo and label halves of equal width"
        )
    half = width // 2
    palette = list(spec.palette)
    ids = list(range(len(palette)))
    if spec.ignore_colour is not None:
        palette.append(spec.ignore_colour)
        ids.append(spec.ignore_index)
    image = np.ascontiguousarray(pair[:, :half])
    return image, nearest_ids(pair[:, half:], palette, ids)


def list_pair_files(root: Path, split: str, limit: int | None = None) -> list[Path]:
    """The pair images of a split, sorted; the first ``limit``. An empty split is a DataError."""
    folder = root / split
    files = list_images(folder)
    check_not_empty(files, folder)
    return files[:limit] if limit is not None else files


class PairSource:
    """Lazy samples: each access decodes one pair file and splits it."""

    def __init__(self, files: list[Path], spec: ClassSpec) -> None:
        self.files, self.spec = files, spec
        self.names = [p.stem for p in files]

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        path = self.files[index]
        return split_pair(read_rgb(path), path, self.spec)


def load_split(cfg: DataConfig, spec: ClassSpec, split: str, limit: int | None) -> SplitData:
    """Validate one split and summarise it (cached); decode it into memory when ``in_memory``."""
    root = data_root(cfg)
    files = list_pair_files(root, split, limit)
    num_classes = len(spec.names)
    extra = {
        "format": "pairs",
        "split": split,
        "ignore_index": spec.ignore_index,
        "palette": spec.palette,
        "ignore_colour": spec.ignore_colour,
    }
    source = PairSource(files, spec)
    if cfg.in_memory:
        decoded = [source.load(i) for i in range(len(source))]
        images = [d[0] for d in decoded]
        masks = [d[1] for d in decoded]

        def from_memory() -> SplitSummary:
            return SplitSummary(pixel_counts(masks, num_classes), sorted({m.shape for m in masks}))

        summary = cached_summary(root, files, num_classes, from_memory, extra=extra)
        return SplitData(ArraySource(images, masks, source.names), summary)

    def scan() -> SplitSummary:
        counts = np.zeros(num_classes, dtype=np.int64)
        sizes: set[tuple[int, int]] = set()
        for i in range(len(source)):
            _, mask = source.load(i)
            counts += pixel_counts([mask], num_classes)
            sizes.add(mask.shape)
        return SplitSummary(counts, sorted(sizes))

    summary = cached_summary(root, files, num_classes, scan, extra=extra)
    return SplitData(source, summary)
