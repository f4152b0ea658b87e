"""An epoch sampler whose order and per-sample randomness are pure functions of (seed, epoch, index).

Each yielded element is ``(index, sample_seed)``: the dataset draws every random choice
(crop, flip) from ``sample_seed`` alone, so augmentation does not depend on which worker
process draws the sample, on how many workers there are, or on the process's history.
That is what makes a resumed run the same experiment as an uninterrupted one.

Two draws of that randomness exist. The photo-file path (``ReferenceImages``) seeds a numpy
generator per sample from :func:`sample_seed` (one ``SeedSequence`` per sample: ~10 us,
fine next to a JPEG decode, and it keeps the crops every published number was trained
on). The cache path draws a whole batch at once with :func:`sample_keys` and
:func:`sample_uniforms`: a counter-based hash (splitmix64's finalizer in numpy
``uint64``) of ``(seed, epoch, index, draw)``, no per-sample objects.

Under DDP each rank takes a distinct stride of the same permutation (padded, like
``DistributedSampler``, so every rank runs the same number of steps); Lightning's own
sampler replacement is switched off (``trainer.use_distributed_sampler=false``) because
this sampler already shards.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample of one epoch (the photo-file path's draw)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1)[0])


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise on ``uint64`` (a bijection that scrambles every bit)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


def sample_keys(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """64-bit keys of samples ``indices`` of ``epoch`` (the cache path's per-sample seeds), vectorised.

    Args:
        seed: base seed of the run (any int; taken modulo 2**64).
        epoch: epoch number (>= 0).
        indices: ``(B,)`` integer sample indices (>= 0).

    Returns:
        ``(B,)`` ``uint64``: a pure function of ``(seed, epoch, index)``; distinct samples get
        distinct keys (a bijection of ``index`` for a fixed seed and epoch).
    """
    indices = np.asarray(indices)
    if indices.ndim != 1 or (indices.size and (not np.issubdtype(indices.dtype, np.integer) or indices.min() < 0)):
        raise ValueError(f"indices must be a 1-d array of integers >= 0, got {indices.dtype} {indices.shape}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    with np.errstate(over="ignore"):
        base = _mix64(np.array([int(seed) % 2**64], np.uint64) + _GOLDEN)
        base = _mix64(base ^ (np.uint64(epoch) * _GOLDEN))
        return _mix64(base ^ indices.astype(np.uint64))


def sample_uniforms(keys: np.ndarray, draws: int, first: int = 0) -> np.ndarray:
    """``(B, draws)`` float64 uniforms in [0, 1): draw ``d`` of sample ``b`` is a hash of ``(keys[b], d)``.

    Each uniform has 53 random bits. Adding draws later leaves the earlier ones unchanged.
    ``first``: start at draw ``first`` (the columns of ``sample_uniforms(keys, first + draws)``
    from ``first`` on, without computing the ones before).
    """
    keys = np.asarray(keys, np.uint64)
    if keys.ndim != 1 or draws < 0 or first < 0:
        raise ValueError(f"keys must be 1-d uint64 and draws, first >= 0, got {keys.shape}, {draws} and {first}")
    with np.errstate(over="ignore"):
        counters = (np.arange(first + 1, first + draws + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        bits = _mix64(keys[:, None] + counters)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


class EpochSeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, sample_seed)`` pairs; see the module docstring.

    Args:
        length: dataset length.
        shuffle: permute each epoch (training) or keep order (validation).
        seed: base seed of the run.
        rank, world_size: this process's shard (1 process: 0, 1).
        drop_last: drop the tail instead of padding so ranks see equal counts.
    """

    def __init__(self, length: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, drop_last: bool = False) -> None:
        if length < 1:
            raise ValueError(f"cannot sample from an empty dataset (length={length})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.length = length
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        #: ``(epoch, samples)`` when resuming mid-epoch: the first iteration of that epoch
        #: skips the samples already trained on; any other epoch, and any later iteration,
        #: starts from 0. Bound to the epoch because Lightning may never iterate the resumed
        #: epoch at all (a checkpoint written on its last batch).
        self.resume_at: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at the start of every epoch."""
        self.epoch = int(epoch)

    def num_per_rank(self) -> int:
        if self.drop_last:
            return self.length // self.world_size
        return math.ceil(self.length / self.world_size)

    def epoch_indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, in order."""
        if self.shuffle:
            order = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch]).permutation(self.length)
        else:
            order = np.arange(self.length)
        total = self.num_per_rank() * self.world_size
        if total > self.length:
            order = np.concatenate([order, order[: total - self.length]])
        return order[:total][self.rank :: self.world_size]

    def resume(self, epoch: int, samples_done: int) -> None:
        """Skip the first ``samples_done`` samples of ``epoch`` (once)."""
        self.resume_at = (int(epoch), min(int(samples_done), self.num_per_rank()))

    def take_epoch(self) -> tuple[int, np.ndarray]:
        """``(epoch, indices)`` still to train on in the current epoch: :meth:`epoch_indices`
        after a pending :meth:`resume` offset, which this consumes (call it when iteration
        starts, not when it ends: a loader may stop early)."""
        resume, self.resume_at = self.resume_at, None
        start = resume[1] if resume is not None and resume[0] == self.epoch else 0
        return self.epoch, self.epoch_indices()[start:]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, indices = self.take_epoch()
        for i in indices:
            yield int(i), sample_seed(self.seed, epoch, int(i))

    def __len__(self) -> int:
        # The full epoch, also when resuming mid-epoch: Lightning counts batches from the
        # restored position and ends the epoch when the iterator runs out.
        return self.num_per_rank()
