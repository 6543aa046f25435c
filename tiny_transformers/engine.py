"""The optimizer steps of one epoch and one evaluation pass, as plain loops over Accelerate-prepared objects."""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .augment import BatchAugment
from .checkpoint import TrainerState
from .config import DistillConfig, FinetuneConfig
from .data import DataBundle, DecodeTransform, collate, worker_options
from .errors import ConfigError
from .features import EvalFeatures, FeatureCache, capture_head_inputs, head_forward, head_logits
from .metrics import TopKScores
from .models import unwrap_logits
from .plan import Plan
from .sampler import derive_seed, window_sample_count


@contextlib.contextmanager
def keyed_rng(device: torch.device, *key: int, python: bool = True, numpy: bool = True) -> Iterator[None]:
    """Seed Python, NumPy and torch (CPU and ``device``) from ``key`` inside the block, restoring them after: keyed by
    (seed, epoch, global micro-batch), augmentation and drop path draw the same on any process count and resume.
    ``python=False`` / ``numpy=False`` skip a generator the block does not draw from (its cost: docs/benchmarks.md).

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
        # torch.manual_seed(seed)'s draws without its per-backend seeding cost (docs/benchmarks.md)
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


class Training(Protocol):
    """What :func:`train_steps` needs of a run (``train.Run`` has it)."""

    accelerator: Accelerator
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm's CosineLRScheduler, stepped with step_update(updates done)
    augment: BatchAugment
    plan: Plan
    state: TrainerState
    config: FinetuneConfig
    ema: nn.Module | None  # timm ModelEmaV3
    teacher: nn.Module | None  # frozen, eval mode
    features: FeatureCache | None  # head mode's kept features (train.cache_features)


def train_steps(run: Training, loader: torch.utils.data.DataLoader) -> Iterator[int]:
    """Run the optimizer steps of ``run.state.epoch`` from ``state.step_in_epoch``, yielding after each update with
    ``state`` up to date (``for _ in train_steps(run, run.train_loader())``: the caller may checkpoint or stop there).

    A micro-batch's loss is its per-image sum divided by the images of the whole window (all processes), times the
    process count that DDP's averaging divides by again: every image weighs 1/window, whatever the layout.
    """
    accelerator, model, state, plan = run.accelerator, run.model, run.state, run.plan
    model.train()
    n, k, rank = plan.num_processes, plan.accumulation_steps, accelerator.process_index
    batches, progress = _micro_batches(run, loader), _Progress(run)
    try:
        for step in range(state.step_in_epoch, plan.steps_per_epoch):
            window_images = window_sample_count(plan, step)
            for j in range(k):
                g = (step * k + j) * n + rank  # global micro-batch index (see sampler.py)
                real = g < plan.micro_batches_per_epoch
                if not real and n == 1:
                    break
                # The epoch's last window is short: a process without data still runs a zero-weight pass so that
                # every process joins DDP's gradient all-reduce the same number of times.
                images, labels, indices = next(batches) if real else _empty_micro_batch(run)
                # Gradients are all-reduced once per update: on the window's last micro-batch.
                context = contextlib.nullcontext() if j == k - 1 else accelerator.no_sync(model)
                with (
                    context,
                    keyed_rng(accelerator.device, run.config.train.seed, state.epoch, g, **run.augment.host_generators),
                ):
                    output, targets, teacher_logits = _forward(run, images, labels, indices)
                    per_image = loss_per_image(output, targets, teacher_logits, run.config.distill)
                    accelerator.backward(per_image.sum() * ((n / window_images) if real else 0.0))
                if real:
                    state.loss.add(per_image.sum(), len(labels), state.global_step)
            _update(run, step)
            progress.advance(window_images)
            yield state.global_step
    finally:
        progress.bar.close()


def _micro_batches(run: Training, loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor, list | None]]:
    """This process's micro-batches on the device, with their rows of the train split for the training feature cache
    (the loader's batch sampler, iterated alongside)."""
    device = run.accelerator.device
    order = iter(loader.batch_sampler) if run.features is not None and run.features.train is not None else None
    host = run.augment.host_randaugment is not None  # timm's RandAugment takes host images
    for images, labels in loader:
        rows = next(order) if order is not None else None
        yield images if host else images.to(device, non_blocking=True), labels.to(device, non_blocking=True), rows


def _empty_micro_batch(run: Training) -> tuple[torch.Tensor, torch.Tensor, None]:
    size, device = run.augment.image_size, run.accelerator.device
    images = torch.zeros(1, 3, size, size, dtype=torch.uint8, device=device)
    return images, torch.zeros(1, dtype=torch.long, device=device), None


def _update(run: Training, step: int) -> None:
    """One optimizer update after the window's micro-batches: clipping, the step, the counters, the lr, the EMA."""
    state, clip = run.state, run.config.optim.clip_grad
    if clip:
        state.loss.add_grad_norm(run.accelerator.clip_grad_norm_(run.model.parameters(), clip))  # norm before
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    state.step_in_epoch, state.global_step = step + 1, state.global_step + 1
    run.scheduler.step_update(state.global_step)  # the lr of the next update
    if run.ema is not None:
        run.ema.update(run.accelerator.unwrap_model(run.model), step=state.global_step)


class _Progress:
    """The epoch's tqdm bar on the main process: loss, lr and images/s, at most once a second (a host-device read)."""

    def __init__(self, run: Training) -> None:
        self.run, self.images, self.shown, self.started = run, 0, 0.0, time.perf_counter()
        self.bar = tqdm(
            total=run.plan.steps_per_epoch,
            initial=run.state.step_in_epoch,
            desc=f"epoch {run.state.epoch + 1}",
            disable=not (run.config.train.progress and run.accelerator.is_main_process),
            dynamic_ncols=True,
        )

    def advance(self, images: int) -> None:
        self.images += images
        now = time.perf_counter()
        if not self.bar.disable and now - self.shown >= 1.0:
            self.shown = now
            self.bar.set_postfix(
                loss=f"{self.run.state.loss.peek_both()[0]:.4f}",
                lr=f"{current_lr(self.run.optimizer):.2e}",
                img_s=f"{self.images / (now - self.started):.1f}",
                refresh=False,  # tqdm's default redraws on every call; update() redraws at its own pace
            )
        self.bar.update(1)


def _forward(run: Training, images: torch.Tensor, labels: torch.Tensor, rows: list | None):
    """The model's output, the soft targets and the teacher's logits of one micro-batch, under the training autocast;
    with the training feature cache, only the head when its inputs are kept, else the whole model, keeping them."""
    accelerator, model, augment = run.accelerator, run.model, run.augment
    cache = run.features.train if rows is not None else None
    kept = cache.lookup(rows) if cache is not None else None
    if kept is not None:
        with accelerator.autocast(), head_forward(accelerator.unwrap_model(model)):
            return model(kept), augment.targets(labels), None
    x, targets = augment.train(images, labels)
    inner = accelerator.unwrap_model(model)
    with accelerator.autocast(), capture_head_inputs(inner, cache is not None) as captured:
        output = model(x)
        if captured is not None:
            cache.keep(inner, rows, captured, output)
        with torch.no_grad():
            teacher_logits = None if run.teacher is None else unwrap_logits(run.teacher(x))
        return output, targets, teacher_logits


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The base learning rate now: the largest group's (with layer decay the head's, at scale 1)."""
    return max(group["lr"] for group in optimizer.param_groups)


def loss_fn_per_image(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Soft-target cross-entropy per image (timm's SoftTargetCrossEntropy before its mean)."""
    return torch.sum(-soft_targets * F.log_softmax(logits, dim=-1), dim=-1)


