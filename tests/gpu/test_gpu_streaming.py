"""The streamed loader on CUDA: pinned staging buffers, copies on a side stream that overlap
the training of the previous batch, and exactly the resident loader's batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hpsearch.data_utils import ArraySplit, get_dataset_info
from hpsearch.models import build_network
from hpsearch.params import TrialParams
from hpsearch.training import DeviceLoader, StreamedLoader, fit, make_loader
from hpsearch.training.cuda_graphs import build_train_step
from hpsearch.training.optim import build_optimizer

CUDA = torch.device("cuda")
INFO = get_dataset_info("cifar10")


def _split(n: int, side: int = 32, seed: int = 0) -> ArraySplit:
    rng = np.random.default_rng(seed)
    return ArraySplit(rng.integers(0, 256, (n, 3, side, side), dtype=np.uint8),
                      rng.integers(0, 10, n))


def _loaders(split: ArraySplit, **kwargs):
    common = {"normalization": INFO.normalization, "augmentation": INFO.augmentation,
              "device": CUDA} | kwargs
    return DeviceLoader(split, **common), StreamedLoader(split, **common)


@pytest.mark.parametrize("memmap", [False, True])
def test_streamed_batches_on_cuda_are_the_resident_loaders(tmp_path, memmap: bool) -> None:
    split = _split(1000)
    source = split
    if memmap:
        np.save(tmp_path / "images.npy", split.images)
        source = ArraySplit(np.load(tmp_path / "images.npy", mmap_mode="r"), split.labels)
    resident, _ = _loaders(split, batch_size=96, shuffle=True, augment=True, seed=3,
                           channels_last=True, dtype=torch.bfloat16)
    _, streamed = _loaders(source, batch_size=96, shuffle=True, augment=True, seed=3,
                           channels_last=True, dtype=torch.bfloat16)

    for _ in range(2):
        pairs = list(zip(resident, streamed, strict=True))
        assert len(pairs) == 11
        for (xa, ya), (xb, yb) in pairs:
            assert xb.device.type == "cuda" and yb.device.type == "cuda"
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    torch.cuda.synchronize()
    state = streamed.state_dict()
    resident.load_state_dict(state)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resident, streamed))


def test_the_device_holds_two_batches_not_the_split() -> None:
    split = _split(16384, side=64)  # 201 MB of images
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(CUDA)
    _, streamed = _loaders(split, batch_size=128, shuffle=True)
    for _x, _y in streamed:
        pass
    torch.cuda.synchronize()
    # Two staging batches of images and labels, and the last batch the loop still holds.
    held = torch.cuda.memory_allocated(CUDA) - before
    assert held < 6 * 128 * 3 * 64 * 64 * 4, held
    assert torch.cuda.max_memory_allocated(CUDA) - before < split.images.nbytes / 4


def test_batch_copies_overlap_the_compute_of_the_batch_before(tmp_path) -> None:
    """Kernels on the training stream and host-to-device copies on the loader's side stream
    run at the same time (the profiler's trace: their intervals intersect)."""
    from torch.profiler import ProfilerActivity, profile

    split = _split(32 * 128, side=128)  # 6.3 MB per batch of 128
    _, streamed = _loaders(split, batch_size=128, shuffle=True)
    weight = torch.randn(4096, 4096, device=CUDA)
    list(streamed)  # warm-up: buffers, stream, cuBLAS
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for x, _y in streamed:
            for _ in range(3):  # some milliseconds of compute per batch, longer than a copy
                weight = torch.tanh(weight @ weight) + x.mean()
        torch.cuda.synchronize()
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    batch_bytes = 128 * 3 * 128 * 128
    copies = [e for e in events if e.get("cat") == "gpu_memcpy" and "HtoD" in e["name"]
              and e.get("args", {}).get("bytes", batch_bytes) >= batch_bytes]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    assert len(copies) == 32, [e["name"] for e in copies][:5]
    assert {c["args"]["stream"] for c in copies}.isdisjoint(
        {k["args"]["stream"] for k in kernels})

    def overlaps(copy: dict) -> bool:
        start, end = copy["ts"], copy["ts"] + copy["dur"]
        return any(k["ts"] < end and start < k["ts"] + k["dur"] for k in kernels)

    assert sum(map(overlaps, copies)) >= len(copies) // 2


def test_a_trial_trains_from_streamed_data_with_the_cuda_graph_step() -> None:
    torch.manual_seed(0)
    params = TrialParams(arch="cnn", depth=2, width=16, dropout=0.0, lr=0.01, batch_size=64)
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 2048)
    images = np.clip(labels[:, None, None, None] * 25 + rng.normal(0, 20, (2048, 3, 32, 32)),
                     0, 255).astype(np.uint8)
    split = ArraySplit(images, labels)
    model = build_network(params, INFO).to(CUDA, memory_format=torch.channels_last)
    train = make_loader(split, CUDA, normalization=INFO.normalization, batch_size=64,
                        train=True, seed=0, stream=True)
    val = make_loader(ArraySplit(images[:512], labels[:512]), CUDA,
                      normalization=INFO.normalization, stream=True)
    optimizer = build_optimizer(model, name="adamw", lr=0.01, weight_decay=0.0)
    step = build_train_step(model, optimizer, max_lr=0.01, total_steps=3 * len(train),
                            device=CUDA, amp_dtype=torch.bfloat16, cuda_graphs=True)
    history = fit(model, train, val, epochs=3, train_step=step, num_classes=10, device=CUDA,
                  amp_dtype=torch.bfloat16)
    assert step.mode.startswith("cuda graph"), step.mode
    assert history[-1].val.accuracy > 0.9
