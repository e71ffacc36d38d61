"""Own images from a folder: how long ``hpsearch data inspect`` takes, how fast the first
cache build decodes against a bare PIL loop, and how fast the cache is found again.

It writes the images itself: Fashion-MNIST's 70,000 images (read with
``hpsearch.data_utils``) as PNG files in a ``train/`` + ``test/`` folder-per-class tree, and
a JPEG variant (the first 10,000 test-and-train images upscaled to 96 px)::

    python benchmarks/own_data.py --work-dir /tmp/own-data [--parts inspect,cache] [--write-docs]

Parts (each prints JSON lines; ``--parts`` picks some):

- ``inspect``: ``hpsearch data inspect`` on the 70,000 PNGs as a command (process start
  included), with no probe remembered and then again;
- ``cache``: per tree (the PNGs at the default and at their own 28 px, the JPEGs), every
  file read once (untimed: neither loop finds the files cold), then three rounds of a bare
  loop that only opens and decodes every file with PIL (``Image.open(path).load()``) in a
  spawn process pool of ``--workers`` processes followed by the first cache build
  (``load_images`` into an empty cache folder: scan, decode with the settings guessed from a
  sample of headers, write); the ratio of their images per second in each round and the
  round of the median ratio (target: at least 0.8); then the second ``load_images`` on the
  unchanged folder (target: under 1 s) and the same as the ``hpsearch data cache`` command
  (Python's start included).

- ``train``: the same fixed configuration (the built-in Fashion-MNIST study's first
  enqueued trial, all training images, 3 epochs, ``--seed 0``) trained by ``hpsearch run
  --trials 1`` from the PNG folder (the built-in Fashion-MNIST spec whose ``dataset:`` names
  the folder, ``image_size: 28``) and from ``--dataset fashion_mnist``, after the cache
  exists (built first, not timed): test accuracy (target: within 0.5 points), training
  images per second (target: at least 0.9x) and the command's wall time (target: at most
  1.1x);
- ``search``: ``hpsearch run --trials 20 --epochs 3 --train-subset 10000`` on both, with
  that spec: wall time and the champion's test accuracy.

Serving a PNG is ``benchmarks/serve_latency.py``'s.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hpsearch.data_utils import DEBIAN_FASHION_MNIST_DIR, get_dataset_info, load_dataset
from hpsearch.data_utils.own_images import ImageOptions, load_images
from hpsearch.data_utils.own_images.workers import chunked, default_workers

JPEG_IMAGES, JPEG_SIDE = 10_000, 96
REPO_ROOT = Path(__file__).resolve().parents[1]
# _common imports torch: imported in the functions that need it, not at the top, since the
# spawned pool workers (the bare loop's and the cache build's) import this module again.


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def class_folder(label: int, name: str) -> str:
    """``0_T-shirt_top``: sorted folder names keep Fashion-MNIST's label order."""
    return f"{label}_{re.sub(r'[^A-Za-z0-9-]+', '_', name)}"


def write_trees(work: Path, workers: int) -> tuple[Path, Path]:
    """The PNG tree (70,000 files) and the JPEG tree (10,000 files at 96 px), written once
    (a ``.complete`` marker skips the writing on a later run)."""
    train, test = load_dataset("fashion_mnist", DEBIAN_FASHION_MNIST_DIR, download=False)
    names = get_dataset_info("fashion_mnist").class_names
    pngs, jpegs = work / "fashion_png", work / "fashion_jpeg96"
    for root, splits, fmt in ((pngs, {"train": train, "test": test}, "PNG"),
                              (jpegs, {"train": _head(train, JPEG_IMAGES)}, "JPEG")):
        if (root / ".complete").exists():
            continue
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        jobs = []
        for split, data in splits.items():
            for label, name in enumerate(names):
                (root / split / class_folder(label, name)).mkdir(parents=True)
            for i, (image, label) in enumerate(zip(data.images[:, 0], data.labels)):
                path = root / split / class_folder(int(label), names[label]) / f"{i:05d}"
                jobs.append((str(path), image))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in pool.map(_write_chunk, [(fmt, chunk) for chunk in chunked(jobs, workers)]):
                pass
        (root / ".complete").write_text(str(len(jobs)))
        log(f"wrote {len(jobs):,} {fmt} files into {root} in "
            f"{time.perf_counter() - started:.1f} s")
    return pngs, jpegs


def _head(split: Any, n: int) -> Any:
    return type(split)(images=split.images[:n], labels=split.labels[:n])


