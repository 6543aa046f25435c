"""``finetune(config)``: the one training loop, from one CPU to many GPUs, read top to bottom.

build (data, model, optimizer, schedule) -> ``accelerator.prepare`` -> resume -> epochs of
(train, evaluate, checkpoint, best/) -> last/ -> result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm.optim
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from .augment import BatchAugment
from .checkpoint import (
    TrainerState,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .config import AugmentConfig, FinetuneConfig, OptimConfig, Plan, validate, world_size_from_env
from .data import DataBundle, collate, eval_transform, load_data, train_transform
from .engine import evaluate, train_one_epoch
from .errors import CheckpointError, ConfigError, DataError, TinyTransformersError
from .hub import publish_after_training, push_warnings
from .models import (
    build_model,
    build_trained_model,
    count_parameters,
    describe_trained_weights,
    normalization,
    save_for_timm,
)
from .report import write_run_report
from .sampler import MicroBatchSampler


class TrainingInterrupted(TinyTransformersError):
    """SIGTERM/SIGINT arrived; a checkpoint was written and the message says how to resume."""


@dataclass
class FinetuneResult:
    """What a run measured. Accuracies are percentages (0-100) on the eval split."""

    top1: float  # after the last epoch
    top5: float
    loss: float  # eval cross-entropy after the last epoch
    best_top1: float
    epochs_completed: int
    output_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per epoch, as in metrics.jsonl


def build_optimizer(cfg: OptimConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer factory over the trainable parameters (no weight decay on biases and norms)."""
    name = "adamw" if cfg.name == "adamw" else ("sgd" if cfg.nesterov else "momentum")  # timm's 'sgd' is Nesterov
    kwargs = {"momentum": cfg.momentum} if cfg.name == "sgd" else {}
    if cfg.fused:
        kwargs["fused"] = True  # passed through to torch's AdamW/SGD: one kernel for all parameters
    return timm.optim.create_optimizer_v2(model, opt=name, lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)


