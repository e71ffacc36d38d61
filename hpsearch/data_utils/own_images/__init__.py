"""Your own images as a data set: a folder with one sub-folder per class (optionally under
``train/``, ``val/``, ``test/``) or a CSV / TSV / JSONL manifest, decoded once into a cache of
uint8 arrays and split without leakage. Needs numpy and Pillow, never torch.

Entry points:

- :func:`load_images` -> :class:`ImageDataset` (memory-mapped splits, mean and std, the
  files of each split, skipped files with reasons, leakage, class counts);
- :func:`inspect_images`: the same facts from ``stat`` and image headers, without decoding;
- :func:`preprocess_image`: the one function from a file's bytes to the pixels of a model,
  shared by the cache and serving;
- :func:`is_path_dataset` / :func:`resolve_dataset`: whether a ``--dataset`` value is a path;
- :func:`class_key_parts`: class names as distinct, valid MLflow metric-key parts.

Modules: ``records`` (shared records, the error), ``sources`` and ``manifests`` (what a path
lists), ``headers`` (image headers without decoding), ``preprocess`` (decoding), ``splits``
(splits, leakage, counts), ``cache`` (the files on disk, atomic and locked), ``passes`` (the
header probe and the decoding pass), ``plan`` (settings and cache name), ``build`` (a new
cache), ``workers`` (the process pool and progress), ``dataset`` (:class:`ImageOptions`,
:class:`ImageDataset`), ``load`` (:func:`load_images`), ``report`` (:func:`inspect_images`),
``names``. Importing this package imports none of them (nor Pillow)
until a name is used.
"""

from hpsearch._imports import lazy_exports

__all__ = [
    "FORMATS", "IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS", "MODE_RULES", "PREPROCESS_VERSION",
    "ImageDataError", "ImageDataset", "ImageFileError", "ImageOptions", "LeakGroup", "Leakage",
    "SkippedFile", "class_key_parts", "dataset_display_name", "default_cache_dir",
    "default_image_size", "fits_on_device", "inspect_images", "is_path_dataset",
    "load_cached_split", "load_images",
    "preprocess_image", "resolve_dataset",
]

__getattr__ = lazy_exports(__name__, ["records", "sources", "names", "splits", "cache",
                                      "preprocess", "dataset", "load", "report"])