def _write_chunk(task: tuple[str, list[tuple[str, np.ndarray]]]) -> int:
    fmt, items = task
    for path, pixels in items:
        image = Image.fromarray(pixels)
        if fmt == "JPEG":
            image.resize((JPEG_SIDE, JPEG_SIDE), Image.Resampling.BICUBIC).save(
                path + ".jpg", "JPEG", quality=90)
        else:
            image.save(path + ".png", "PNG")
    return len(items)


def image_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.suffix in (".png", ".jpg"))


def _open_and_decode(paths: list[str]) -> int:
    for path in paths:
        with Image.open(path) as image:
            image.load()
    return len(paths)


def bare_loop(paths: list[str], workers: int) -> dict[str, Any]:
    """Open and decode every file with PIL, nothing else, in the pool kind the cache build
    uses (spawn, ``workers`` processes, the same chunks); seconds include starting it."""
    started = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = sum(pool.map(_open_and_decode, chunked(paths, workers)))
    seconds = time.perf_counter() - started
    return {"images": done, "seconds": round(seconds, 2),
            "images_per_s": round(done / seconds)}


def first_build(root: Path, cache: Path, workers: int, image_size: int | None
                ) -> dict[str, Any]:
    """``load_images`` into an empty cache folder; phases from its progress lines."""
    shutil.rmtree(cache, ignore_errors=True)
    lines = io.StringIO()
    started = time.perf_counter()
    data = load_images(root, ImageOptions(image_size=image_size), cache_dir=cache,
                       workers=workers, progress=lines)
    seconds = time.perf_counter() - started
    images = sum(len(getattr(data, s)) for s in ("train", "val", "test"))
    phases = {m[1]: float(m[2]) for m in re.finditer(r"^(.+?): [\d,]+ in ([\d.]+) s",
                                                     lines.getvalue(), re.MULTILINE)}
    return {"images": images, "seconds": round(seconds, 2),
            "images_per_s": round(images / seconds), "image_size": data.image_size,
            "decode_s": phases.get("decoding images"), "skipped": len(data.skipped)}


def found_again(root: Path, cache: Path, image_size: int | None) -> dict[str, Any]:
    """The second load of the unchanged folder, in-process and as ``hpsearch data cache``."""
    started = time.perf_counter()
    data = load_images(root, ImageOptions(image_size=image_size), cache_dir=cache,
                       progress=None)
    in_process = time.perf_counter() - started
    size = ["--image-size", str(image_size)] if image_size else []
    command = _hpsearch("data", "cache", str(root), "--cache-dir", str(cache), *size)
    return {"load_s": round(in_process, 3), "command_s": command["seconds"],
            "cache_dir": str(data.cache_dir)}


def _hpsearch(*args: str, cwd: Path | None = None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "hpsearch.cli", *args], capture_output=True,
                            text=True, env=env, timeout=3600, cwd=cwd)
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"hpsearch {' '.join(args)} failed: {result.stderr}")
    return {"seconds": round(seconds, 2), "stdout": result.stdout}


def part_inspect(trees: dict[str, Path], work: Path, workers: int) -> list[dict[str, Any]]:
    cache = work / "inspect-cache"
    shutil.rmtree(cache, ignore_errors=True)
    rows = []
    for when in ("no probe remembered", "probe remembered"):
        run = _hpsearch("data", "inspect", str(trees["png"]), "--cache-dir", str(cache),
                        "--workers", str(workers), "--format", "json")
        report = json.loads(run["stdout"])
        rows.append({"part": "inspect", "tree": "png", "when": when, "seconds": run["seconds"],
                     "images": sum(s["images"] for s in report["splits"].values()),
                     "image_size": report["image_size"]})
        emit(rows[-1])
    return rows


CACHE_CASES = (("png", None), ("png", 28), ("jpeg96", None))  # (tree, --image-size)


def warm(paths: list[str]) -> None:
    """Read every file once, so that neither timed loop is the one that finds them cold."""
    for path in paths:
        with open(path, "rb") as f:
            f.read()