def loss_per_image(
    output: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    distill: DistillConfig | None = None,
) -> torch.Tensor:
    """The training loss of each image, in float32: soft-target cross-entropy, or with a teacher DeiT's
    ``DistillationLoss`` (the distillation head on the teacher's top-1 class, ``hard``, or its probabilities at
    temperature T, ``soft``: KL x T^2 / classes, as DeiT divides by numel).

    >>> cls, dist = torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 9.0]])
    >>> teacher = torch.tensor([[0.0, 0.0, 5.0]])  # the teacher says class 2
    >>> loss_per_image((cls, dist), torch.full((1, 3), 1 / 3), teacher, DistillConfig(type="hard"))
    tensor([0.5494])
    """
    if teacher_logits is None:
        return loss_fn_per_image(unwrap_logits(output).float(), targets)
    distill = distill or DistillConfig()
    cls, dist = output[0].float(), output[1].float()
    teacher_logits = teacher_logits.float()
    if distill.type == "hard":
        distilled = F.cross_entropy(dist, teacher_logits.argmax(dim=-1), reduction="none")
    else:
        t = distill.temperature
        log_p, log_q = F.log_softmax(dist / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1)
        distilled = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(dim=-1) * t * t / dist.shape[-1]
    return (1 - distill.alpha) * loss_fn_per_image(cls, targets) + distill.alpha * distilled


