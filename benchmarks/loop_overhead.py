"""2. Loop overhead: finetune() per optimizer step against a bare PyTorch loop."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from tiny_transformers.augment import BatchAugment
from tiny_transformers.config import DataConfig, FinetuneConfig, ModelConfig, TrainConfig
from tiny_transformers.models import IMAGENET_MEAN, IMAGENET_STD
from tiny_transformers.synthetic import write_stanford_folder

from .data_path import OFF
from .machine import fresh_accelerator, threads


def _clocks() -> np.ndarray:
    return np.array([time.perf_counter(), time.process_time()])


class _BareLoop:
    """What a hand-written PyTorch loop does for the same run, one optimizer step per :meth:`step`: the same
    data, model, loss and optimizer arithmetic, and nothing else (no Accelerate, no per-batch seeding, no
    progress bar, no stop-signal check)."""

    def __init__(self, config: FinetuneConfig, num_classes: int) -> None:
        from tiny_transformers.data import DecodeTransform, collate, load_data
        from tiny_transformers.models import build_model
        from tiny_transformers.optim import build_optimizer

        torch.manual_seed(config.train.seed)
        self.model = build_model(config.model, num_classes, config.data.image_size).train()
        self.optimizer = build_optimizer(config.optim, self.model)  # timm's AdamW, finetune()'s parameter groups
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=10_000)
        self.augment = BatchAugment(config.data.image_size, IMAGENET_MEAN, IMAGENET_STD, num_classes, OFF)
        self.accumulation = config.train.batch_size // config.train.micro_batch_size
        self.label_smoothing = config.augment.label_smoothing
        self.loader = DataLoader(
            load_data(config.data).train.with_transform(DecodeTransform(config.data.native_size)),
            batch_size=config.train.micro_batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=config.data.num_workers,
            collate_fn=collate,
        )
        self.batches = iter(self.loader)

    def _next(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)

    def step(self) -> None:
        import torch.nn.functional as F

        for _ in range(self.accumulation):
            images, labels = self._next()
            logits = self.model(self.augment.resize_normalize(images))
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing) / self.accumulation
            loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


@contextlib.contextmanager
def _paired_steps(bare: _BareLoop) -> Iterator[dict[str, list[np.ndarray]]]:
    """Time the optimizer steps of whatever trains inside the block, each paired with one bare-loop step.

    torch's global optimizer-step hook fires after every step of the loop under test; there, one step of
    ``bare`` runs and is timed. The loop's own step is the time from the end of that bare step to its
    next optimizer step. The two sides alternate step by step, so a burst of load from other programs
    on the machine hits both alike. Times are (wall, process CPU) pairs.
    """
    from torch.optim.optimizer import register_optimizer_step_post_hook

    times: dict[str, list[np.ndarray]] = {"library": [], "bare": []}
    last_end: list[np.ndarray | None] = [None]

    def hook(optimizer, *_):
        if optimizer is bare.optimizer:
            return
        started = _clocks()
        if last_end[0] is not None:
            times["library"].append(started - last_end[0])
        bare.step()
        last_end[0] = _clocks()
        times["bare"].append(last_end[0] - started)

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield times
    finally:
        handle.remove()


def loop_overhead(
    model: str = "test_vit",
    image_size: int = 32,
    micro_batch: int = 8,
    accumulation: int = 2,
    steps: int = 20,
    repeats: int = 3,
    num_workers: int = 0,
    skip: int = 2,
    progress: bool = True,
    workdir: Path | str | None = None,
) -> dict[str, Any]:
    """Time per optimizer step of the real :func:`finetune` against a bare PyTorch loop, step by step.

    A step of each side runs in turn (see :func:`_paired_steps`). A step includes loading and decoding its
    micro-batches, forward and backward passes, the optimizer and schedule steps, and for finetune()
    everything it does between steps (per-batch seeding, progress bar, stop-signal check); start-up,
    evaluation and checkpoints happen outside the steps of an epoch and are not counted. Augmentation is
    off on both sides (label smoothing on); CPU, float32, one intra-op thread. ``ratio`` compares the
    medians of process CPU time per step, which other programs on a shared machine inflate least;
    ``ratio_wall`` the medians of wall-clock time. The first ``skip`` steps of each run are warm-up.

    >>> loop_overhead(steps=4, repeats=1, skip=1)["ratio"] > 0  # doctest: +SKIP
    True
    """
    from tiny_transformers.train import finetune

    device = torch.device("cpu")
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="tiny-transformers-bench-"))
    classes = 4
    per_class = math.ceil(micro_batch * accumulation * (steps + 1) / classes)
    source = write_stanford_folder(workdir / "data", classes, per_class)
    library: list[np.ndarray] = []
    bare_steps: list[np.ndarray] = []
    # One intra-op thread: on a shared machine, OpenMP threads waiting for a preempted sibling turn a
    # 20 ms step into seconds now and then, which no median hides.
    with threads(1):
        for repeat in range(repeats):
            config = FinetuneConfig(
                model=ModelConfig(name=model, pretrained=False, train_mode="full"),
                data=DataConfig(source=str(source), image_size=image_size, num_workers=num_workers),
                augment=OFF,
                train=TrainConfig(
                    epochs=1,
                    batch_size=micro_batch * accumulation,
                    micro_batch_size=micro_batch,
                    mixed_precision="no",
                    output_dir=str(workdir / f"run{repeat}"),
                    resume="never",
                    progress=progress,
                ),
            )
            bare = _BareLoop(config, classes)
            fresh_accelerator(device, "no")
            # finetune()'s prints and progress bar go to the null device (written, as to a terminal, not shown).
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                with _paired_steps(bare) as times:
                    finetune(config)
            if len(times["library"]) <= skip:
                raise ValueError(f"only {len(times['library'])} steps were timed; raise steps above {skip + 1}.")
            library.append(np.median(times["library"][skip:], axis=0))
            bare_steps.append(np.median(times["bare"][skip:], axis=0))
    library_wall, library_cpu = np.median(library, axis=0)
    bare_wall, bare_cpu = np.median(bare_steps, axis=0)
    return {
        "model": model,
        "image_size": image_size,
        "micro_batch": micro_batch,
        "accumulation": accumulation,
        "steps": steps,
        "repeats": repeats,
        "num_workers": num_workers,
        "progress_bar": progress,
        "finetune_cpu_seconds_per_step": float(library_cpu),
        "bare_cpu_seconds_per_step": float(bare_cpu),
        "ratio": float(library_cpu / bare_cpu),
        "ratio_per_repeat": [round(float(a[1] / b[1]), 4) for a, b in zip(library, bare_steps)],
        "finetune_wall_seconds_per_step": float(library_wall),
        "bare_wall_seconds_per_step": float(bare_wall),
        "ratio_wall": float(library_wall / bare_wall),
    }
