"""Training loaders that Lightning resumes mid-epoch: over photo files, and over a decoded cache.

:class:`ResumableDataLoader` is a torch DataLoader (workers decode and crop JPEGs).
:class:`CachedBatchLoader` feeds training from a cache with one copy per image: a
background thread gathers each batch's cached images from the memory maps straight into
one of a ring of reused (pinned, when a GPU trains) buffers, with the batch's sample
indices, flip flags and crop boxes; crops and flips then run on the model's device
(:func:`joint_colsr.data.geometry.augment`, from ``on_after_batch_transfer``). No worker
processes, no per-batch allocation, no per-sample Python objects.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from joint_colsr.data.datasets import CachedImages
from joint_colsr.data.geometry import augment, check_boxes
from joint_colsr.data.scales import scale_uniform
from joint_colsr.data.sampler import EpochSeededSampler, sample_keys

log = logging.getLogger(__name__)


class _ResumableState:
    """``state_dict``/``load_state_dict`` of a training loader (Lightning stores them in checkpoints).

    The state is the epoch and the number of samples this rank already trained on; the
    :class:`EpochSeededSampler` then skips exactly those, so no sample is repeated or
    skipped (the order and every crop are pure functions of seed, epoch and index).
    """

    sampler: EpochSeededSampler
    batch_size: int
    _batches_done: Callable[[], int]
    _epoch_batches: Callable[[], float]

    def state_dict(self) -> dict[str, int]:
        done = self._batches_done()
        return {"epoch": self.sampler.epoch, "samples_done": done * self.batch_size,
                "epoch_done": int(done >= self._epoch_batches())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if "epoch" not in state:
            return
        epoch, samples = int(state["epoch"]), int(state.get("samples_done", 0))
        if state.get("epoch_done", samples >= len(self.sampler)):
            # Saved on the epoch's last batch: Lightning goes on with the next epoch, and with
            # worker processes the iterator it makes now (before it sets the epoch) is that one's.
            self.sampler.set_epoch(epoch + 1)
            log.info("resuming at the start of epoch %d", epoch + 1)
        else:
            self.sampler.resume(epoch, samples)
            log.info("resuming epoch %d after %d samples", epoch, samples)


class ResumableDataLoader(_ResumableState, DataLoader):
    """A DataLoader that Lightning can resume mid-epoch (see :class:`_ResumableState`)."""

    def __init__(self, *args: Any, batches_done: Callable[[], int], epoch_batches: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done = batches_done
        self._epoch_batches = epoch_batches


class RingSlot:
    """One reused batch buffer: ``(B, 3, T, T)`` uint8 images plus the batch's small tensors
    (indices, flips, crop boxes: they travel to the device with the images).

    ``transferred()`` (called once the batch was copied to a GPU, from
    ``on_after_batch_transfer``) records a CUDA event; the gathering thread waits for it
    before overwriting the slot, so an asynchronous copy out of pinned memory is never
    overwritten while in flight.
    """

    def __init__(self, batch_size: int, side: int, num_classes: int | None, pin: bool) -> None:
        def empty(*shape: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
            return torch.empty(shape, dtype=dtype, pin_memory=pin)

        self.rgb = empty(batch_size, 3, side, side)
        self.index = empty(batch_size, dtype=torch.int64)
        self.skipped = torch.zeros(batch_size, dtype=torch.int64, pin_memory=pin)
        self.flip = empty(batch_size, dtype=torch.bool)
        self.boxes = empty(batch_size, 4, dtype=torch.int64)
        self.labels = empty(batch_size, num_classes) if num_classes is not None else None
        #: How many times the slot was filled: a batch remembers the value it was handed out with.
        self.generation = 0
        self._event: torch.cuda.Event | None = None

    def check(self, generation: int) -> None:
        """Fail if the slot was refilled since a batch of ``generation`` was handed out."""
        if generation != self.generation:
            raise RuntimeError(f"a cached batch was used after its buffer was reused: batches of CachedBatchLoader "
                               f"live until {CachedBatchLoader.HOLD} more are taken; clone what must live longer")

    def transferred(self) -> None:
        if torch.cuda.is_available():
            self._event = torch.cuda.Event()
            self._event.record()

    def wait_until_free(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.synchronize()


class CachedBatchLoader(_ResumableState):
    """Training batches of a :class:`CachedImages` dataset, gathered by one background thread.

    Each batch is a dict: ``rgb`` ``(B, 3, T, T)`` uint8 cached images (before crop and
    flip); ``index`` ``(B,)`` int64; ``skipped`` ``(B,)`` zeros; ``flip`` ``(B,)`` bool
    (when ``hflip``); ``boxes`` ``(B, 4)`` int64 whole-pixel crop boxes (when the images are
    cropped or resized; checked here, on the host, and applied on the device); ``labels``
    ``(B, C)`` uint8 (with labels); ``slot``: the :class:`RingSlot` the tensors live in, and
    ``generation``: its fill count when handed out (``slot.check(generation)``).

    **Lifetime.** The tensors of batch ``k`` are views of a reused buffer: they stay
    unchanged until the consumer asks for batch ``k + HOLD`` (``HOLD = 3``: Lightning holds
    the batch being trained and the one it fetched ahead). Copy what must live longer;
    ``on_after_batch_transfer`` refuses a batch whose buffer was refilled.

    Order and sample keys are those of ``sampler`` (an :class:`EpochSeededSampler`:
    epoch order, DDP shard, mid-epoch resume), so batches are pure functions of
    (seed, epoch, index), whatever the timing of the thread.

    Args:
        dataset: a training :class:`CachedImages`.
        sampler: the epoch order; Lightning calls ``sampler.set_epoch`` (found as ``.sampler``).
        batch_size: images per batch.
        drop_last: drop a last partial batch (as a DataLoader does).
        pin_memory: allocate the ring in pinned memory (a GPU trains).
        batches_done, epoch_batches: Lightning's counts, for the resume state.
        prefetch: batches gathered ahead of the one the consumer asks for (>= 1).
        gather_threads: threads that copy one batch's images (>= 1): the gathering thread
            and ``gather_threads - 1`` helpers, each on its own part of the batch.
    """

    HOLD = 3

    def __init__(self, dataset: CachedImages, sampler: EpochSeededSampler, batch_size: int, drop_last: bool,
                 pin_memory: bool, batches_done: Callable[[], int], epoch_batches: Callable[[], float], prefetch: int = 2,
                 gather_threads: int = 2) -> None:
        if not dataset.train:
            raise ValueError("CachedBatchLoader serves training datasets")
        if batch_size < 1 or prefetch < 1 or gather_threads < 1:
            raise ValueError(f"batch_size, prefetch and gather_threads must be >= 1, got {batch_size}, {prefetch} and {gather_threads}")
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.prefetch = prefetch
        self.gather_threads = gather_threads
        self._helpers: ThreadPoolExecutor | None = None
        self._batches_done = batches_done
        self._epoch_batches = epoch_batches
        self._slots: list[RingSlot] | None = None
        self._active: _Gatherer | None = None
        #: Batches handed out so far, over all iterations: batch number ``n`` lives in slot
        #: ``n % len(ring)``, so the lifetime holds across epochs too.
        self.taken = 0

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def ring(self) -> list[RingSlot]:
        """The ``HOLD + prefetch`` reused buffers (allocated on first use, kept across epochs)."""
        if self._slots is None:
            num_classes = len(self.dataset.label_columns) if self.dataset.label_columns is not None else None
            self._slots = [RingSlot(self.batch_size, self.dataset.split.size, num_classes, self.pin_memory)
                           for _ in range(self.HOLD + self.prefetch)]
        return self._slots

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # A generator: the epoch (and a pending resume offset) is read at the first next(),
        # after Lightning has called set_epoch, as a DataLoader's sampler is.
        if self._active is not None:  # a previous iteration left unfinished: stop its thread first
            self._active.stop()
            self._active = None
        epoch, indices = self.sampler.take_epoch()
        count = len(indices) // self.batch_size if self.drop_last else math.ceil(len(indices) / self.batch_size)
        if count == 0:
            return
        keys = sample_keys(self.sampler.seed, epoch, indices)
        gatherer = self._active = _Gatherer(self, indices, keys, count)
        try:
            for k in range(count):
                yield gatherer.take(k)
        finally:
            gatherer.stop()
            if self._active is gatherer:
                self._active = None

    def _gather(self, photos: np.ndarray, out: np.ndarray) -> None:
        """``split.gather`` of ``photos`` into ``out``, split across ``gather_threads`` threads."""
        parts = np.array_split(np.arange(len(photos)), self.gather_threads)
        if self.gather_threads == 1 or len(photos) < self.gather_threads:
            self.dataset.split.gather(photos, out)
            return
        if self._helpers is None:
            self._helpers = ThreadPoolExecutor(self.gather_threads - 1, thread_name_prefix="cached-batch-gather-helper")
        pending = [self._helpers.submit(self.dataset.split.gather, photos[p], out[p[0]:p[-1] + 1]) for p in parts[1:]]
        self.dataset.split.gather(photos[parts[0]], out[: len(parts[0])])
        for job in pending:
            job.result()

    def fill(self, slot: RingSlot, indices: np.ndarray, keys: np.ndarray) -> dict[str, Any]:
        """Gather samples ``indices`` into ``slot`` and return the batch (views of the slot)."""
        n = len(indices)
        photos, boxes, flips = self.dataset.training_plan(indices, keys)
        slot.generation += 1
        self._gather(photos, slot.rgb.numpy())
        slot.index.numpy()[:n] = indices
        batch: dict[str, Any] = {"rgb": slot.rgb[:n], "index": slot.index[:n], "skipped": slot.skipped[:n], "slot": slot,
                                 "generation": slot.generation}
        if flips is not None:
            slot.flip.numpy()[:n] = flips
            batch["flip"] = slot.flip[:n]
        if boxes is not None:
            slot.boxes.numpy()[:n] = check_boxes(boxes, n, slot.rgb.shape[-1], slot.rgb.shape[-2])
            batch["boxes"] = slot.boxes[:n]
        if self.dataset.draw_scale and n:
            batch["scale_u"] = scale_uniform(int(keys[0]))
        if self.dataset.exemplars is not None and self.dataset.exemplars.active:
            # Fresh tensors, not ring views: the other photos double the batch's bytes only when asked for.
            batch.update(self.dataset.exemplar_fields(photos, [int(k) for k in keys], self._gather, self.dataset.split.size))
        if slot.labels is not None:
            np.take(self.dataset.label_matrix(), photos, axis=0, out=slot.labels.numpy()[:n])
            batch["labels"] = slot.labels[:n]
        return batch


def owned_batch(batch: dict[str, Any], output_size: int) -> dict[str, Any]:
    """A batch that owns its memory: a :class:`CachedBatchLoader` batch cropped and flipped
    here (:func:`augment`, on the batch's device) and copied out of its ring buffer; any
    other batch as it is. For keeping batches past their lifetime (pre-made benchmark batches)."""
    if "slot" not in batch:
        return batch
    batch["slot"].check(batch["generation"])
    rgb = augment(batch["rgb"], output_size, batch.get("flip"), batch.get("boxes"))
    out = {"rgb": rgb.clone() if rgb.data_ptr() == batch["rgb"].data_ptr() else rgb}
    out.update({k: batch[k].clone() for k in ("index", "skipped", "labels") if k in batch})
    return out


class _Gatherer:
    """The thread of one iteration: fills its batch ``m`` into slot ``(base + m) % len(ring)``
    (``base``: batches the loader handed out before) once the consumer has asked for batch
    ``m - prefetch`` (so the batches that shared that slot are past their lifetime)."""

    def __init__(self, loader: CachedBatchLoader, indices: np.ndarray, keys: np.ndarray, count: int) -> None:
        self.loader = loader
        self.ring = loader.ring()
        self.base = loader.taken
        self.indices, self.keys, self.count = indices, keys, count
        self.asked = 0
        self.stopping = False
        self.cond = threading.Condition()
        self.ready: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="cached-batch-gather", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        bs, prefetch = self.loader.batch_size, self.loader.prefetch
        try:
            for m in range(self.count):
                with self.cond:
                    self.cond.wait_for(lambda m=m: self.stopping or m <= self.asked + prefetch)
                    if self.stopping:
                        return
                slot = self.ring[(self.base + m) % len(self.ring)]
                slot.wait_until_free()
                part = slice(m * bs, (m + 1) * bs)
                self.ready.put(self.loader.fill(slot, self.indices[part], self.keys[part]))
        except Exception as err:  # noqa: BLE001 (any failure is handed to the consumer and raised there)
            self.ready.put(err)

    def take(self, k: int) -> dict[str, Any]:
        with self.cond:
            self.asked = k
            self.cond.notify()
        item = self.ready.get()
        if isinstance(item, Exception):
            raise item
        self.loader.taken = self.base + k + 1
        return item

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join()


__all__ = ["CachedBatchLoader", "ResumableDataLoader", "RingSlot", "owned_batch"]
