"""What a run would do with a folder or manifest, without decoding it or training:
``hpsearch data inspect``."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

import hpsearch.data_utils.own_images.cache as cache_files
from hpsearch.data_utils.own_images.dataset import ImageOptions
from hpsearch.data_utils.own_images.names import class_key_parts
from hpsearch.data_utils.own_images.passes import Probe
from hpsearch.data_utils.own_images.plan import Plan
from hpsearch.data_utils.own_images.sources import SPLITS, dataset_display_name
from hpsearch.data_utils.own_images.splits import (
    Leakage,
    dedupe_rows,
    find_leakage,
    imbalance_ratio,
)

__all__ = ["RESIDENT_SHARE", "DeviceMemory", "device_memory", "fits_on_device",
           "inspect_images"]

RESIDENT_SHARE = 0.5
"""Share of a device's memory the cached images may take to stay resident: the rest is for
the model, its optimizer state, activations and the float copy of each batch."""
_SIDE_BINS = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def fits_on_device(cache_bytes: int, device_memory_bytes: int, *, jobs: int = 1) -> bool:
    """Whether ``jobs`` workers can each hold the images (``cache_bytes``) on one device of
    ``device_memory_bytes``, keeping :data:`RESIDENT_SHARE` of it for the images."""
    return cache_bytes * jobs <= RESIDENT_SHARE * device_memory_bytes


@dataclass(frozen=True)
class DeviceMemory:
    """The memory a run's images would live in.

    Attributes:
        bytes: free bytes now.
        device: what it is, in words (``NVIDIA H100 80GB HBM3 (GPU 0)``, ``host memory``).
        source: where the figure comes from (``NVML``, ``psutil``, ``--device-memory``).
    """

    bytes: int
    device: str
    source: str


def device_memory() -> DeviceMemory:
    """The free memory of the device a run would train on, without initialising CUDA (a
    process that has, such as a training's, holds hundreds of MB of GPU memory and takes
    seconds): the first NVIDIA GPU's through NVML (``nvidia-ml-py``), else the host's
    available memory (``psutil``), where a CPU run keeps its images."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            if pynvml.nvmlDeviceGetCount() > 0:
                handle = pynvml.nvmlDeviceGetHandleByIndex(0)
                name = pynvml.nvmlDeviceGetName(handle)
                name = name.decode() if isinstance(name, bytes) else name
                free = int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)
                return DeviceMemory(free, f"{name} (GPU 0)", "NVML, free now")
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no GPU, no library: the host keeps the images
        pass
    import psutil

    return DeviceMemory(int(psutil.virtual_memory().available), "host memory",
                        "psutil, available now")


def inspect_images(path: str | os.PathLike[str], options: ImageOptions | None = None, *,
                   cache_dir: str | os.PathLike[str] | None = None, workers: int | None = None,
                   progress: IO[str] | None = None,
                   device_memory_gb: float | None = None, memory: DeviceMemory | None = None,
                   jobs: int = 1) -> dict[str, Any]:
    """The facts of a folder or manifest, read from ``stat`` and image headers only (and
    from its cache, where one exists for these settings). JSON-able.

    Args:
        path: the folder or manifest.
        options: the settings a run would use.
        cache_dir: where caches live (default: :func:`default_cache_dir`).
        workers: processes reading headers.
        progress: stream for progress lines, or None.
        device_memory_gb: say whether the images fit on a device of this many GiB.
        memory: or on this device (:func:`device_memory`); ignored with
            ``device_memory_gb``.
        jobs: the run's ``--jobs``: each worker holds its own copy of the images.

    Returns:
        A dict: ``source``, ``kind``, ``name``; ``classes`` (name, metric key part, count per
        split); ``splits`` (count and origin per split); ``imbalance_ratio``; ``originals``
        (files, modes, shorter-side statistics and histogram); ``image_size``,
        ``image_size_rule``, ``channels``; ``skipped`` (path, reason) and ``ignored``;
        ``leakage``; ``cache`` (folder, exists, bytes); ``decode_checked`` (False until the
        cache exists: truncated pixel data shows only when decoding); ``device`` when
        ``device_memory_gb`` or ``memory`` is given.

    Raises:
        ImageDataError: the path cannot be used at all.
    """
    options = options or ImageOptions()
    plan = Plan.make(path, options, cache_dir, workers, progress, read_headers=True)
    source, probe = plan.source, plan.probe
    assert probe is not None
    entry = cache_files.open_cache(plan.final) if plan.final.exists() else None
    if entry is not None:
        dataset = plan.dataset(entry)
        counts = {name: list(dataset.counts[name]) for name in SPLITS}
        skipped = [(s.path, s.reason) for s in dataset.skipped]
        leakage = dataset.leakage
        total = sum(len(getattr(dataset, name)) for name in SPLITS)
    else:
        usable = probe.usable
        labels = np.asarray(source.labels)[usable]
        splits = plan.splits[usable]
        counts = {name: np.bincount(labels[splits == code],
                                    minlength=len(source.class_names)).tolist()
                  for code, name in enumerate(SPLITS)}
        skipped = [(s.path, s.reason) for s in source.skipped] + [
            (source.names[i], r) for i, r in sorted(probe.reasons.items())]
        names = [n for n, u in zip(source.names, usable) if u]
        digests = [d.tobytes() if has else None
                   for d, has in zip(probe.digests[usable], probe.has_digest[usable])]
        leakage = Leakage(find_leakage(splits, names, digests))
        total = int(usable.sum())
    if options.dedupe and entry is None:
        leakage = _dropped_preview(leakage)
    image_bytes = total * plan.channels * plan.image_size**2
    parts = class_key_parts(source.class_names)
    report: dict[str, Any] = {
        "source": str(source.path), "kind": source.kind, "name": dataset_display_name(source.path),
        "classes": [{"name": c, "key": k, **{s: counts[s][i] for s in SPLITS}}
                    for i, (c, k) in enumerate(zip(source.class_names, parts))],
        "splits": {s: {"images": sum(counts[s]), "from": plan.origin()[s]} for s in SPLITS},
        "imbalance_ratio": _finite(imbalance_ratio(counts["train"])),
        "originals": _originals(probe),
        "image_size": plan.image_size,
        "image_size_rule": ("given" if options.image_size else
                            "median shorter side, clipped to 16..224, rounded down to a "
                            "multiple of 8"),
        "channels": plan.channels,
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "ignored": source.ignored,
        "leakage": leakage.to_dict(),
        "cache": {"folder": str(plan.final), "exists": entry is not None,
                  "bytes": image_bytes + total * 8},
        "decode_checked": entry is not None,
    }
    if device_memory_gb is not None:
        memory = DeviceMemory(int(device_memory_gb * 2**30), "a device", "--device-memory")
    if memory is not None:
        report["device"] = {"memory_gb": round(memory.bytes / 2**30, 3),
                            "device": memory.device, "source": memory.source, "jobs": jobs,
                            "fits": fits_on_device(image_bytes, memory.bytes, jobs=jobs),
                            "rule": f"resident when the images of all {jobs} worker(s) take "
                                    f"at most {RESIDENT_SHARE:.0%} of the device's memory"}
    return report


