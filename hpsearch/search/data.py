"""What a study trains and tests on, loaded once per process: a registered data set's files,
or a folder or manifest of one's own images (decoded once into the cache, then memory-mapped).

- :func:`load_study_data`: everything a trial needs (``hpsearch run``, each ``--jobs``
  worker): the training and validation splits, the test split, the :class:`DatasetInfo`;
- :func:`load_test_data`: only what the champion is tested on (the ``--jobs`` coordinator,
  ``hpsearch register``): a registered data set's test files, or the cache's test rows;
- :class:`DataRecord`: what a study records of the own images it was created on, so that a
  resumed study is refused when they changed, naming what changed.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.data_utils import (
    ArraySplit,
    DataFileError,
    DataNotFoundError,
    DataOrigin,
    DatasetInfo,
    get_dataset_info,
    load_dataset_with_origin,
    split_train_val,
)
from hpsearch.data_utils.own_images import (
    ImageDataError,
    ImageDataset,
    ImageOptions,
    load_cached_split,
    load_images,
)
from hpsearch.errors import HpsearchError
from hpsearch.search.config import RunConfig
from hpsearch.search.progress import Reporter, ReporterStream
from hpsearch.studies import StudySpec

__all__ = ["DATA_ATTR", "DataRecord", "EvaluationData", "StudyData", "check_splits",
           "image_options", "listed", "load_data", "load_recorded_test_data",
           "load_study_data", "load_test_data", "own_images_info", "summary_line"]

DATA_ATTR = "hpsearch.data"
"""The study's user attribute holding its :class:`DataRecord` (own images only)."""


@dataclass(frozen=True)
class EvaluationData:
    """What a study's champion is tested on.

    Attributes:
        info: the data set: classes, image shape, normalisation, augmentation.
        test: the test split, uint8 images (N, C, S, S) and int64 labels (N,); for own
            images a read-only memory map of the cache (no test split: N = 0).
        source: where the files were read, in words (a folder, a download, a manifest).
        folder: the folder (or manifest) the files were read from, for MLflow's dataset
            source; None where unknown.
        images: own images: the loaded data set (files, skipped, leakage, digests); None for
            a registered data set.
    """

    info: DatasetInfo
    test: ArraySplit
    source: str
    folder: Path | None = None
    images: ImageDataset | None = None


@dataclass(frozen=True)
class StudyData:
    """What every trial of a study trains and validates on, and what its champion is
    tested on.

    Attributes:
        train: the training split (``--train-subset`` applied), uint8 (N, C, S, S).
        val: the validation split.
        tested: the data set and its test split.
    """

    train: ArraySplit
    val: ArraySplit
    tested: EvaluationData

    @property
    def info(self) -> DatasetInfo:
        return self.tested.info


def image_options(spec: StudySpec, seed: int) -> ImageOptions:
    """The :class:`ImageOptions` of ``spec``'s own images; ``seed`` carves the splits that
    no folder or split column gives (the run's ``--seed``, as for a built-in data set's
    validation split).

    Raises:
        HpsearchError: ``spec`` is of a registered data set, or a setting is out of range.
    """
    settings = spec.images
    if settings is None:
        raise HpsearchError(f"{spec.dataset} is a registered data set, not own images")
    try:
        return ImageOptions(image_size=settings.image_size, val_fraction=spec.val_fraction,
                            test_fraction=settings.test_fraction, seed=seed,
                            dedupe=settings.dedupe, path_column=settings.path_column,
                            label_column=settings.label_column,
                            split_column=settings.split_column)
    except ValueError as exc:
        raise HpsearchError(f"{spec.source}: {exc}") from None


