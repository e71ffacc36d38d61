"""Data set metadata, readers for the original file formats, and the offline-first loader.

The three supported data sets are read from their original distribution files, never through
a per-sample ``Dataset`` object, so a whole split arrives as one uint8 array that
:class:`hpsearch.data_utils.loader.DeviceLoader` can move to the device in a single copy.

Sources:
    Fashion-MNIST: https://github.com/zalandoresearch/fashion-mnist
    MNIST: http://yann.lecun.com/exdb/mnist/
    CIFAR-10: https://www.cs.toronto.edu/~kriz/cifar.html
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DATA_DIR_ENV_VAR = "HPSEARCH_DATA_DIR"
"""Environment variable naming a folder to search before any other source."""

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the gzip IDX files."""

_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions (N, H, W).
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension (N,).

_CIFAR_DIRNAME = "cifar-10-batches-py"
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch"
_CIFAR_SIDE = 32


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a supported image classification data set.

    Attributes:
        name: Registry key, e.g. ``"fashion_mnist"``.
        in_channels: Number of image channels C (1 for grey scale, 3 for RGB).
        image_size: Side length H == W of the square images, in pixels.
        num_classes: Number of classes; labels are ``0 .. num_classes - 1``.
        class_names: Human-readable class names, indexed by label.
        mean: Per-channel mean of the training images on the 0-1 pixel scale.
        std: Per-channel standard deviation of the training images on the 0-1 pixel scale.
        hflip: Whether random horizontal flips are a label-preserving augmentation.
        crop_padding: Zero padding in pixels on each side before the random crop.
    """

    name: str
    in_channels: int
    image_size: int
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    crop_padding: int


# mean/std: population statistics over every pixel of the 60000 (MNIST, Fashion-MNIST) or
# 50000 (CIFAR-10) training images, pixels scaled to 0-1, per channel. The Fashion-MNIST
# values were computed from the real train-images-idx3-ubyte.gz (0.286041 / 0.353024); the
# MNIST and CIFAR-10 values are the widely published ones computed the same way.
DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        in_channels=1,
        image_size=28,
        num_classes=10,
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mean=(0.2860,),
        std=(0.3530,),
        hflip=True,  # Clothes are left-right symmetric as classes.
        crop_padding=2,
    ),
    "mnist": DatasetInfo(
        name="mnist",
        in_channels=1,
        image_size=28,
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
        mean=(0.1307,),
        std=(0.3081,),
        hflip=False,  # A mirrored digit is not the same digit (2, 3, 5, 7 ...).
        crop_padding=2,
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        in_channels=3,
        image_size=32,
        num_classes=10,
        class_names=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        hflip=True,
        crop_padding=4,
    ),
}

_SOURCE_URLS = {
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist",
    "mnist": "http://yann.lecun.com/exdb/mnist/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar.html",
}

# (train images, train labels, test images, test labels), the names used by both IDX sets.
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def get_dataset_info(name: str) -> DatasetInfo:
    """Look up a data set's metadata.

    Args:
        name: One of the keys of :data:`DATASETS` (``cifar10``, ``fashion_mnist``, ``mnist``).

    Returns:
        The matching :class:`DatasetInfo`.

    Raises:
        ValueError: If ``name`` is not a supported data set; the message lists the choices.
    """
    try:
        return DATASETS[name]
    except KeyError:
        choices = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r}; choose one of: {choices}") from None


@dataclass(frozen=True)
class ArraySplit:
    """One split of a data set, held in host memory.

    Attributes:
        images: uint8 array of shape (N, C, H, W), pixel values 0-255.
        labels: int64 array of shape (N,), class indices.

    Raises:
        TypeError: If ``images`` is not uint8 or ``labels`` is not an integer array.
        ValueError: If the shapes are not (N, C, H, W) and (N,) with the same N.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8:
            raise TypeError(f"images must be uint8, got {self.images.dtype}")
        if not np.issubdtype(self.labels.dtype, np.integer):
            raise TypeError(f"labels must be an integer array, got {self.labels.dtype}")
        if self.images.ndim != 4 or self.labels.ndim != 1:
            raise ValueError(
                f"expected images (N, C, H, W) and labels (N,), got shapes "
                f"{self.images.shape} and {self.labels.shape}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        # Normalise the label dtype once here so every consumer can rely on int64.
        object.__setattr__(self, "labels", self.labels.astype(np.int64, copy=False))

    def __len__(self) -> int:
        return len(self.labels)


class DataNotFoundError(Exception):
    """Raised by :func:`load_dataset` when no source could provide the data set.

    The message is one paragraph naming the data set, every place that was searched (and why
    each failed, including the download attempt) and how to provide the files.
    """


# ---------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently decompressing ``*.gz``; corrupt gzip -> ValueError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"corrupt or truncated gzip file {path}: {exc}") from exc


def _read_idx(path: Path, *, magic: int, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file after checking its header against the payload size."""
    data = _read_bytes(path)
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"truncated IDX file {path}: {len(data)} bytes, no complete header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"bad IDX magic number in {path}: expected {magic}, found {found}")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims)) + header_len
    if len(data) != expected:
        raise ValueError(
            f"truncated or corrupt IDX file {path}: header dimensions {dims} need "
            f"{expected} bytes, file has {len(data)}"
        )
    # frombuffer is read-only; copy so torch.from_numpy and callers get a writable array.
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def read_idx_images(path: str | Path) -> np.ndarray:
    """Read an IDX image file (``*-idx3-ubyte`` or ``*-idx3-ubyte.gz``).

    Format: http://yann.lecun.com/exdb/mnist/ (big-endian magic 2051, then N, H, W as
    big-endian uint32, then N*H*W unsigned bytes).

    Args:
        path: The file; a ``.gz`` suffix means gzip-compressed.

    Returns:
        uint8 array of shape (N, 1, H, W).

    Raises:
        ValueError: If the magic number is wrong or the file is truncated/corrupt; the
            message names the file.
        OSError: If the file cannot be read.
    """
    images = _read_idx(Path(path), magic=_IDX_IMAGES_MAGIC, ndim=3)
    return images[:, None, :, :]


def read_idx_labels(path: str | Path) -> np.ndarray:
    """Read an IDX label file (``*-idx1-ubyte`` or ``*-idx1-ubyte.gz``).

    Format: big-endian magic 2049, then N as big-endian uint32, then N unsigned bytes.

    Args:
        path: The file; a ``.gz`` suffix means gzip-compressed.

    Returns:
        int64 array of shape (N,).

    Raises:
        ValueError: If the magic number is wrong or the file is truncated/corrupt; the
            message names the file.
        OSError: If the file cannot be read.
    """
    return _read_idx(Path(path), magic=_IDX_LABELS_MAGIC, ndim=1).astype(np.int64)


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    # Prefer the uncompressed file: torchvision leaves both, and it skips decompression.
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_folder(folder: Path, info: DatasetInfo) -> tuple[ArraySplit, ArraySplit] | str:
    """Load the four IDX files from ``folder``; return a short reason string if any is absent."""
    paths = [_find_idx_file(folder, stem) for stem in _IDX_FILES]
    missing = [f"{stem}[.gz]" for stem, p in zip(_IDX_FILES, paths) if p is None]
    if missing:
        return "missing " + ", ".join(missing)
    train_x, train_y, test_x, test_y = paths
    assert train_x and train_y and test_x and test_y  # narrowed by the check above
    train = _checked_split(read_idx_images(train_x), read_idx_labels(train_y), info, train_x)
    test = _checked_split(read_idx_images(test_x), read_idx_labels(test_y), info, test_x)
    return train, test


def _checked_split(
    images: np.ndarray, labels: np.ndarray, info: DatasetInfo, path: Path
) -> ArraySplit:
    """Build an ArraySplit, rejecting files whose contents do not fit the data set."""
    want = (info.in_channels, info.image_size, info.image_size)
    if images.shape[1:] != want:
        raise ValueError(f"{path}: images have shape {images.shape[1:]}, expected {want}")
    if len(images) != len(labels):
        raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise ValueError(f"{path}: labels outside 0..{info.num_classes - 1}")
    return ArraySplit(images=images, labels=labels)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 python batches
# ---------------------------------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else.

    Unpickling calls whatever global the file names (``os.system`` included), so a downloaded
    or user-supplied batch file must not be trusted with the full ``pickle.load``. The CIFAR
    batches only need numpy's array reconstruction, plus ``_codecs.encode``, which Python 3
    uses to store ``bytes`` under pickle protocol 2 and which only converts text to bytes.
    """

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} from a CIFAR-10 batch file"
            )
        return super().find_class(module, name)


