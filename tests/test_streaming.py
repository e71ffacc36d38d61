"""The streamed loader (a split in host memory, one batch at a time on the device) against the
resident one, and the decision between them (``plan_residency``). On the CPU, where these
run, both loaders must yield bit-identical batches for the same seed; the CUDA path (pinned
buffers, a side stream) is tested in tests/gpu/test_gpu_streaming.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hpsearch.data_utils import ArraySplit, get_dataset_info
from hpsearch.data_utils.own_images import fits_on_device
from hpsearch.training import (
    DeviceLoader,
    DeviceSplit,
    Residency,
    StreamedLoader,
    fit,
    make_loader,
    plan_residency,
)
from hpsearch.training.checkpoint import restore_training_state, training_state
from hpsearch.training.residency import device_memory
from hpsearch.training.step import EagerStep

CPU = torch.device("cpu")
GB = 10**9


def indexed_split(n: int, *, channels: int = 1, side: int = 28) -> ArraySplit:
    """Images whose pixels name the sample: [c, 0, 0] = index % 256, [c, 0, 1] = index // 256;
    every other pixel (label * 20 + 7) says the class, so a crop or flip leaves it readable."""
    labels = np.arange(n) % 10
    images = np.repeat((labels * 20 + 7).astype(np.uint8), channels * side * side)
    images = images.reshape(n, channels, side, side).copy()
    images[:, :, 0, 0] = (np.arange(n) % 256)[:, None]
    images[:, :, 0, 1] = (np.arange(n) // 256)[:, None]
    return ArraySplit(images=images, labels=labels.astype(np.int64))


def loaders(split: ArraySplit, name: str = "fashion_mnist", **kwargs):
    """A resident and a streamed loader of ``split``, same arguments."""
    info = get_dataset_info(name)
    common = {"normalization": info.normalization, "augmentation": info.augmentation,
              "device": "cpu"} | kwargs
    return DeviceLoader(split, **common), StreamedLoader(split, **common)


def pixels(x: torch.Tensor, name: str = "fashion_mnist") -> torch.Tensor:
    """Normalised batch -> the uint8 pixel values (as int64)."""
    stats = get_dataset_info(name).normalization
    mean = torch.tensor(stats.mean).view(1, -1, 1, 1)
    std = torch.tensor(stats.std).view(1, -1, 1, 1)
    return ((x.float() * std + mean) * 255).round().long()


def epochs(loader, n: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    return [list(loader) for _ in range(n)]


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for epoch_a, epoch_b in zip(a, b):
        assert len(epoch_a) == len(epoch_b)
        for (xa, ya), (xb, yb) in zip(epoch_a, epoch_b):
            assert xa.dtype == xb.dtype and xa.shape == xb.shape
            assert xa.stride() == xb.stride()  # channels-last alike
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ----------------------------------------------------------------------------- the batches


@pytest.mark.parametrize("name, kwargs", [
    ("fashion_mnist", {"shuffle": True, "augment": True, "drop_last": True}),  # training
    ("fashion_mnist", {"shuffle": False}),  # validation
    ("cifar10", {"shuffle": True, "augment": True, "channels_last": True}),
    ("mnist", {"shuffle": True, "dtype": torch.bfloat16}),
])
def test_the_streamed_loader_yields_the_resident_loaders_batches_for_the_same_seed(
        name: str, kwargs: dict) -> None:
    channels, side = (3, 32) if name == "cifar10" else (1, 28)
    split = indexed_split(300, channels=channels, side=side)
    resident, streamed = loaders(split, name, batch_size=64, seed=11, **kwargs)

    assert len(streamed) == len(resident) == (4 if kwargs.get("drop_last") else 5)
    assert streamed.num_samples == 300
    assert_same_batches(epochs(resident, 3), epochs(streamed, 3))


def test_make_loader_streams_on_request_with_the_same_batches() -> None:
    info = get_dataset_info("cifar10")
    split = indexed_split(200, channels=3, side=32)
    common = {"normalization": info.normalization, "augmentation": info.augmentation,
              "batch_size": 32, "train": True, "augment": True, "seed": 4}

    resident = make_loader(split, CPU, **common)
    streamed = make_loader(split, CPU, **common, stream=True)

    assert type(resident) is DeviceLoader and type(streamed) is StreamedLoader
    assert_same_batches(epochs(resident, 2), epochs(streamed, 2))
    x, _ = next(iter(streamed))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_a_split_already_on_the_device_is_not_streamed() -> None:
    info = get_dataset_info("mnist")
    on_device = DeviceSplit.of(indexed_split(10), CPU)
    with pytest.raises(TypeError, match="host ArraySplit, got DeviceSplit"):
        make_loader(on_device, CPU, normalization=info.normalization, stream=True)


def test_every_sample_comes_once_per_epoch_in_a_new_order() -> None:
    _, streamed = loaders(indexed_split(600), batch_size=128, shuffle=True, seed=0)
    orders = []
    for _ in range(2):
        batches = [pixels(x) for x, _ in streamed]
        assert [len(b) for b in batches] == [128] * 4 + [88]
        order = torch.cat([b[:, 0, 0, 0] + 256 * b[:, 0, 0, 1] for b in batches])
        assert sorted(order.tolist()) == list(range(600))
        orders.append(order)
    assert not torch.equal(orders[0], orders[1])


def test_labels_stay_with_their_images_through_shuffling_and_augmentation() -> None:
    _, streamed = loaders(indexed_split(300), batch_size=32, shuffle=True, augment=True,
                          seed=3)
    for x, y in streamed:
        assert y.dtype == torch.int64
        # The centre pixel survives a crop of at most 2 pixels and a flip.
        assert torch.equal(pixels(x)[:, 0, 14, 14], y * 20 + 7)


def test_a_read_only_memory_map_is_streamed_without_being_copied_whole(tmp_path) -> None:
    split = indexed_split(500, channels=3, side=32)
    np.save(tmp_path / "images.npy", split.images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    from_map = ArraySplit(mapped, split.labels)

    resident, _ = loaders(split, "cifar10", batch_size=64, shuffle=True, augment=True, seed=2)
    _, streamed = loaders(from_map, "cifar10", batch_size=64, shuffle=True, augment=True,
                          seed=2)

    assert_same_batches(epochs(resident, 2), epochs(streamed, 2))
    assert streamed._images is mapped  # still the map: never read into memory as a whole


# ------------------------------------------------------------------- resumed and training


def test_a_restored_state_continues_with_the_same_batches() -> None:
    split = indexed_split(256)
    _, running = loaders(split, batch_size=64, shuffle=True, augment=True, seed=5)
    list(running)  # epoch 1
    state = running.state_dict()
    expected = epochs(running, 2)  # epochs 2 and 3

    _, resumed = loaders(split, batch_size=64, shuffle=True, augment=True, seed=5)
    resumed.load_state_dict(state)

    assert_same_batches(expected, epochs(resumed, 2))


def test_a_resident_trainings_checkpoint_resumes_streamed_with_the_same_batches() -> None:
    """A training saved on a machine where the data fitted continues on one where it does
    not (a retry elsewhere), with the same batches."""
    split = indexed_split(256)
    resident, _ = loaders(split, batch_size=64, shuffle=True, augment=True, seed=5)
    list(resident)
    model = nn.Linear(4, 2)
    step = EagerStep(model, torch.optim.SGD(model.parameters(), lr=0.1), None, device=CPU)
    state = training_state(model=model, step=step, loader=resident, device=CPU, history=[])
    expected = epochs(resident, 1)

    _, streamed = loaders(split, batch_size=64, shuffle=True, augment=True, seed=99)
    restore_training_state(state, model=nn.Linear(4, 2), step=step, loader=streamed,
                           device=CPU)

    assert_same_batches(expected, epochs(streamed, 1))


def separable_split(n: int, seed: int) -> ArraySplit:
    """Two classes a linear model separates: bright or dark images."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    base = np.where(labels == 1, 200, 40).astype(np.int16)[:, None, None, None]
    noise = rng.integers(-30, 31, (n, 1, 8, 8))
    return ArraySplit((base + noise).astype(np.uint8), labels.astype(np.int64))