def own_images_info(dataset: ImageDataset) -> DatasetInfo:
    """The :class:`DatasetInfo` of own images: the classes, the cache's image shape, the
    training split's per-channel mean and std (a channel that never varies gets std 1/255,
    so that normalising never divides by zero), horizontal flips and random crops with a
    padding of about 1/16 of the image side (2 px at 28 px as Fashion-MNIST's, 14 px at
    224 px).

    Flips are on: the classes of most photos (parts, plants, products, scans) look the same
    mirrored, and torchvision's reference recipes flip by default; the spec's
    ``augment: false`` turns crops and flips off where left and right differ as classes.
    """
    return DatasetInfo.build(
        name=dataset.name, class_names=dataset.class_names, channels=dataset.channels,
        size=dataset.image_size, mean=dataset.mean,
        std=tuple(max(s, 1 / 255) for s in dataset.std), hflip=True,
        crop_padding=max(1, round(dataset.image_size / 16)))


def load_study_data(config: RunConfig, reporter: Reporter) -> StudyData:
    """The splits every trial of ``config``'s study uses, and the test split.

    A registered data set: its official files (train, test), the validation split carved
    out of train with ``config.seed``. Own images: :func:`load_images` (the cache found from
    ``stat`` alone, or built once with progress on the reporter's stream), memory-mapped.
    ``--train-subset`` keeps a seeded random subset of the training split.

    Raises:
        HpsearchError: the files are missing or unusable; a folder or manifest that cannot
            be used at all (the message names the path and the reason).
    """
    spec = config.spec
    if spec.dataset_path is None:
        train, test, origin = load_data(spec.dataset, config.data_dir)
        train, val = split_train_val(train, val_fraction=spec.val_fraction, seed=config.seed,
                                     train_subset=config.train_subset)
        return StudyData(train, val, EvaluationData(
            info=get_dataset_info(spec.dataset), test=test, source=origin.describe(),
            folder=origin.folder))
    dataset = _load_own_images(config, reporter)
    return StudyData(_subset(dataset.train, config.train_subset, config.seed), dataset.val,
                     _own_test_data(dataset))


def load_test_data(config: RunConfig, reporter: Reporter) -> EvaluationData:
    """Only what the champion is tested on: a registered data set's test files (all its
    files must be there), or own images' cache (built first if it does not exist yet: the
    ``--jobs`` coordinator builds it once, before the workers start) with its test rows.

    Raises:
        HpsearchError: as :func:`load_study_data`.
    """
    spec = config.spec
    if spec.dataset_path is None:
        _, test, origin = load_data(spec.dataset, config.data_dir, train=False)
        return EvaluationData(info=get_dataset_info(spec.dataset), test=test,
                        source=origin.describe(), folder=origin.folder)
    return _own_test_data(_load_own_images(config, reporter))


def _own_test_data(dataset: ImageDataset) -> EvaluationData:
    return EvaluationData(info=own_images_info(dataset), test=dataset.test,
                    source=str(dataset.source), folder=dataset.source, images=dataset)


def load_recorded_test_data(dataset: str, record: Mapping[str, Any] | None, *,
                            data_dir: str | None, cache_dir: str | None,
                            reporter: Reporter) -> EvaluationData:
    """The test split of an existing study (``hpsearch register``): a registered data set's
    test files (the training files are not read), or the test rows of the cache the study's
    own images were decoded into when it was created (nothing is scanned or decoded: the
    champion is tested on the files the study was created with, even after the folder
    changed). Where that cache is gone, the folder's current cache (``cache_dir``, else the
    recorded cache's root), if its images are still those the study recorded.

    Raises:
        HpsearchError: the files are missing; the cache is gone and the images changed
            (the message says what changed), or no cache of them exists.
    """
    if record is None:
        _, test, origin = load_data(dataset, data_dir, train=False)
        return EvaluationData(info=get_dataset_info(dataset), test=test, source=origin.describe(),
                        folder=origin.folder)
    recorded = DataRecord(dict(record))
    info, source = DatasetInfo.from_dict(recorded.info), Path(recorded.source)
    try:
        test, _ = load_cached_split(recorded["cache"], "test",
                                    dedupe=recorded.options["dedupe"])
        return EvaluationData(info=info, test=test, source=recorded.source, folder=source)
    except ImageDataError:  # the cache was removed: the folder's, if unchanged
        pass
    try:
        images = load_images(source, ImageOptions(**recorded.options),
                             cache_dir=cache_dir or recorded["cache_root"],
                             progress=ReporterStream(reporter), build=False)
    except ImageDataError as exc:
        raise HpsearchError(f"{exc}; the study's test split was in {recorded['cache']}, "
                            "which is gone too") from None
    changes = recorded.differences(DataRecord.of(images))
    if changes:
        raise HpsearchError(f"the study's cache {recorded['cache']} is gone and its images "
                            f"changed since it was created: {listed(changes)}; its "
                            "champion is tested on the files it was created with: restore "
                            "them")
    return EvaluationData(info=info, test=images.test, source=recorded.source, folder=source,
                    images=images)


