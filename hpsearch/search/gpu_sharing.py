"""How ``--jobs`` workers share one machine: the default number of workers, NVIDIA MPS, and
CPU threads per worker.

Several worker processes on one GPU do not run their kernels side by side by default: each
process has its own CUDA context, and the GPU time-slices between contexts, running one
context's kernels at a time and paying a context switch between them. What a second worker
gains is the time the first leaves the GPU idle: between its kernel launches, while it
reads its metrics at the end of an epoch, logs to MLflow, draws its figures, builds its next
model. With NVIDIA's Multi-Process Service (MPS) the workers' kernels share the GPU's
multiprocessors concurrently, as streams of one process would, and a small network uses a
fraction of them; more workers then keep filling the GPU. So the default is 2 workers on a
GPU without MPS and 4 with it (reasoned, not yet measured on a GPU: ``gpu_report.py``
measures ``--jobs 1`` against this default). Each worker also needs a CPU core to launch
its kernels, and each keeps its own copy of the data and a CUDA context (some 500 MiB) on
the GPU.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import torch

__all__ = ["default_jobs", "gpu_sharing_note", "mps_active", "mps_pipe_directory",
           "usable_cores", "worker_threads"]

JOBS_WITHOUT_MPS = 2
JOBS_WITH_MPS = 4


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def mps_pipe_directory() -> Path:
    """Where an MPS control daemon listens: ``$CUDA_MPS_PIPE_DIRECTORY``, by default
    ``/tmp/nvidia-mps`` (NVIDIA's MPS documentation, "CUDA_MPS_PIPE_DIRECTORY")."""
    return Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or "/tmp/nvidia-mps")


def mps_active() -> bool:
    """Whether an MPS control daemon is running for this process's CUDA clients: its
    control pipe (a FIFO named ``control`` in :func:`mps_pipe_directory`) exists. A CUDA
    process that finds the daemon runs through MPS (``nvidia-cuda-mps-control(1)``)."""
    try:
        return stat.S_ISFIFO((mps_pipe_directory() / "control").stat().st_mode)
    except OSError:
        return False


def default_jobs(device: torch.device) -> int:
    """Worker processes when ``--jobs`` is not given: 1 on a CPU (one trial already uses
    every core); on a GPU 2 without MPS, 4 with it (module docstring), and never more than
    half the CPU cores."""
    if device.type != "cuda":
        return 1
    wanted = JOBS_WITH_MPS if mps_active() else JOBS_WITHOUT_MPS
    return max(1, min(wanted, usable_cores() // 2))


def worker_threads(jobs: int) -> int:
    """torch CPU threads for each of ``jobs`` workers: a fair share of the cores, on any
    device (on a GPU the threads only launch kernels, and idle ones spin on a core another
    worker needs)."""
    return max(1, usable_cores() // max(1, jobs))


def gpu_sharing_note(device: torch.device, jobs: int) -> str:
    """For the run's header: whether the workers share the GPU through MPS; empty on a CPU
    or with one worker."""
    if device.type != "cuda" or jobs < 2:
        return ""
    if mps_active():
        return f" (NVIDIA MPS in use: {mps_pipe_directory()})"
    return " (no NVIDIA MPS: the workers time-slice the GPU)"