def _dropped_preview(leakage: Leakage) -> Leakage:
    return Leakage(leakage.groups, tuple(sorted(dedupe_rows(leakage.groups))))


def _finite(value: float) -> float | None:
    return None if value == float("inf") else round(value, 3)


def _originals(probe: Probe) -> dict[str, Any]:
    """Sizes and modes of the readable originals."""
    usable = probe.usable
    widths, heights = probe.widths[usable], probe.heights[usable]
    sides = np.minimum(widths, heights)
    modes = Counter(probe.modes[usable].tolist())
    bins = np.histogram(sides, bins=[*_SIDE_BINS, np.inf])[0] if len(sides) else []
    labels = [f"{lo}-{hi - 1}" for lo, hi in zip(_SIDE_BINS, _SIDE_BINS[1:])] + [
        f">={_SIDE_BINS[-1]}"]

    def stats(values: np.ndarray) -> dict[str, int] | None:
        return ({"min": int(values.min()), "median": int(np.median(values)),
                 "max": int(values.max())} if len(values) else None)

    return {"files": int(usable.sum()), "modes": dict(modes.most_common()),
            "width": stats(widths), "height": stats(heights), "shorter_side": stats(sides),
            "shorter_side_histogram": {label: int(n) for label, n in zip(labels, bins) if n}}


def report_lines(report: dict[str, Any], *, limit: int = 20) -> list[str]:
    """The report as text lines for people (``--format table``)."""
    lines = [f"{report['source']} ({report['kind']}): {len(report['classes'])} classes, "
             + ", ".join(f"{s} {v['images']:,} ({v['from']})"
                         for s, v in report["splits"].items())]
    names = [_printable(c["name"]) for c in report["classes"]]
    width = max(5, *(len(name) for name in names))
    lines.append(f"  {'class':<{width}}  {'train':>8} {'val':>8} {'test':>8}  metric key")
    lines += [f"  {name:<{width}}  {c['train']:>8,} {c['val']:>8,} {c['test']:>8,}  "
              f"{c['key']}" for name, c in zip(names, report["classes"])]
    ratio = report["imbalance_ratio"]
    lines.append("imbalance: " + (f"{ratio:g} (largest / smallest training class)"
                                  if ratio is not None else "a class has no training image"))
    o = report["originals"]
    if o["shorter_side"]:
        lines.append(f"originals: {o['files']:,} images; modes "
                     + ", ".join(f"{m} {n:,}" for m, n in o["modes"].items())
                     + f"; shorter side {o['shorter_side']['min']}..{o['shorter_side']['max']}"
                     f" px (median {o['shorter_side']['median']})")
    lines.append(f"image size: {report['image_size']} px ({report['image_size_rule']}), "
                 f"{report['channels']} channel{'s' if report['channels'] > 1 else ''}")
    cache = report["cache"]
    lines.append(f"cache: {cache['bytes'] / 2**20:,.1f} MiB, {cache['folder']} "
                 f"({'built' if cache['exists'] else 'not built yet'})")
    if "device" in report:
        d = report["device"]
        lines.append(f"{d['device']}, {d['memory_gb']:g} GB free ({d['source']}): "
                     + ("fits, resident" if d["fits"] else "does not fit, streamed from host")
                     + f" ({d['rule']})")
    skipped = report["skipped"]
    lines.append(f"skipped: {len(skipped):,} files" + (":" if skipped else "")
                 + (f" ({report['ignored']:,} non-image files ignored)"
                    if report["ignored"] else ""))
    lines += [f"  {_printable(s['path'])}: {s['reason']}" for s in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit:,} more (--format json lists all)")
    if not report["decode_checked"]:
        lines.append("  (headers only: files whose pixel data is truncated show when the "
                     "cache is built: hpsearch data cache)")
    leakage = report["leakage"]
    lines.append(leakage["summary"])
    for group in leakage["groups"][:limit]:
        lines.append(f"  {group['kind']}: "
                     + ", ".join(f"{s}:{_printable(p)}" for s, p in group["files"]))
    return lines


def _printable(text: str) -> str:
    """``text`` with its control characters (a newline in a folder's name, a tab) written
    as escapes (``\\n``), so that one name stays on one line of a table; letters of any
    script are left as they are."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)