def load_data(name: str, data_dir: str | None, *, train: bool = True
              ) -> tuple[ArraySplit | None, ArraySplit, DataOrigin]:
    """A registered data set's official (train, test) splits, and where their files were
    read; ``train`` False: the training split is not read (None).

    Raises:
        HpsearchError: the files are missing, or present but unusable (the message names
            the file and what is wrong).
    """
    try:
        return load_dataset_with_origin(name, data_dir, train=train)
    except (DataNotFoundError, DataFileError, pickle.UnpicklingError) as exc:
        raise HpsearchError(str(exc)) from None


def _load_own_images(config: RunConfig, reporter: Reporter) -> ImageDataset:
    spec = config.spec
    try:
        return load_images(spec.dataset_path, image_options(spec, config.seed),
                           cache_dir=config.cache_dir, progress=ReporterStream(reporter))
    except ImageDataError as exc:
        raise HpsearchError(str(exc)) from None


def _subset(split: ArraySplit, n: int | None, seed: int) -> ArraySplit:
    """A seeded random ``n`` of ``split``'s images (in their stored order, so that a memory
    map is read front to back), or ``split`` itself when ``n`` is None or not smaller."""
    if n is None or n >= len(split):
        return split
    rows = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    return ArraySplit(np.asarray(split.images[rows]), split.labels[rows])


class DataRecord(dict):
    """What a study records of the own images it was created on (its ``hpsearch.data``
    user attribute, plain JSON): the folder or manifest, the manifest's and the split's
    digests, the image size and channels, the classes, and per split and class the number
    of images used and a digest of their file names; the :class:`ImageOptions`, the
    :class:`DatasetInfo`, the cache folder and its root (``hpsearch register`` opens the
    test split and the served model's preprocessing from them).
    """

    @classmethod
    def of(cls, dataset: ImageDataset, options: ImageOptions | None = None,
           info: DatasetInfo | None = None) -> DataRecord:
        """The record of a loaded data set (``options`` and ``info`` for a new study)."""
        files: dict[str, dict[str, list[str]]] = {}
        for split, path, class_name in dataset.file_table():
            files.setdefault(split, {}).setdefault(class_name, []).append(path)
        record = cls(
            source=str(dataset.source), kind=dataset.kind, cache=str(dataset.cache_dir),
            cache_root=str(dataset.cache_dir.parent),
            manifest_digest=dataset.manifest_digest, split_digest=dataset.split_digest,
            image_size=dataset.image_size, channels=dataset.channels,
            class_names=list(dataset.class_names),
            files={split: {name: {"images": len(paths), "digest": _names_digest(paths)}
                           for name, paths in sorted(by_class.items())}
                   for split, by_class in files.items()})
        if options is not None:
            record["options"] = {key: getattr(options, key) for key in (
                "image_size", "val_fraction", "test_fraction", "seed", "dedupe",
                "path_column", "label_column", "split_column", "max_pixels")}
        if info is not None:
            record["info"] = info.to_dict()
        return record

    @property
    def source(self) -> str:
        return self["source"]

    @property
    def options(self) -> dict[str, Any]:
        return self["options"]

    @property
    def info(self) -> dict[str, Any]:
        return self["info"]

    def differences(self, new: Mapping[str, Any]) -> list[str]:
        """What changed from this record to ``new`` (another :meth:`of`), in words: the
        folder, classes added or removed, the image size or channels, and per split and
        class the images added or removed (or other files of the same number)."""
        changes = []
        if new["source"] != self["source"]:
            changes.append(f"source {self['source']} -> {new['source']}")
        old_classes, new_classes = self["class_names"], new["class_names"]
        added = [c for c in new_classes if c not in old_classes]
        removed = [c for c in old_classes if c not in new_classes]
        if added:
            changes.append(f"classes added: {', '.join(map(repr, added))}")
        if removed:
            changes.append(f"classes removed: {', '.join(map(repr, removed))}")
        for key, unit in (("image_size", " px"), ("channels", "")):
            if new[key] != self[key]:
                changes.append(f"{key.replace('_', ' ')} {self[key]}{unit} -> "
                               f"{new[key]}{unit}")
        for split in ("train", "val", "test"):
            old_files, new_files = self["files"].get(split, {}), new["files"].get(split, {})
            for name in dict.fromkeys([*old_files, *new_files]):
                if name in added or name in removed:
                    continue
                before = old_files.get(name, {"images": 0, "digest": ""})
                after = new_files.get(name, {"images": 0, "digest": ""})
                changes += _file_change(split, name, before, after)
        if not changes and (new["manifest_digest"] != self["manifest_digest"]
                            or new["split_digest"] != self["split_digest"]):
            changes.append("files changed (sizes or modification times, labels or splits "
                           "given), though every split holds the same file names")
        return changes


