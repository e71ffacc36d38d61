"""GPU memory of this process's children, sampled with ``nvidia-smi`` while they run.

``nvidia-smi --query-compute-apps`` lists each process with a CUDA context and the device
memory it holds (its CUDA context, some 500 MiB, included). In a container whose PID
namespace differs from the driver's, the listed PIDs match none of ours; the sampler then
keeps the peaks of all listed processes and says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from typing import Any

from _common import descendants

__all__ = ["GpuProcessSampler"]


class GpuProcessSampler(threading.Thread):
    """Peak device memory (MiB) per process and in all, every ``interval_s`` seconds.

    Args:
        enabled: sample at all (False on a CPU, or where nvidia-smi is missing).
        interval_s: seconds between samples.
    """

    def __init__(self, *, enabled: bool, interval_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.smi = shutil.which("nvidia-smi") if enabled else None
        self.interval_s = interval_s
        self.ours: dict[int, float] = {}
        self.listed: dict[int, float] = {}
        self.peak_total_mb: float | None = None
        self._done = threading.Event()

    def run(self) -> None:
        while self.smi and not self._done.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        mine = set(descendants(os.getpid()))
        for pid, used in self._query(["--query-compute-apps=pid,used_memory"]):
            self.listed[pid] = max(self.listed.get(pid, 0.0), used)
            if pid in mine:
                self.ours[pid] = max(self.ours.get(pid, 0.0), used)
        total = self._query(["--query-gpu=index,memory.used", "-i", "0"])
        if total:
            self.peak_total_mb = max(self.peak_total_mb or 0.0, total[0][1])

    def _query(self, fields: list[str]) -> list[tuple[int, float]]:
        try:
            out = subprocess.run([self.smi, *fields, "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10,
                                 check=True).stdout
            rows = [line.split(",") for line in out.strip().splitlines() if "," in line]
            return [(int(a), float(b)) for a, b in rows]
        except (OSError, subprocess.SubprocessError, ValueError):
            return []

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join()

    def summary(self) -> dict[str, Any]:
        """``gpu_mb_per_process`` (peak per process with a CUDA context, largest first),
        ``gpu_mb_per_worker_max``, ``peak_gpu_used_mb`` (the whole GPU) and how the
        processes were matched."""
        if not self.smi:
            return {"gpu_memory": "not sampled (no GPU or no nvidia-smi)"}
        matched = self.ours or self.listed
        peaks = sorted(matched.values(), reverse=True)
        return {"gpu_mb_per_process": peaks,
                "gpu_mb_per_worker_max": peaks[0] if peaks else None,
                "peak_gpu_used_mb": self.peak_total_mb,
                "gpu_memory": ("our processes" if self.ours else
                               "all processes nvidia-smi listed (PIDs not ours: a container?)")}
