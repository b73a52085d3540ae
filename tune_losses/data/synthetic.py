"""The embedded procedural dataset: imbalanced classes with thin structures, made in memory.

Each sample is a pure function of ``(seed, split, index)``, so a search is reproducible
without any file on disk. Class 0 is a textured background; the other classes are shapes
of very different sizes (large regions, small blobs, 1-2 px lines, 3 px dots, ...), each
with its own colour and texture under per-image jitter and noise, so that a loss mix that
cares for thin and rare classes pays off while plain CE still learns the large ones.
"""

from __future__ import annotations

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "background",
    "region",
    "blob",
    "line",
    "dot",
    "ring",
    "bar",
    "cross",
)
"""Class names in id order; a config with ``num_classes`` = k uses the first k."""

# Base colours per class (RGB). Close enough that the noise makes them overlap a little.
_BASE_COLOURS = np.array(
    [
        (96, 96, 96),
        (70, 130, 80),
        (170, 80, 70),
        (200, 190, 90),
        (90, 110, 200),
        (170, 90, 170),
        (80, 170, 170),
        (210, 140, 60),
    ],
    dtype=np.float32,
)
_SPLIT_IDS = {"train": 0, "val": 1}


def class_names(num_classes: int) -> list[str]:
    """The names of the first ``num_classes`` synthetic classes."""
    if not 2 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(
            f"synthetic num_classes must be in [2, {len(CLASS_NAMES)}], got {num_classes}"
        )
    return list(CLASS_NAMES[:num_classes])


def _point(rng: np.random.Generator, size: int, margin: int = 0) -> tuple[int, int]:
    lo, hi = margin, max(margin + 1, size - margin)
    return int(rng.integers(lo, hi)), int(rng.integers(lo, hi))


def _draw_region(mask: np.ndarray, rng: np.random.Generator, cid: int) -> None:
    s = mask.shape[0]
    for _ in range(int(rng.integers(1, 3))):
        n = int(rng.integers(4, 8))
        cx, cy = _point(rng, s)
        radius = rng.uniform(0.25, 0.45) * s
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.6, 1.2, n)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [pts.round().astype(np.int32)], cid)


def _draw_blob(mask: np.ndarray, rng: np.random.Generator, cid: int) -> None:
    s = mask.shape[0]
    for _ in range(int(rng.integers(2, 6))):
        axes = (int(rng.integers(2, max(3, s // 12))), int(rng.integers(2, max(3, s // 12))))
        cv2.ellipse(mask, _point(rng, s, 2), axes, float(rng.uniform(0, 180)), 0, 360, cid, -1)


def _draw_line(mask: np.ndarray, rng: np.random.Generator, cid: int) -> None:
    s = mask.shape[0]
    for _ in range(int(rng.integers(2, 5))):
        p0, p1 = _point(rng, s), _point(rng, s)
        cv2.line(mask, p0, p1, cid, int(rng.integers(1, 3)), lineType=cv2.LINE_8)


def _draw_dot(mask: np.ndarray, rng: np.random.Generator, cid: int) -> None:
    s = mask.shape[0]
    for _ in range(int(rng.integers(3, 9))):
        x, y = _point(rng, s, 1)
        mask[y - 1 : y + 2, x - 1 : x + 2] = cid


def _draw_ring(mask: np.ndarray, rng: np.random.Generator, cid: int) -> None:
    s = mask.shape[0]
    for _ in range(int(rng.integers(1, 3))):
        r = int(rng.integers(max(3, s // 16), max(4, s // 6)))
        cv2.circle(mask, _point(rng, s, r), r, cid, int(rng.integers(1, 3)))


def _draw_bar(mask: np.ndarray, rng: np.random.Generator, cid: int) -> None:
    s = mask.shape[0]
    for _ in range(int(rng.integers(1, 4))):
        length, width = rng.uniform(0.1, 0.3) * s, rng.uniform(3, 6)
        box = (
            (float(rng.uniform(0, s)), float(rng.uniform(0, s))),
            (length, width),
            rng.uniform(0, 180),
        )
        cv2.fillPoly(mask, [cv2.boxPoints(box).round().astype(np.int32)], cid)


def _draw_cross(mask: np.ndarray, rng: np.random.Generator, cid: int) -> None:
    s = mask.shape[0]
    for _ in range(int(rng.integers(1, 4))):
        x, y = _point(rng, s, 4)
        arm = int(rng.integers(2, 5))
        mask[y, x - arm : x + arm + 1] = cid
        mask[y - arm : y + arm + 1, x] = cid


_PAINTERS = {
    "region": _draw_region,
    "blob": _draw_blob,
    "line": _draw_line,
    "dot": _draw_dot,
    "ring": _draw_ring,
    "bar": _draw_bar,
    "cross": _draw_cross,
}
# Draw order: large shapes first so that thin ones stay visible on top of them.
_DRAW_ORDER = ("region", "bar", "blob", "ring", "cross", "line", "dot")


def palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The base colour of each class (RGB), for drawing label maps."""
    return [tuple(int(v) for v in c) for c in _BASE_COLOURS[:num_classes]]


def make_sample(
    seed: int, split: str, index: int, *, size: int = 64, num_classes: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(image uint8 [H,W,3], mask uint8 [H,W])`` pair, a pure function of its arguments."""
    names = class_names(num_classes)
    rng = np.random.default_rng([seed, _SPLIT_IDS.get(split, 2), index])
    mask = np.zeros((size, size), dtype=np.uint8)
    for name in _DRAW_ORDER:
        if name in names:
            _PAINTERS[name](mask, rng, names.index(name))

    # Per-image jitter of every class colour, then a per-class texture and pixel noise.
    colours = _BASE_COLOURS[:num_classes] + rng.normal(0.0, 18.0, (num_classes, 3))
    image = colours[mask]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    freq, phase = rng.uniform(2.0, 6.0, 2), rng.uniform(0, 2 * np.pi, 2)
    stripes = np.sin(2 * np.pi * freq[0] * (xx + yy) + phase[0])
    gradient = np.cos(2 * np.pi * freq[1] * yy / 4 + phase[1])
    texture = np.where(mask[..., None] % 2 == 1, stripes[..., None], gradient[..., None])
    image = image + 20.0 * texture + rng.normal(0.0, 16.0, image.shape)
    image = cv2.GaussianBlur(image.astype(np.float32), (3, 3), 0.6)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_split(
    seed: int, split: str, count: int, *, size: int = 64, num_classes: int = 5
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``count`` samples of one split: lists of images and masks."""
    pairs = [make_sample(seed, split, i, size=size, num_classes=num_classes) for i in range(count)]
    return [p[0] for p in pairs], [p[1] for p in pairs]
