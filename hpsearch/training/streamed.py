"""A loader for a split that does not fit on the device: the split stays in host memory and
each batch is copied over while the previous one trains.

The split stays where it is (a numpy array, or the read-only memory map of an own-images
cache: the operating system pages it in as batches touch it) and is not pinned as a whole:
a shuffled batch must be gathered into contiguous memory anyway, so it is gathered straight
into a pinned staging buffer, and pinning gigabytes would take seconds and lock memory that
other workers need. On CUDA each batch then takes this path:

1. the host gathers batch i+1 into pinned buffer (i+1) % 2 while the device trains batch i
   (two buffers: double buffering);
2. a side CUDA stream copies it to a device buffer (``non_blocking``), after an event says
   the training stream has finished reading that buffer's previous batch, and records a
   "copied" event;
3. the training stream waits for that event (the device waits, not the host) and makes the
   batch with the resident loader's own code (:meth:`SplitLoader._make_batch`: the same
   augmentation and normalisation on the device, from the same generator).

The epoch's order is the resident loader's ``randperm`` on the device, read back once per
epoch, so for the same seed a :class:`StreamedLoader` yields exactly the batches of a
:class:`~hpsearch.training.loader.DeviceLoader`. On a CPU there is nothing to copy and no
stream: each batch is gathered and made at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from hpsearch.data_utils import ArraySplit, Augmentation, Normalization
from hpsearch.training.batches import NO_AUGMENTATION, SplitLoader

__all__ = ["StreamedLoader"]

STAGING_BUFFERS = 2  # batch i trains while batch i+1 is gathered and copied


class StreamedLoader(SplitLoader):
    """Iterate over a split held in host memory, one batch at a time on ``device``.

    The same interface and batches as :class:`~hpsearch.training.loader.DeviceLoader`
    (same arguments, ``len``, ``num_samples``, ``state_dict``), but the device only ever
    holds two batches of the split. One iteration at a time: its staging buffers are the
    loader's.

    Args:
        split: a host :class:`ArraySplit`: images uint8 (N, C, H, W), a numpy array or a
            read-only ``np.memmap``, and labels int64 (N,). Never copied whole.
        normalization: the per-channel statistics the images are normalised with.
        augmentation: what ``augment`` may do.
        batch_size: samples per batch.
        device: where batches are produced; on CUDA through pinned buffers and a side
            stream, elsewhere gathered and made at once.
        dtype: floating dtype of the yielded images.
        shuffle: a new random order every epoch.
        augment: apply ``augmentation``.
        drop_last: skip the final incomplete batch.
        seed: seed of the device generator (order and augmentation).
        channels_last: yield ``x`` in ``torch.channels_last`` memory format.

    Raises:
        TypeError: ``split`` is not an :class:`ArraySplit` (a split already on the device
            needs no streaming).
        ValueError: If ``batch_size < 1``, the split is empty, or its channels do not match
            the normalisation's.
    """

    def __init__(
        self,
        split: ArraySplit,
        *,
        normalization: Normalization,
        augmentation: Augmentation = NO_AUGMENTATION,
        batch_size: int,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        if not isinstance(split, ArraySplit):
            raise TypeError(f"a streamed loader reads a host ArraySplit, got "
                            f"{type(split).__name__}")
        super().__init__(num_samples=len(split), channels=split.images.shape[1],
                         normalization=normalization, augmentation=augmentation,
                         batch_size=batch_size, device=device, dtype=dtype, shuffle=shuffle,
                         augment=augment, drop_last=drop_last, seed=seed,
                         channels_last=channels_last)
        self._images, self._labels = split.images, split.labels
        self._pipeline: _CopyPipeline | None = None  # built on the first CUDA epoch

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order()
        # One read-back per epoch (the device waits for nothing: the last epoch's
        # validation has been read back already).
        host_order = None if order is None else order.cpu().numpy()
        batches = [slice(start, stop) if host_order is None else host_order[start:stop]
                   for start, stop in self._bounds()]
        if self.device.type != "cuda":
            yield from self._gathered(batches)
            return
        if self._pipeline is None:
            self._pipeline = _CopyPipeline(self._images.shape[1:], self.batch_size,
                                           self.device)
        yield from self._streamed(batches, self._pipeline)

    def _gathered(self, batches: list[slice | np.ndarray]) -> Iterator[tuple[Tensor, Tensor]]:
        """Without CUDA: gather each batch into one reused buffer and make it there."""
        buffer = np.empty((self.batch_size, *self._images.shape[1:]), dtype=np.uint8)
        labels = np.empty(self.batch_size, dtype=np.int64)
        for rows in batches:
            n = _gather(self._images, rows, buffer)
            _gather(self._labels, rows, labels)
            # _make_batch returns a new tensor, so the buffer is free for the next batch.
            x = self._make_batch(torch.from_numpy(buffer[:n]).to(self.device))
            yield x, torch.from_numpy(labels[:n].copy()).to(self.device)

    def _streamed(self, batches: list[slice | np.ndarray],
                  pipeline: _CopyPipeline) -> Iterator[tuple[Tensor, Tensor]]:
        """On CUDA: batch i+1's gather and copy are queued before batch i is made."""
        if not batches:
            return
        sizes = [pipeline.load(0, self._images, self._labels, batches[0])]
        for i in range(len(batches)):
            if i + 1 < len(batches):
                sizes.append(pipeline.load(i + 1, self._images, self._labels, batches[i + 1]))
            images, labels = pipeline.take(i, sizes[i])
            x = self._make_batch(images)
            y = labels.clone()  # the staging buffer is reused two batches later
            pipeline.release(i)
            yield x, y


