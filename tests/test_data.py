"""Tests for hpsearch.data_utils: file readers, source search, splits, augmentation, loader."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from hpsearch.data_utils import (
    ArraySplit,
    DataNotFoundError,
    DataOrigin,
    get_dataset,
    get_dataset_info,
    load_dataset,
    load_dataset_with_origin,
    loading,
    read_cifar_batch,
    read_idx_labels,
    registry,
    split_train_val,
)
from hpsearch.training import DeviceLoader, normalize, random_crop, random_hflip

REAL_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# ----------------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in IDX format (gzip when the name ends in .gz)."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def write_idx_set(folder: Path, n_train: int = 20, n_test: int = 8, *, gz: bool = True):
    """Write a tiny MNIST-format data set; return (train_x, train_y, test_x, test_y)."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    )
    for name, array in zip(IDX_NAMES, arrays):
        write_idx(folder / (name + (".gz" if gz else "")), array)
    return arrays


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    """Write a batch the way the original cifar-10-python.tar.gz stores it (pickle protocol 2)."""
    batch = {
        b"batch_label": path.name.encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar_set(folder: Path, per_batch: int = 4) -> np.ndarray:
    """Write all six batches with random data; return the train data rows (5*per_batch, 3072)."""
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True)
    rows = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        write_cifar_batch(folder / name, data, [int(v) for v in rng.integers(0, 10, per_batch)])
        rows.append(data)
    return np.concatenate(rows[:5])


def synthetic_split(n: int, *, channels: int = 1, side: int = 28) -> ArraySplit:
    """Images whose pixels encode the sample: [0,0,0] = index % 256, the rest = label * 20."""
    labels = np.arange(n) % 10
    images = np.repeat((labels * 20).astype(np.uint8), channels * side * side)
    images = images.reshape(n, channels, side, side).copy()
    images[:, 0, 0, 0] = np.arange(n) % 256
    return ArraySplit(images=images, labels=labels.astype(np.int64))


def unnormalize(x: torch.Tensor, name: str) -> torch.Tensor:
    stats = get_dataset_info(name).normalization
    mean = torch.tensor(stats.mean).view(1, -1, 1, 1)
    std = torch.tensor(stats.std).view(1, -1, 1, 1)
    return ((x.float() * std + mean) * 255).round()


def loader_parts(name: str) -> dict:
    """The normalisation and augmentation of data set ``name``, as loaders take them."""
    info = get_dataset_info(name)
    return {"normalization": info.normalization, "augmentation": info.augmentation}


def debian_copy_at(monkeypatch, folder: Path) -> None:
    """Make the registered Fashion-MNIST source look for Debian's copy in ``folder``."""
    source = dataclasses.replace(get_dataset("fashion_mnist"), system_folders=(folder,))
    monkeypatch.setitem(registry._SOURCES, "fashion_mnist", source)


@pytest.fixture
def isolated_sources(monkeypatch, tmp_path):
    """No env var, no Debian copy, an empty cache: only what a test writes can be found."""
    monkeypatch.delenv("HPSEARCH_DATA_DIR", raising=False)
    debian_copy_at(monkeypatch, tmp_path / "no-debian-copy")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


# ------------------------------------------------------------------------- real Fashion-MNIST


@pytest.fixture(scope="module")
def real_fashion():
    if not all((REAL_FASHION_DIR / f"{n}.gz").is_file() for n in IDX_NAMES):
        pytest.skip(
            f"real Fashion-MNIST not installed in {REAL_FASHION_DIR} "
            "(apt-get install dataset-fashion-mnist)"
        )
    return load_dataset("fashion_mnist", REAL_FASHION_DIR, download=False)


def test_real_fashion_mnist_has_official_shapes_and_balanced_labels(real_fashion):
    train, test = real_fashion
    assert train.images.shape == (60000, 1, 28, 28)
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_real_fashion_mnist_statistics_match_dataset_info(real_fashion):
    train, _ = real_fashion
    pixels = train.images.astype(np.float64) / 255
    info = get_dataset_info("fashion_mnist")
    assert round(pixels.mean(), 3) == round(info.normalization.mean[0], 3) == 0.286
    assert round(pixels.std(), 3) == round(info.normalization.std[0], 3) == 0.353


def test_fashion_mnist_found_in_debian_folder_without_data_dir(monkeypatch, tmp_path):
    debian = tmp_path / "debian"
    arrays = write_idx_set(debian)
    monkeypatch.delenv("HPSEARCH_DATA_DIR", raising=False)
    debian_copy_at(monkeypatch, debian)
    train, _ = load_dataset("fashion_mnist", download=False)
    np.testing.assert_array_equal(train.images[:, 0], arrays[0])


