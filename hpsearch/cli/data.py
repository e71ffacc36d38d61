"""``hpsearch data inspect`` and ``hpsearch data cache``: a folder or manifest of your own
images, looked at before training and decoded ahead. Neither imports torch."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from hpsearch.cli.common import fail, main


def image_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The settings of an own-images data set; each option's name is its spec key."""
    options = [
        click.option("--image-size", type=click.IntRange(8, 1024), default=None,
                     help="Side of the square images, pixels [default: the median shorter "
                          "side, clipped to 16..224, rounded down to a multiple of 8]."),
        click.option("--val-fraction", type=float, default=0.1, show_default=True,
                     help="Share of the training files carved out for validation where no "
                          "val/ folder or split column gives it."),
        click.option("--test-fraction", type=float, default=0.1, show_default=True,
                     help="The same for the test split (0: no test split)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed of the carving (the same seed, the same split)."),
        click.option("--dedupe/--no-dedupe", default=False, show_default=True,
                     help="Drop images that are also in an earlier split from val and test."),
        click.option("--path-column", default="path", show_default=True,
                     help="A manifest's column (JSONL: key) of image paths."),
        click.option("--label-column", default="label", show_default=True,
                     help="A manifest's column of class labels."),
        click.option("--split-column", default="split", show_default=True,
                     help="A manifest's column of splits (train, val, test); optional."),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Where decoded caches live [default: $HPSEARCH_CACHE_DIR, else "
                          "$XDG_CACHE_HOME/hpsearch/cache]."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Processes that read and decode [default: every usable core]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _options(kwargs: dict[str, Any]) -> Any:
    from hpsearch.data_utils.own_images import ImageOptions

    keys = ("image_size", "val_fraction", "test_fraction", "seed", "dedupe", "path_column",
            "label_column", "split_column")
    try:
        return ImageOptions(**{key: kwargs[key] for key in keys})
    except ValueError as exc:
        message = str(exc)
        for key in keys:  # name the option, not the field
            message = message.replace(key, "--" + key.replace("_", "-"))
        fail(message)


@main.group(short_help="Look at a folder or manifest of your own images; decode it ahead.")
def data() -> None:
    """Your own images: a folder with one sub-folder per class (optionally under train/,
    val/ and test/), or a CSV / TSV / JSONL manifest with path, label and optional split
    columns."""


@data.command(short_help="Classes, splits, sizes, skipped files, leakage; no training.")
@click.argument("path")
@image_options
@click.option("--device-memory", "device_memory", type=click.FloatRange(min=0, min_open=True),
              default=None, metavar="GB",
              help="Say whether the decoded images would stay resident on a device of this "
                   "much memory [default: the first NVIDIA GPU's free memory (NVML, without "
                   "initialising CUDA), else the host's available memory].")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="The run's --jobs: each worker keeps its own copy of the images.")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]),
              default="table", show_default=True, help="Text for people, or one JSON object.")
def inspect(path, device_memory, jobs, output_format, **kwargs) -> None:
    """What a run would do with PATH, read from file sizes and image headers (no image is
    decoded, torch is not imported): classes and images per split, sizes and colour modes,
    the files that would be skipped and why, images in two splits (leakage), the image size,
    the cache's size, and whether --jobs workers' copies fit on the device (the first NVIDIA
    GPU's free memory, else the host's available memory; or --device-memory GB)."""
    from hpsearch.data_utils.own_images import ImageDataError, inspect_images
    from hpsearch.data_utils.own_images.report import device_memory as detected_memory
    from hpsearch.data_utils.own_images.report import report_lines

    options = _options(kwargs)
    try:
        report = inspect_images(path, options, cache_dir=kwargs["cache_dir"],
                                workers=kwargs["workers"], progress=_progress_stream(),
                                device_memory_gb=device_memory, jobs=jobs,
                                memory=None if device_memory else detected_memory())
    except ImageDataError as exc:
        fail(str(exc))
    if output_format == "json":
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        click.echo("\n".join(report_lines(report)))


@data.command(short_help="Decode every image into the cache now (e.g. before workers start).")
@click.argument("path")
@image_options
def cache(path, **kwargs) -> None:
    """Decode PATH's images once into the cache a run with the same settings uses (for a
    cluster: once, before the workers start). An existing cache is found, not rebuilt."""
    from hpsearch.data_utils.own_images import ImageDataError, load_images
    from hpsearch.errors import DiskFull

    options = _options(kwargs)
    try:
        dataset = load_images(path, options, cache_dir=kwargs["cache_dir"],
                              workers=kwargs["workers"], progress=_progress_stream())
    except ImageDataError as exc:
        fail(str(exc))
    except DiskFull as exc:
        fail(f"{exc}; nothing of the cache was kept: free some space there or give another "
             "--cache-dir, and run the same command again", exit_code=exc.exit_code)
    sizes = ", ".join(f"{name} {len(getattr(dataset, name)):,}"
                      for name in ("train", "val", "test"))
    click.echo(f"cache: {dataset.cache_dir}")
    click.echo(f"{len(dataset.class_names)} classes; {sizes}; {dataset.image_size} px, "
               f"{dataset.channels} channel{'s' if dataset.channels > 1 else ''}; "
               f"{len(dataset.skipped):,} files skipped")
    click.echo(dataset.leakage.summary())


def _progress_stream():
    return sys.stderr
