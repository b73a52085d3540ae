"""Tests of ``tune_losses.data``: synthetic set, loaders, file formats, validation, stats."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tune_losses.config import DataConfig
from tune_losses.data import (
    DataError,
    DatasetInfo,
    build_datasets,
    build_loaders,
    folders,
    pairs,
    stats,
    synthetic,
    transforms,
)

# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_by_seed() -> None:
    a_img, a_mask = synthetic.make_split(0, "train", 4)
    b_img, b_mask = synthetic.make_split(0, "train", 4)
    c_img, c_mask = synthetic.make_split(1, "train", 4)
    assert all(np.array_equal(x, y) for x, y in zip(a_img, b_img, strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(a_mask, b_mask, strict=True))
    assert not np.array_equal(a_img[0], c_img[0])
    assert not np.array_equal(a_mask[0], c_mask[0])
    v_img, _ = synthetic.make_split(0, "val", 1)
    assert not np.array_equal(a_img[0], v_img[0])


def test_synthetic_imbalanced_with_thin_class() -> None:
    _, masks = synthetic.make_split(0, "train", 48)
    stack = np.stack(masks)
    freq = np.bincount(stack.ravel(), minlength=5) / stack.size
    assert freq.min() > 0  # every class present
    assert freq.max() / freq.min() > 20  # strong imbalance
    line = synthetic.class_names(5).index("line")
    # a thin class: most of its pixels have a non-line 4-neighbour
    m = stack == line
    inner = m[:, 1:-1, 1:-1] & m[:, :-2, 1:-1] & m[:, 2:, 1:-1] & m[:, 1:-1, :-2] & m[:, 1:-1, 2:]
    assert inner.sum() < 0.5 * m[:, 1:-1, 1:-1].sum()


def test_synthetic_loaders_shapes_and_info() -> None:
    cfg = DataConfig()
    train, val, info = build_loaders(cfg)
    assert isinstance(info, DatasetInfo)
    assert info.num_classes == 5 and info.class_names[0] == "background"
    assert info.class_frequencies.dtype == np.float64
    assert info.class_frequencies.sum() == pytest.approx(1.0)
    images, masks = next(iter(train))
    assert images.shape == (8, 3, 64, 64) and images.dtype == torch.float32
    assert masks.shape == (8, 64, 64) and masks.dtype == torch.int64
    assert len(train) == 48 // 8 and len(val) == 2
    vi, vm = next(iter(val))
    assert vi.shape == (8, 3, 64, 64)
    assert set(vm.unique().tolist()) <= set(range(5))


def test_loaders_deterministic_by_seed() -> None:
    def epoch(seed: int) -> list[torch.Tensor]:
        train, _, _ = build_loaders(DataConfig(), seed=seed)
        return [m for _, m in train]

    a, b, c = epoch(3), epoch(3), epoch(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_synthetic_generates_fast() -> None:
    import time

    t0 = time.perf_counter()
    build_datasets(DataConfig())
    assert time.perf_counter() - t0 < 1.0


def test_loader_workers_deterministic() -> None:
    cfg = DataConfig(num_workers=1, max_train=16, max_val=8)

    def epoch() -> list[torch.Tensor]:
        train, _, _ = build_loaders(cfg, seed=5)
        return [m for _, m in train]

    assert all(torch.equal(x, y) for x, y in zip(epoch(), epoch(), strict=True))


def test_augmentation_random_state_round_trips() -> None:
    """Restoring the pipeline's generators repeats the same augmented sample."""
    train, _, _ = build_datasets(DataConfig(max_train=4))
    state = train.random_state()
    image, mask = train[0]
    assert not torch.equal(train[0][0], image)  # the augmentation is random ...
    train.set_random_state(state)
    again, again_mask = train[0]
    assert torch.equal(again, image) and torch.equal(again_mask, mask)  # ... and restorable
    with pytest.raises(ValueError, match="augmentation state has 1 transforms"):
        train.set_random_state(state[:1])


def test_loader_options() -> None:
    train, val, _ = build_loaders(DataConfig(num_workers=1, batch_size=8), device_type="cuda")
    # train workers restart each epoch (seeded from the train generator), val workers persist
    assert train.pin_memory and not train.persistent_workers and train.drop_last
    assert val.persistent_workers and not val.drop_last and val.batch_size == 8
    train, _, _ = build_loaders(DataConfig(max_train=8, batch_size=8))
    assert not train.drop_last and not train.pin_memory and not train.persistent_workers