# ------------------------------------------------------------------------------------- IDX


def test_mnist_idx_files_round_trip_from_torchvision_layout(isolated_sources):
    arrays = write_idx_set(isolated_sources / "data" / "MNIST" / "raw")
    train, test = load_dataset("mnist", isolated_sources / "data", download=False)
    np.testing.assert_array_equal(train.images, arrays[0][:, None])
    np.testing.assert_array_equal(train.labels, arrays[1].astype(np.int64))
    np.testing.assert_array_equal(test.images, arrays[2][:, None])
    np.testing.assert_array_equal(test.labels, arrays[3].astype(np.int64))
    assert train.labels.dtype == np.int64 and len(train) == 20 and len(test) == 8


def test_uncompressed_idx_files_found_via_env_var(isolated_sources, monkeypatch):
    arrays = write_idx_set(isolated_sources / "env" / "mnist", gz=False)
    monkeypatch.setenv("HPSEARCH_DATA_DIR", str(isolated_sources / "env"))
    train, _ = load_dataset("mnist", download=False)
    np.testing.assert_array_equal(train.images[:, 0], arrays[0])


def test_truncated_idx_file_raises_value_error_naming_file(isolated_sources):
    folder = isolated_sources / "data"
    write_idx_set(folder)
    bad = folder / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(gzip.decompress(bad.read_bytes())[:-100]))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz"):
        load_dataset("mnist", folder, download=False)


def test_cut_gzip_stream_and_bad_magic_raise_value_error(tmp_path):
    cut = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(cut, np.arange(50, dtype=np.uint8))
    cut.write_bytes(cut.read_bytes()[:20])
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz"):
        read_idx_labels(cut)
    images_as_labels = tmp_path / "train-labels-idx1-ubyte"
    write_idx(images_as_labels, np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"magic.*2049.*2051"):
        read_idx_labels(images_as_labels)


# ----------------------------------------------------------------------------------- CIFAR


def test_cifar_batches_load_with_channel_major_pixel_layout(isolated_sources):
    rows = write_cifar_set(isolated_sources / "data" / "cifar-10-batches-py")
    train, test = load_dataset("cifar10", isolated_sources / "data", download=False)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    # Row layout: 1024 red, 1024 green, 1024 blue, each 32x32 row-major.
    channel, row, col = 2, 5, 7
    assert train.images[13, channel, row, col] == rows[13, channel * 1024 + row * 32 + col]
    np.testing.assert_array_equal(train.images.reshape(20, -1), rows)


def test_cifar_batch_with_code_executing_global_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        read_cifar_batch(path)


# ------------------------------------------------------------- a named folder: used or refused


@pytest.fixture
def debian_copy(isolated_sources, monkeypatch):
    """An installed copy of Fashion-MNIST that a named folder must never fall back to."""
    folder = isolated_sources / "debian"
    write_idx_set(folder, n_train=30)
    debian_copy_at(monkeypatch, folder)
    return folder


def test_a_named_folder_is_read_and_named_as_the_origin(isolated_sources, debian_copy):
    arrays = write_idx_set(isolated_sources / "mine" / "FashionMNIST" / "raw", n_train=12)
    train, _, origin = load_dataset_with_origin("fashion_mnist", isolated_sources / "mine",
                                                download=False)
    np.testing.assert_array_equal(train.images[:, 0], arrays[0])
    assert origin == DataOrigin(isolated_sources / "mine" / "FashionMNIST" / "raw")
    assert origin.describe() == str(isolated_sources / "mine" / "FashionMNIST" / "raw")


def test_without_a_named_folder_the_installed_copy_is_the_origin(isolated_sources,
                                                                 debian_copy):
    train, _, origin = load_dataset_with_origin("fashion_mnist", download=False)
    assert len(train) == 30 and origin == DataOrigin(debian_copy)


@pytest.mark.parametrize("how", ["data_dir", "env"])
def test_a_named_folder_without_the_files_never_falls_back_to_the_installed_copy(
        isolated_sources, debian_copy, monkeypatch, how):
    empty = isolated_sources / "empty"
    empty.mkdir()
    if how == "env":
        monkeypatch.setenv("HPSEARCH_DATA_DIR", str(empty))
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion_mnist", empty if how == "data_dir" else None, download=False)
    msg = str(err.value)
    assert msg.startswith(f"Could not load the fashion_mnist data set from {empty}, the "
                          "folder given with --data-dir or HPSEARCH_DATA_DIR")
    assert "it needs train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz" in msg
    assert f"{debian_copy} (" not in msg and "\n" not in msg