@contextlib.contextmanager
def _stop_signals() -> Iterator[dict[str, str | None]]:
    """Record SIGTERM/SIGINT instead of dying mid-step; previous handlers come back on exit."""
    received: dict[str, str | None] = {"signal": None}

    def handler(signum, _frame):
        received["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the whole log from the run's history (restored with each checkpoint), atomically: a run
    killed after logging an epoch but before checkpointing it logs that epoch once, not twice, on resume."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text("".join(json.dumps(record) + "\n" for record in history))
    temporary.replace(path)


def _check_process_precision(mixed_precision: str) -> None:
    """Refuse, with the fix, a precision other than the one this Python process already trained or evaluated in.

    Accelerate fixes the autocast precision once per process; a second ``finetune()`` in a notebook with
    another ``train.mixed_precision`` would otherwise fail deep inside ``Accelerator()`` after the data loaded.
    """
    from accelerate.state import AcceleratorState, is_initialized

    current = AcceleratorState().mixed_precision if is_initialized() else mixed_precision
    if current != mixed_precision:
        raise ConfigError(
            f"train.mixed_precision '{mixed_precision}' differs from the '{current}' this Python process already "
            f"runs with, and Accelerate fixes it once per process; use '{current}' here or run this in a new process "
            "(e.g. restart the notebook kernel)."
        )


def finetune(config: FinetuneConfig, command: str | None = None) -> FinetuneResult:
    """Fine-tune ``config.model`` on ``config.data`` and return what it measured; resumable and multi-process.

    Works the same from a script under ``accelerate launch``, from ``python``, and from a notebook.
    ``command`` is the command line that started the run, printed in the message of a stopped run as the way
    to resume it (``run`` and the ``tiny-transformers`` command pass their own).

    >>> from tiny_transformers import FinetuneConfig, finetune
    >>> cfg = FinetuneConfig()
    >>> cfg.model.name, cfg.data.source, cfg.train.epochs = "swin_l", "./tiny-imagenet-200", 1
    >>> result = finetune(cfg)  # doctest: +SKIP
    >>> result.top1  # doctest: +SKIP
    91.2
    """
    validate(config)  # every check that needs no data, before any process group starts
    _check_process_precision(config.train.mixed_precision)
    output_dir = Path(config.train.output_dir).expanduser().resolve()
    resume_from = find_resume_checkpoint(config, output_dir)
    data: DataBundle = load_data(config.data)
    plan = Plan.build(config, world_size_from_env(), len(data.train))

    set_seed(config.train.seed)  # the new head's initialisation, identical on every process
    model = build_model(config.model, data.num_classes, config.data.image_size)
    if config.train.compile:
        model.compile()  # in place: same module, same state_dict keys, so checkpoints and exports are unchanged
    mean, std = normalization(model, config.data.normalization)
    optimizer = build_optimizer(config.optim, model)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=plan.total_steps, eta_min=config.optim.min_lr
    )

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.train.mixed_precision,
        log_with=list(config.train.log_with) or None,
        project_dir=str(output_dir),
    )
    eval_loader = _eval_loader(data, config, config.data.native_size, accelerator)
    # The scheduler is not prepared: Accelerate would step it once per process, and the schedule must
    # advance once per optimizer update whatever the process count. It is still checkpointed.
    model, optimizer, eval_loader = accelerator.prepare(model, optimizer, eval_loader)
    accelerator.register_for_checkpointing(scheduler)
    augment = BatchAugment(config.data.image_size, mean, std, data.num_classes, config.augment, accelerator.device)
    train_data = data.train.with_transform(
        train_transform(config.data.native_size, config.augment.randaugment_ops, config.augment.randaugment_magnitude)
    )

    state = TrainerState()
    if resume_from is not None:
        state = _resume(accelerator, resume_from, config, output_dir)
    total, trainable = count_parameters(accelerator.unwrap_model(model))
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(config.to_json())
        (output_dir / "labels.json").write_text(
            json.dumps({"class_ids": data.class_ids, "class_names": data.class_names})
        )
    accelerator.print(
        f"tiny_transformers: {config.model.name} ({_count(total)} parameters, {_count(trainable)} trainable, "
        f"{config.model.train_mode} mode) on {data.source_kind} data: {len(data.train)} train / {len(data.eval)} eval "
        f"images, {data.num_classes} classes\n{plan.describe()}\noutputs: {output_dir}"
        + (
            f"\nresuming from {resume_from.name}: epoch {state.epoch + 1}, step {state.step_in_epoch}"
            if resume_from
            else ""
        )
    )
    accelerator.init_trackers("tiny_transformers", config={k: str(v) for k, v in config.to_dict().items()})
    for warning in push_warnings(output_dir, config.hub) if accelerator.is_main_process else []:
        print(f"warning: {warning}", file=sys.stderr, flush=True)

    with _stop_signals() as received:

        def after_step(state: TrainerState, settle: Callable[[], None]) -> bool:
            stopping = received["signal"] is not None
            if accelerator.num_processes > 1:  # any process signalled: all stop together (one device round trip)
                stop = torch.tensor(float(stopping), device=accelerator.device)
                stopping = accelerator.reduce(stop, reduction="sum").item() > 0
            every = config.train.checkpoint_every
            if stopping or (every and state.global_step % every == 0 and state.step_in_epoch < plan.steps_per_epoch):
                settle()  # the loss still on the device goes into the state the checkpoint saves
                save_checkpoint(accelerator, output_dir, state, config, config.train.keep_checkpoints)
            return stopping

        for epoch in range(state.epoch, config.train.epochs):
            state.epoch = epoch
            sampler = MicroBatchSampler(plan, accelerator.process_index, config.train.seed, epoch, state.step_in_epoch)
            loader = DataLoader(
                train_data,
                batch_sampler=sampler,
                num_workers=config.data.num_workers,
                collate_fn=collate,
                pin_memory=accelerator.device.type == "cuda",
            )
            started = time.perf_counter()
            finished = train_one_epoch(
                accelerator,
                model,
                optimizer,
                scheduler,
                loader,
                augment,
                plan,
                state,
                config.train.seed,
                after_step,
                progress=config.train.progress,
            )
            if not finished or received["signal"]:
                accelerator.end_training()
                raise TrainingInterrupted(
                    f"Training stopped by {received['signal'] or 'a signal'} at epoch {epoch + 1}, step "
                    f"{state.step_in_epoch}; a checkpoint is in {output_dir / 'checkpoints'}. Resume with "
                    f"{command or 'the same command again'} (train.resume auto continues from it)."
                )
            metrics = evaluate(accelerator, model, eval_loader, augment, data.num_classes, config.train.progress)
            record = {
                "epoch": epoch + 1,
                "step": state.global_step,
                "train_loss": _gathered_mean(accelerator, state.running_loss_sum, state.running_samples),
                "eval_loss": metrics["loss"],
                "top1": metrics["top1"],
                "top5": metrics["top5"],
                "lr": scheduler.get_last_lr()[0],
                "epoch_seconds": time.perf_counter() - started,
            }
            improved = record["top1"] > state.best_top1
            state.best_top1 = max(state.best_top1, record["top1"])
            state.history.append(record)
            state.epoch, state.step_in_epoch = epoch + 1, 0
            state.running_loss_sum, state.running_samples = 0.0, 0
            accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=state.global_step)
            accelerator.print(
                f"epoch {epoch + 1}/{config.train.epochs}: train loss {record['train_loss']:.4f}, eval loss "
                f"{record['eval_loss']:.4f}, top-1 {record['top1']:.2f}%, top-5 {record['top5']:.2f}%"
            )
            if accelerator.is_main_process:
                _write_metrics(output_dir / "metrics.jsonl", state.history)
                if improved:
                    _export(accelerator, model, output_dir / "best", data, config, mean, std)
            save_checkpoint(accelerator, output_dir, state, config, config.train.keep_checkpoints)
            hub = config.hub
            if hub.push and hub.strategy == "epoch" and epoch + 1 < config.train.epochs and accelerator.is_main_process:
                if hub.weights == "last":  # the pushed weights must be this epoch's, as the card's numbers are
                    _export(accelerator, model, output_dir / "last", data, config, mean, std)
                publish_after_training(output_dir, hub)  # prints why and how to retry on failure; never raises

    if accelerator.is_main_process:
        _export(accelerator, model, output_dir / "last", data, config, mean, std)
        write_run_report(
            output_dir,
            config,
            state.history,
            accelerator.unwrap_model(model),
            data.eval,
            data.class_names,
            augment.resize_normalize,
            accelerator.autocast,
        )
        if config.hub.push:
            publish_after_training(output_dir, config.hub)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    last = (
        state.history[-1] if state.history else {"top1": float("nan"), "top5": float("nan"), "eval_loss": float("nan")}
    )
    accelerator.print(f"done: top-1 {last['top1']:.2f}%, best top-1 {state.best_top1:.2f}%; outputs in {output_dir}")
    return FinetuneResult(
        top1=last["top1"],
        top5=last["top5"],
        loss=last["eval_loss"],
        best_top1=state.best_top1,
        epochs_completed=len(state.history),
        output_dir=output_dir,
        history=list(state.history),
    )