class _CopyPipeline:
    """Pinned host buffers, device buffers, a side stream and the events between them, one
    set per staging slot; batch i uses slot ``i % STAGING_BUFFERS``."""

    def __init__(self, image_shape: tuple[int, ...], batch_size: int,
                 device: torch.device) -> None:
        slots = range(STAGING_BUFFERS)
        shape = (batch_size, *image_shape)
        self.host_images = [torch.empty(shape, dtype=torch.uint8, pin_memory=True)
                            for _ in slots]
        self.host_labels = [torch.empty(batch_size, dtype=torch.int64, pin_memory=True)
                            for _ in slots]
        self.images = [torch.empty(shape, dtype=torch.uint8, device=device) for _ in slots]
        self.labels = [torch.empty(batch_size, dtype=torch.int64, device=device)
                       for _ in slots]
        self.copy_stream = torch.cuda.Stream(device)
        for buffer in (*self.images, *self.labels):
            # Written on the side stream: the allocator must not reuse them, once freed,
            # before that stream's last copy into them is done.
            buffer.record_stream(self.copy_stream)
        # An event never recorded counts as done, so the first batches wait for nothing.
        self.copied = [torch.cuda.Event() for _ in slots]
        self.consumed = [torch.cuda.Event() for _ in slots]
        self.device = device

    def load(self, i: int, images: np.ndarray, labels: np.ndarray,
             rows: slice | np.ndarray) -> int:
        """Gather batch ``i`` into its pinned buffer and queue its copy; returns its size."""
        slot = i % STAGING_BUFFERS
        # The host buffer's previous copy (batch i - 2) must have left before it is
        # overwritten; it waited only for batch i - 4 to be made, so it normally has.
        self.copied[slot].synchronize()
        n = _gather(images, rows, self.host_images[slot].numpy())
        _gather(labels, rows, self.host_labels[slot].numpy())
        with torch.cuda.stream(self.copy_stream):
            # The device buffer is overwritten only once batch i - 2 was made from it.
            self.copy_stream.wait_event(self.consumed[slot])
            self.images[slot][:n].copy_(self.host_images[slot][:n], non_blocking=True)
            self.labels[slot][:n].copy_(self.host_labels[slot][:n], non_blocking=True)
            self.copied[slot].record(self.copy_stream)
        return n

    def take(self, i: int, n: int) -> tuple[Tensor, Tensor]:
        """Batch ``i`` on the device, for the current stream once its copy has landed."""
        slot = i % STAGING_BUFFERS
        torch.cuda.current_stream(self.device).wait_event(self.copied[slot])
        return self.images[slot][:n], self.labels[slot][:n]

    def release(self, i: int) -> None:
        """Batch ``i``'s device buffers have been read (on the current stream)."""
        self.consumed[i % STAGING_BUFFERS].record(torch.cuda.current_stream(self.device))


def _gather(array: np.ndarray, rows: slice | np.ndarray, out: np.ndarray) -> int:
    """Copy ``array[rows]`` (images or labels) into the first rows of ``out``; returns how
    many. ``np.take`` writes straight into ``out`` (fancy indexing would allocate the batch
    first); ``mode="clip"`` because the default ``"raise"`` buffers ``out`` (numpy's
    documentation), and the rows are a permutation's, always in range."""
    if isinstance(rows, slice):
        n = rows.stop - rows.start
        np.copyto(out[:n], array[rows])
    else:
        n = len(rows)
        np.take(array, rows, axis=0, out=out[:n], mode="clip")
    return n
