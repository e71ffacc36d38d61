"""Training throughput (images/s) of hpsearch's loop against the conventional PyTorch loop.

Both loops train the same network (``build_network``, fresh instance, same seed) on the same
Fashion-MNIST training images with the same batch size on the same device, in one process,
one after the other::

    python benchmarks/throughput.py --batch-size 128 --batch-size 512 --epochs 3

hpsearch's loop is what a trial runs: ``make_loader`` (uint8 images resident on the device,
normalised per batch, channels-last), ``fit`` with bf16 autocast where the hardware has it
(``autocast_dtype``) and no per-step host sync; no augmentation and no LR schedule here,
and with ``torch.backends.cudnn.benchmark`` on, as ``hpsearch run`` sets it.

The conventional loop is the one of PyTorch's and Optuna's examples: torchvision's
``FashionMNIST`` with ``ToTensor`` + ``Normalize``, ``DataLoader(batch_size, shuffle=True)``
(``--num-workers``, default 0 as in the examples), fp32, ``x.to(device)`` per batch and a
``loss.item()`` per step for the running loss; cudnn.benchmark left at its default (off).
torchvision cannot download here, so the gzip IDX files from ``--data-dir`` are decompressed
into the folder layout torchvision expects (``ROOT/FashionMNIST/raw/``).

Fine-tuning a pretrained backbone at a larger size (``--image-size``, e.g. 64): both loops
train on the training images upscaled with PIL (bilinear). hpsearch's loop keeps them as
uint8 on the device as above, grey (``--channels 1``: the backbone's first convolution takes
one channel, its RGB kernels summed) or replicated to RGB (``--channels 3``). The
conventional loop is the one of torchvision's transfer-learning tutorial: the images written
once as PNG files in a folder per class, ``ImageFolder`` (which opens them as RGB) with
``ToTensor`` + ``Normalize`` (ImageNet's statistics), ``DataLoader(shuffle=True,
num_workers=4)`` as the tutorial has it, fp32, a ``loss.item()`` per step::

    python benchmarks/throughput.py --arch mobilenet_v3_small --arch resnet18 \
        --image-size 64 --batch-size 64 --train-subset 2048 --epochs 3 --rounds 3

Both build the same network with random weights (the weights do not change what a step
costs, and this machine has none to download).

Only training is timed (wall seconds per epoch, device synchronised); the first epoch is a
warm-up and is reported separately; "steady" figures are the mean of the later epochs.
Prints one JSON line per batch size on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import gzip
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
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
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from hpsearch.data_utils import (
    DATA_DIR_ENV_VAR,
    DEBIAN_FASHION_MNIST_DIR,
    ArraySplit,
    ImageShape,
    Normalization,
    get_dataset_info,
    load_dataset,
)
from hpsearch.models import build_network, input_stats, list_models, model_hyperparameters
from hpsearch.params import TrialParams
from hpsearch.training import autocast_dtype, build_optimizer, fit, make_loader
from hpsearch.training.compiled import compile_network

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
LR = 1e-3  # AdamW for both loops; the value does not change the cost of a step
WEIGHT_DECAY = 5e-4
VAL_IMAGES = 2048  # test images fit() evaluates on after each epoch (untimed)
UPSCALED_VAL_IMAGES = 256  # the same at --image-size: evaluating bigger images costs more
TUTORIAL_WORKERS = 4  # torchvision's transfer-learning tutorial: DataLoader(num_workers=4)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LoopResult:
    """What one loop measured.

    Attributes:
        epoch_seconds: wall time of each epoch's training (s), warm-up first.
        images_per_epoch: training images processed per epoch.
        final_loss: mean training cross-entropy of the last epoch (nats), a sanity check.
        peak_gpu_mb: ``torch.cuda.max_memory_allocated`` during the loop (MiB), or None.
    """

    epoch_seconds: list[float]
    images_per_epoch: int
    final_loss: float
    peak_gpu_mb: float | None

    @property
    def steady_seconds(self) -> float:
        """Mean epoch time after the warm-up epoch (the only epoch if there is one)."""
        later = self.epoch_seconds[1:] or self.epoch_seconds
        return statistics.fmean(later)

    @property
    def images_per_second(self) -> float:
        return self.images_per_epoch / self.steady_seconds


def default_data_dir() -> Path:
    """Where the gzip IDX files are: ``$HPSEARCH_DATA_DIR/fashion-mnist`` or
    ``$HPSEARCH_DATA_DIR`` when they hold them, else Debian's folder."""
    env = os.environ.get(DATA_DIR_ENV_VAR)
    candidates = [Path(env) / "fashion-mnist", Path(env)] if env else []
    for folder in candidates:
        if _source_file(folder, IDX_FILES[0]) is not None:
            return folder
    return DEBIAN_FASHION_MNIST_DIR


