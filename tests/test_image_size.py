"""A searched image size: the trial's images downsampled on the device once per size, and the
served model downsampling each request the same way, so it answers as the trained network
did."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hpsearch.data_utils import ArraySplit, ImageShape, get_dataset_info
from hpsearch.models import build_network, input_stats
from hpsearch.params import TrialParams
from hpsearch.search.session import TrainingSession, TrialData
from hpsearch.serving.classifier import NormalizingClassifier, class_probabilities
from hpsearch.training import resize
from hpsearch.training.cost import macs_per_image
from hpsearch.training.loader import make_loader
from hpsearch.training.resize import downsample

CPU = torch.device("cpu")


def _images(n: int, channels: int = 1, size: int = 28, seed: int = 0) -> np.ndarray:
    """Smooth uint8 images (upsampled noise): what downsampling is for."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 7, 7, generator=g) * 255
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    return fine.round().clamp(0, 255).to(torch.uint8).numpy()


def _data(n: int = 64, channels: int = 1, size: int = 28) -> TrialData:
    info = get_dataset_info("fashion_mnist")
    if channels != 1:
        info = dataclasses.replace(get_dataset_info("cifar10"), shape=ImageShape(3, size))
    labels = np.arange(n) % info.num_classes
    return TrialData(info=info, train=ArraySplit(_images(n, channels, size), labels),
                     val=ArraySplit(_images(n, channels, size, seed=1), labels))


def test_downsampling_is_antialiased_rounded_and_never_enlarges() -> None:
    flat = torch.full((2, 3, 28, 28), 77, dtype=torch.uint8)
    stripes = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    stripes[..., ::2] = 255  # one-pixel stripes: antialiasing averages them to grey

    assert torch.equal(downsample(flat, 14), torch.full((2, 3, 14, 14), 77, dtype=torch.uint8))
    # Away from the border (where the filter is cut) every pixel is (0 + 255) / 2, rounded;
    # without antialiasing each would be one stripe's, 0 or 255.
    assert downsample(stripes, 14)[..., 1:-1].unique().tolist() == [128]
    assert downsample(flat, 28) is flat
    with pytest.raises(ValueError, match=r"image_size 32 must lie in 1\.\.28"):
        downsample(flat, 32)


def test_a_split_downsampled_in_chunks_equals_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    images = torch.from_numpy(_images(10, channels=3, size=32))
    whole = downsample(images, 20)

    monkeypatch.setattr(resize, "CHUNK_IMAGES", 3)

    assert torch.equal(downsample(images, 20), whole)
    assert whole.shape == (10, 3, 20, 20) and whole.is_contiguous()


def test_each_size_is_downsampled_once_per_process_and_shared() -> None:
    data = _data()

    full = data.on_device(CPU)
    small = data.on_device(CPU, 16)

    assert data.on_device(CPU, 16) is small and data.on_device(CPU, 28) is full
    assert tuple(small[0].images.shape) == (64, 1, 16, 16)
    assert torch.equal(small[1].images, downsample(full[1].images, 16))
    assert torch.equal(small[0].labels, full[0].labels)


def test_a_trial_at_a_smaller_size_trains_there_and_counts_its_cost_there() -> None:
    data = _data()
    params = TrialParams(lr=0.01, batch_size=16, dropout=0.0, arch="cnn", depth=2, width=8,
                         image_size=16)
    full_size = dataclasses.replace(params, image_size=None)

    session = TrainingSession.build(params, data=data, device=CPU, seed=0, epochs=1,
                                    augment=True, amp_dtype=None)
    x, _ = next(iter(session.train))

    assert tuple(x.shape) == (16, 1, 16, 16)
    assert session.train.augmentation.crop_padding == 1  # 2 px at 28 px, in proportion
    assert macs_per_image(params, data.info) < macs_per_image(full_size, data.info) * 0.4


@pytest.mark.parametrize("arch, channels", [("cnn", 1), ("mobilenet_v3_small", 3)])
def test_the_served_model_downsamples_as_training_did_and_answers_the_same(
        arch: str, channels: int) -> None:
    data = _data(n=40, channels=channels, size=28)
    params = TrialParams(lr=0.01, batch_size=8, dropout=0.0, arch=arch,
                         depth=2 if arch == "cnn" else None, width=8 if arch == "cnn" else None,
                         pretrained=False if arch != "cnn" else None, image_size=20)
    torch.manual_seed(0)
    network = build_network(params, data.info).eval()
    # The trained network's answer on the validation images, as the trial computed it.
    _, val = data.on_device(CPU, params.image_size)
    (x, _), = make_loader(val, CPU, normalization=input_stats(params, data.info))
    with torch.no_grad():
        trained = torch.softmax(network(x), dim=1).numpy()

    served = NormalizingClassifier.from_weights(params, data.info, network.state_dict())
    answered = class_probabilities(served, data.val.images.astype(np.float32) / 255.0)

    assert served.input_size == 20
    np.testing.assert_allclose(answered, trained, rtol=1e-4, atol=1e-6)
    assert (answered.argmax(1) == trained.argmax(1)).all()


@pytest.mark.parametrize("image_size", [None, 16])
def test_a_trial_on_streamed_data_trains_exactly_as_on_resident_data(image_size) -> None:
    # Data that do not fit on the device (TrialData.resident False, plan_residency's call)
    # are streamed from host memory: the same batches, so on a CPU the same training.
    params = TrialParams(lr=0.01, batch_size=16, dropout=0.0, arch="cnn", depth=2, width=8,
                         image_size=image_size)
    trained = {}
    for resident in (True, False):
        data = dataclasses.replace(_data(), resident=resident)
        session = TrainingSession.build(params, data=data, device=CPU, seed=0, epochs=2,
                                        augment=True, amp_dtype=None)
        session.fit(epochs=2, on_epoch=lambda result: None)
        trained[resident] = (session, data)

    (resident, _), (streamed, host_data) = trained[True], trained[False]
    assert type(streamed.train).__name__ == "StreamedLoader"
    assert type(resident.train).__name__ == "DeviceLoader"
    # Nothing was copied to the device; only a smaller size is kept, on the host.
    assert list(host_data._resident) == ([] if image_size is None else [("host", image_size)])
    for name, value in resident.model.state_dict().items():
        assert torch.equal(value, streamed.model.state_dict()[name]), name