def _train(stream: bool):
    info = get_dataset_info("mnist")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    common = {"normalization": info.normalization, "stream": stream}
    train = make_loader(separable_split(256, 1), CPU, batch_size=32, train=True, seed=0,
                        **common)
    val = make_loader(separable_split(128, 2), CPU, batch_size=64, **common)
    return fit(model, train, val, epochs=3, num_classes=2, device=CPU,
               optimizer=torch.optim.SGD(model.parameters(), lr=0.05))


def test_fit_trains_from_a_streamed_loader_exactly_as_from_a_resident_one() -> None:
    streamed, resident = _train(stream=True), _train(stream=False)

    assert streamed[-1].val.accuracy > 0.95
    assert [r.train_loss for r in streamed] == [r.train_loss for r in resident]
    assert [r.val.loss for r in streamed] == [r.val.loss for r in resident]


# ----------------------------------------------------------------------- plan_residency


def test_data_that_fits_stays_resident_and_says_how_much_of_what_is_free() -> None:
    decision = plan_residency(7_526_400_000, CPU, memory=(80 * GB, 85 * GB))
    assert decision == Residency(True, "resident on cpu: 7.5 GB of 80 GB free")


def test_data_too_large_for_the_device_is_streamed_and_the_header_says_why() -> None:
    decision = plan_residency(7_526_400_000, "cpu", jobs=2, memory=(int(6.1 * GB), 8 * GB))
    assert decision == Residency(False, "streamed from host memory: 7.5 GB does not fit in "
                                        "6.1 GB free on cpu with headroom for 2 workers")


