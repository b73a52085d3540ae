"""Reading image and mask files, and the checks that run before any training starts.

Every problem a user can fix in their data becomes one :class:`DataError` whose message
is a single line naming the file and the values found, so a bad file fails in seconds
rather than in the middle of an epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A problem in the user's data; the message is one line naming the file and the values."""


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: unreadable image file ({exc.__class__.__name__})") from None


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the file header only (fast; the pixels are not decoded)."""
    with _open(path) as im:
        width, height = im.size
    return height, width


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to ``uint8 [H, W, 3]`` RGB."""
    try:
        with _open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: unreadable image file ({exc})") from None


def read_mask_raw(path: Path) -> np.ndarray:
    """Decode a mask file as stored: ``[H, W]`` ids (grey/palette/16-bit) or ``[H, W, 3]`` RGB."""
    try:
        with _open(path) as im:
            if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA"):
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
            return np.asarray(im)
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: unreadable mask file ({exc})") from None


def _format_values(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit].tolist())
    more = f", ... ({len(values)} in all)" if len(values) > limit else ""
    return f"[{shown}{more}]"


def check_ids(mask: np.ndarray, num_classes: int, ignore_index: int, path: Path | str) -> None:
    """Raise when a mask holds a value that is neither a class id nor ``ignore_index``."""
    values = np.unique(mask)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_index)]
    if bad.size:
        raise DataError(
            f"{path}: label values {_format_values(bad)} outside classes 0..{num_classes - 1}"
            f" and ignore_index {ignore_index}"
        )


def colours_to_ids(
    rgb: np.ndarray,
    palette: Sequence[Sequence[int]],
    path: Path | str,
    *,
    ignore_colour: Sequence[int] | None = None,
    ignore_index: int = 255,
) -> np.ndarray:
    """Map an RGB mask to ids by exact palette match; unknown colours raise a DataError.

    ``palette[i]`` is the colour of class ``i``; ``ignore_colour``, when given, maps to
    ``ignore_index``.
    """
    colours = [tuple(c) for c in palette]
    ids = list(range(len(colours)))
    if ignore_colour is not None:
        colours.append(tuple(ignore_colour))
        ids.append(ignore_index)
    pal = np.asarray(colours, dtype=np.uint32).reshape(-1, 3)
    rgb = rgb.astype(np.uint32)
    keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    pal_keys = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    order = np.argsort(pal_keys, kind="stable")
    sorted_keys = pal_keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
    known = sorted_keys[pos] == keys
    if not known.all():
        bad = np.unique(keys[~known])
        found = [f"({k >> 16}, {(k >> 8) & 255}, {k & 255})" for k in bad[:6].tolist()]
        more = f", ... ({len(bad)} in all)" if len(bad) > 6 else ""
        raise DataError(f"{path}: mask colours {', '.join(found)}{more} are not in the palette")
    return np.asarray(ids, dtype=np.uint8)[order[pos]]


def check_same_size(
    image_hw: tuple[int, int], mask_hw: tuple[int, int], image_path: Path, mask_path: Path
) -> None:
    """Raise when an image and its mask differ in size."""
    if tuple(image_hw) != tuple(mask_hw):
        raise DataError(
            f"{mask_path}: mask size {mask_hw[1]}x{mask_hw[0]} differs from image"
            f" {image_path.name} size {image_hw[1]}x{image_hw[0]} (WxH)"
        )


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder, sorted by name; a missing folder is a DataError."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def check_not_empty(items: Sequence[object], folder: Path) -> None:
    """Raise when a split holds no sample."""
    if not items:
        raise DataError(f"{folder}: empty split, found 0 images ({', '.join(IMAGE_SUFFIXES)})")