@torch.no_grad()
def evaluate(
    accelerator: Accelerator,
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    augment: BatchAugment,
    num_classes: int,
    progress: bool = True,
    collect_predictions: bool = False,
    autocast: bool = True,
    features: EvalFeatures | None = None,
    metric: TopKScores | None = None,
) -> dict:
    """Top-1, top-5 (percent) and mean cross-entropy over the whole eval split, each image counted once on any
    number of processes (``gather_for_metrics``).

    ``collect_predictions`` adds ``predictions`` and ``references`` (top-1 per image, in split order);
    ``autocast=False`` evaluates in fp32; ``features`` (head mode's cache): an empty one is filled, a full one runs
    only the head; ``metric`` scores the pass (default :class:`TopKScores`; the ``evaluate`` command's is
    ``metrics.TopKAccuracy``).
    """
    model.eval()
    metric = metric or TopKScores(k=min(5, num_classes))  # on the device: no host read per batch
    top1_predictions, references = [], []
    if features is not None and features.ready:
        batches = _cached_logits(accelerator, model, autocast, features)
    else:
        batches = _model_logits(accelerator, model, loader, augment, autocast, features)
    for logits, labels, kept in tqdm(
        batches,
        total=len(loader),
        desc="evaluate",
        disable=not (progress and accelerator.is_main_process),
        dynamic_ncols=True,
        leave=False,
    ):
        losses = F.cross_entropy(logits, labels, reduction="none")
        topk = logits.topk(metric.k, dim=-1).indices
        if kept is None:
            topk, labels, losses = accelerator.gather_for_metrics((topk, labels, losses))
        else:  # what gather_for_metrics kept of this batch at the first pass
            topk, labels, losses = (t[:kept] for t in accelerator.gather((topk, labels, losses)))
        if features is not None and not features.ready:
            features.kept(len(labels))
        if accelerator.is_main_process:
            metric.add(topk, labels, losses)
        if collect_predictions:
            top1_predictions.append(topk[:, 0])
            references.append(labels)
    if features is not None:
        features.finish()
    computed = metric.compute() if accelerator.is_main_process else {}
    scores = ("top1", f"top{metric.k}", "loss", "count")
    # the main process's scores on every process, so that each returns the same FinetuneResult
    result = broadcast_object_list([dict(zip(("top1", "top5", "loss", "count"), map(computed.get, scores)))])[0]
    if collect_predictions:
        result["predictions"] = torch.cat(top1_predictions).tolist() if top1_predictions else []
        result["references"] = torch.cat(references).tolist() if references else []
    model.train()
    return result


def _model_logits(accelerator, model, loader, augment, autocast, features) -> Iterator[tuple]:
    """(fp32 logits, labels, None) per batch of the loader, through the whole model, keeping head inputs in
    ``features`` (empty)."""
    inner = accelerator.unwrap_model(model)
    if features is not None:
        features.start()
    for images, labels in loader:
        x = augment.resize_normalize(images)
        keeping = features is not None and features.enabled
        precision = accelerator.autocast() if autocast else own_forward(accelerator, model)
        with precision, capture_head_inputs(inner, keeping) as kept:
            output = model(x)
            if keeping:
                features.add(inner, kept, output, labels)
        yield unwrap_logits(output).float(), labels, None