def test_each_worker_holds_a_copy_so_jobs_divide_the_free_memory() -> None:
    free = (40 * GB, 80 * GB)
    assert plan_residency(10 * GB, CPU, jobs=2, memory=free).resident  # 20 of 20 GB
    assert plan_residency(10 * GB, CPU, jobs=2, memory=free).reason == (
        "resident on cpu: 10 GB (a copy for each of 2 workers) of 40 GB free")
    three = plan_residency(10 * GB, CPU, jobs=3, memory=free)
    assert not three.resident and three.reason.endswith("with headroom for 3 workers")
    alone = plan_residency(21 * GB, CPU, memory=free)
    assert not alone.resident and alone.reason.endswith("with headroom for the model")


def test_the_headroom_for_the_model_is_a_share_of_the_free_memory() -> None:
    free = (10 * GB, 16 * GB)
    assert not plan_residency(6 * GB, CPU, memory=free).resident  # default: half
    assert plan_residency(6 * GB, CPU, model_headroom=0.25, memory=free).resident
    assert not plan_residency(8 * GB, CPU, model_headroom=0.25, memory=free).resident
    assert plan_residency(10 * GB, CPU, model_headroom=0.0, memory=free).resident


@pytest.mark.parametrize("nbytes, memory, jobs", [
    (3 * GB, 8 * GB, 1), (5 * GB, 8 * GB, 1), (2 * GB, 8 * GB, 2), (3 * GB, 8 * GB, 2),
    (0, 1, 4)])
def test_the_run_decides_as_data_inspect_says(nbytes: int, memory: int, jobs: int) -> None:
    """``hpsearch data inspect --device-memory`` and the run apply one rule."""
    decision = plan_residency(nbytes, CPU, jobs=jobs, memory=(memory, memory))
    assert decision.resident == fits_on_device(nbytes, memory, jobs=jobs)


@pytest.mark.parametrize("kwargs", [{"nbytes": -1}, {"jobs": 0}, {"model_headroom": 1.0},
                                    {"model_headroom": -0.1}])
def test_impossible_residency_questions_are_refused(kwargs: dict) -> None:
    arguments = {"nbytes": GB, "device": CPU, "memory": (GB, GB)} | kwargs
    with pytest.raises(ValueError, match="need nbytes >= 0, jobs >= 1"):
        plan_residency(**arguments)


def test_on_the_cpu_the_free_memory_is_the_hosts_available_memory(monkeypatch) -> None:
    import psutil

    class Memory:
        available, total = 3 * GB, 16 * GB

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory())
    assert device_memory(CPU) == (3 * GB, 16 * GB)
    assert plan_residency(GB, CPU).reason == "resident on cpu: 1.0 GB of 3.0 GB free"
    assert not plan_residency(2 * GB, CPU).resident
