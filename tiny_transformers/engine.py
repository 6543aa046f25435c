"""One training epoch and one evaluation pass, as plain loops over Accelerate-prepared objects."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from .augment import BatchAugment
from .checkpoint import TrainerState
from .config import Plan
from .metrics import TopKAccuracy
from .models import unwrap_logits
from .sampler import derive_seed, window_sample_count


@contextlib.contextmanager
def keyed_rng(device: torch.device, *key: int, python: bool = True, numpy: bool = True) -> Iterator[None]:
    """Seed Python, NumPy and torch (CPU and ``device``) from ``key`` inside the block, restoring them after.

    Mixup, CutMix, random erasing and drop path draw from these global generators; keying them by
    (seed, epoch, global micro-batch) makes every draw independent of process count and of resumes.
    ``python=False`` / ``numpy=False`` leave that generator alone, for blocks that draw nothing from it:
    saving and restoring NumPy's state alone costs ~0.1 ms, paid on every micro-batch.

    >>> with keyed_rng(torch.device("cpu"), 0, 1): a = torch.rand(1)
    >>> with keyed_rng(torch.device("cpu"), 0, 1, numpy=False): b = torch.rand(1)
    >>> torch.equal(a, b)
    True
    """
    seed = derive_seed(*key)
    py_state = random.getstate() if python else None
    np_state = np.random.get_state() if numpy else None
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if python:
            random.seed(seed)
        if numpy:
            np.random.seed(seed % 2**32)
        # The draws of torch.manual_seed(seed), without its cost: on a CUDA build it also queues seeds for
        # every other backend, formatting a stack trace each time (~0.15 ms, run once per micro-batch).
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)  # the current device: the one this process trains on
        try:
            yield
        finally:
            if python:
                random.setstate(py_state)
            if numpy:
                np.random.set_state(np_state)


def train_steps(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: torch.utils.data.DataLoader,
    augment: BatchAugment,
    plan: Plan,
    state: TrainerState,
    seed: int,
    progress: bool = True,
) -> Iterator[int]:
    """Run the optimizer steps of ``state.epoch`` from ``state.step_in_epoch``, yielding after each update.

    ``state`` is up to date at every yield (its step counters and its running loss), so the caller can save a
    checkpoint or stop between two updates; the epoch is over when the generator is exhausted.

    Each process runs ``plan.accumulation_steps`` micro-batches per optimizer step. A micro-batch's loss is
    the sum of its per-image losses divided by the images in the whole window (all processes), times the
    process count that DDP's gradient averaging divides by again: every image weighs 1/window, whatever
    the layout.

    >>> for step in train_steps(accelerator, model, optimizer, scheduler, loader, augment, plan, state, 0):
    ...     pass  # doctest: +SKIP
    """
    model.train()
    n, k = plan.num_processes, plan.accumulation_steps
    rank, device = accelerator.process_index, accelerator.device
    batches = iter(loader)
    bar = tqdm(
        total=plan.steps_per_epoch,
        initial=state.step_in_epoch,
        desc=f"epoch {state.epoch + 1}",
        disable=not (progress and accelerator.is_main_process),
        dynamic_ncols=True,
    )
    started, images_seen, shown = time.perf_counter(), 0, 0.0
    try:
        for step in range(state.step_in_epoch, plan.steps_per_epoch):
            window_images = window_sample_count(plan, step)
            for j in range(k):
                g = (step * k + j) * n + rank  # global micro-batch index (see sampler.py)
                real = g < plan.micro_batches_per_epoch
                if not real and n == 1:
                    break
                if real:
                    images, labels = next(batches)
                    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                else:
                    # The epoch's last window is short: a process without data still runs a zero-weight pass so
                    # that every process joins DDP's gradient all-reduce the same number of times.
                    images = torch.zeros(1, 3, augment.image_size, augment.image_size, dtype=torch.uint8, device=device)
                    labels = torch.zeros(1, dtype=torch.long, device=device)
                # Gradients are all-reduced once per update: on the window's last micro-batch.
                context = contextlib.nullcontext() if j == k - 1 else accelerator.no_sync(model)
                with context, keyed_rng(device, seed, state.epoch, g, **augment.host_generators):
                    x, targets = augment.train(images, labels)
                    with accelerator.autocast():
                        logits = unwrap_logits(model(x))
                    per_image = loss_fn_per_image(logits.float(), targets)
                    weight = (n / window_images) if real else 0.0
                    accelerator.backward(per_image.sum() * weight)
                if real:
                    state.loss.add(per_image.sum(), len(labels), state.global_step)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            state.step_in_epoch, state.global_step = step + 1, state.global_step + 1
            images_seen += window_images
            now = time.perf_counter()
            if not bar.disable and now - shown >= 1.0:  # the loss shown costs a sync: once a second is plenty
                shown = now
                bar.set_postfix(
                    loss=f"{state.loss.peek():.4f}",
                    lr=f"{scheduler.get_last_lr()[0]:.2e}",
                    img_s=f"{images_seen / (now - started):.1f}",
                    refresh=False,  # tqdm's default redraws on every call; update() redraws at its own pace
                )
            bar.update(1)
            yield state.global_step
    finally:
        bar.close()


def loss_fn_per_image(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Soft-target cross-entropy per image (timm's SoftTargetCrossEntropy before its mean)."""
    return torch.sum(-soft_targets * F.log_softmax(logits, dim=-1), dim=-1)


@torch.no_grad()
def evaluate(
    accelerator: Accelerator,
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    augment: BatchAugment,
    num_classes: int,
    progress: bool = True,
    collect_predictions: bool = False,
) -> dict:
    """Top-1, top-5 (percent) and mean cross-entropy over the whole eval split, each image counted once.

    ``gather_for_metrics`` drops the duplicates that even sharding adds on the last batch, so the
    count equals the split's size on any number of processes. With ``collect_predictions`` the
    result also holds ``predictions`` and ``references`` (top-1 class per image, in split order).
    """
    model.eval()
    metric = TopKAccuracy(k=min(5, num_classes))
    top1_predictions, references = [], []
    for images, labels in tqdm(
        loader, desc="evaluate", disable=not (progress and accelerator.is_main_process), dynamic_ncols=True, leave=False
    ):
        x = augment.resize_normalize(images)
        with accelerator.autocast():
            logits = unwrap_logits(model(x)).float()
        losses = F.cross_entropy(logits, labels, reduction="none")
        topk = logits.topk(metric.k, dim=-1).indices
        topk, labels, losses = accelerator.gather_for_metrics((topk, labels, losses))
        if accelerator.is_main_process:
            metric.add_batch(
                predictions=topk.cpu().numpy(), references=labels.cpu().numpy(), losses=losses.cpu().numpy()
            )
        if collect_predictions:
            top1_predictions.append(topk[:, 0].cpu())
            references.append(labels.cpu())
    result = {}
    if accelerator.is_main_process:
        computed = metric.compute()
        result = {
            "top1": computed["top1"],
            "top5": computed[f"top{metric.k}"],
            "loss": computed["loss"],
            "count": computed["count"],
        }
    result = _broadcast(accelerator, result)
    if collect_predictions:
        result["predictions"] = torch.cat(top1_predictions).tolist() if top1_predictions else []
        result["references"] = torch.cat(references).tolist() if references else []
    model.train()
    return result


def _broadcast(accelerator: Accelerator, result: dict) -> dict:
    """The main process's metrics on every process (so each returns the same FinetuneResult)."""
    if accelerator.num_processes == 1:
        return result
    from accelerate.utils import broadcast_object_list

    payload = [result]
    broadcast_object_list(payload, from_process=0)
    return payload[0]