def _resume(accelerator: Accelerator, folder: Path, config: FinetuneConfig, output_dir: Path) -> TrainerState:
    """Load ``folder``; with train.resume auto, fall back to older checkpoints when the newest is unreadable."""
    candidates = [folder]
    if config.train.resume == "auto":
        candidates += [p for p in reversed(list_checkpoints(output_dir)) if p != folder]
    for candidate in candidates[:-1]:
        try:
            return load_checkpoint(accelerator, candidate)
        except CheckpointError as error:
            accelerator.print(f"warning: {error} Falling back to the previous checkpoint.")
    return load_checkpoint(accelerator, candidates[-1])


def _eval_loader(data: DataBundle, config: FinetuneConfig, native_size: int, accelerator: Accelerator) -> DataLoader:
    """The eval split in order, decoded to ``native_size`` uint8 (not yet prepared by Accelerate)."""
    return DataLoader(
        data.eval.with_transform(eval_transform(native_size)),
        batch_size=config.train.eval_batch_size or config.train.micro_batch_size,
        num_workers=config.data.num_workers,
        collate_fn=collate,
        pin_memory=accelerator.device.type == "cuda",
    )


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _gathered_mean(accelerator: Accelerator, total: float, count: int) -> float:
    sums = accelerator.reduce(
        torch.tensor([total, float(count)], dtype=torch.float64, device=accelerator.device), "sum"
    )
    return (sums[0] / sums[1].clamp(min=1)).item()


