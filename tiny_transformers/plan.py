"""Accumulation steps, micro-batches and optimizer steps per epoch and the schedule's length, derived once."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import FinetuneConfig
from .errors import ConfigError


@dataclass(frozen=True)
class Plan:
    """Numbers derived once from the config, the process count and the data size; printed at start."""

    num_processes: int
    micro_batch_size: int  # per process
    accumulation_steps: int  # micro-batches per process per optimizer update
    effective_batch_size: int  # images per optimizer update, all processes
    train_samples: int
    micro_batches_per_epoch: int  # over all processes; the last may be partial
    steps_per_epoch: int  # optimizer updates; the last window of an epoch may be short
    total_steps: int  # length of the cosine schedule

    @classmethod
    def build(cls, config: FinetuneConfig, num_processes: int, train_samples: int) -> Plan:
        t = config.train
        accumulation = t.batch_size // (t.micro_batch_size * num_processes)
        micro_batches = (math.floor if config.data.drop_last else math.ceil)(train_samples / t.micro_batch_size)
        if micro_batches == 0:
            raise ConfigError(
                f"data.drop_last drops every image: {train_samples} training images make no full micro-batch of "
                f"{t.micro_batch_size}; lower train.micro_batch_size or use --data.drop_last false."
            )
        # ceil(batches / accumulation), as the official code's T_max: the last short window still steps.
        steps = math.ceil(micro_batches / (accumulation * num_processes))
        return cls(
            num_processes=num_processes,
            micro_batch_size=t.micro_batch_size,
            accumulation_steps=accumulation,
            effective_batch_size=t.batch_size,
            train_samples=train_samples,
            micro_batches_per_epoch=micro_batches,
            steps_per_epoch=steps,
            total_steps=steps * t.epochs,
        )

    @property
    def images_per_epoch(self) -> int:
        """Training images an epoch uses: all of them, less a partial last micro-batch with data.drop_last."""
        return min(self.train_samples, self.micro_batches_per_epoch * self.micro_batch_size)

    def describe(self) -> str:
        dropped = self.train_samples - self.images_per_epoch
        return (
            f"{self.num_processes} process(es) x micro-batch {self.micro_batch_size} x "
            f"{self.accumulation_steps} accumulation step(s) = effective batch {self.effective_batch_size}; "
            f"{self.train_samples} training images"
            + (f" ({dropped} dropped per epoch: data.drop_last)" if dropped else "")
            + f" = {self.steps_per_epoch} optimizer steps per epoch, {self.total_steps} in all"
        )
