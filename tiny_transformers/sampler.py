"""The order in which training images reach each process: the same global order on 1 or N processes.

An epoch is a seeded permutation of the training set cut into global micro-batches. Optimizer step ``s`` consumes
global micro-batches ``[s*k*n, (s+1)*k*n)`` (k accumulation steps, n processes), rank ``r`` those with ``g % n == r``:
1 process with accumulation k*n sees what n processes with k see, in the same steps, and a resume starts at any step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from .plan import Plan


def derive_seed(*key: int) -> int:
    """A 63-bit seed from integers, e.g. (seed, epoch, micro-batch): independent streams, no global state.

    >>> derive_seed(0, 1) == derive_seed(0, 1) != derive_seed(1, 0)
    True
    """
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0] >> 1)


class MicroBatchSampler(Sampler[list[int]]):
    """Yields this process's micro-batches (lists of dataset indices) from ``start_step`` of ``epoch``.

    >>> from tiny_transformers.config import FinetuneConfig, TrainConfig
    >>> plan = Plan.build(FinetuneConfig(train=TrainConfig(batch_size=4, micro_batch_size=2)), 2, train_samples=8)
    >>> [len(b) for b in MicroBatchSampler(plan, rank=0, seed=0, epoch=0)]
    [2, 2]
    """

    def __init__(self, plan: Plan, rank: int, seed: int, epoch: int, start_step: int = 0) -> None:
        self.plan = plan
        self.rank = rank
        self.seed = seed
        self.epoch = epoch
        self.start_step = start_step

    def move_to(self, epoch: int, start_step: int = 0) -> None:
        """Yield ``epoch``'s micro-batches from ``start_step`` on at the next iteration (a loader kept across epochs;
        tests/test_sampler.py)."""
        self.epoch, self.start_step = epoch, start_step

    def global_indices(self) -> list[int]:
        """Global micro-batch indices this process handles, in order."""
        window = self.plan.accumulation_steps * self.plan.num_processes
        first = self.start_step * window + self.rank
        return list(range(first, self.plan.micro_batches_per_epoch, self.plan.num_processes))

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        order = torch.randperm(self.plan.train_samples, generator=generator).tolist()
        m = self.plan.micro_batch_size
        for g in self.global_indices():
            yield order[g * m : (g + 1) * m]

    def __len__(self) -> int:
        return len(self.global_indices())


def window_sample_count(plan: Plan, step: int) -> int:
    """Images in optimizer step ``step`` of an epoch, over all processes (the last window may be short)."""
    window = plan.accumulation_steps * plan.num_processes
    first = step * window * plan.micro_batch_size
    last = min((step + 1) * window * plan.micro_batch_size, plan.images_per_epoch)
    return max(0, last - first)
