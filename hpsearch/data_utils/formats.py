"""Readers for the data sets' original file formats: gzip IDX files (MNIST, Fashion-MNIST)
and CIFAR-10's python batches. A whole split arrives as one uint8 array, never through a
per-sample ``Dataset`` object.

Each reader checks what it reads and raises :class:`DataFileError` naming the file and what
is wrong with it: a truncated or empty file, a wrong magic number or image size, labels
that do not match the images in number or range.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.data_utils.arrays import ArraySplit
from hpsearch.data_utils.registry import DatasetInfo

__all__ = ["CIFAR_DIRNAME", "IDX_FILES", "DataFileError", "read_cifar_batch",
           "read_cifar_folder", "read_idx_folder", "read_idx_images", "read_idx_labels"]


class DataFileError(ValueError):
    """A data set file that is present but cannot be used; the message names the file and
    says what is wrong with it."""


_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions (N, H, W).
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension (N,).

# (train images, train labels, test images, test labels), the names used by both IDX sets.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_DIRNAME = "cifar-10-batches-py"
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch"
_CIFAR_SIDE = 32


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently decompressing ``*.gz``; corrupt gzip -> DataFileError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataFileError(f"{path}: corrupt or truncated gzip file ({exc})") from exc


def _read_idx(path: Path, *, magic: int, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file after checking its header against the payload size."""
    data = _read_bytes(path)
    header_len = 4 + 4 * ndim
    if not data:
        raise DataFileError(f"{path}: empty file")
    if len(data) < header_len:
        raise DataFileError(f"{path}: truncated IDX file ({len(data)} bytes, no complete "
                            "header)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataFileError(f"{path}: bad IDX magic number: expected {magic}, found {found}")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims)) + header_len
    if len(data) != expected:
        raise DataFileError(f"{path}: truncated or corrupt IDX file: header dimensions {dims} "
                            f"need {expected} bytes, the file has {len(data)}")
    # frombuffer is read-only; copy so torch.from_numpy and callers get a writable array.
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def read_idx_images(path: str | Path) -> np.ndarray:
    """Read an IDX image file (``*-idx3-ubyte`` or ``*-idx3-ubyte.gz``).

    Format: http://yann.lecun.com/exdb/mnist/ (big-endian magic 2051, then N, H, W as
    big-endian uint32, then N*H*W unsigned bytes).

    Returns:
        uint8 array of shape (N, 1, H, W).

    Raises:
        DataFileError: the file is empty, truncated, corrupt or of another kind (magic).
        OSError: the file cannot be read.
    """
    return _read_idx(Path(path), magic=_IDX_IMAGES_MAGIC, ndim=3)[:, None, :, :]


def read_idx_labels(path: str | Path) -> np.ndarray:
    """Read an IDX label file (``*-idx1-ubyte`` or ``*-idx1-ubyte.gz``): big-endian magic
    2049, then N as big-endian uint32, then N unsigned bytes.

    Returns:
        int64 array of shape (N,).

    Raises:
        DataFileError: the file is empty, truncated, corrupt or of another kind (magic).
        OSError: the file cannot be read.
    """
    return _read_idx(Path(path), magic=_IDX_LABELS_MAGIC, ndim=1).astype(np.int64)


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    # Prefer the uncompressed file: torchvision leaves both, and it skips decompression.
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx_folder(folder: Path, info: DatasetInfo, *, train: bool = True
                    ) -> tuple[ArraySplit | None, ArraySplit] | str:
    """Read the four IDX files of an MNIST-format data set from ``folder``: (train, test),
    or a short reason if any file is absent; with ``train`` False the training files are
    not read (None stands for their split).

    Raises:
        DataFileError: a file is present but unusable (see :func:`read_idx_images`), or its
            images or labels do not fit ``info`` or each other.
    """
    paths = [_find_idx_file(folder, stem) for stem in IDX_FILES]
    missing = [f"{stem}[.gz]" for stem, p in zip(IDX_FILES, paths) if p is None]
    if missing:
        return "missing " + ", ".join(missing)
    train_x, train_y, test_x, test_y = paths
    assert train_x and train_y and test_x and test_y  # narrowed by the check above
    test = _checked_split(read_idx_images(test_x), test_x, read_idx_labels(test_y), test_y, info)
    if not train:
        return None, test
    return _checked_split(read_idx_images(train_x), train_x, read_idx_labels(train_y),
                          train_y, info), test


def _checked_split(images: np.ndarray, images_path: Path, labels: np.ndarray,
                   labels_path: Path, info: DatasetInfo) -> ArraySplit:
    """Build an ArraySplit, rejecting files whose contents do not fit the data set."""
    want = info.shape.as_tuple()
    if images.shape[1:] != want:
        raise DataFileError(f"{images_path}: images have shape {images.shape[1:]}, "
                            f"{info.name} needs {want}")
    if len(images) != len(labels):
        images_text = (f"{images_path.name} holds" if labels_path != images_path
                       else "the file holds")
        raise DataFileError(f"{labels_path}: {len(labels)} labels, but {images_text} "
                            f"{len(images)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise DataFileError(f"{labels_path}: labels outside 0..{info.num_classes - 1}")
    return ArraySplit(images=images, labels=labels)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else.

    Unpickling calls whatever global the file names (``os.system`` included), so a downloaded
    or user-supplied batch file must not be trusted with the full ``pickle.load``. The CIFAR
    batches only need numpy's array reconstruction, plus ``_codecs.encode``, which Python 3
    uses to store ``bytes`` under pickle protocol 2 and which only converts text to bytes.
    """

    _ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} from a CIFAR-10 batch file"
            )
        return super().find_class(module, name)


def read_cifar_batch(path: str | Path, info: DatasetInfo | None = None) -> ArraySplit:
    """Read one CIFAR-10 python batch (``data_batch_1`` .. ``data_batch_5``, ``test_batch``).

    Format: https://www.cs.toronto.edu/~kriz/cifar.html -- a pickled dict whose ``b"data"`` is
    a uint8 array (n, 3072) holding, per row, the 1024 red, then green, then blue values of a
    32x32 image in row-major order, and whose ``b"labels"`` is a list of n ints in 0..9.

    Returns:
        The batch as an :class:`ArraySplit` with images uint8 (n, 3, 32, 32).

    Raises:
        pickle.UnpicklingError: If the file references any global other than numpy's array
            reconstruction helpers (a pickle that would run code), or is not a pickle.
        DataFileError: the file is empty, truncated, or not a well-formed CIFAR-10 batch.
        OSError: If the file cannot be read.
    """
    path = Path(path)
    with path.open("rb") as f:
        try:
            # encoding="bytes": the original batches were pickled by Python 2 with str keys.
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        except (EOFError, ValueError, TypeError) as exc:
            raise DataFileError(f"{path}: corrupt, truncated or empty CIFAR-10 batch "
                                f"({exc or type(exc).__name__})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataFileError(f"{path}: not a CIFAR-10 batch (no b'data'/b'labels' entries)")
    data = np.asarray(batch[b"data"])
    side = _CIFAR_SIDE
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * side * side:
        raise DataFileError(f"{path}: b'data' is {data.dtype} {data.shape}, expected uint8 "
                            "(n, 3072)")
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    images = np.ascontiguousarray(data.reshape(-1, 3, side, side))  # R plane, G, B per row
    if info is None:
        from hpsearch.data_utils.registry import get_dataset_info

        info = get_dataset_info("cifar10")
    return _checked_split(images, path, labels, path, info)


def read_cifar_folder(folder: Path, info: DatasetInfo, *, train: bool = True
                      ) -> tuple[ArraySplit | None, ArraySplit] | str:
    """Read the six CIFAR-10 batches from ``folder``: (train, test), or a reason if any is
    absent; with ``train`` False the training batches are not read (None stands for their
    split). Raises what :func:`read_cifar_batch` raises."""
    names = (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        return "missing " + ", ".join(missing)
    if not train:
        return None, read_cifar_batch(folder / _CIFAR_TEST_FILE, info)
    parts = [read_cifar_batch(folder / n, info) for n in _CIFAR_TRAIN_FILES]
    train = ArraySplit(
        images=np.concatenate([p.images for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
    )
    return train, read_cifar_batch(folder / _CIFAR_TEST_FILE, info)
