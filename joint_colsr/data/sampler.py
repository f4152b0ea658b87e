"""An epoch sampler whose order and per-sample randomness are pure functions of (seed, epoch, index).

Each yielded element is ``(index, sample_seed)``: the dataset draws every random choice
(crop, flip) from ``sample_seed`` alone, so augmentation does not depend on which worker
process draws the sample, on how many workers there are, or on the process's history.
That is what makes a resumed run the same experiment as an uninterrupted one.

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
    """A 32-bit seed for one sample of one epoch."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1)[0])


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

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # Consumed when iteration starts, not when it ends: a loader may stop early.
        resume, self.resume_at = self.resume_at, None
        start = resume[1] if resume is not None and resume[0] == self.epoch else 0
        epoch = self.epoch
        for i in self.epoch_indices()[start:]:
            yield int(i), sample_seed(self.seed, epoch, int(i))

    def __len__(self) -> int:
        # The full epoch, also when resuming mid-epoch: Lightning counts batches from the
        # restored position and ends the epoch when the iterator runs out.
        return self.num_per_rank()
