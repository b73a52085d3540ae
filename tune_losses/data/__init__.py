"""Data for a trial: the embedded synthetic set, image/mask folders and image pairs.

``build_loaders(cfg)`` returns train and val DataLoaders and a :class:`DatasetInfo`;
bad data raises :class:`DataError` (a ``ValueError``) before training starts.
"""

from __future__ import annotations

from tune_losses.data.dataset import (
    DatasetInfo,
    SegmentationDataset,
    build_datasets,
    build_loaders,
    build_split_loader,
    split_folder,
)
from tune_losses.data.validate import DataError

__all__ = [
    "DataError",
    "DatasetInfo",
    "SegmentationDataset",
    "build_datasets",
    "build_loaders",
    "build_split_loader",
    "split_folder",
]