# ----------------------------------------------------------------------------- file fixtures

CLASSES = ["bg", "road", "pole"]
PALETTE = [(0, 0, 0), (200, 40, 40), (40, 40, 220)]
H, W = 30, 40  # deliberately not multiples of 32


def _label_map(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    """Blocky ids with a thin vertical 'pole' and a few ignore pixels."""
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[h // 2 :, :] = 1
    x = int(rng.integers(2, w - 2))
    mask[:, x] = 2
    mask[0, :3] = 255
    return mask


def _photo(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_classes(root: Path, **extra: object) -> None:
    data = {"classes": CLASSES, "ignore_index": 255, "palette": PALETTE, **extra}
    (root / "classes.json").write_text(json.dumps(data))


def _write_rgb(path: Path, mask: np.ndarray) -> None:
    rgb = np.zeros((*mask.shape, 3), dtype=np.uint8)
    for i, c in enumerate(PALETTE):
        rgb[mask == i] = c
    Image.fromarray(rgb).save(path)


def make_folders(root: Path, n_train: int = 5, n_val: int = 3, colour: bool = False) -> Path:
    """A tiny ``folders`` dataset: ids masks, or RGB colour masks when ``colour``."""
    rng = np.random.default_rng(0)
    _write_classes(root)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_photo(rng)).save(root / split / "images" / f"{i:03d}.png")
            mask = _label_map(rng)
            if colour:
                mask[mask == 255] = 0
                _write_rgb(root / split / "masks" / f"{i:03d}.png", mask)
            else:
                Image.fromarray(mask).save(root / split / "masks" / f"{i:03d}.png")
    return root


def folders_cfg(root: Path, **kw: object) -> DataConfig:
    return DataConfig(format="folders", root=root, batch_size=2, **kw)


# ----------------------------------------------------------------------------- folders


@pytest.mark.parametrize("in_memory", [True, False])
def test_folders_ids_masks(tmp_path: Path, in_memory: bool) -> None:
    root = make_folders(tmp_path)
    train, val, info = build_loaders(folders_cfg(root, in_memory=in_memory))
    assert info.class_names == CLASSES and info.num_classes == 3
    assert info.palette == PALETTE
    masks = [np.asarray(Image.open(p)) for p in sorted((root / "train" / "masks").iterdir())]
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=256)[:3]
    np.testing.assert_allclose(info.class_frequencies, counts / counts.sum())
    images, target = next(iter(val))
    assert images.shape == (2, 3, 32, 64) and target.shape == (2, 32, 64)
    first = np.asarray(Image.open(root / "val" / "masks" / "000.png"))
    np.testing.assert_array_equal(target[0, :H, :W].numpy(), first)


def test_folders_colour_masks_map_through_palette(tmp_path: Path) -> None:
    root = make_folders(tmp_path, colour=True)
    _, val_ds, info = build_datasets(folders_cfg(root))
    assert info.class_frequencies[2] > 0
    _, mask = val_ds[0]
    values = set(mask.unique().tolist())
    assert values <= {0, 1, 2, 255} and 2 in values and 1 in values


def test_folders_ignore_index_remapped(tmp_path: Path) -> None:
    root = make_folders(tmp_path)
    train_ds, val_ds, info = build_datasets(folders_cfg(root, ignore_index=100))
    assert info.ignore_index == 100
    _, mask = val_ds[0]
    assert mask[0, 0] == 100 and 255 not in mask.unique().tolist()


# ----------------------------------------------------------------------------- pairs


def make_pairs(root: Path, n_train: int = 4, n_val: int = 2, h: int = 64, w: int = 64) -> Path:
    """A tiny ``pairs`` dataset saved as JPEG, so the label half carries compression noise."""
    rng = np.random.default_rng(1)
    (root / "classes.json").write_text(json.dumps({"classes": CLASSES, "palette": PALETTE}))
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            mask = _label_map(rng, h, w)
            mask[mask == 255] = 0
            mask[:, : w // 4] = 2 if i % 2 else 1
            label = np.zeros((h, w, 3), dtype=np.uint8)
            for c, colour in enumerate(PALETTE):
                label[mask == c] = colour
            pair = np.concatenate([_photo(rng, h, w), label], axis=1)
            Image.fromarray(pair).save(root / split / f"{i:03d}.jpg", quality=75)
            np.save(root / f"{split}_{i:03d}.npy", mask)
    return root


def test_pairs_jpeg_labels_map_to_nearest_ids(tmp_path: Path) -> None:
    root = make_pairs(tmp_path)
    train_ds, val_ds, info = build_datasets(
        DataConfig(format="pairs", root=root, in_memory=False, batch_size=2)
    )
    assert info.num_classes == 3 and len(train_ds) == 4 and len(val_ds) == 2
    raw = np.asarray(Image.open(root / "val" / "000.jpg"))
    assert len(np.unique(raw[:, 64:].reshape(-1, 3), axis=0)) > 3  # JPEG noise is there
    for i in range(2):
        _, mask = val_ds[i]
        expected = np.load(root / f"val_{i:03d}.npy")
        got = mask[:64, :64].numpy()
        assert set(np.unique(got)) <= {0, 1, 2}
        assert (got == expected).mean() > 0.99
    images, masks = next(iter(torch.utils.data.DataLoader(train_ds, batch_size=2)))
    assert images.shape == (2, 3, 64, 64)


def test_pairs_palette_from_config(tmp_path: Path) -> None:
    root = make_pairs(tmp_path)
    (root / "classes.json").unlink()
    _, _, info = build_datasets(
        DataConfig(format="pairs", root=root, palette=PALETTE, classes=CLASSES)
    )
    assert info.class_names == CLASSES and info.palette == PALETTE


def test_nearest_ids_vectorised() -> None:
    rgb = np.array([[[5, 3, 0], [190, 50, 30], [50, 45, 200], [150, 20, 90]]], dtype=np.uint8)
    np.testing.assert_array_equal(pairs.nearest_ids(rgb, PALETTE), [[0, 1, 2, 1]])


# ----------------------------------------------------------------------------- validation


def _expect_data_error(cfg: DataConfig, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        build_datasets(cfg)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("in_memory", [True, False])
def test_error_size_mismatch(tmp_path: Path, in_memory: bool) -> None:
    root = make_folders(tmp_path)
    Image.fromarray(np.zeros((H + 2, W, 3), np.uint8)).save(root / "val/images/001.png")
    _expect_data_error(folders_cfg(root, in_memory=in_memory), "001.png", "40x30", "40x32")


@pytest.mark.parametrize("in_memory", [True, False])
def test_error_label_out_of_range(tmp_path: Path, in_memory: bool) -> None:
    root = make_folders(tmp_path)
    mask = np.zeros((H, W), np.uint8)
    mask[3, 3], mask[4, 4] = 7, 9
    Image.fromarray(mask).save(root / "train/masks/002.png")
    msg = _expect_data_error(folders_cfg(root, in_memory=in_memory), "masks/002.png", "[7, 9]")
    assert "0..2" in msg and "255" in msg


@pytest.mark.parametrize("which", ["images", "masks"])
def test_error_unreadable_file(tmp_path: Path, which: str) -> None:
    root = make_folders(tmp_path)
    (root / "train" / which / "001.png").write_bytes(b"not a png at all")
    _expect_data_error(folders_cfg(root, in_memory=False), f"{which}/001.png", "unreadable")


def test_error_truncated_image_in_memory(tmp_path: Path) -> None:
    root = make_folders(tmp_path)
    path = root / "val" / "images" / "000.png"
    path.write_bytes(path.read_bytes()[:60])
    _expect_data_error(folders_cfg(root, in_memory=True), "images/000.png", "unreadable")


def test_error_missing_mask(tmp_path: Path) -> None:
    root = make_folders(tmp_path)
    (root / "val" / "masks" / "002.png").unlink()
    _expect_data_error(folders_cfg(root), "images/002.png", "no mask")


def test_error_empty_split(tmp_path: Path) -> None:
    root = make_folders(tmp_path)
    for p in (root / "val" / "images").iterdir():
        p.unlink()
    _expect_data_error(folders_cfg(root), "val/images", "empty split")


def test_error_missing_split_folder(tmp_path: Path) -> None:
    root = make_folders(tmp_path)
    _expect_data_error(folders_cfg(root, val_split="test"), "test/images", "not found")


def test_error_unknown_mask_colour(tmp_path: Path) -> None:
    root = make_folders(tmp_path, colour=True)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[5, 5] = (1, 2, 3)
    Image.fromarray(rgb).save(root / "train/masks/004.png")
    _expect_data_error(folders_cfg(root), "masks/004.png", "(1, 2, 3)", "not in the palette")


def test_error_no_classes(tmp_path: Path) -> None:
    root = make_folders(tmp_path)
    (root / "classes.json").unlink()
    _expect_data_error(folders_cfg(root), "classes.json", "data.classes")
    _, _, info = build_datasets(folders_cfg(root, classes=CLASSES))
    assert info.class_names == CLASSES and info.palette is None


def test_error_pairs_odd_width(tmp_path: Path) -> None:
    root = make_pairs(tmp_path)
    Image.fromarray(np.zeros((64, 129, 3), np.uint8)).save(root / "val" / "001.png")
    _expect_data_error(
        DataConfig(format="pairs", root=root, in_memory=False), "val/001.png", "width 129"
    )


def test_data_error_is_value_error() -> None:
    assert issubclass(DataError, ValueError)


# ----------------------------------------------------------------------------- transforms


def test_train_transform_keeps_label_set(tmp_path: Path) -> None:
    root = make_folders(tmp_path)
    augment = {"scale": (0.5, 1.7), "crop": (24, 36), "color_jitter": 0.4}
    cfg = folders_cfg(root, augment=augment, pad_multiple=4)
    train_ds, _, _ = build_datasets(cfg)
    seen: set[int] = set()
    for _ in range(4):
        for i in range(len(train_ds)):
            image, mask = train_ds[i]
            assert image.shape == (3, 24, 36) and mask.shape == (24, 36)
            seen |= set(mask.unique().tolist())
    assert seen <= {0, 1, 2, 255} and {0, 1, 2} <= seen


def test_train_crop_defaults_to_padded_size(tmp_path: Path) -> None:
    root = make_folders(tmp_path)
    train, _, _ = build_loaders(folders_cfg(root, augment={"scale": (1.0, 1.0)}))
    images, masks = next(iter(train))
    assert images.shape == (2, 3, 32, 64) and masks.shape == (2, 32, 64)
    assert (masks == 255).float().mean() > (64 * 32 - H * W) / (64 * 32) - 1e-6


def test_val_padding_to_multiple_with_ignore(tmp_path: Path) -> None:
    root = make_folders(tmp_path)
    _, val_ds, _ = build_datasets(folders_cfg(root, pad_multiple=32))
    image, mask = val_ds[0]
    assert image.shape == (3, 32, 64) and mask.shape == (32, 64)
    assert (mask[H:, :] == 255).all() and (mask[:, W:] == 255).all()
    assert (mask[:H, :W] != 255).float().mean() > 0.9  # content kept at the top left
    mean = torch.tensor(transforms.IMAGENET_MEAN)
    std = torch.tensor(transforms.IMAGENET_STD)
    np.testing.assert_allclose(image[:, -1, -1], (-mean / std).numpy(), rtol=1e-5)


def test_pad_collate_mixed_sizes() -> None:
    collate = transforms.PadCollate(255)
    a = (torch.ones(3, 32, 32), torch.zeros(32, 32, dtype=torch.long))
    b = (torch.ones(3, 64, 32), torch.ones(64, 32, dtype=torch.long))
    images, masks = collate([a, b])
    assert images.shape == (2, 3, 64, 32) and masks.shape == (2, 64, 32)
    assert (masks[0, 32:] == 255).all() and (masks[1] == 1).all()


# ----------------------------------------------------------------------------- stats


def test_stats_cached_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folders(tmp_path)
    cfg = folders_cfg(root, in_memory=False)
    _, _, first = build_datasets(cfg)
    cache = list((root / stats.CACHE_DIRNAME).glob("*.json"))
    assert len(cache) == 2  # train and val

    def no_read(*args: object, **kw: object) -> None:
        raise AssertionError("mask re-read despite the cache")

    monkeypatch.setattr(folders, "read_mask_raw", no_read)
    _, _, second = build_datasets(cfg)
    np.testing.assert_array_equal(first.class_frequencies, second.class_frequencies)
    monkeypatch.undo()

    # Changing a mask changes size/mtime: the cache key changes and the split is re-read.
    mask = np.full((H, W), 2, np.uint8)
    path = root / "train" / "masks" / "000.png"
    Image.fromarray(mask).save(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    _, _, third = build_datasets(cfg)
    assert third.class_frequencies[2] > first.class_frequencies[2]


def test_stats_fall_back_to_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    root = make_folders(tmp_path / "data")
    (root / stats.CACHE_DIRNAME).write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    build_datasets(folders_cfg(root, in_memory=False))
    assert len(list((tmp_path / "xdg" / "tune_losses").glob("*.json"))) == 2


# ----------------------------------------------------------------------------- real data

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

CAMVID_TRAIN_FREQ = {
    "Sky": 0.1744,
    "Building": 0.2419,
    "Pole": 0.0102,
    "Road": 0.3310,
    "Pavement": 0.0467,
    "Tree": 0.1011,
    "SignSymbol": 0.0122,
    "Fence": 0.0117,
    "Car": 0.0611,
    "Pedestrian": 0.0067,
    "Bicyclist": 0.0030,
}


def real_data(name: str) -> Path:
    """The shared data set ``name``; skip when absent, fail when TUNE_LOSSES_REQUIRE_DATA=1."""
    path = DATA / name
    if not (path / "classes.json").is_file():
        reason = f"real data set not found at {path} (see ../shared/data/SOURCE.md)"
        if os.environ.get("TUNE_LOSSES_REQUIRE_DATA") == "1":
            pytest.fail(f"{reason}; TUNE_LOSSES_REQUIRE_DATA=1 requires it")
        pytest.skip(reason)
    return path


def test_camvid_loaders_and_frequencies() -> None:
    root = real_data("camvid")
    cfg = DataConfig(format="folders", root=root, in_memory=False, batch_size=4)
    train, val, info = build_loaders(cfg)
    assert info.num_classes == 11 and info.ignore_index == 255
    for name, freq in CAMVID_TRAIN_FREQ.items():
        got = info.class_frequencies[info.class_names.index(name)]
        assert got == pytest.approx(freq, abs=1e-3), name
    assert len(train.dataset) == 367 and len(val.dataset) == 101
    images, masks = next(iter(train))
    assert images.shape == (4, 3, 192, 256) and masks.shape == (4, 192, 256)
    images, masks = next(iter(val))
    assert images.shape == (4, 3, 192, 256)
    assert set(masks.unique().tolist()) <= set(range(11)) | {255}
    assert (masks[:, 180:] == 255).all() and (masks[:, :, 240:] == 255).all()


def test_camvid_at_half_scale() -> None:
    """``data.scale: 0.5``: 240x180 images become 120x90 (val padded to 128x96), masks keep
    only real labels (nearest neighbour), and the default train crop follows."""
    root = real_data("camvid")
    cfg = DataConfig(format="folders", root=root, in_memory=False, batch_size=2, scale=0.5)
    train, val, _ = build_loaders(cfg)
    images, masks = next(iter(val))
    assert images.shape == (2, 3, 96, 128) and masks.shape == (2, 96, 128)
    assert (masks[:, 90:] == 255).all() and (masks[:, :, 120:] == 255).all()
    assert set(masks.unique().tolist()) <= set(range(11)) | {255}
    assert (masks[:, :90, :120] != 255).float().mean() > 0.9
    images, masks = next(iter(train))
    assert images.shape == (2, 3, 96, 128)


def test_membrane_loaders() -> None:
    root = real_data("membrane")
    train, val, info = build_loaders(DataConfig(format="folders", root=root, batch_size=4))
    assert info.class_names == ["cell", "membrane"]
    assert info.class_frequencies[1] == pytest.approx(0.217, abs=2e-3)
    images, masks = next(iter(val))
    assert images.shape == (4, 3, 256, 256) and masks.shape == (4, 256, 256)
    assert set(masks.unique().tolist()) == {0, 1}
    assert len(train.dataset) == 24 and len(val.dataset) == 6


def test_real_data_skips_or_fails_when_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "DATA", tmp_path)
    monkeypatch.delenv("TUNE_LOSSES_REQUIRE_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not found"):
        real_data("camvid")
    monkeypatch.setenv("TUNE_LOSSES_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="TUNE_LOSSES_REQUIRE_DATA=1"):
        real_data("camvid")
