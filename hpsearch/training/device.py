"""The training device, its numeric precision, and reproducibility settings."""

from __future__ import annotations

import os

import torch

from hpsearch.defaults import DEVICES
from hpsearch.errors import ArgumentError

__all__ = ["autocast_dtype", "device_name", "resolve_device", "set_deterministic"]

# cuBLAS reuses workspace buffers in a nondeterministic order unless told how many to keep
# (NVIDIA's cuBLAS docs, "Results reproducibility"; torch.use_deterministic_algorithms).
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def resolve_device(name: str, *, deterministic: bool = False) -> torch.device:
    """``auto`` picks CUDA when present.

    Args:
        name: one of :data:`hpsearch.defaults.DEVICES`: ``auto``, ``cpu`` or ``cuda``.
        deterministic: set up bit-identical reruns (:func:`set_deterministic`); otherwise
            CUDA autotunes its convolutions (``cudnn.benchmark``), whose choice can differ
            between runs.

    Raises:
        ArgumentError: ``cuda`` without a CUDA device, or a name other than auto/cpu/cuda
            (an :class:`~hpsearch.errors.HpsearchError` naming the argument ``device``).
    """
    if name not in DEVICES:
        raise ArgumentError("{device} {value!r}: choose {choices}", value=name,
                            choices=", ".join(DEVICES))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ArgumentError("{device} cuda: no CUDA device is available (torch {version}); "
                            "use {device} cpu or auto", version=torch.__version__)
    if deterministic:
        set_deterministic()
    elif name == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes per trial: autotune convs once
    return torch.device(name)


def set_deterministic() -> None:
    """Make this process's training repeat bit for bit on the same hardware and software.

    By default a CUDA rerun with the same seed differs in the last bits, and the
    differences grow over epochs: ``cudnn.benchmark`` times several convolution algorithms
    and keeps the fastest, which can differ from run to run; some kernels (cuBLAS's
    split reductions, atomic adds in backward passes) sum in whatever order threads
    finish. This turns on ``torch.use_deterministic_algorithms`` (ops without a
    deterministic kernel then raise instead of varying), cuDNN's deterministic mode without
    benchmarking, and cuBLAS's fixed workspaces (``CUBLAS_WORKSPACE_CONFIG``, read when
    cuBLAS starts, so before the first matrix product; workers inherit it). It is
    process-wide and stays on. Training gets slower (measured by ``gpu_report.py``).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def device_name(device: torch.device) -> str:
    """``cuda (NVIDIA H100 ...)`` or ``cpu (N threads)``, for people."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware computes bf16 natively, else None (full fp32).

    CUDA: bf16 when the GPU has bf16 tensor cores (compute capability 8.0, Ampere, and
    newer: ``torch.cuda.is_bf16_supported(including_emulation=False)``); older GPUs
    (Volta, Turing) would emulate it, slower than fp32, so they train in fp32. CPU: only
    with AVX512-BF16 or AMX-BF16 (read from /proc/cpuinfo); measured on a 2-core AMD EPYC
    with AVX512-BF16, bf16 autocast doubled training throughput of the conv nets (resnet
    width 64: 68 -> 133 img/s with channels_last), while CPUs that emulate bf16 get slower,
    so they stay in fp32.
    """
    if device.type == "cuda":
        return torch.bfloat16 if _cuda_has_native_bf16(device) else None
    if device.type == "cpu" and _cpu_has_native_bf16():
        return torch.bfloat16
    return None


def _cuda_has_native_bf16(device: torch.device) -> bool:
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no including_emulation: ask the hardware
        return torch.cuda.get_device_capability(device) >= (8, 0)


def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:  # not Linux: stay in fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