def read_cifar_batch(path: str | Path) -> ArraySplit:
    """Read one CIFAR-10 python batch (``data_batch_1`` .. ``data_batch_5``, ``test_batch``).

    Format: https://www.cs.toronto.edu/~kriz/cifar.html -- a pickled dict whose ``b"data"`` is
    a uint8 array (n, 3072) holding, per row, the 1024 red, then green, then blue values of a
    32x32 image in row-major order, and whose ``b"labels"`` is a list of n ints in 0..9.

    Args:
        path: The batch file.

    Returns:
        The batch as an :class:`ArraySplit` with images uint8 (n, 3, 32, 32).

    Raises:
        pickle.UnpicklingError: If the file references any global other than numpy's array
            reconstruction helpers (a pickle that would run code), or is not a pickle.
        ValueError: If the unpickled object is not a well-formed CIFAR-10 batch; the message
            names the file.
        OSError: If the file cannot be read.
    """
    path = Path(path)
    with path.open("rb") as f:
        try:
            # encoding="bytes": the original batches were pickled by Python 2 with str keys.
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        except (EOFError, ValueError, TypeError) as exc:
            raise ValueError(f"corrupt or truncated CIFAR-10 batch {path}: {exc}") from exc
    return _cifar_batch_to_split(batch, path)