def default_cache_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "hpsearch" / "torchvision"


def _source_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def prepare_torchvision_root(data_dir: Path, cache_dir: Path) -> Path:
    """Lay out the IDX files as torchvision's ``FashionMNIST(root, download=False)`` wants.

    torchvision 0.29 (``datasets/mnist.py``) reads the uncompressed files
    ``root/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``; its
    ``_check_exists`` only tests that they exist (no checksum without ``download``).

    Args:
        data_dir: folder with the four files, gzip (``*.gz``) or already uncompressed.
        cache_dir: becomes ``root``; files already there are reused.

    Returns:
        ``root`` to pass to ``torchvision.datasets.FashionMNIST``.

    Raises:
        SystemExit: a file is missing in ``data_dir``.
    """
    raw = cache_dir / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem in IDX_FILES:
        target = raw / stem
        if target.is_file():
            continue
        source = _source_file(data_dir, stem)
        if source is None:
            raise SystemExit(f"{stem}(.gz) not found in {data_dir}; pass --data-dir")
        partial = target.with_suffix(".partial")
        opener = gzip.open if source.suffix == ".gz" else open
        with opener(source, "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.replace(target)  # atomic: a killed run never leaves a truncated file
    return cache_dir


def _peak_gpu_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def _reset(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def upscaled(split: ArraySplit, size: int, channels: int) -> ArraySplit:
    """``split``'s images resized to ``size`` x ``size`` with PIL (bilinear), uint8
    (N, channels, size, size): grey, or the grey replicated into RGB."""
    images = np.stack([np.asarray(Image.fromarray(image[0]).resize((size, size),
                                                                   Image.BILINEAR))
                       for image in split.images])[:, None]
    return ArraySplit(np.repeat(images, channels, axis=1), split.labels)


def image_info(params: TrialParams, size: int, channels: int):
    """Fashion-MNIST's record at ``size`` px and ``channels`` channels, normalised as the
    network of ``params`` expects (``input_stats``)."""
    info = get_dataset_info("fashion_mnist")
    stats = info.normalization
    info = dataclasses.replace(info, shape=ImageShape(channels, size),
                               normalization=Normalization(stats.mean * channels,
                                                           stats.std * channels))
    return dataclasses.replace(info, normalization=input_stats(params, info))


def prepare_image_folder(split: ArraySplit, root: Path) -> Path:
    """Write ``split``'s images as PNG files, one folder per class (``root/3/00042.png``),
    as a user's own photos would be; reused when ``root`` holds them already."""
    done = root / ".complete"
    if done.is_file():
        return root
    for index, (image, label) in enumerate(zip(split.images, split.labels)):
        folder = root / f"{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / f"{index:05d}.png")
    done.touch()
    return root


def run_hpsearch_loop(params: TrialParams, train: ArraySplit, val: ArraySplit, *,
                      device: torch.device, batch_size: int, epochs: int, seed: int,
                      compile_model: bool = False, info=None) -> LoopResult:
    """Train with hpsearch's ``make_loader`` + ``fit``, as a trial does (minus augmentation,
    schedule and tracking).

    Args:
        params: the network's ``arch``, ``depth``, ``width`` and ``dropout``.
        train: uint8 images (N, 1, 28, 28) and int64 labels (N,).
        val: evaluated after each epoch, outside the timed part.
        device: where to train.
        batch_size: images per step; the last partial batch is dropped, as in a trial.
        epochs: epochs to train (the first is the warm-up).
        seed: torch seed before the model is built; also the loader's seed.
        compile_model: wrap the model in ``torch.compile`` (``compile_network``, as a trial
            does; plain ``torch.compile`` stopped compiling at the 7th configuration of a
            run, at dynamo's recompile limit).
        info: the data set record the images match (default Fashion-MNIST's, 28 px grey).
    """
    info = info or get_dataset_info("fashion_mnist")
    _reset(device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as hpsearch's resolve_device
    torch.manual_seed(seed)
    model = build_network(params, info).to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(model, name="adamw", lr=LR, weight_decay=WEIGHT_DECAY)
    if compile_model:  # as a trial compiles: dynamo's caches cleared first
        model = compile_network(model)
    loader = make_loader(train, device, normalization=info.normalization,
                         batch_size=batch_size, train=True, augment=False, seed=seed)
    history = fit(model, loader, make_loader(val, device, normalization=info.normalization),
                  epochs=epochs,
                  optimizer=optimizer, num_classes=info.num_classes, device=device,
                  scheduler=None, amp_dtype=autocast_dtype(device))
    return LoopResult([r.epoch_seconds for r in history], len(loader) * batch_size,
                      history[-1].train_loss, _peak_gpu_mb(device))


def run_conventional_loop(params: TrialParams, root: Path, n_images: int, *, device: torch.device,
                          batch_size: int, epochs: int, seed: int,
                          num_workers: int) -> LoopResult:
    """Train the way PyTorch's MNIST example and Optuna's PyTorch example do.

    Args:
        params: as for :func:`run_hpsearch_loop`.
        root: torchvision root from :func:`prepare_torchvision_root`.
        n_images: train on the first ``n_images`` training images (the same ones as the
            hpsearch loop).
        device, batch_size, epochs, seed: as for :func:`run_hpsearch_loop`.
        num_workers: ``DataLoader`` worker processes (0: load in the training process).
    """
    info = get_dataset_info("fashion_mnist")
    _reset(device)
    torch.backends.cudnn.benchmark = False  # PyTorch's default, which the examples keep
    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize(info.normalization.mean,
                                                         info.normalization.std)])
    dataset = torchvision.datasets.FashionMNIST(root, train=True, download=False,
                                                transform=transform)
    if n_images < len(dataset):
        dataset = Subset(dataset, range(n_images))
    torch.manual_seed(seed)
    model = build_network(params, info).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers)
    seconds, running_loss, steps = [], 0.0, 0
    for _ in range(epochs):
        model.train()
        running_loss, steps = 0.0, 0
        synchronize(device)
        start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            steps += 1
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return LoopResult(seconds, len(dataset), running_loss / max(steps, 1), _peak_gpu_mb(device))


