"""Splits, leakage between them, and class counts.

Validation and test splits come from the folders or the manifest's split column; a split
that is given nowhere is carved out of the training files, stratified by class and seeded:
each class gives its share of ``round(N * fraction)`` files (largest remainders), and keeps
at least one training file. The same files, labels, fractions and seed always give the same
split, so a resumed study evaluates on the same files.

Leakage: files with identical bytes, or identical pixels after preprocessing, in two
different splits. Dedupe keeps each such image in the earliest split (train, then val, then
test) and drops it from the later evaluation splits; training files are never dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hpsearch.data_utils.own_images.records import SPLITS

__all__ = ["LeakGroup", "Leakage", "assign_splits", "class_counts", "find_leakage",
           "imbalance_ratio", "split_digest"]

TRAIN, VAL, TEST = 0, 1, 2


def assign_splits(labels: np.ndarray, given: np.ndarray, *, num_classes: int,
                  val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Each file's split code: the given one, or carved where a split is given nowhere.

    Args:
        labels: int array (N,), class indices.
        given: int array (N,), split codes (0 train, 1 val, 2 test) or -1 where none given.
        num_classes: K, labels lie in 0..K-1.
        val_fraction, test_fraction: shares carved when the split is absent.
        seed: seed of ``numpy.random.default_rng`` for the carving.

    Returns:
        int8 array (N,) of split codes 0, 1, 2.
    """
    splits = np.where(given < 0, TRAIN, given).astype(np.int8)
    present = set(np.unique(given[given >= 0]).tolist())
    carve = {VAL: val_fraction if VAL not in present else 0.0,
             TEST: test_fraction if TEST not in present else 0.0}
    pool = np.flatnonzero(splits == TRAIN)
    pool_labels = labels[pool]
    per_class = np.bincount(pool_labels, minlength=num_classes)
    shares = {code: _allocate(per_class, round(len(pool) * fraction))
              for code, fraction in carve.items()}
    shares[TEST] = np.minimum(shares[TEST], np.maximum(per_class - 1, 0))
    shares[VAL] = np.minimum(shares[VAL], np.maximum(per_class - 1 - shares[TEST], 0))
    rng = np.random.default_rng(seed)
    for label in range(num_classes):
        members = pool[pool_labels == label]
        order = members[rng.permutation(len(members))]
        n_val, n_test = shares[VAL][label], shares[TEST][label]
        splits[order[:n_val]] = VAL
        splits[order[n_val:n_val + n_test]] = TEST
    return splits


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """``total`` split over classes in proportion to ``counts`` (largest remainders)."""
    if total <= 0 or counts.sum() == 0:
        return np.zeros_like(counts)
    exact = counts * total / counts.sum()
    shares = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - shares), kind="stable")
    shares[order[: total - shares.sum()]] += 1
    return shares


def split_digest(splits: np.ndarray) -> str:
    """A digest of a split assignment (part of the cache key)."""
    return hashlib.sha256(np.ascontiguousarray(splits, dtype=np.int8).tobytes()).hexdigest()


@dataclass(frozen=True)
class LeakGroup:
    """One image that is in several splits.

    Attributes:
        kind: ``"identical files"`` (same bytes) or ``"identical pixels"`` (different files
            that preprocess to the same pixels).
        files: (split name, path) of each copy, in split order.
    """

    kind: str
    files: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Leakage:
    """The images found in more than one split.

    Attributes:
        groups: one entry per image.
        dropped: (split name, path) of the copies dedupe removed (empty without dedupe).
    """

    groups: tuple[LeakGroup, ...] = ()
    dropped: tuple[tuple[str, str], ...] = ()

    def summary(self) -> str:
        """One line, e.g. ``leakage: 3 images are in more than one split (2 identical
        files, 1 identical pixels); --dedupe drops 3 copies from val/test``."""
        if not self.groups:
            return "leakage: none found (no identical image in two splits)"
        kinds = {kind: sum(g.kind == kind for g in self.groups)
                 for kind in ("identical files", "identical pixels")}
        detail = ", ".join(f"{n} {kind}" for kind, n in kinds.items() if n)
        action = (f"dedupe dropped {len(self.dropped)} copies from val/test" if self.dropped
                  else "dedupe would drop the copies outside the earliest split")
        return (f"leakage: {len(self.groups)} images are in more than one split ({detail}); "
                f"{action}")

    def to_dict(self) -> dict:
        return {"summary": self.summary(),
                "groups": [{"kind": g.kind, "files": [list(f) for f in g.files]}
                           for g in self.groups],
                "dropped": [list(f) for f in self.dropped]}


def find_leakage(splits: np.ndarray, names: Sequence[str], file_digests: Sequence[bytes | None],
                 pixel_digests: Sequence[bytes | None] | None = None) -> tuple[LeakGroup, ...]:
    """Groups of identical images that span two or more splits.

    Args:
        splits: int array (N,) of split codes.
        names: N paths as shown.
        file_digests: N digests of the files' bytes, None where unknown.
        pixel_digests: N digests of the preprocessed pixels, None where unknown; when given,
            images are grouped by pixels (identical bytes give identical pixels) and a
            group's kind says whether its files are also byte-identical.

    Returns:
        The groups, ordered by their first file.
    """
    keys = pixel_digests if pixel_digests is not None else file_digests
    members: dict[bytes, list[int]] = {}
    for row, key in enumerate(keys):
        if key is not None:
            members.setdefault(key, []).append(row)
    groups = []
    split_of = np.asarray(splits).tolist()
    for rows in members.values():
        if len(rows) < 2 or len({split_of[r] for r in rows}) < 2:
            continue
        rows = sorted(rows, key=lambda r: (split_of[r], names[r]))
        same_bytes = len({file_digests[r] for r in rows}) == 1 and file_digests[rows[0]]
        kind = "identical files" if same_bytes else "identical pixels"
        groups.append(LeakGroup(kind, tuple((SPLITS[split_of[r]], names[r]) for r in rows)))
    return tuple(sorted(groups, key=lambda g: g.files))


def dedupe_rows(groups: Sequence[LeakGroup]) -> set[tuple[str, str]]:
    """(split, path) of every copy dedupe drops: those outside each group's earliest split."""
    dropped = set()
    for group in groups:
        first = group.files[0][0]
        dropped |= {f for f in group.files if f[0] != first}
    return dropped


def class_counts(labels: np.ndarray, num_classes: int) -> tuple[int, ...]:
    """Images per class, from int labels (N,)."""
    return tuple(int(n) for n in np.bincount(labels, minlength=num_classes))


def imbalance_ratio(train_counts: Sequence[int]) -> float:
    """Largest over smallest training class count (1.0 when balanced; inf when a class has
    no training image)."""
    smallest = min(train_counts)
    return float("inf") if smallest == 0 else max(train_counts) / smallest
