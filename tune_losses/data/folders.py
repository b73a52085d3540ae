"""The ``folders`` format: ``{root}/{split}/images/*`` + ``{root}/{split}/masks/*`` by file stem.

Masks hold one channel of class ids (grey, palette-mode or 16-bit PNG); masks stored as
RGB colour images map to ids through the palette by exact colour match. Classes, ignore
value and palette come from ``{root}/classes.json`` (see :func:`sources.read_classes`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tune_losses.config import DataConfig
from tune_losses.data.sources import ArraySource, ClassSpec, SplitData, data_root
from tune_losses.data.stats import SplitSummary, cached_summary, pixel_counts
from tune_losses.data.validate import (
    DataError,
    check_ids,
    check_not_empty,
    check_same_size,
    colours_to_ids,
    image_size,
    list_images,
    read_mask_raw,
    read_rgb,
)


def decode_mask(path: Path, spec: ClassSpec) -> np.ndarray:
    """A mask file as ``uint8 [H,W]`` ids with ``spec.ignore_index`` for ignored pixels.

    Raises DataError on unreadable files, unknown colours or values outside the classes.
    """
    raw = read_mask_raw(path)
    num_classes = len(spec.names)
    if raw.ndim == 3:
        if spec.palette is None:
            raise DataError(
                f"{path}: colour mask ({raw.shape[2]} channels) but no palette in classes.json"
                " or data.palette"
            )
        return colours_to_ids(
            raw,
            spec.palette,
            path,
            ignore_colour=spec.ignore_colour,
            ignore_index=spec.ignore_index,
        )
    if raw.ndim != 2:
        raise DataError(f"{path}: expected a single-channel mask, found shape {raw.shape}")
    check_ids(raw, num_classes, spec.file_ignore, path)
    if spec.file_ignore != spec.ignore_index:
        raw = np.where(raw == spec.file_ignore, spec.ignore_index, raw)
    return raw.astype(np.uint8)


def list_pairs(root: Path, split: str, limit: int | None = None) -> list[tuple[Path, Path]]:
    """``(image, mask)`` paths of a split, paired by file stem, sorted; first ``limit`` only.

    A missing mask for an image, a duplicated stem or an empty split raises DataError.
    """
    image_dir, mask_dir = root / split / "images", root / split / "masks"
    images = list_images(image_dir)
    check_not_empty(images, image_dir)
    masks: dict[str, Path] = {}
    for path in list_images(mask_dir):
        if path.stem in masks:
            raise DataError(f"{path}: two masks share the stem {path.stem!r} ({masks[path.stem]})")
        masks[path.stem] = path
    if limit is not None:
        images = images[:limit]
    pairs = []
    seen: dict[str, Path] = {}
    for image in images:
        if image.stem in seen:
            raise DataError(
                f"{image}: two images share the stem {image.stem!r} ({seen[image.stem]})"
            )
        seen[image.stem] = image
        mask = masks.get(image.stem)
        if mask is None:
            raise DataError(f"{image}: no mask with stem {image.stem!r} in {mask_dir}")
        pairs.append((image, mask))
    return pairs


class FolderSource:
    """Lazy samples: each access decodes the image and its mask from disk."""

    def __init__(self, pairs: list[tuple[Path, Path]], spec: ClassSpec) -> None:
        self.pairs, self.spec = pairs, spec
        self.names = [image.stem for image, _ in pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs[index]
        image, mask = read_rgb(image_path), decode_mask(mask_path, self.spec)
        check_same_size(image.shape[:2], mask.shape, image_path, mask_path)
        return image, mask


def _cache_extra(spec: ClassSpec, split: str) -> dict:
    return {
        "format": "folders",
        "split": split,
        "ignore_index": spec.ignore_index,
        "file_ignore": spec.file_ignore,
        "palette": spec.palette,
        "ignore_colour": spec.ignore_colour,
    }


def load_split(cfg: DataConfig, spec: ClassSpec, split: str, limit: int | None) -> SplitData:
    """Validate one split and summarise it (cached); decode it into memory when ``in_memory``.

    Validation reads every mask and every image header once; an unchanged split found in
    the stats cache is not read again (unless it is to be kept in memory).
    """
    root = data_root(cfg)
    pairs = list_pairs(root, split, limit)
    files = [p for pair in pairs for p in pair]
    num_classes = len(spec.names)

    if cfg.in_memory:
        images, masks = [], []
        for image_path, mask_path in pairs:
            image, mask = read_rgb(image_path), decode_mask(mask_path, spec)
            check_same_size(image.shape[:2], mask.shape, image_path, mask_path)
            images.append(image)
            masks.append(mask)

        def from_memory() -> SplitSummary:
            sizes = sorted({m.shape[:2] for m in masks})
            return SplitSummary(pixel_counts(masks, num_classes), sizes)

        summary = cached_summary(
            root, files, num_classes, from_memory, extra=_cache_extra(spec, split)
        )
        names = [image.stem for image, _ in pairs]
        return SplitData(ArraySource(images, masks, names), summary)

    def scan() -> SplitSummary:
        counts = np.zeros(num_classes, dtype=np.int64)
        sizes: set[tuple[int, int]] = set()
        for image_path, mask_path in pairs:
            image_hw = image_size(image_path)
            mask = decode_mask(mask_path, spec)
            check_same_size(image_hw, mask.shape, image_path, mask_path)
            counts += pixel_counts([mask], num_classes)
            sizes.add(image_hw)
        return SplitSummary(counts, sorted(sizes))

    summary = cached_summary(root, files, num_classes, scan, extra=_cache_extra(spec, split))
    return SplitData(FolderSource(pairs, spec), summary)