def part_cache(trees: dict[str, Path], work: Path, workers: int, rounds: int = 3
               ) -> list[dict[str, Any]]:
    """Per tree: the files read once (untimed), then ``rounds`` rounds of the bare loop and
    the first build back to back; the row gives each round's ratio and their median."""
    rows = []
    for tree, image_size in CACHE_CASES:
        root = trees[tree]
        paths = image_files(root)
        warm(paths)
        cache = work / f"cache-{tree}-{image_size or 'default'}"
        runs = []
        for _ in range(rounds):
            bare = bare_loop(paths, workers)
            build = first_build(root, cache, workers, image_size)
            runs.append((build["images_per_s"] / bare["images_per_s"], bare, build))
        ratio, bare, build = sorted(runs, key=lambda run: run[0])[len(runs) // 2]  # median
        again = found_again(root, cache, image_size)
        rows.append({"part": "cache", "tree": tree, "files": len(paths),
                     "bare_images_per_s": bare["images_per_s"], "bare_s": bare["seconds"],
                     "build_images_per_s": build["images_per_s"], "build_s": build["seconds"],
                     "decode_s": build["decode_s"], "ratio": round(ratio, 2),
                     "ratios": " / ".join(f"{r:.2f}" for r, _, _ in runs),
                     "image_size": build["image_size"],
                     "size_from": "given" if image_size else "default",
                     "found_again_s": again["load_s"], "command_s": again["command_s"]})
        emit(rows[-1])
    return rows


def folder_spec(work: Path, root: Path) -> Path:
    """The built-in Fashion-MNIST spec with ``dataset:`` naming ``root`` at 28 px."""
    from hpsearch.studies import builtin_spec_text

    text = builtin_spec_text("fashion_mnist").replace(
        "dataset: fashion_mnist", f"dataset: {root}\nimage_size: 28", 1)
    path = work / "fashion_mnist_folder.yaml"
    path.write_text(text)
    return path


def _study(source: list[str], work: Path, name: str, *args: str) -> dict[str, Any]:
    """``hpsearch run`` in a fresh folder of its own; its wall time, the champion's test
    accuracy and the trials' training images per second (from the tracking store)."""
    from mlflow.tracking import MlflowClient

    folder = work / f"study-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    run = _hpsearch("run", *source, "--study-name", name, "--device", "cpu", "--seed", "0",
                    "--quiet", "--storage", f"sqlite:///{folder}/hpsearch.db",
                    "--tracking-uri", f"sqlite:///{folder}/mlflow.db",
                    "--checkpoint-dir", str(folder / "checkpoints"), *args, cwd=folder)
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name(name).experiment_id
    parent = client.search_runs([experiment], "tags.`hpsearch.role` = 'study'")[0]
    trials = client.search_runs([experiment], "tags.`hpsearch.role` = 'trial'")
    images = sum(t.data.metrics.get("mean_images_per_second", 0.0)
                 * t.data.metrics.get("train_seconds", 0.0) for t in trials)
    train_seconds = sum(t.data.metrics.get("train_seconds", 0.0) for t in trials)
    return {"wall_s": run["seconds"], "test_accuracy": round(
                parent.data.metrics["test_accuracy"], 4),
            "images_per_s": round(images / train_seconds) if train_seconds else None,
            "train_s": round(train_seconds, 1), "trials": len(trials)}


def _compare(part: str, folder: dict[str, Any], builtin: dict[str, Any]) -> dict[str, Any]:
    return {"part": part, **{f"folder_{k}": v for k, v in folder.items()},
            **{f"builtin_{k}": v for k, v in builtin.items()},
            "accuracy_points": round(100 * (folder["test_accuracy"]
                                            - builtin["test_accuracy"]), 2),
            "images_per_s_ratio": (round(folder["images_per_s"] / builtin["images_per_s"], 3)
                                   if folder["images_per_s"] and builtin["images_per_s"]
                                   else None),
            "wall_ratio": round(folder["wall_s"] / builtin["wall_s"], 3)}


def _with_cache(trees: dict[str, Path], work: Path, workers: int) -> list[str]:
    """The PNG folder's spec, its cache built first (not timed): the parts compare
    training, not decoding."""
    cache = work / "train-cache"
    load_images(trees["png"], ImageOptions(image_size=28), cache_dir=cache, workers=workers,
                progress=sys.stderr)
    os.environ["HPSEARCH_CACHE_DIR"] = str(cache)  # read by the hpsearch commands
    return ["--spec", str(folder_spec(work, trees["png"]))]


def part_train(trees: dict[str, Path], work: Path, workers: int) -> list[dict[str, Any]]:
    folder = _with_cache(trees, work, workers)
    row = _compare("train", _study(folder, work, "train-folder", "--trials", "1",
                                   "--epochs", "3"),
                   _study(["--dataset", "fashion_mnist"], work, "train-builtin", "--trials",
                          "1", "--epochs", "3"))
    emit(row)
    return [row]


def part_search(trees: dict[str, Path], work: Path, workers: int) -> list[dict[str, Any]]:
    folder = _with_cache(trees, work, workers)
    budget = ("--trials", "20", "--epochs", "3", "--train-subset", "10000")
    row = _compare("search", _study(folder, work, "search-folder", *budget),
                   _study(["--dataset", "fashion_mnist"], work, "search-builtin", *budget))
    emit(row)
    return [row]


PARTS: dict[str, Callable[[dict[str, Path], Path, int], list[dict[str, Any]]]] = {
    "inspect": part_inspect, "cache": part_cache, "train": part_train,
    "search": part_search}


