"""Seconds per training epoch of one network in each training-step mode, and what a step
costs the GPU: kernels per step and the share of time the GPU is busy (torch profiler).

Trains the way a trial does (``make_loader`` with augmentation, ``build_optimizer``,
``build_train_step`` with the one-cycle schedule, ``fit`` with the device's autocast) on the
54,000 Fashion-MNIST training images a default study trains on (60,000 minus its 10%
validation split), in one mode::

    python benchmarks/step_modes.py --device cuda --mode eager --batch-size 512

Modes: ``eager``; ``cuda-graphs`` (the whole step captured once, replayed per batch);
``compile`` (``torch.compile``, mode default); ``compile-reduce-overhead`` (mode
reduce-overhead: inductor's CUDA graphs); ``compile-max-autotune``. The first epoch pays
for compiling or capturing; the reported epoch is the last one (``--epochs``, default 2).
After training, ``--profile-steps`` more steps run under ``torch.profiler``: device kernels
per step, host launch calls per step (``cudaLaunchKernel``, ``cudaGraphLaunch``, ...), and
GPU busy share = time covered by device activity / wall time of those steps. Prints one
JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from _common import add_common_options, emit, log, resolve_device, synchronize

from hpsearch.data_utils import ArraySplit, get_dataset_info, load_dataset, split_train_val
from hpsearch.models import build_network
from hpsearch.params import TrialParams
from hpsearch.training import autocast_dtype, build_optimizer, fit, make_loader
from hpsearch.training.compiled import compile_network
from hpsearch.training.cuda_graphs import build_train_step

MODES = {  # mode -> (torch.compile mode or None, CUDA-graph step)
    "eager": (None, False),
    "cuda-graphs": (None, True),
    "compile": ("default", False),
    "compile-reduce-overhead": ("reduce-overhead", False),
    "compile-max-autotune": ("max-autotune", False),
}


def measure(args: argparse.Namespace, device: torch.device) -> dict:
    info = get_dataset_info("fashion_mnist")
    train_split, _ = load_dataset("fashion_mnist", args.data_dir)
    train_split, val_split = split_train_val(train_split, val_fraction=0.1, seed=0,
                                             train_subset=args.train_subset or None)
    if args.val_subset:
        val_split = ArraySplit(val_split.images[:args.val_subset],
                               val_split.labels[:args.val_subset])
    params = TrialParams(arch=args.arch, depth=args.depth, width=args.width,
                         dropout=args.dropout, lr=args.lr, batch_size=args.batch_size)
    torch.manual_seed(0)
    model = build_network(params, info).to(device, memory_format=torch.channels_last)
    train = make_loader(train_split, device, normalization=info.normalization,
                        augmentation=info.augmentation, batch_size=args.batch_size, train=True,
                        augment=True)
    val = make_loader(val_split, device, normalization=info.normalization)
    optimizer = build_optimizer(model, name="adamw", lr=args.lr, weight_decay=5e-4)
    compile_mode, cuda_graphs = MODES[args.mode]
    network = model if compile_mode is None else compile_network(model, mode=compile_mode)
    amp = autocast_dtype(device)
    total = (args.epochs + 1) * len(train)  # the profiled steps run past the epochs
    step = build_train_step(network, optimizer, max_lr=args.lr, total_steps=total,
                            device=device, amp_dtype=amp, cuda_graphs=cuda_graphs,
                            compiled=compile_mode is not None)
    log(f"{args.mode}, batch {args.batch_size}: {args.epochs} epoch(s) of "
        f"{len(train) * args.batch_size:,} images")
    history = fit(network, train, val, epochs=args.epochs, train_step=step,
                  num_classes=info.num_classes, device=device, amp_dtype=amp)
    last = history[-1]
    record = {
        "benchmark": "step_modes",
        "device": device.type,
        "mode": args.mode,
        "step_mode": step.mode,
        "arch": args.arch, "depth": args.depth, "width": args.width,
        "batch_size": args.batch_size,
        "train_images": len(train) * args.batch_size,
        "epochs": args.epochs,
        "first_epoch_s": round(history[0].epoch_seconds, 3),
        "epoch_s": round(last.epoch_seconds, 3),
        "images_per_s": round(last.images_per_second, 1),
        "val_accuracy": round(last.val.accuracy, 4),
        "autocast": str(amp).removeprefix("torch.") if amp else "fp32",
    }
    if args.profile_steps:
        network.train()
        record |= profile_steps(step, train, args.profile_steps, device)
    if device.type == "cuda":
        record["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return record


def profile_steps(step, loader, steps: int, device: torch.device) -> dict:
    """Kernels and host launch calls per step, and the GPU's busy share, over ``steps``
    training steps under ``torch.profiler``."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    batches = list(itertools.islice(iter(loader), steps))
    synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for x, y in batches:
            step(x, y)
        synchronize(device)
        wall_us = (time.perf_counter() - start) * 1e6
    events = prof.events()
    device_events = [e for e in events if e.device_type == DeviceType.CUDA]
    kernels = [e for e in device_events if not e.name.startswith(("Memcpy", "Memset"))]
    launches = [e for e in events if e.device_type == DeviceType.CPU
                and e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                               "cuLaunchKernelEx", "cudaGraphLaunch")]
    busy_us = _covered_us([(e.time_range.start, e.time_range.end) for e in device_events])
    n = len(batches)
    return {
        "profiled_steps": n,
        "step_ms": round(wall_us / n / 1000, 3),
        "kernels_per_step": round(len(kernels) / n, 1) if device.type == "cuda" else None,
        "launch_calls_per_step": round(len(launches) / n, 1) if device.type == "cuda" else None,
        "gpu_busy_share": round(min(1.0, busy_us / wall_us), 3) if device_events else None,
        "aten_ops_per_step": round(sum(e.name.startswith("aten::") for e in events) / n, 1),
    }


def _covered_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``intervals`` (overlapping kernels count once)."""
    covered, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        covered += stop - max(start, end)
        end = stop
    return covered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--mode", choices=list(MODES), default="eager")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--arch", default="cnn")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs, the first pays for compiling or capturing (default 2)")
    parser.add_argument("--train-subset", type=int, default=0, metavar="N",
                        help="train on N images (default 0: all 54,000)")
    parser.add_argument("--val-subset", type=int, default=0, metavar="N",
                        help="validate on N images (default 0: all 6,000)")
    parser.add_argument("--profile-steps", type=int, default=20,
                        help="steps to profile after training (0: none; default 20)")
    parser.add_argument("--data-dir", default=None)
    add_common_options(parser)
    args = parser.parse_args()
    emit(measure(args, resolve_device(args.device)))


if __name__ == "__main__":
    main()
