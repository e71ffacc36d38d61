"""A trial's training, built once per trial: :class:`TrialData` (the splits it trains and
validates on), :class:`TrainingSession` (network, loaders, training step) and
:class:`TrialCost` (what it costs, read by the cost-aware pruner). No Optuna, no MLflow: the
objective (:mod:`~hpsearch.search.objective`) drives a session and reports what it does.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hpsearch.data_utils import ArraySplit, Augmentation, DatasetInfo
from hpsearch.errors import first_line
from hpsearch.models import build_network, input_stats
from hpsearch.params import TrialParams
from hpsearch.training.batches import SplitLoader
from hpsearch.training.checkpoint import restore_training_state, training_state
from hpsearch.training.compiled import compile_network
from hpsearch.training.cost import count_parameters, macs_per_image
from hpsearch.training.cuda_graphs import build_train_step
from hpsearch.training.loader import DeviceSplit, make_loader
from hpsearch.training.loop import EpochResult, fit
from hpsearch.training.optim import build_optimizer
from hpsearch.training.resize import downsample
from hpsearch.training.step import TrainStep, class_weight_tensor

__all__ = ["TrainingSession", "TrialCost", "TrialData"]


@dataclass(frozen=True)
class TrialData:
    """The splits every trial of a study trains and validates on (uint8, (N, C, H, W)).

    Resident, the host arrays are copied to a device once per process (:meth:`on_device`)
    and every trial's loaders share those copies: a trial does not copy the data set again.
    Streamed (``resident`` False: they do not fit there), every trial's loaders gather each
    batch from the host arrays (:meth:`on_host`).

    Attributes:
        info: the data set.
        train, val: the splits, in host memory (for own images, memory maps of the cache).
        resident: whether the splits live on the device
            (:func:`~hpsearch.training.residency.plan_residency` decides).
    """

    info: DatasetInfo
    train: ArraySplit
    val: ArraySplit
    resident: bool = True
    _resident: dict = field(default_factory=dict, repr=False, compare=False)

    @functools.cached_property
    def class_counts(self) -> tuple[int, ...]:
        """Training images per class, in class-index order (the balanced class weights)."""
        counts = np.bincount(self.train.labels, minlength=self.info.num_classes)
        return tuple(int(n) for n in counts)

    def on_device(self, device: torch.device,
                  image_size: int | None = None) -> tuple[DeviceSplit, DeviceSplit]:
        """The (train, val) splits on ``device``, copied there on the first call only; with
        ``image_size`` below the stored size, downsampled there
        (:func:`~hpsearch.training.resize.downsample`) on the first call for that size, and
        kept for the next trials of that size.

        Raises:
            ValueError: ``image_size`` is larger than the stored images.
        """
        key = str(torch.device(device))
        if key not in self._resident:
            self._resident[key] = (DeviceSplit.of(self.train, device),
                                   DeviceSplit.of(self.val, device))
        if image_size is None or image_size == self.info.shape.size:
            return self._resident[key]
        sized = (key, image_size)
        if sized not in self._resident:
            self._resident[sized] = tuple(DeviceSplit(downsample(split.images, image_size),
                                                      split.labels)
                                          for split in self._resident[key])
        return self._resident[sized]

    def on_host(self, image_size: int | None = None) -> tuple[ArraySplit, ArraySplit]:
        """The (train, val) splits in host memory, for streamed loaders; with ``image_size``
        below the stored size, downsampled on the host (as :meth:`on_device` does on the
        device) on the first call for that size, and kept for the next trials of that size.

        Raises:
            ValueError: ``image_size`` is larger than the stored images.
        """
        if image_size is None or image_size == self.info.shape.size:
            return self.train, self.val
        sized = ("host", image_size)
        if sized not in self._resident:
            self._resident[sized] = tuple(
                ArraySplit(downsample(torch.from_numpy(np.asarray(split.images)), image_size)
                           .numpy(), split.labels)
                for split in (self.train, self.val))
        return self._resident[sized]


def _scaled(augmentation: Augmentation, stored: int, size: int | None) -> Augmentation:
    """``augmentation`` for images downsampled from ``stored`` to ``size`` pixels: the
    random crop's padding in proportion, so a translation moves the same share of the
    image."""
    if size is None or size == stored or augmentation.crop_padding == 0:
        return augmentation
    padding = max(1, round(augmentation.crop_padding * size / stored))
    return dataclasses.replace(augmentation, crop_padding=padding)


class TrialCost:
    """What a trial has cost so far, kept in its ``cost`` user attribute (the trials table,
    ``hpsearch show`` and the cost-aware pruner read it) and logged on its run.

    A retried trial that continues from a checkpoint continues its predecessor's cost: the
    cost is that of the whole training its result comes from.

    Attributes:
        parameters: trainable parameters of the network.
        macs_per_image: multiply-accumulates of one image's forward pass.
        epochs: epochs trained so far.
        seconds: wall seconds since training started (training, validation, logging).
        train_seconds: seconds of the training part of the epochs.
        images: training images processed.
        checkpoint_seconds: seconds spent saving the training's state after epochs.
    """

    def __init__(self, *, parameters: int, macs_per_image: int) -> None:
        self.parameters, self.macs_per_image = parameters, macs_per_image
        self.epochs, self.seconds, self.train_seconds, self.images = 0, 0.0, 0.0, 0
        self.checkpoint_seconds = 0.0
        self._earlier_seconds = 0.0  # the wall seconds of a predecessor's epochs
        self._started = time.perf_counter()

    def start(self) -> None:
        self._started = time.perf_counter()

    def add_epoch(self, result: EpochResult) -> None:
        self.epochs = result.epoch
        self.seconds = self._earlier_seconds + time.perf_counter() - self._started
        self.train_seconds += result.epoch_seconds
        self.images += round(result.images_per_second * result.epoch_seconds)

    def state(self) -> dict[str, float]:
        """The counts, unrounded, for a checkpoint."""
        return {"epochs": self.epochs, "seconds": self.seconds,
                "train_seconds": self.train_seconds, "images": self.images,
                "checkpoint_seconds": self.checkpoint_seconds}

    def restore(self, state: dict[str, float]) -> None:
        """Continue from a :meth:`state` (the predecessor's epochs count as this trial's)."""
        self.epochs, self.seconds = int(state["epochs"]), float(state["seconds"])
        self.train_seconds, self.images = float(state["train_seconds"]), int(state["images"])
        self.checkpoint_seconds = float(state["checkpoint_seconds"])
        self._earlier_seconds = self.seconds

    def to_dict(self) -> dict[str, float]:
        """The user attribute: also ``seconds_per_epoch`` and training ``images_per_second``."""
        return {
            "parameters": self.parameters,
            "macs_per_image": self.macs_per_image,
            "epochs": self.epochs,
            "seconds": round(self.seconds, 3),
            "seconds_per_epoch": round(self.seconds / self.epochs, 3) if self.epochs else None,
            "train_seconds": round(self.train_seconds, 3),
            "images_per_second": (round(self.images / self.train_seconds, 1)
                                  if self.train_seconds else None),
            "checkpoint_seconds": round(self.checkpoint_seconds, 4),
        }


class TrainingSession:
    """One trial's training, built once per trial by :meth:`build`: the network, its
    loaders, its training step (optimizer, one-cycle schedule) and what it has cost.
    :meth:`fit` trains it; :meth:`state_dict` and :meth:`load_state_dict` save and restore
    it between epochs.

    Attributes:
        params: the trial's hyperparameters.
        info: the data set.
        model: the network; checkpoints and logged weights use it.
        network: what trains: ``model`` or its ``torch.compile`` wrapper (same parameters).
        train, val: the training and validation loaders (resident or streamed).
        step: the training step.
        cost: what the trial has cost so far.
        total_steps: optimizer steps the one-cycle schedule spans (all epochs).
        device: where it trains; amp_dtype: its autocast dtype or None.
    """

    def __init__(self, *, params: TrialParams, info: DatasetInfo, model: torch.nn.Module,
                 network: torch.nn.Module, train: SplitLoader, val: SplitLoader,
                 step: TrainStep, cost: TrialCost, total_steps: int, device: torch.device,
                 amp_dtype: torch.dtype | None) -> None:
        self.params, self.info, self.model, self.network = params, info, model, network
        self.train, self.val, self.step, self.cost = train, val, step, cost
        self.total_steps, self.device, self.amp_dtype = total_steps, device, amp_dtype

    @classmethod
    def build(cls, params: TrialParams, *, data: TrialData, device: torch.device, seed: int,
              epochs: int, augment: bool, amp_dtype: torch.dtype | None,
              compile_model: bool = False, compile_mode: str = "default",
              cuda_graphs: bool = False) -> TrainingSession:
        """Seed torch with ``seed``, build the network, loaders, optimizer and step.

        Args:
            params: the trial's hyperparameters.
            data: the study's splits.
            device: where to train.
            seed: seeds the weights' initialisation, dropout and the loader's shuffling.
            epochs: most epochs the trial may train (the schedule spans them all).
            augment: random crops (and flips) of the training images.
            amp_dtype: autocast dtype, or None.
            compile_model: train through ``torch.compile``; compile_mode: its mode.
            cuda_graphs: capture the training step in a CUDA graph where possible.
        """
        torch.manual_seed(seed)
        info = data.info
        model = build_network(params, info, pretrained_weights=True)
        model = model.to(device, memory_format=torch.channels_last)
        cost = TrialCost(parameters=count_parameters(model),
                         macs_per_image=macs_per_image(params, info))
        # A pretrained backbone expects its weights' statistics, others the data set's.
        normalization = input_stats(params, info)
        stream = not data.resident
        train_split, val_split = (data.on_host(params.image_size) if stream
                                  else data.on_device(device, params.image_size))
        train = make_loader(train_split, device, normalization=normalization,
                            augmentation=_scaled(info.augmentation, info.shape.size,
                                                 params.image_size),
                            batch_size=params.batch_size, train=True, augment=augment,
                            seed=seed, stream=stream)
        val = make_loader(val_split, device, normalization=normalization, stream=stream)
        optimizer = build_optimizer(model, name=params.optimizer, lr=params.lr,
                                    weight_decay=params.weight_decay)
        # Inverse class frequency of the split trained on (--train-subset's, if any).
        class_weights = (class_weight_tensor(data.class_counts, device)
                         if params.class_weights == "balanced" else None)
        network = compile_network(model, mode=compile_mode) if compile_model else model
        # One-cycle schedule over the most epochs a trial may run, so a trial the pruner
        # keeps running sees the same schedule as one that started fresh.
        total_steps = epochs * len(train)
        step = build_train_step(network, optimizer, max_lr=params.lr, total_steps=total_steps,
                                device=device, amp_dtype=amp_dtype,
                                label_smoothing=params.label_smoothing,
                                class_weights=class_weights, cuda_graphs=cuda_graphs,
                                compiled=compile_model)
        return cls(params=params, info=info, model=model, network=network, train=train,
                   val=val, step=step, cost=cost, total_steps=total_steps, device=device,
                   amp_dtype=amp_dtype)

    def fit(self, *, epochs: int, on_epoch: Callable[[EpochResult], None],
            on_batch: Callable[[int, int, int], None] | None = None,
            start_epoch: int = 1) -> None:
        """Train epochs ``start_epoch`` .. ``epochs`` (see :func:`~hpsearch.training.fit`)."""
        self.cost.start()
        fit(self.network, self.train, self.val, epochs=epochs, train_step=self.step,
            num_classes=self.info.num_classes, device=self.device, amp_dtype=self.amp_dtype,
            on_epoch=on_epoch, on_batch=on_batch, start_epoch=start_epoch)

    def state_dict(self, history: Sequence[EpochResult]) -> dict[str, Any]:
        """The training's state after the last epoch of ``history`` (every epoch so far):
        tensors and plain containers, loadable with ``weights_only=True``."""
        return {"training": training_state(model=self.model, step=self.step,
                                           loader=self.train, device=self.device,
                                           history=history),
                "params": self.params.to_dict(), "total_steps": self.total_steps,
                "cost": self.cost.state()}

    def load_state_dict(self, state: dict[str, Any]) -> list[EpochResult]:
        """Continue from a :meth:`state_dict` of a session with the same hyperparameters.

        Returns:
            The epochs trained before it was saved.

        Raises:
            ValueError: it is of other hyperparameters, another schedule, device or network;
                after a network mismatch the session is half restored: build a new one.
        """
        if state["params"] != self.params.to_dict():
            raise ValueError("it holds other hyperparameters")
        if state["total_steps"] != self.total_steps:
            raise ValueError(f"its schedule spans {state['total_steps']} steps, this "
                             f"trial's {self.total_steps}")
        try:
            history = restore_training_state(state["training"], model=self.model,
                                             step=self.step, loader=self.train,
                                             device=self.device)
        except (KeyError, RuntimeError) as exc:  # torch's load_state_dict: another network
            raise ValueError(first_line(exc, limit=200)) from None
        self.cost.restore(state["cost"])
        return history