def _export(accelerator: Accelerator, model, folder: Path, data: DataBundle, config: FinetuneConfig, mean, std) -> None:
    save_for_timm(
        accelerator.unwrap_model(model),
        folder,
        data.class_ids,
        data.class_names,
        config.data.image_size,
        mean,
        std,
        native_size=config.data.native_size,
        mixed_precision=config.train.mixed_precision,
    )


def evaluate_checkpoint(config: FinetuneConfig, mixed_precision: str | None = None) -> dict[str, Any]:
    """Top-1, top-5 and loss of the trained model at ``config.model.checkpoint`` on ``config.data``'s eval split.

    ``mixed_precision`` (``bf16``, ``fp16``, ``no``) is the autocast to evaluate under; by default the one the
    weights were trained with, as their folder records it (fp32 on a machine without CUDA for an fp16 run), so
    the run's own numbers come back (bf16 on a model trained in fp32 moves the loss and can flip a top-1).
    ``config.train.mixed_precision`` is used only when the weights record none (plain timm folders).

    ``model.checkpoint`` is an exported folder (``best/``, ``last/``, ``export/``), a training checkpoint
    folder or ``hf-hub:owner/name``. The result also holds per-image ``predictions`` and ``references`` and
    the ``class_ids``/``class_names`` they index.

    Uses the image size and normalization the model was trained with; refuses data whose classes differ
    from the ones the head was trained on (that would be a silently wrong score).

    >>> cfg = FinetuneConfig()
    >>> cfg.model.checkpoint, cfg.data.source = "outputs/run/best", "./tiny-imagenet-200"
    >>> evaluate_checkpoint(cfg)["top1"]  # doctest: +SKIP
    86.5
    """
    if not config.model.checkpoint:
        raise ConfigError(
            "evaluate needs --model.checkpoint: an exported folder (e.g. outputs/run/best) or a checkpoint."
        )
    weights = describe_trained_weights(config.model.checkpoint)
    precision = mixed_precision or _evaluation_precision(weights.mixed_precision) or config.train.mixed_precision
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, mixed_precision=precision))
    validate(config)
    _check_process_precision(precision)
    data = load_data(config.data)
    if weights.class_ids is not None and list(weights.class_ids) != list(data.class_ids):
        raise DataError(
            f"The classes of data.source '{config.data.source}' ({data.num_classes}, starting {data.class_ids[:3]}) are "
            f"not the {len(weights.class_ids)} classes model.checkpoint was trained on (starting "
            f"{weights.class_ids[:3]}); evaluate on the dataset it was trained with."
        )
    model = build_trained_model(weights, data.num_classes)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
    # decoded as in training: the run recorded its native size (64 for Tiny ImageNet)
    loader = _eval_loader(data, config, weights.native_size or config.data.native_size, accelerator)
    model, loader = accelerator.prepare(model, loader)
    augment = BatchAugment(
        weights.image_size, weights.mean, weights.std, data.num_classes, AugmentConfig(), accelerator.device
    )
    result = evaluate(
        accelerator, model, loader, augment, data.num_classes, config.train.progress, collect_predictions=True
    )
    result["class_ids"] = data.class_ids
    result["class_names"] = data.class_names  # for the per-class table (report.per_class_accuracy)
    return result


def _evaluation_precision(trained: str | None) -> str | None:
    """The autocast to evaluate a model trained under ``trained`` in: the same, except fp16 (CUDA only) on a CPU."""
    if trained == "fp16" and not torch.cuda.is_available():
        return "no"
    return trained
