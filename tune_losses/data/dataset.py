"""Datasets and DataLoaders from a :class:`~tune_losses.config.DataConfig`.

The one entry point others code against: :func:`build_loaders` (or :func:`build_datasets`
for the bare datasets). Every format is read, validated and summarised before the first
batch, so a data problem surfaces as a :class:`DataError` at start-up.

Example::

    from tune_losses.config import DataConfig
    from tune_losses.data import build_loaders

    train, val, info = build_loaders(DataConfig())   # the embedded synthetic set
    images, masks = next(iter(train))                # [B,3,H,W] float32, [B,H,W] int64
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from tune_losses.config import DataConfig
from tune_losses.data import synthetic
from tune_losses.data.sources import ArraySource, Source, SplitData
from tune_losses.data.stats import SplitSummary, frequencies, pixel_counts
from tune_losses.data.transforms import (
    PadCollate,
    build_train_transform,
    build_val_transform,
    to_tensors,
    train_crop_size,
)
from tune_losses.data.validate import DataError


@dataclass(frozen=True)
class DatasetInfo:
    """What the model, loss and metrics need to know about the data."""

    num_classes: int
    class_names: list[str]
    ignore_index: int
    palette: list[tuple[int, int, int]] | None
    class_frequencies: np.ndarray = field(compare=False)
    """float64 [C]: train-split pixel frequency, ignore excluded, sums to 1."""


class SegmentationDataset(Dataset):
    """Samples of one split passed through an albumentations pipeline, as tensors."""

    def __init__(self, source: Source, transform: A.Compose) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.source.load(index)
        out = self.transform(image=image, mask=mask)
        return to_tensors(out["image"], out["mask"])

    def reseed(self, seed: int) -> None:
        """Restart the augmentation random stream (albumentations keeps its own RNG)."""
        self.transform.set_random_seed(int(seed) % 2**32)

    def random_state(self) -> list[dict[str, Any]]:
        """Each transform's NumPy and Python generator state, in pipeline order.

        Albumentations 2.x gives every transform (and the Compose) its own generators; the
        states are plain dicts/tuples/ints, so a checkpoint holding them loads with
        ``weights_only=True``."""
        return [
            {"numpy": t.random_generator.bit_generator.state, "python": t.py_random.getstate()}
            for t in _pipeline(self.transform)
        ]

    def set_random_state(self, state: list[dict[str, Any]]) -> None:
        """Put the augmentation generators back where :meth:`random_state` found them."""
        transforms = list(_pipeline(self.transform))
        if len(state) != len(transforms):
            raise ValueError(
                f"augmentation state has {len(state)} transforms, the pipeline {len(transforms)}"
            )
        for t, s in zip(transforms, state, strict=True):
            t.random_generator.bit_generator.state = s["numpy"]
            version, internal, gauss = s["python"]
            t.py_random.setstate((version, tuple(internal), gauss))


def _pipeline(transform: A.BaseCompose | A.BasicTransform) -> Iterator[Any]:
    """The transform and, depth first, every transform nested in its compositions."""
    yield transform
    if isinstance(transform, A.BaseCompose):
        for child in transform.transforms:
            yield from _pipeline(child)


def _synthetic_split(cfg: DataConfig, split: str, count: int, limit: int | None) -> SplitData:
    s = cfg.synthetic
    n = min(count, limit) if limit is not None else count
    images, masks = synthetic.make_split(s.seed, split, n, size=s.size, num_classes=s.num_classes)
    counts = pixel_counts(masks, s.num_classes)
    names = [f"{split}/{i:05d}" for i in range(n)]
    return SplitData(ArraySource(images, masks, names), SplitSummary(counts, [(s.size, s.size)]))


def _load_split(cfg: DataConfig, split: str, limit: int | None) -> SplitData:
    """Any one split of ``cfg``'s data, validated: its first ``limit`` samples, or all."""
    if cfg.format == "synthetic":
        sizes = {"train": cfg.synthetic.num_train, "val": cfg.synthetic.num_val}
        if split not in sizes:
            raise DataError(f"data.format synthetic has the splits train and val, not {split!r}")
        return _synthetic_split(cfg, split, sizes[split], limit)
    if cfg.format == "folders":
        from tune_losses.data import folders as fmt
    else:
        from tune_losses.data import pairs as fmt
    from tune_losses.data.sources import read_classes

    return fmt.load_split(cfg, read_classes(cfg), split, limit)


def _load_splits(cfg: DataConfig) -> tuple[SplitData, SplitData, list[str], list | None]:
    if cfg.format == "synthetic":
        s = cfg.synthetic
        names = synthetic.class_names(s.num_classes)
        if cfg.ignore_index < s.num_classes or cfg.ignore_index > 255:
            raise ValueError(
                f"data.ignore_index must be in [{s.num_classes}, 255], got {cfg.ignore_index}"
            )
        train = _synthetic_split(cfg, "train", s.num_train, cfg.max_train)
        val = _synthetic_split(cfg, "val", s.num_val, cfg.max_val)
        return train, val, names, synthetic.palette(s.num_classes)
    if cfg.format == "folders":
        from tune_losses.data import folders as fmt
    else:
        from tune_losses.data import pairs as fmt
    from tune_losses.data.sources import read_classes

    spec = read_classes(cfg)
    train = fmt.load_split(cfg, spec, cfg.train_split, cfg.max_train)
    val = fmt.load_split(cfg, spec, cfg.val_split, cfg.max_val)
    return train, val, spec.names, spec.palette