def _cifar_batch_to_split(batch: object, path: Path) -> ArraySplit:
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 batch (no b'data'/b'labels' entries)")
    data = np.asarray(batch[b"data"])
    side = _CIFAR_SIDE
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * side * side:
        raise ValueError(f"{path}: b'data' is {data.dtype} {data.shape}, expected uint8 (n, 3072)")
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    images = data.reshape(-1, 3, side, side)  # Rows are channel-major: R plane, G, B.
    return _checked_split(np.ascontiguousarray(images), labels, DATASETS["cifar10"], path)


def _load_cifar_folder(folder: Path, info: DatasetInfo) -> tuple[ArraySplit, ArraySplit] | str:
    """Load the six CIFAR-10 batches from ``folder``; return a reason string if any is absent."""
    names = (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        return "missing " + ", ".join(missing)
    parts = [read_cifar_batch(folder / n) for n in _CIFAR_TRAIN_FILES]
    train = ArraySplit(
        images=np.concatenate([p.images for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
    )
    return train, read_cifar_batch(folder / _CIFAR_TEST_FILE)


# ---------------------------------------------------------------------------------------------
# Search order and download
# ---------------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """Return the default download folder, ``$XDG_CACHE_HOME/hpsearch/data``.

    Falls back to ``~/.cache/hpsearch/data`` when ``XDG_CACHE_HOME`` is unset or empty.
    """
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "hpsearch" / "data"


def _candidate_folders(name: str, root: Path) -> list[Path]:
    """The conventional layouts under a data folder, in search order."""
    if name == "fashion_mnist":
        return [root, root / "fashion-mnist", root / "fashion_mnist", root / "FashionMNIST/raw"]
    if name == "mnist":
        return [root, root / "mnist", root / "MNIST/raw"]
    return [root / _CIFAR_DIRNAME, root]


def _download_folder(name: str, root: Path) -> Path:
    """Where torchvision leaves the raw files after downloading into ``root``."""
    sub = {"fashion_mnist": "FashionMNIST/raw", "mnist": "MNIST/raw", "cifar10": _CIFAR_DIRNAME}
    return root / sub[name]


def _load_folder(name: str, folder: Path) -> tuple[ArraySplit, ArraySplit] | str:
    if not folder.is_dir():
        return "does not exist"
    info = DATASETS[name]
    if name == "cifar10":
        return _load_cifar_folder(folder, info)
    return _load_idx_folder(folder, info)


def _download_with_torchvision(name: str, root: Path) -> None:
    """Download the raw files with torchvision into ``root`` (network access required).

    Raises:
        Exception: Whatever torchvision raises (no network, checksum mismatch, ...).
    """
    # Imported here so that reading local files never pays torchvision's import cost.
    from torchvision import datasets as tv_datasets

    cls = {
        "fashion_mnist": tv_datasets.FashionMNIST,
        "mnist": tv_datasets.MNIST,
        "cifar10": tv_datasets.CIFAR10,
    }[name]
    for train in (True, False):
        cls(root=str(root), train=train, download=True)


def _short_reason(exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    reason = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    return reason if len(reason) <= 200 else reason[:197] + "..."


def _how_to_provide(name: str) -> str:
    if name == "cifar10":
        files = (
            f"the folder {_CIFAR_DIRNAME}/ (data_batch_1 .. data_batch_5 and test_batch, "
            "extracted from cifar-10-python.tar.gz)"
        )
    else:
        files = ", ".join(f"{stem}.gz" for stem in _IDX_FILES) + " (or their uncompressed forms)"
    text = (
        f"To provide it, put {files} in a folder and pass that folder with --data-dir or set "
        f"{DATA_DIR_ENV_VAR} to it"
    )
    if name == "fashion_mnist":
        text += (
            f"; on Debian/Ubuntu, apt-get install dataset-fashion-mnist installs the files to "
            f"{DEBIAN_FASHION_MNIST_DIR}"
        )
    return f"{text}. The files are published at {_SOURCE_URLS[name]}."


def _not_found(name: str, attempts: list[str]) -> DataNotFoundError:
    looked = "; ".join(attempts) if attempts else "nowhere"
    return DataNotFoundError(
        f"Could not load the {name} data set. Looked in: {looked}. {_how_to_provide(name)}"
    )


def _resolve_root(data_dir: str | Path | None) -> Path | None:
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DataNotFoundError(
                f"Could not load data: the data directory {root} given with data_dir / "
                f"--data-dir does not exist. Create it, or point --data-dir or "
                f"{DATA_DIR_ENV_VAR} at the folder that holds the data set files."
            )
        return root
    env = os.environ.get(DATA_DIR_ENV_VAR)
    return Path(env).expanduser() if env else None


def _search_folders(name: str, root: Path | None) -> list[Path]:
    folders = _candidate_folders(name, root) if root is not None else []
    if name == "fashion_mnist":
        folders.append(DEBIAN_FASHION_MNIST_DIR)
    if root is None:
        # A previous download into the default cache should be found without the network.
        folders.append(_download_folder(name, default_data_dir()))
    return folders


def load_dataset(
    name: str, data_dir: str | Path | None = None, *, download: bool = True
) -> tuple[ArraySplit, ArraySplit]:
    """Load a data set's official train and test splits from the first source that has them.

    Search order:

    1. ``data_dir`` if given, else ``$HPSEARCH_DATA_DIR`` if set: the folder itself and its
       conventional sub-folders (fashion_mnist: ``fashion-mnist``, ``fashion_mnist``,
       ``FashionMNIST/raw``; mnist: ``mnist``, ``MNIST/raw``; cifar10: ``cifar-10-batches-py``
       first, then the folder itself).
    2. fashion_mnist only: Debian's :data:`DEBIAN_FASHION_MNIST_DIR`.
    3. Without a data folder: a previous download in :func:`default_data_dir`.
    4. If ``download``: torchvision's downloader into the data folder (else
       :func:`default_data_dir`), then the raw files are read with this module's readers.

    Args:
        name: Data set key: ``cifar10``, ``fashion_mnist`` or ``mnist``.
        data_dir: Folder to search first (and to download into); overrides
            ``$HPSEARCH_DATA_DIR``.
        download: Whether to try torchvision's download when no local copy is found.

    Returns:
        ``(train, test)``: uint8 images (N, C, H, W) and int64 labels (N,). For the three
        sets N is 60000/10000 (MNIST, Fashion-MNIST) or 50000/10000 (CIFAR-10).

    Raises:
        ValueError: If ``name`` is unknown, or a file that is present is corrupt or truncated
            (the message names the file).
        pickle.UnpicklingError: If a CIFAR-10 batch file references a disallowed global.
        DataNotFoundError: If an explicit ``data_dir`` does not exist, or every source failed;
            the message lists each place searched and how to provide the files.
    """
    get_dataset_info(name)
    root = _resolve_root(data_dir)
    attempts: list[str] = []
    for folder in _search_folders(name, root):
        result = _load_folder(name, folder)
        if not isinstance(result, str):
            logger.info("loaded %s from %s", name, folder)
            return result
        attempts.append(f"{folder} ({result})")
    if download:
        result = _try_download(name, root if root is not None else default_data_dir())
        if not isinstance(result, str):
            return result
        attempts.append(result)
    else:
        attempts.append("download (not attempted: download=False)")
    raise _not_found(name, attempts)


def _try_download(name: str, root: Path) -> tuple[ArraySplit, ArraySplit] | str:
    """Download into ``root`` and read the result; return a reason string on failure."""
    try:
        _download_with_torchvision(name, root)
    except Exception as exc:
        return f"download into {root} (failed: {_short_reason(exc)})"
    folder = _download_folder(name, root)
    result = _load_folder(name, folder)
    if isinstance(result, str):
        return f"download into {root} (finished, but {folder}: {result})"
    logger.info("downloaded %s into %s", name, root)
    return result


# ---------------------------------------------------------------------------------------------
# Validation split
# ---------------------------------------------------------------------------------------------


def split_train_val(
    train: ArraySplit,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    train_subset: int | None = None,
) -> tuple[ArraySplit, ArraySplit]:
    """Carve a validation split out of the official training split.

    A permutation drawn from ``numpy.random.default_rng(seed)`` puts its first
    ``round(N * val_fraction)`` indices in validation and the rest in training, so the same
    seed always gives the same, disjoint split and the test split is never touched.

    Args:
        train: The official training split (N images).
        val_fraction: Fraction of N used for validation, strictly between 0 and 1.
        seed: Seed of the permutation.
        train_subset: If given, keep only the first ``train_subset`` of the remaining training
            images (all of them if fewer remain); the validation split stays full size.

    Returns:
        ``(train, val)`` as new :class:`ArraySplit` objects (copies).

    Raises:
        ValueError: If ``val_fraction`` is not in (0, 1), ``train_subset < 1``, or the split
            would leave the training or validation part empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if train_subset is not None and train_subset < 1:
        raise ValueError(f"train_subset must be >= 1, got {train_subset}")
    n = len(train)
    n_val = round(n * val_fraction)
    if n_val == 0 or n_val == n:
        raise ValueError(
            f"val_fraction={val_fraction} of {n} samples leaves an empty train or val split"
        )
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = order[:n_val], order[n_val:]
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    return _take(train, train_idx), _take(train, val_idx)


def _take(split: ArraySplit, idx: np.ndarray) -> ArraySplit:
    return ArraySplit(images=split.images[idx], labels=split.labels[idx])