def test_an_empty_named_folder_is_downloaded_into(isolated_sources, debian_copy,
                                                  monkeypatch):
    def fake_download(source, root):
        write_idx_set(root / "FashionMNIST" / "raw", n_train=7)

    monkeypatch.setattr(loading, "_download_with_torchvision", fake_download)
    empty = isolated_sources / "empty"
    empty.mkdir()
    train, _, origin = load_dataset_with_origin("fashion_mnist", empty)
    assert len(train) == 7  # the download, not the installed copy's 30
    assert origin == DataOrigin(empty / "FashionMNIST" / "raw", downloaded=True,
                                url="https://github.com/zalandoresearch/fashion-mnist")
    assert origin.describe() == ("a download of https://github.com/zalandoresearch/"
                                 f"fashion-mnist into {empty / 'FashionMNIST' / 'raw'}")


@pytest.mark.parametrize("layout", ["class sub-folders", "flat"])
def test_a_folder_of_own_images_is_refused_without_a_download(isolated_sources, debian_copy,
                                                              monkeypatch, layout):
    monkeypatch.setattr(loading, "_download_with_torchvision", pytest.fail)
    mine = isolated_sources / "myimgs"
    for i in range(4):
        folder = mine / ("cats", "dogs")[i % 2] if layout == "class sub-folders" else mine
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.JPG").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion_mnist", mine)
    msg = str(err.value)
    shown = "cats/0.JPG, cats/2.JPG, dogs/1.JPG" if layout == "class sub-folders" \
        else "0.JPG, 1.JPG, 2.JPG"
    assert msg.endswith(f"; it holds image files ({shown}, ...) instead: to train on your "
                        "own images, pass the folder with --dataset")
    assert msg.startswith(f"Could not load the fashion_mnist data set from {mine}")
    assert not (mine / "FashionMNIST").exists()


# ---------------------------------------------------------------------------- missing data


def test_missing_data_error_lists_every_place_and_how_to_provide(isolated_sources):
    data_dir = isolated_sources / "empty"
    data_dir.mkdir()
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion_mnist", data_dir, download=False)
    msg = str(err.value)
    assert "fashion_mnist" in msg
    for folder in (data_dir, data_dir / "fashion-mnist", data_dir / "fashion_mnist",
                   data_dir / "FashionMNIST" / "raw"):
        assert f"{folder} (" in msg
    # A named folder is used or refused: the installed copy is not searched, only named.
    debian = isolated_sources / "no-debian-copy"
    assert f"{debian} (" not in msg
    assert f"Without a data folder, the installed copy in {debian} is read" in msg
    assert "download=False" in msg
    assert "train-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert "--data-dir" in msg and "HPSEARCH_DATA_DIR" in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_missing_data_without_a_data_dir_lists_the_installed_copy_and_the_cache(
        isolated_sources):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion_mnist", download=False)
    msg = str(err.value)
    cache = isolated_sources / "cache" / "hpsearch" / "data" / "FashionMNIST" / "raw"
    for folder in (isolated_sources / "no-debian-copy", cache):
        assert f"{folder} (does not exist)" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg


def test_failed_download_reason_appears_in_error(isolated_sources, monkeypatch):
    def no_network(name, root):
        raise OSError("[Errno -3] Temporary failure in name resolution\nlong traceback")

    monkeypatch.setattr(loading, "_download_with_torchvision", no_network)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", download=True)
    msg = str(err.value)
    cache = isolated_sources / "cache" / "hpsearch" / "data"
    assert "cifar10" in msg and f"{cache / 'cifar-10-batches-py'} (does not exist)" in msg
    assert f"download into {cache} (failed: OSError: [Errno -3] Temporary failure" in msg
    assert "long traceback" not in msg and "data_batch_1" in msg
    assert "apt-get" not in msg  # Only Fashion-MNIST has a Debian package.


def test_download_result_is_read_with_own_readers(isolated_sources, monkeypatch):
    def fake_download(name, root):
        write_idx_set(root / "MNIST" / "raw", n_train=12)

    monkeypatch.setattr(loading, "_download_with_torchvision", fake_download)
    train, _ = load_dataset("mnist", download=True)
    assert len(train) == 12
    assert (isolated_sources / "cache" / "hpsearch" / "data" / "MNIST" / "raw").is_dir()