def run_image_folder_loop(params: TrialParams, folder: Path, *, device: torch.device,
                          batch_size: int, epochs: int, seed: int,
                          num_workers: int) -> LoopResult:
    """Fine-tune the way torchvision's transfer-learning tutorial does: ``ImageFolder``
    (PNG files opened as RGB) + ``ToTensor`` + ``Normalize`` (ImageNet's statistics),
    ``DataLoader(shuffle=True, num_workers)``, fp32, a ``loss.item()`` per step.

    Args:
        params: the backbone (``arch``, ``dropout``); built for 3 channels.
        folder: from :func:`prepare_image_folder`.
        device, batch_size, epochs, seed: as for :func:`run_hpsearch_loop`.
        num_workers: ``DataLoader`` worker processes (the tutorial's 4 by default).
    """
    _reset(device)
    torch.backends.cudnn.benchmark = False
    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = torchvision.datasets.ImageFolder(str(folder), transform=transform)
    size = dataset[0][0].shape[-1]
    torch.manual_seed(seed)
    model = build_network(params, image_info(params, size, 3)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers)
    seconds, running_loss, steps = [], 0.0, 0
    for _ in range(epochs):
        model.train()
        running_loss, steps = 0.0, 0
        synchronize(device)
        start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            steps += 1
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return LoopResult(seconds, len(dataset), running_loss / max(steps, 1), _peak_gpu_mb(device))