def docs_body(rows: list[dict[str, Any]], workers: int) -> str:
    from _common import markdown_table

    inspect = [r for r in rows if r["part"] == "inspect"]
    cache = [r for r in rows if r["part"] == "cache"]
    training = [r for r in rows if r["part"] in ("train", "search")]
    parts = []
    if inspect:
        parts.append("`hpsearch data inspect` on the 70,000 PNG files (the command's wall "
                     "time, Python start included):\n\n" + markdown_table(
                         inspect, {"when": "run", "images": "images", "image_size": "image size",
                                   "seconds": "seconds"}))
    if cache:
        parts.append(
            f"First cache build against a bare loop that only opens and decodes the same "
            f"files with PIL, both in a spawn pool of {workers} processes, the files read "
            "once before, three rounds of the two back to back; the row is the round of the "
            "median ratio, all three ratios beside it (target: ratio >= 0.8); then the cache "
            "found again on the unchanged folder (target: under 1 s):\n\n"
            + markdown_table(cache, {
                "tree": "tree", "files": "files", "image_size": "px", "size_from": "px from",
                "bare_images_per_s": "bare PIL images/s", "build_images_per_s": "build images/s",
                "ratio": "ratio", "ratios": "ratio per round", "decode_s": "decode pass s",
                "build_s": "build s", "found_again_s": "found again s (load_images)",
                "command_s": "`hpsearch data cache` s"}))
    if training:
        parts.append(
            "Training from the PNG folder (the built-in Fashion-MNIST spec whose `dataset:` "
            "names it, `image_size: 28`, its cache built before) against `--dataset "
            "fashion_mnist`, `--seed 0`: `train` is the study's first enqueued trial on all "
            "training images for 3 epochs (`--trials 1 --epochs 3`; targets: test accuracy "
            "within 0.5 points, images/s at least 0.9x, wall at most 1.1x), `search` the CPU "
            "budget (`--trials 20 --epochs 3 --train-subset 10000`). Wall: the `hpsearch "
            "run` command's, Python's start and the registration included:\n\n"
            + markdown_table(training, {
                "part": "part", "folder_test_accuracy": "folder test acc",
                "builtin_test_accuracy": "built-in test acc",
                "accuracy_points": "difference (points)",
                "folder_images_per_s": "folder images/s",
                "builtin_images_per_s": "built-in images/s",
                "images_per_s_ratio": "images/s ratio", "folder_wall_s": "folder wall s",
                "builtin_wall_s": "built-in wall s", "wall_ratio": "wall ratio"}))
    return "\n\n".join(parts)


def main() -> None:
    from _common import (
        add_common_options,
        machine_info,
        render_section,
        resolve_device,
        write_section,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/hpsearch-own-data"),
                        help="where the image trees and caches go (default: %(default)s)")
    parser.add_argument("--parts", default="inspect,cache",
                        help=f"comma-separated, of: {', '.join(PARTS)} (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="processes for decoding (default: every usable core)")
    add_common_options(parser)
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s): {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    pngs, jpegs = write_trees(args.work_dir, args.workers)
    trees = {"png": pngs, "jpeg96": jpegs}
    load_before = os.getloadavg()[0]
    rows = [row for part in parts for row in PARTS[part](trees, args.work_dir, args.workers)]
    load_after = os.getloadavg()[0]
    if args.write_docs:
        machine = machine_info(resolve_device(args.device))
        section = render_section(
            "own_data", title="Own images: inspect, first cache build, cache found again",
            machine=machine, body=docs_body(rows, args.workers),
            notes=f"Load average (1 min) {load_before:.1f} before the parts, "
                  f"{load_after:.1f} after, on {os.cpu_count()} cores: on a busy machine "
                  "(load 7 to 10, an earlier run) the figures were up to three times lower. "
                  "Measured apart (scratch scripts in one process, 10,240 of these files, "
                  "not part of this benchmark): a 28 px PNG opens and decodes in about 40 us "
                  "(Image.open(path).load()); the build's own work per image (reading the bytes "
                  "with their fstat, the header checks, one copy of the pixels into the chunk's "
                  "rows, the resize to 24 px, about 4.5 us in groups of one size; per chunk: "
                  "the pixel sums and fingerprints, the write) brings it to about 43 us at 24 px "
                  "and 37 us at 28 px (a PNG or JPEG is opened by Pillow's plug-in directly, "
                  "which saves about 3 us of Image.open); once per build: the folder listing, "
                  "about 0.08 s for 70,000 files, and the finishing, about 0.06 s. "
                  "The bare loop itself varies 10-20% between runs, single rounds as much "
                  "(the ratio per round).")
        write_section(args.docs, "own_data", section)


if __name__ == "__main__":
    main()