def listed(changes: list[str], most: int = 8) -> str:
    """The first ``most`` changes, and how many more."""
    shown = "; ".join(changes[:most])
    return shown + (f"; and {len(changes) - most} more" if len(changes) > most else "")


def _file_change(split: str, name: str, before: Mapping[str, Any],
                 after: Mapping[str, Any]) -> list[str]:
    if before == after:
        return []
    delta = after["images"] - before["images"]
    if delta > 0:
        what = f"{delta} image(s) added"
    elif delta < 0:
        what = f"{-delta} image(s) removed"
    else:
        what = "other files, as many"
    return [f"{split}/{name}: {before['images']} -> {after['images']} ({what})"]


def _names_digest(paths: list[str]) -> str:
    return hashlib.sha256(json.dumps(sorted(paths)).encode()).hexdigest()[:16]


def check_splits(tested: EvaluationData, data: StudyData | None) -> None:
    """Own images: a validation split to rank trials on and a test split for the champion.

    Raises:
        HpsearchError: either is empty (the message names the folder and what to change).
    """
    images = tested.images
    if images is None:
        return
    if not len(images.val):
        raise HpsearchError(f"{images.source}: no validation image (too few training files "
                            "for val_fraction, and no val/ folder or split column): add "
                            "images, a val/ folder, or raise val_fraction")
    if not len(tested.test):
        raise HpsearchError(f"{images.source}: no test image (test_fraction 0, and no test/ "
                            "folder or split column): the champion is tested on it; give "
                            "test_fraction > 0 or a test/ folder")


def summary_line(tested: EvaluationData) -> str:
    """Own images in one line: images, classes, skipped, leakage, imbalance."""
    images = tested.images
    n = sum(len(getattr(images, s)) for s in ("train", "val", "test"))
    ratio = images.imbalance_ratio
    leaks = len(images.leakage.groups)
    return (f"{images.name}: {n:,} images, {images.num_classes} classes, "
            f"{len(images.skipped):,} skipped (data/skipped.csv), leakage "
            f"{leaks:,} image{'s' if leaks != 1 else ''} in two splits"
            f"{' (dropped from val/test)' if images.leakage.dropped else ''}, imbalance ratio "
            f"{ratio:.3g} (largest / smallest training class); {images.image_size} px, "
            f"{images.channels} channel{'s' if images.channels > 1 else ''}, cache "
            f"{images.cache_dir}")