def _trial_params(args: argparse.Namespace, batch_size: int) -> TrialParams:
    family = model_hyperparameters(args.arch)
    return TrialParams(arch=args.arch, dropout=args.dropout, lr=LR, batch_size=batch_size,
                       depth=args.depth if "depth" in family else None,
                       width=args.width if "width" in family else None,
                       pretrained=False if "pretrained" in family else None)


def measure(args: argparse.Namespace, batch_size: int, train: ArraySplit, val: ArraySplit,
            root: Path, device: torch.device) -> dict:
    """Both loops (and the compiled hpsearch loop with ``--compile``) at one batch size."""
    params = _trial_params(args, batch_size)
    common = {"device": device, "batch_size": batch_size, "epochs": args.epochs,
              "seed": args.seed}
    upscale = args.image_size is not None
    workers = args.num_workers if args.num_workers is not None else (
        TUTORIAL_WORKERS if upscale else 0)
    info = image_info(params, args.image_size, args.channels) if upscale else None
    pairs = []
    for round_ in range(1, args.rounds + 1):
        of = f" (round {round_} of {args.rounds})" if args.rounds > 1 else ""
        log(f"{args.arch}, batch size {batch_size}: hpsearch loop{of} ...")
        ours = run_hpsearch_loop(params, train, val, info=info, **common)
        log(f"{args.arch}, batch size {batch_size}: conventional loop{of} ...")
        if upscale:
            conventional = run_image_folder_loop(params, root, num_workers=workers, **common)
        else:
            conventional = run_conventional_loop(params, root, len(train),
                                                 num_workers=workers, **common)
        pairs.append((ours, conventional))
    ratios = [a.images_per_second / b.images_per_second for a, b in pairs]
    # The round of the median ratio (the lower middle one for an even count) gives every
    # figure of the record, so that its numbers belong together.
    ours, conventional = pairs[ratios.index(statistics.median_low(ratios))]
    amp = autocast_dtype(device)
    record = {
        "benchmark": "throughput",
        "device": device.type,
        "arch": args.arch,
        "depth": params.depth,
        "width": params.width,
        "image_size": args.image_size or 28,
        "hpsearch_channels": args.channels if upscale else 1,
        "conventional": "ImageFolder PNG" if upscale else "torchvision FashionMNIST",
        "batch_size": batch_size,
        "train_images": len(train),
        "epochs": args.epochs,
        "hpsearch_images_per_s": round(ours.images_per_second, 1),
        "conventional_images_per_s": round(conventional.images_per_second, 1),
        "ratio": round(ours.images_per_second / conventional.images_per_second, 2),
        "hpsearch_epoch_s": round(ours.steady_seconds, 3),
        "conventional_epoch_s": round(conventional.steady_seconds, 3),
        "hpsearch_first_epoch_s": round(ours.epoch_seconds[0], 3),
        "conventional_first_epoch_s": round(conventional.epoch_seconds[0], 3),
        "hpsearch_images_per_epoch": ours.images_per_epoch,
        "conventional_images_per_epoch": conventional.images_per_epoch,
        "hpsearch_autocast": str(amp).removeprefix("torch.") if amp else "fp32",
        "num_workers": workers,
        "torch_threads": torch.get_num_threads(),
        "hpsearch_final_loss": round(ours.final_loss, 4),
        "conventional_final_loss": round(conventional.final_loss, 4),
        "hpsearch_peak_gpu_mb": ours.peak_gpu_mb,
        "conventional_peak_gpu_mb": conventional.peak_gpu_mb,
        "rounds": args.rounds,
        "round_ratios": [round(r, 2) for r in ratios],
    }
    if args.compile:
        log(f"batch size {batch_size}: hpsearch loop, torch.compile ...")
        compiled = run_hpsearch_loop(params, train, val, compile_model=True, **common)
        record |= {
            "compiled_images_per_s": round(compiled.images_per_second, 1),
            "compiled_ratio": round(compiled.images_per_second
                                    / conventional.images_per_second, 2),
            "compiled_epoch_s": round(compiled.steady_seconds, 3),
            # The first epoch pays for tracing and code generation; a steady epoch does not.
            "compile_s": round(compiled.epoch_seconds[0] - compiled.steady_seconds, 2),
            "compiled_peak_gpu_mb": compiled.peak_gpu_mb,
        }
    return record