def test_nonexistent_explicit_data_dir_fails_at_once(isolated_sources, monkeypatch):
    monkeypatch.setattr(loading, "_download_with_torchvision", pytest.fail)
    missing = isolated_sources / "typo"
    with pytest.raises(DataNotFoundError, match=f"{missing} .*does not exist"):
        load_dataset("mnist", missing)


def test_unknown_dataset_name_lists_choices():
    with pytest.raises(ValueError) as err:
        load_dataset("imagenet")
    expected = "unknown dataset 'imagenet'; choose one of: cifar10, fashion_mnist, mnist"
    assert str(err.value) == expected


# ---------------------------------------------------------------------------- train / val


def sample_ids(split: ArraySplit) -> set[int]:
    """Sample indices of a synthetic split of at most 256 samples (pixel [0,0,0] = index)."""
    return set(split.images[:, 0, 0, 0].tolist())


def test_split_train_val_sizes_disjoint_and_seeded():
    train, val = split_train_val(synthetic_split(1000), val_fraction=0.1, seed=3)
    assert (len(train), len(val)) == (900, 100)
    ids = sample_ids
    full = synthetic_split(256)
    train, val = split_train_val(full, val_fraction=0.25, seed=3)
    assert ids(train).isdisjoint(ids(val)) and len(ids(train) | ids(val)) == 256
    again_train, again_val = split_train_val(full, val_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again_val.images, val.images)
    np.testing.assert_array_equal(again_train.labels, train.labels)
    _, other_val = split_train_val(full, val_fraction=0.25, seed=4)
    assert ids(other_val) != ids(val)


def test_split_train_val_train_subset_keeps_val_full_size():
    full = synthetic_split(256)
    train, val = split_train_val(full, val_fraction=0.25, seed=0, train_subset=10)
    _, full_val = split_train_val(full, val_fraction=0.25, seed=0)
    assert (len(train), len(val)) == (10, 64)
    np.testing.assert_array_equal(val.images, full_val.images)
    # Labels still match their images after the split (pixel value encodes the label).
    assert (train.images[:, 0, 1, 1] == train.labels * 20).all()


@pytest.mark.parametrize("kwargs", [{"val_fraction": 0.0}, {"val_fraction": 1.0},
                                    {"train_subset": 0}])
def test_split_train_val_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        split_train_val(synthetic_split(50), **kwargs)


# ------------------------------------------------------------------------------ augmentation


