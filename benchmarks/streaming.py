"""Training images per second with the split resident on the device against streamed from
host memory (``make_loader(..., stream=True)``): what a data set too large for the device
costs.

Both runs train the same network (fresh, same seed) on the same images with the same loader
seed, so they see the same batches and augmentations, one after the other in one process::

    python benchmarks/streaming.py --device cuda --arch cnn --batch-size 512 --epochs 3
    python benchmarks/streaming.py --device cuda --arch resnet18 --image-size 224 \\
        --channels 3 --train-subset 4096 --batch-size 128 --epochs 2

Training is a trial's (``make_loader`` with the data set's augmentation, ``fit`` with the
device's autocast, AdamW; eager step, no schedule), on Fashion-MNIST's training split less
its 10% validation split (``--train-subset``: the first N of those; ``--val-subset``: the
first N validation images). With ``--image-size``
the images are upscaled with PIL (bilinear) and, with ``--channels 3``, replicated to RGB,
the shape of a photo data set; the network is built with random weights (weights do not
change what a step costs). The images are read, as an own-images cache is, from a ``.npy``
file through a read-only memory map (``--no-memmap``: from an array in memory); the
resident loader copies them to the device once, before the timed epochs, as a trial's
``TrialData`` does once per process.

Only training is timed (wall seconds per epoch, device synchronised); the first epoch is a
warm-up, reported separately; the others give the images per second. Then each loader
alone runs one more epoch without a network (shuffle, gather, copy, augment, normalise):
what the data path costs by itself. And the copy of the training and validation splits to
the device (``DeviceSplit.of``, best of 3): what every trial paid before the splits were kept
resident across a process's trials (``TrialData.on_device``), and what each trial after the
first now saves. ``--rounds N`` runs
resident, streamed, resident, ... N times each and keeps each loader's best round (the
least disturbed, on a shared machine). Prints one JSON line per configuration.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import (
    add_common_options,
    emit,
    log,
    machine_info,
    markdown_table,
    render_section,
    resolve_device,
    synchronize,
    write_section,
)

from hpsearch.data_utils import ArraySplit, get_dataset_info, load_dataset, split_train_val
from hpsearch.models import build_network, list_models, model_hyperparameters
from hpsearch.params import TrialParams
from hpsearch.training import autocast_dtype, build_optimizer, fit, make_loader
from hpsearch.training.loader import DeviceSplit

LR, WEIGHT_DECAY = 1e-3, 5e-4  # the values do not change what a step costs
UPSCALED_VAL_IMAGES = 256  # validation is untimed; at 224 px it would cost more than it tells


def _reset(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def train_once(params: TrialParams, info, train: ArraySplit, val: ArraySplit, *,
               device: torch.device, epochs: int, seed: int, stream: bool) -> dict:
    """One training; its epoch seconds (warm-up first), last loss and peak device memory.

    Args:
        params: the network and batch size.
        info: the data set record the images match (shape, normalisation, augmentation).
        train, val: host splits, uint8 (N, C, H, W).
        device: where to train.
        epochs: epochs (the first is the warm-up).
        seed: torch's seed before the network is built, and the loader's.
        stream: stream the splits from host memory, else copy them to the device first.
    """
    _reset(device)
    torch.manual_seed(seed)
    model = build_network(params, info).to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(model, name="adamw", lr=LR, weight_decay=WEIGHT_DECAY)
    loaders = {"normalization": info.normalization, "stream": stream}
    train_loader = make_loader(train, device, augmentation=info.augmentation,
                               batch_size=params.batch_size, train=True, augment=True,
                               seed=seed, **loaders)
    history = fit(model, train_loader, make_loader(val, device, **loaders), epochs=epochs,
                  optimizer=optimizer, num_classes=info.num_classes, device=device,
                  amp_dtype=autocast_dtype(device))
    peak = (round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            if device.type == "cuda" else None)
    return {"epoch_s": [r.epoch_seconds for r in history],
            "images": len(train_loader) * params.batch_size,
            "loss": history[-1].train_loss, "peak_gpu_mb": peak}


def loader_epoch_s(info, train: ArraySplit, *, device: torch.device, batch_size: int,
                   seed: int, stream: bool) -> float:
    """Seconds of one training epoch of the loader alone (no network: shuffle, gather, copy,
    augment, normalise), after a warm-up epoch; device synchronised."""
    loader = make_loader(train, device, normalization=info.normalization,
                         augmentation=info.augmentation, batch_size=batch_size, train=True,
                         augment=True, seed=seed, stream=stream)
    for _ in loader:  # warm-up: buffers, streams, the memory map's pages
        pass
    synchronize(device)
    start = time.perf_counter()
    for _ in loader:
        pass
    synchronize(device)
    return time.perf_counter() - start


def copy_to_device_s(train: ArraySplit, val: ArraySplit, device: torch.device) -> float:
    """Seconds to copy both splits to ``device`` as a trial did before they stayed resident
    across trials (best of 3; nothing to copy on a CPU, where the arrays are used as they
    are)."""
    times = []
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        copies = (DeviceSplit.of(train, device), DeviceSplit.of(val, device))
        synchronize(device)
        times.append(time.perf_counter() - start)
        del copies
        _reset(device)
    return min(times)


def _trial_params(args: argparse.Namespace, arch: str) -> TrialParams:
    family = model_hyperparameters(arch)
    return TrialParams(arch=arch, dropout=0.1, lr=LR, batch_size=args.batch_size,
                       depth=args.depth if "depth" in family else None,
                       width=args.width if "width" in family else None,
                       pretrained=False if "pretrained" in family else None)


def load_splits(args: argparse.Namespace, folder: Path) -> tuple[ArraySplit, ArraySplit]:
    """Fashion-MNIST's training and validation splits as a trial gets them, upscaled with
    ``--image-size``; the training images memory-mapped from ``folder`` unless
    ``--no-memmap``."""
    full, _ = load_dataset("fashion_mnist", args.data_dir, download=False)
    train, val = split_train_val(full, val_fraction=0.1, seed=0,
                                 train_subset=args.train_subset or None)
    if args.val_subset:
        val = ArraySplit(val.images[:args.val_subset], val.labels[:args.val_subset])
    if args.image_size:
        from throughput import upscaled  # PIL and torchvision: only this path needs them

        log(f"upscaling {len(train):,} training images to {args.image_size} px ...")
        train = upscaled(train, args.image_size, args.channels)
        val = upscaled(ArraySplit(val.images[:UPSCALED_VAL_IMAGES],
                                  val.labels[:UPSCALED_VAL_IMAGES]),
                       args.image_size, args.channels)
    if args.memmap:
        np.save(folder / "images.npy", train.images)
        train = ArraySplit(np.load(folder / "images.npy", mmap_mode="r"), train.labels)
    return train, val


def measure(args: argparse.Namespace, arch: str, train: ArraySplit, val: ArraySplit,
            device: torch.device) -> dict:
    """Resident and streamed, ``--rounds`` times each, alternating."""
    params = _trial_params(args, arch)
    info = get_dataset_info("fashion_mnist")
    if args.image_size:
        from throughput import image_info

        info = image_info(params, args.image_size, args.channels)
    runs: dict[bool, list[dict]] = {False: [], True: []}
    alone: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.rounds):
        for stream in (False, True):
            log(f"{arch}, batch {args.batch_size}, round {round_ + 1}: "
                f"{'streamed' if stream else 'resident'} ...")
            runs[stream].append(train_once(params, info, train, val, device=device,
                                           epochs=args.epochs, seed=args.seed, stream=stream))
            alone[stream].append(loader_epoch_s(info, train, device=device,
                                                batch_size=args.batch_size, seed=args.seed,
                                                stream=stream))

    def steady(run: dict) -> float:
        return statistics.fmean(run["epoch_s"][1:] or run["epoch_s"])

    best = {stream: min(found, key=steady) for stream, found in runs.items()}
    rate = {stream: run["images"] / steady(run) for stream, run in best.items()}
    amp = autocast_dtype(device)
    return {
        "benchmark": "streaming", "device": device.type, "arch": arch,
        "image_size": args.image_size or 28, "channels": args.channels if args.image_size
        else 1, "batch_size": args.batch_size, "train_images": best[False]["images"],
        "data_mb": round(train.images.nbytes / 1e6, 1),
        "source": "memory map" if args.memmap else "array", "epochs": args.epochs,
        "rounds": args.rounds,
        "resident_images_per_s": round(rate[False], 1),
        "streamed_images_per_s": round(rate[True], 1),
        "ratio": round(rate[True] / rate[False], 3),
        "resident_epoch_s": round(steady(best[False]), 3),
        "streamed_epoch_s": round(steady(best[True]), 3),
        "resident_first_epoch_s": round(best[False]["epoch_s"][0], 3),
        "streamed_first_epoch_s": round(best[True]["epoch_s"][0], 3),
        "resident_rounds_images_per_s": [round(r["images"] / steady(r), 1)
                                         for r in runs[False]],
        "streamed_rounds_images_per_s": [round(r["images"] / steady(r), 1)
                                         for r in runs[True]],
        "resident_loader_epoch_s": round(min(alone[False]), 4),
        "streamed_loader_epoch_s": round(min(alone[True]), 4),
        "per_trial_copy_s": round(copy_to_device_s(train, val, device), 4),
        "resident_final_loss": round(best[False]["loss"], 5),
        "streamed_final_loss": round(best[True]["loss"], 5),
        "resident_peak_gpu_mb": best[False]["peak_gpu_mb"],
        "streamed_peak_gpu_mb": best[True]["peak_gpu_mb"],
        "autocast": str(amp).removeprefix("torch.") if amp else "fp32",
        "torch_threads": torch.get_num_threads(),
    }


COLUMNS = {"arch": "model", "image_size": "px", "batch_size": "batch",
           "train_images": "images/epoch", "data_mb": "data (MB)",
           "resident_images_per_s": "resident img/s", "streamed_images_per_s": "streamed img/s",
           "ratio": "streamed / resident", "resident_epoch_s": "resident epoch (s)",
           "streamed_epoch_s": "streamed epoch (s)",
           "resident_loader_epoch_s": "resident loader alone (s/epoch)",
           "streamed_loader_epoch_s": "streamed loader alone (s/epoch)",
           "per_trial_copy_s": "copy per trial saved (s)"}
GPU_COLUMNS = {"resident_peak_gpu_mb": "resident peak GPU (MiB)",
               "streamed_peak_gpu_mb": "streamed peak GPU (MiB)"}


def docs_section(args: argparse.Namespace, records: list[dict], device: torch.device) -> str:
    columns = COLUMNS | (GPU_COLUMNS if device.type == "cuda" else {})
    first = records[0]
    notes = (f"The same training twice ({first['epochs']} epochs, the first a warm-up; img/s "
             f"over the later ones, training only; {first['autocast']} autocast; "
             f"augmentation on; the best of {first['rounds']} alternating round(s) each): "
             "resident = the split copied to the device once, batches indexed there; "
             "streamed = the split left in host memory (read through a "
             f"{first['source']}), each batch gathered on the host and copied over. Both "
             "loaders draw the same batches; on a CPU there is no copy, so streaming costs "
             "only the host gather of each batch. 'Copy per trial saved': copying both "
             "splits to the device, which every trial did before they stayed resident "
             "across a process's trials (each trial after the first now skips it).")
    if device.type == "cpu":
        notes += (" On a CPU shared with other jobs the training figures move by 10-15% "
                  "from round to round; the loader-alone columns show what the data path "
                  "costs.")
    return render_section("streaming", title="Streamed against resident data",
                          machine=machine_info(device), body=markdown_table(records, columns),
                          notes=notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--arch", action="append", choices=list_models(),
                        help="network (repeatable; default cnn)")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per training, the first a warm-up (default 3)")
    parser.add_argument("--train-subset", type=int, default=0, metavar="N",
                        help="train on N images (default 0: all 54,000)")
    parser.add_argument("--val-subset", type=int, default=0, metavar="N",
                        help="validate on N images (default 0: all 6,000; untimed)")
    parser.add_argument("--image-size", type=int, default=None, metavar="PX",
                        help="upscale the images to PX x PX (PIL, bilinear)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1,
                        help="with --image-size: grey (1) or replicated to RGB (3)")
    parser.add_argument("--no-memmap", dest="memmap", action="store_false",
                        help="keep the training images in an array, not a memory map")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternating rounds per loader; the best is kept (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's, one per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    add_common_options(parser)
    args = parser.parse_args()
    if args.epochs < 1 or args.rounds < 1:
        parser.error("--epochs and --rounds must be >= 1")
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as hpsearch run sets it
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    records = []
    with tempfile.TemporaryDirectory(prefix="hpsearch-streaming-") as folder:
        train, val = load_splits(args, Path(folder))
        for arch in args.arch or ["cnn"]:
            records.append(measure(args, arch, train, val, device))
            emit(records[-1])
        del train  # the memory map, before its folder goes
    if args.write_docs:
        write_section(args.docs, "streaming", docs_section(args, records, device))


if __name__ == "__main__":
    main()