COLUMNS = {
    "arch": "model",
    "batch_size": "batch size",
    "hpsearch_images_per_s": "hpsearch img/s",
    "conventional_images_per_s": "conventional img/s",
    "ratio": "ratio",
    "hpsearch_epoch_s": "hpsearch epoch (s)",
    "conventional_epoch_s": "conventional epoch (s)",
    "hpsearch_first_epoch_s": "hpsearch 1st epoch (s)",
    "conventional_first_epoch_s": "conventional 1st epoch (s)",
}
COMPILE_COLUMNS = {
    "compiled_images_per_s": "compiled img/s",
    "compiled_ratio": "compiled ratio",
    "compile_s": "compile cost (s)",
}
GPU_COLUMNS = {
    "hpsearch_peak_gpu_mb": "hpsearch peak GPU (MiB)",
    "conventional_peak_gpu_mb": "conventional peak GPU (MiB)",
}


def docs_section(args: argparse.Namespace, records: list[dict], device: torch.device) -> str:
    columns = dict(COLUMNS)
    if args.compile:
        columns |= COMPILE_COLUMNS
    if device.type == "cuda":
        columns |= GPU_COLUMNS
    first = records[0]
    notes = (
        f"Models: {', '.join(f'`{a}`' for a in args.arch or ['cnn'])} depth {args.depth}, "
        f"width {args.width}; {first['train_images']:,} "
        f"Fashion-MNIST training images per epoch, {args.epochs} epochs, the first a warm-up "
        "(its time in the \"1st epoch\" columns); img/s and epoch times are means over the "
        "later epochs, training only. ratio = hpsearch img/s / conventional img/s.\n\n"
        f"hpsearch: device-resident uint8 data, channels-last, {first['hpsearch_autocast']} "
        "autocast, no per-step host sync, cudnn.benchmark on CUDA. Conventional: torchvision "
        f"FashionMNIST + ToTensor/Normalize, DataLoader(shuffle=True, num_workers="
        f"{first['num_workers']}), fp32, `loss.item()` every step."
    )
    if args.image_size is not None:
        notes = (
            f"Backbones {', '.join(f'`{a}`' for a in args.arch)} (random weights), fine-tuned "
            f"on {first['train_images']:,} Fashion-MNIST training images upscaled to "
            f"{args.image_size} px (PIL, bilinear), {args.epochs} epochs, the first a warm-up; "
            "img/s and epoch times are means over the later epochs, training only. ratio = "
            "hpsearch img/s / conventional img/s.\n\nhpsearch: device-resident uint8 data "
            f"({first['hpsearch_channels']} channel(s)), channels-last, "
            f"{first['hpsearch_autocast']} autocast, no per-step host sync. Conventional "
            "(torchvision's transfer-learning tutorial): PNG files, ImageFolder (RGB) + "
            "ToTensor/Normalize, DataLoader(shuffle=True, num_workers="
            f"{first['num_workers']}), fp32, `loss.item()` every step.")
    if args.compile:
        notes += (" Compiled: the hpsearch loop with `torch.compile(model)`; compile cost = "
                  "first epoch minus a steady epoch. Inductor caches compiled graphs on "
                  "disk, so a model compiled before (in an earlier run, or at another "
                  "batch size) compiles here in under a second; only a first compile "
                  "shows the full cost.")
    if args.rounds > 1:
        notes += (f" Each row is the median of {args.rounds} rounds (both loops once per "
                  "round), by ratio; every round's ratio: " + "; ".join(
                      f"{r['arch']} {', '.join(map(str, r['round_ratios']))}"
                      for r in records) + ".")
    name = "throughput" if args.image_size is None else "throughput_finetune"
    title = ("Training throughput: hpsearch loop vs conventional loop" if args.image_size
             is None else "Fine-tuning throughput: hpsearch loop vs torchvision's tutorial loop")
    return render_section(name, title=title, machine=machine_info(device),
                          body=markdown_table(records, columns), notes=notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--batch-size", type=int, action="append",
                        help="images per step (repeatable; default 128 and 512)")
    parser.add_argument("--arch", action="append", choices=list_models(),
                        help="architecture (repeatable; default cnn), same depth and width")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs per loop, the first a warm-up (default 2)")
    parser.add_argument("--train-subset", type=int, default=None, metavar="N",
                        help="train on the first N of the 60,000 training images (default all)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers of the conventional loop (default 0; 4, "
                             "the transfer-learning tutorial's, with --image-size)")
    parser.add_argument("--image-size", type=int, default=None, metavar="PX",
                        help="train both loops on the images upscaled to PX x PX; the "
                             "conventional loop reads them as PNG files (ImageFolder)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1,
                        help="with --image-size: the hpsearch loop's images grey (1, the "
                             "default) or replicated to RGB (3, as the conventional loop)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run both loops this many times, one after the other, and "
                             "report the round of the median ratio (on a shared machine "
                             "one round's ratio varies by 10%% or more; default 1)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the hpsearch loop with torch.compile(model)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for both loops (default: torch's, one "
                             "per core; on a CPU shared with other jobs 1 thread avoids "
                             "OpenMP threads waiting for each other)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder of the Fashion-MNIST IDX files (default: "
                             "$HPSEARCH_DATA_DIR[/fashion-mnist], else "
                             f"{DEBIAN_FASHION_MNIST_DIR})")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="torchvision root built from them (default: "
                             "$XDG_CACHE_HOME/hpsearch/torchvision)")
    add_common_options(parser)
    args = parser.parse_args()
    if (args.epochs < 1 or args.rounds < 1
            or (args.train_subset is not None and args.train_subset < 1)):
        parser.error("--epochs, --rounds and --train-subset must be >= 1")
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data_dir = args.data_dir or default_data_dir()
    cache_dir = args.cache_dir or default_cache_dir()
    full_train, test = load_dataset("fashion_mnist", data_dir, download=False)
    n = min(args.train_subset or len(full_train), len(full_train))
    train = ArraySplit(full_train.images[:n], full_train.labels[:n])
    if args.image_size is None:
        root = prepare_torchvision_root(data_dir, cache_dir)
        val = ArraySplit(test.images[:VAL_IMAGES], test.labels[:VAL_IMAGES])
    else:
        log(f"upscaling {n:,} training images to {args.image_size} px ...")
        grey = upscaled(train, args.image_size, 1)
        root = prepare_image_folder(grey, cache_dir / f"fashion_mnist_png_{args.image_size}"
                                                      f"px_{n}")
        train = upscaled(train, args.image_size, args.channels)
        val = upscaled(ArraySplit(test.images[:UPSCALED_VAL_IMAGES],
                                  test.labels[:UPSCALED_VAL_IMAGES]),
                       args.image_size, args.channels)
    records = []
    for arch in args.arch or ["cnn"]:
        for batch_size in args.batch_size or [128, 512]:
            one = argparse.Namespace(**{**vars(args), "arch": arch})
            records.append(measure(one, batch_size, train, val, root, device))
            emit(records[-1])
    if args.write_docs:
        name = "throughput" if args.image_size is None else "throughput_finetune"
        write_section(args.docs, name, docs_section(args, records, device))


if __name__ == "__main__":
    main()