def build_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset, DatasetInfo]:
    """Train and val datasets plus :class:`DatasetInfo`; raises DataError on bad data.

    Train crops to ``augment.crop``, or (crop None) to the largest train image size padded
    to ``pad_multiple``. Val pads each image bottom/right to ``pad_multiple``; when a split
    mixes sizes, the loaders' collate pads each batch to its largest image (mask fill
    ``ignore_index``).
    """
    train, val, names, palette = _load_splits(cfg)
    crop = train_crop_size(cfg.augment, train.summary.sizes, cfg.pad_multiple, cfg.scale)
    train_ds = SegmentationDataset(
        train.source,
        build_train_transform(cfg.augment, crop, cfg.ignore_index, scale=cfg.scale),
    )
    val_ds = SegmentationDataset(
        val.source, build_val_transform(cfg.pad_multiple, cfg.ignore_index, cfg.scale)
    )
    info = DatasetInfo(
        num_classes=len(names),
        class_names=list(names),
        ignore_index=cfg.ignore_index,
        palette=[tuple(c) for c in palette] if palette is not None else None,
        class_frequencies=frequencies(train.summary.counts),
    )
    return train_ds, val_ds, info


def split_folder(cfg: DataConfig, split: str) -> str:
    """The split that ``split`` names in ``cfg``'s data: ``train`` and ``val`` are the run's
    own (``data.train_split``, ``data.val_split``; the synthetic set's names), any other
    name a folder of the data."""
    if cfg.format == "synthetic":
        return split
    return {"train": cfg.train_split, "val": cfg.val_split}.get(split, split)


def build_split_loader(
    cfg: DataConfig, split: str, *, limit: int | None = None, device_type: str = "cpu"
) -> DataLoader:
    """One split of ``cfg``'s data, in order, through the validation pipeline (padding only,
    no augmentation) and batched as the val loader of :func:`build_loaders` is, so that the
    val split gives the same batches; what ``python -m tune_losses.evaluate`` scores.

    ``split`` is ``train`` or ``val`` (the run's own splits, :func:`split_folder`) or a
    folder of the data (``test``); a split the data lacks raises :class:`DataError`. Its
    first ``limit`` samples are read; ``None``: ``max_train`` / ``max_val`` for the run's
    train / val split (what it trained and validated on), any other split whole.
    """
    folder = split_folder(cfg, split)
    own = {split_folder(cfg, "train"): cfg.max_train, split_folder(cfg, "val"): cfg.max_val}
    data = _load_split(cfg, folder, own.get(folder) if limit is None else limit)
    dataset = SegmentationDataset(
        data.source, build_val_transform(cfg.pad_multiple, cfg.ignore_index, cfg.scale)
    )
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=cfg.num_workers,
        pin_memory=device_type == "cuda",
        collate_fn=PadCollate(cfg.ignore_index),
        worker_init_fn=_worker_init,
        generator=torch.Generator().manual_seed(0),
    )


def _worker_init(worker_id: int) -> None:
    """Give each worker its own augmentation stream, derived from the loader's generator."""
    info = get_worker_info()
    if info is not None and isinstance(info.dataset, SegmentationDataset):
        info.dataset.reseed(info.seed)
    np.random.seed(torch.initial_seed() % 2**32)


def build_loaders(
    cfg: DataConfig, *, device_type: str = "cpu", seed: int = 0
) -> tuple[DataLoader, DataLoader, DatasetInfo]:
    """Train and val DataLoaders plus :class:`DatasetInfo`, deterministic for a given ``seed``.

    Batches are ``(images float32 [B,3,H,W] ImageNet-normalised, masks int64 [B,H,W])``.
    Train shuffles with a generator seeded by ``seed`` and drops the last partial batch when
    the set is larger than a batch; memory is pinned when ``device_type == "cuda"``.

    Train workers (``num_workers``) start afresh each epoch, seeded from the train generator,
    so one epoch's shuffling and augmentation follow from that generator's state alone (what
    makes a resumed run exact); val workers persist, and val has its own generator so that
    it draws nothing from torch's global RNG.
    """
    train_ds, val_ds, info = build_datasets(cfg)
    train_ds.reseed(seed)
    common = {
        "batch_size": cfg.batch_size,
        "num_workers": cfg.num_workers,
        "pin_memory": device_type == "cuda",
        "collate_fn": PadCollate(cfg.ignore_index),
        "worker_init_fn": _worker_init,
    }
    train = DataLoader(
        train_ds,
        shuffle=True,
        drop_last=len(train_ds) > cfg.batch_size,
        generator=torch.Generator().manual_seed(seed),
        **common,
    )
    val = DataLoader(
        val_ds,
        shuffle=False,
        drop_last=False,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=cfg.num_workers > 0,
        **common,
    )
    return train, val, info