def test_random_crop_shifts_each_image_independently_with_zero_fill():
    images = torch.full((64, 1, 8, 8), 7, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    out = random_crop(images, 2, generator=gen)
    assert out.shape == images.shape and out.dtype == torch.uint8
    zero_rows = (out == 0).all(dim=3).sum(dim=(1, 2))  # rows of padding per image
    zero_cols = (out == 0).all(dim=2).sum(dim=(1, 2))
    assert set(zero_rows.tolist()) == {0, 1, 2} and set(zero_cols.tolist()) == {0, 1, 2}
    # What is not padding is the untouched image.
    assert ((out == 0) | (out == 7)).all()


def test_random_crop_takes_the_window_at_the_drawn_offset():
    images = torch.arange(2 * 3 * 5 * 5, dtype=torch.int64).view(2, 3, 5, 5)
    out = random_crop(images, 1, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    for b in range(2):
        matches = [(dy, dx) for dy in range(3) for dx in range(3)
                   if torch.equal(out[b], padded[b, :, dy:dy + 5, dx:dx + 5])]
        assert len(matches) == 1


def test_random_hflip_flips_about_half_of_the_images():
    images = torch.arange(4, dtype=torch.uint8).view(1, 1, 1, 4).repeat(200, 2, 3, 1)
    out = random_hflip(images, generator=torch.Generator().manual_seed(0))
    flipped = (out == images.flip(-1)).flatten(1).all(1)
    kept = (out == images).flatten(1).all(1)
    assert (flipped ^ kept).all()
    assert 70 < int(flipped.sum()) < 130


# ----------------------------------------------------------------------------------- loader


def test_loader_covers_every_sample_once_per_epoch_in_new_order():
    split = synthetic_split(250)
    loader = DeviceLoader(split, **loader_parts("mnist"), batch_size=32,
                          device="cpu", shuffle=True, seed=0)
    assert len(loader) == 8 and loader.num_samples == 250
    epochs = []
    for _ in range(2):
        batches = [unnormalize(x, "mnist")[:, 0, 0, 0] for x, _ in loader]
        assert [len(b) for b in batches] == [32] * 7 + [26]
        order = torch.cat(batches).long()
        assert sorted(order.tolist()) == list(range(250))
        epochs.append(order)
    assert not torch.equal(epochs[0], epochs[1])


def test_loader_order_is_reproducible_for_a_seed():
    def first_batch(seed: int) -> torch.Tensor:
        loader = DeviceLoader(synthetic_split(200), **loader_parts("fashion_mnist"),
                              batch_size=50, device="cpu", shuffle=True, augment=True, seed=seed)
        return next(iter(loader))[0]

    assert torch.equal(first_batch(7), first_batch(7))
    assert not torch.equal(first_batch(7), first_batch(8))


def test_loader_keeps_labels_aligned_through_shuffling():
    loader = DeviceLoader(synthetic_split(100), **loader_parts("fashion_mnist"),
                          batch_size=16, device="cpu", shuffle=True, seed=5)
    for x, y in loader:
        pixels = unnormalize(x, "fashion_mnist")
        assert y.dtype == torch.int64
        assert torch.equal(pixels[:, 0, 5, 5], (y * 20).float())


def test_loader_normalises_and_round_trips_to_uint8():
    split = synthetic_split(10, channels=3, side=32)
    info = get_dataset_info("cifar10")
    loader = DeviceLoader(split, **loader_parts("cifar10"), batch_size=4, device="cpu",
                          drop_last=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 2
    x, y = batches[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(unnormalize(x, "cifar10"), torch.from_numpy(split.images[:4]).float())
    assert torch.equal(y, torch.arange(4))
    stats = info.normalization
    expected = (20 / 255 - stats.mean[2]) / stats.std[2]  # sample 1 has label 1 -> pixel 20
    assert x[1, 2, 3, 3].item() == pytest.approx(expected, abs=1e-6)
    assert loader.images.dtype == torch.uint8 and loader.images.shape == (10, 3, 32, 32)


def test_normalize_half_precision_and_channels_last():
    info = get_dataset_info("mnist")
    images = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    out = normalize(images, info.normalization, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert out.float()[0, 0, 0, 0].item() == pytest.approx((1 - 0.1307) / 0.3081, rel=1e-2)
    loader = DeviceLoader(synthetic_split(4), **loader_parts("mnist"), batch_size=4,
                          device="cpu",
                          channels_last=True)
    x, _ = next(iter(loader))
    assert x.is_contiguous(memory_format=torch.channels_last)


def flip_and_pad_stats(name: str) -> tuple[int, int, bool]:
    """Load images whose columns increase left to right; count (increasing, decreasing) rows."""
    cols = np.arange(10, 38, dtype=np.uint8)  # 28 distinct, nonzero column values
    images = np.broadcast_to(cols, (128, 1, 28, 28)).copy()
    split = ArraySplit(images=images, labels=np.zeros(128, np.int64))
    loader = DeviceLoader(split, **loader_parts(name), batch_size=128, device="cpu",
                          augment=True, seed=1)
    x, _ = next(iter(loader))
    assert x.shape == (128, 1, 28, 28)
    pixels = unnormalize(x, name)
    saw_padding = bool((pixels == 0).any())
    row = pixels[:, 0, 14]  # A middle row is never padding after a shift of <= 2 rows.
    increasing = decreasing = 0
    for r in row:
        values = r[r > 0]
        diffs = values[1:] - values[:-1]
        increasing += int((diffs == 1).all())
        decreasing += int((diffs == -1).all())
    return increasing, decreasing, saw_padding


def test_augment_flips_fashion_mnist_and_pads_with_zeros():
    increasing, decreasing, saw_padding = flip_and_pad_stats("fashion_mnist")
    assert increasing + decreasing == 128 and increasing > 0 and decreasing > 0
    assert saw_padding


def test_augment_never_flips_mnist():
    increasing, decreasing, saw_padding = flip_and_pad_stats("mnist")
    assert (increasing, decreasing) == (128, 0)
    assert saw_padding


def test_a_failed_download_leaves_no_empty_folders_behind(isolated_sources, monkeypatch):
    def no_network(source, root):
        (root / "FashionMNIST" / "raw").mkdir(parents=True)  # as torchvision does first
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:")

    monkeypatch.setattr(loading, "_download_with_torchvision", no_network)
    empty = isolated_sources / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError, match=r"download into .*failed: RuntimeError"):
        load_dataset("fashion_mnist", empty)
    assert list(empty.iterdir()) == []