def _cached_logits(accelerator, model, autocast, features) -> Iterator[tuple]:
    """(fp32 logits, labels, rows kept) per batch that the first evaluation kept, through the head alone."""
    inner = accelerator.unwrap_model(model)
    for batch_features, labels, kept in features.batches:
        with accelerator.autocast() if autocast else contextlib.nullcontext():
            logits = unwrap_logits(head_logits(inner, batch_features)).float()
        yield logits, labels, kept


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity (a container, ``taskset``) where the OS reports one."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def loader_workers(num_workers: int | None) -> int:
    """``data.num_workers``, or for None up to 4 loader workers per process within the usable cores this machine's
    processes share (more make torch warn and only contend).

    >>> loader_workers(2), loader_workers(None) == max(1, min(4, usable_cores()))
    (2, True)
    """
    if num_workers is not None:
        return num_workers
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    return max(1, min(4, usable_cores() // local_processes))


def cpu_threads_warnings(num_processes: int) -> list[str]:
    """A warning when one training process computes on the CPU with fewer threads than cores (``accelerate launch``
    sets OMP_NUM_THREADS=1 without a GPU: what it costs, docs/benchmarks.md), else none.

    >>> cpu_threads_warnings(num_processes=2)  # several processes: one thread each is as it should be
    []
    """
    cores = usable_cores()
    threads = torch.get_num_threads()
    if torch.cuda.is_available() or num_processes != 1 or threads >= cores:
        return []
    return [
        f"training on the CPU with {threads} thread(s) of {cores} usable cores (OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; accelerate launch sets 1 where there is no GPU); use them "
        f"with accelerate launch --num_cpu_threads_per_process {cores} ..., or run the recipe with plain python"
    ]


@contextlib.contextmanager
def own_forward(accelerator: Accelerator, model: torch.nn.Module) -> Iterator[None]:
    """Inside the block the prepared ``model`` runs its own forward, without the training autocast
    (``train.eval_precision fp32``).

    ``prepare`` wraps the forward in the run's autocast whatever context the caller sets, and Accelerate's only way
    back (``unwrap_model(keep_fp32_wrapper=False)``) is for good; so the forward it kept (``_original_forward``) is
    put back for the block alone (tested in tests/test_backbone.py: Accelerate fixes the precision once per process).
    """
    inner = accelerator.unwrap_model(model)  # under DDP the wrapper sits on the module inside it
    original = inner.__dict__.get("_original_forward")
    if original is None:
        yield
        return
    wrapped = inner.forward
    inner.forward = original
    try:
        yield
    finally:
        inner.forward = wrapped


def data_loader(
    split: Any, native_size: int, config: FinetuneConfig, accelerator: Accelerator, **order: Any
) -> DataLoader:
    """``split`` decoded to ``native_size`` uint8 on :func:`loader_workers` workers, started once per run; ``order``:
    the loader's ``batch_size`` or ``batch_sampler``."""
    workers = loader_workers(config.data.num_workers)
    return DataLoader(
        split.with_transform(DecodeTransform(native_size)),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=accelerator.device.type == "cuda",
        persistent_workers=workers > 0,
        **worker_options(workers),  # a group signal (SLURM) is the main process's to handle, not a worker's
        **order,
    )


def eval_loader(data: DataBundle, config: FinetuneConfig, native_size: int, accelerator: Accelerator) -> DataLoader:
    """The eval split in order, decoded to ``native_size`` uint8, for :func:`evaluate` (``prepare`` shards it)."""
    batch_size = config.train.eval_batch_size or config.train.micro_batch_size
    return data_loader(data.eval, native_size, config, accelerator, batch_size=batch_size)


def check_process_precision(mixed_precision: str, source: str | None = None, fix: str | None = None) -> None:
    """Refuse, with the fix, a precision other than the one this Python process already runs with (Accelerate fixes
    it once per process: a notebook's second ``finetune()`` would fail deep inside ``Accelerator()``). ``source``
    says where ``mixed_precision`` came from and ``fix`` (``{current}``: the process's) what changes it.
    """
    from accelerate.state import AcceleratorState, is_initialized

    current = AcceleratorState().mixed_precision if is_initialized() else mixed_precision
    if current != mixed_precision:
        raise ConfigError(
            f"{source or f'train.mixed_precision {mixed_precision!r}'} differs from the '{current}' this Python "
            f"process already runs with, and Accelerate fixes it once per process; "
            f"{(fix or 'use {current!r} here').format(current=current)} or run this in a new process (e.g. restart "
            "the notebook kernel)."
        )
