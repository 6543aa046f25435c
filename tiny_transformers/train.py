"""``finetune(config)``: the one training loop, from one CPU to many GPUs, read top to bottom.

build a run (data, model, optimizer, schedule, accelerator; resumed when a checkpoint exists) -> per epoch: the
optimizer steps (checkpoints and stop signals between them), evaluate, log, save ``best/`` -> finish (``last/``,
the report, the Hub push) -> the result.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader

from .augment import BatchAugment
from .backbone import backbone_in_fp32, fp8_backbone, speed_up_backbone
from .checkpoint import (
    RunningLoss,
    TrainerState,
    find_resume_checkpoint,
    is_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .config import FinetuneConfig, flat_config
from .data import DataBundle, load_data, verify_images
from .engine import (
    check_process_precision,
    cpu_threads_warnings,
    current_lr,
    data_loader,
    eval_loader,
    evaluate,
    train_steps,
)
from .errors import CheckpointError, TrainingDiverged, TrainingInterrupted, raised_on_every_process
from .features import FeatureCache
from .lora import check_targets, is_lora, plain_model, save_adapter
from .models import build_model, check_image_size, check_teacher, count_parameters, normalization
from .optim import build_optimizer, build_schedule
from .plan import Plan
from .publish import BackgroundPublisher, push_warnings
from .report import write_run_report
from .rundir import (
    RESULTS_FILE,
    EpochRecord,
    RunDir,
    RunLock,
    best_record,
    claim,
    ema_is_better,
    epoch_score,
    is_main_launch_process,
    saved_scores,
)
from .sampler import MicroBatchSampler
from .stop import StopSignals
from .validation import validate, world_size_from_env
from .weights import build_teacher, load_probe_head, save_for_timm


@dataclass
class FinetuneResult:
    """What a run measured. Accuracies are percentages (0-100) on the eval split."""

    top1: float  # after the last epoch, of the weights in last/ (the EMA's, with train.ema_decay)
    top5: float
    loss: float  # eval cross-entropy after the last epoch, of last/'s weights
    best_top1: float  # of the weights in best/ (raw or EMA, whichever scored higher)
    epochs_completed: int
    output_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per epoch, as in metrics.jsonl
    weights: str | None = None  # which weights top1/top5/loss (last/) describe: ema or raw; None without an EMA
    best_weights: str | None = None  # which weights best_top1 (best/) describes: ema or raw; None without an EMA


def finetune(config: FinetuneConfig, command: str | None = None) -> FinetuneResult:
    """Fine-tune ``config.model`` on ``config.data`` and return what it measured; resumable and multi-process, the
    same under ``accelerate launch``, ``python`` or a notebook. ``command``: how a stopped run's message says to resume.

    >>> from tiny_transformers import FinetuneConfig, finetune
    >>> cfg = FinetuneConfig()
    >>> cfg.model.name, cfg.data.source, cfg.train.epochs = "swin_l", "./tiny-imagenet-200", 1
    >>> result = finetune(cfg)  # doctest: +SKIP
    >>> result.top1  # doctest: +SKIP
    91.2
    """
    with raised_on_every_process():
        validate(config)  # every check that needs no data, before any process group starts
        check_process_precision(config.train.mixed_precision)
    folder = RunDir(Path(config.train.output_dir).expanduser().resolve())
    pushes = BackgroundPublisher(folder.root, config.hub)  # Hub uploads off the training path; waited for on any exit
    with RunLock(folder, enabled=is_main_launch_process()), StopSignals() as stop, pushes:  # released on any exit
        if finished := _finished_result(folder, config):
            return finished  # nothing to train: resuming would only rewrite last/ and the report
        run = build_run(config, folder)
        accelerator, state, plan, train, hub = run.accelerator, run.state, run.plan, config.train, config.hub
        for epoch in range(state.epoch, train.epochs):
            started, first_step = time.perf_counter(), state.step_in_epoch
            for _ in train_steps(run, run.train_loader()):
                if train.log_with and train.log_every and state.global_step % train.log_every == 0:
                    run.log_steps(state.step_in_epoch - first_step, time.perf_counter() - started)
                stopping = stop.requested(accelerator)
                every, mid_epoch = train.checkpoint_every, state.step_in_epoch < plan.steps_per_epoch
                if stopping or (every and state.global_step % every == 0 and mid_epoch):
                    checkpoint = run.save_checkpoint()  # mid-epoch; the epoch's end is saved after its evaluation
                if stopping:  # preempted: the checkpoint leaves the machine too, within train.preempt_seconds
                    if hub.push and hub.strategy == "checkpoint" and accelerator.is_main_process:
                        pushes.submit(checkpoint)
                    pushes.wait(timeout=stop.seconds_left(train.preempt_seconds))
                    accelerator.wait_for_everyone()  # no process exits first: its launcher would kill the pusher
                    accelerator.end_training()
                    raise TrainingInterrupted(
                        f"Training stopped by {stop.received} at epoch {epoch + 1}, step {state.step_in_epoch}; a "
                        f"checkpoint is in {run.folder.checkpoints}. Resume with "
                        f"{command or 'the same command again'} (train.resume auto continues from it)."
                    )
            record = run.evaluate_epoch(epoch, started)  # raw and EMA weights; stops the run if it diverged
            improved = state.finish_epoch(record.as_dict())
            run.log_epoch(record)
            if accelerator.is_main_process:
                run.folder.write_metrics(state.history)
                if improved:
                    run.export("best", ema=ema_is_better(state.history[-1]))
            checkpoint = run.save_checkpoint()
            if hub.push and hub.strategy != "end" and epoch + 1 < train.epochs and accelerator.is_main_process:
                if hub.weights == "last":  # the pushed weights must be this epoch's, as the card's numbers are
                    run.export("last", ema=run.ema is not None)
                pushes.submit(checkpoint)  # a snapshot now, the upload in the background; never raises
        return finish(run, pushes)


@dataclass
class Run:
    """A training run's parts, built once by :func:`build_run`; model, optimizer and eval loader are prepared."""

    config: FinetuneConfig
    folder: RunDir
    data: DataBundle
    plan: Plan
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler  # per optimizer update: step_update(updates done)
    augment: BatchAugment
    eval_loader: DataLoader
    state: TrainerState
    ema: ModelEmaV3 | None = None  # with train.ema_decay
    teacher: torch.nn.Module | None = None  # with distill.teacher
    loader: DataLoader | None = None  # the training loader, made by the first train_loader() and kept
    features: FeatureCache | None = None  # head mode's kept backbone features (train.cache_features)

    def train_loader(self) -> DataLoader:
        """This process's micro-batches of ``state.epoch``, from ``state.step_in_epoch`` on (see sampler.py), from one
        loader for the whole run: its workers persist between epochs (each start costs a second of imports)."""
        if self.loader is None:
            rank, seed, native = self.accelerator.process_index, self.config.train.seed, self.config.data.native_size
            sampler = MicroBatchSampler(self.plan, rank, seed, self.state.epoch, self.state.step_in_epoch)
            self.loader = data_loader(self.data.train, native, self.config, self.accelerator, batch_sampler=sampler)
        self.loader.batch_sampler.move_to(self.state.epoch, self.state.step_in_epoch)
        return self.loader

    def log_steps(self, steps: int, seconds: float) -> None:
        """The epoch's running train loss, the lr, the gradient norm (with clipping) and images/s to the trackers (one
        host-device read)."""
        loss, grad_norm = self.state.loss.peek_both()
        images = min(steps * self.plan.effective_batch_size, self.plan.images_per_epoch)
        # "step/..." beside the per-epoch tags, so that no tag is logged twice at an epoch's last update
        values = {"step/train_loss": loss, "step/lr": current_lr(self.optimizer), "step/images_per_s": images / seconds}
        if grad_norm is not None:
            values["step/grad_norm"] = grad_norm
        self.accelerator.log(values, step=self.state.global_step)

    def evaluate_epoch(self, epoch: int, started: float) -> EpochRecord:
        """The finished epoch's record for metrics.jsonl (raw weights and EMA); stops with :class:`TrainingDiverged`
        before anything of the epoch is logged, exported or saved."""
        raw = self.evaluate(self.model)
        ema = self.evaluate(self.ema.module) if self.ema is not None else {}
        self.check_finite(raw["loss"])
        return EpochRecord(
            epoch=epoch + 1,
            step=self.state.global_step,
            train_loss=_gathered_mean(self.accelerator, self.state.loss),
            eval_loss=raw["loss"],
            top1=raw["top1"],
            top5=raw["top5"],
            lr=current_lr(self.optimizer),
            epoch_seconds=time.perf_counter() - started,
            ema_top1=ema.get("top1"),
            ema_top5=ema.get("top5"),
            ema_loss=ema.get("loss"),
            # the same on every process after the all-reduce
            grad_norm=self.state.loss.mean_grad_norm() if self.config.optim.clip_grad else None,
        )

    def log_epoch(self, record: EpochRecord) -> None:
        """The epoch's record to the trackers (at its last update) and one line on the console."""
        self.accelerator.log({k: v for k, v in record.as_dict().items() if k != "epoch"}, step=record.step)
        ema = "" if record.ema_top1 is None else f"; EMA top-1 {record.ema_top1:.2f}%, top-5 {record.ema_top5:.2f}%"
        self.accelerator.print(
            f"epoch {record.epoch}/{self.config.train.epochs}: train loss {record.train_loss:.4f}, eval loss "
            f"{record.eval_loss:.4f}, top-1 {record.top1:.2f}%, top-5 {record.top5:.2f}%{ema}"
        )

    def evaluate(self, model: torch.nn.Module) -> dict[str, Any]:
        """Top-1, top-5 and loss of ``model`` (the raw weights or the EMA) on the whole eval split."""
        t, autocast = self.config.train, self.config.train.eval_precision == "autocast"
        return evaluate(
            self.accelerator,
            model,
            self.eval_loader,
            self.augment,
            self.data.num_classes,
            t.progress,
            autocast=autocast,
            features=self.features.eval if self.features is not None else None,
        )

    def save_checkpoint(self) -> Path:
        """A complete checkpoint of the run as it stands (every process takes part); never of diverged weights."""
        self.check_finite()
        keep, labels = self.config.train.keep_checkpoints, (self.data.class_ids, self.data.class_names)
        return save_checkpoint(self.accelerator, self.folder.root, self.state, self.config, keep, labels)

    def check_finite(self, eval_loss: float = 0.0) -> None:
        """Stop with :class:`TrainingDiverged` when the epoch's training loss, a trainable weight or ``eval_loss`` is
        not finite on any process (one all-reduce; called at checkpoints and epoch ends, never per step)."""
        loss, device = self.state.loss, self.accelerator.device
        loss.settle()
        weights = [p for p in self.model.parameters() if p.requires_grad]
        finite = torch.stack([p.isfinite().all() for p in weights]).all() if weights else torch.tensor(True)
        bad = torch.tensor(0.0 if math.isfinite(loss.total) and math.isfinite(eval_loss) else 1.0, device=device)
        bad += (~finite).to(device=device, dtype=bad.dtype)
        if self.accelerator.reduce(bad, reduction="sum").item() == 0:
            return
        self.accelerator.end_training()
        step, last = loss.divergence()
        fp16 = ", or with --train.mixed_precision bf16 (fp16 overflows sooner)"
        where = f"at optimizer step {step + 1}" if step is not None else f"in epoch {self.state.epoch + 1}"
        lr = max(self.scheduler._get_lr(step if step is not None else self.state.global_step))  # timm's lr(step)
        kept = list_checkpoints(self.folder.root)
        raise TrainingDiverged(
            f"Training diverged: the loss became non-finite {where} (the last finite loss was "
            f"{'none' if last is None else f'{last:.4g}'}, the learning rate there {lr:.3g}); nothing was exported "
            f"and {f'the last good checkpoint {kept[-1]} is kept' if kept else 'no checkpoint was written'}. Start "
            f"again in a new train.output_dir with a lower optim.lr (e.g. --optim.lr {self.config.optim.lr / 10:g})"
            f"{fp16 if self.config.train.mixed_precision == 'fp16' else ''}."
        )

    def export(self, which: str, ema: bool = False) -> None:
        """The weights as they are now (the EMA's with ``ema``) into ``best/`` or ``last/``, loadable by timm; its
        config.json records which (main process only). In lora mode the adapters are merged into the exported
        weights, and written alone into its ``adapter/`` too."""
        trained = self.ema.module if ema else self.accelerator.unwrap_model(self.model)
        d, t = self.config.data, self.config.train
        model = plain_model(trained)  # lora mode: a merged copy
        if is_lora(trained):
            save_adapter(trained, self.folder.adapter(which))
        with backbone_in_fp32(model):  # a bf16 backbone (model.backbone_dtype) is exported in fp32, exactly
            save_for_timm(
                model,
                self.folder.weights(which),
                self.data.class_ids,
                self.data.class_names,
                d.image_size,
                self.augment.mean,
                self.augment.std,
                native_size=d.native_size,
                mixed_precision=t.mixed_precision,
                weights=None if self.ema is None else ("ema" if ema else "raw"),  # recorded when there is a choice
                # recorded when not the default, so that evaluate and predict feed and score the model the same way
                preprocess=None if d.preprocess == "default" else d.preprocess,
                eval_precision=None if t.eval_precision == "autocast" else "fp32",
            )


def _finished_result(folder: RunDir, config: FinetuneConfig) -> FinetuneResult | None:
    """The recorded result, said aloud, when ``folder`` holds this config's run finished (``finished.json``, the same
    trajectory, as many epochs) and ``train.resume`` is auto; None when there is something to train."""
    epochs = config.train.epochs
    with raised_on_every_process():  # a damaged finished.json or metrics.jsonl: every process reads it
        if config.train.resume != "auto" or folder.finished_epochs() != epochs or folder.trajectory_changes(config):
            return None
        history = folder.read_metrics()
    result = _result(history, folder.root, epoch_score(best_record(history)))
    if is_main_launch_process():
        results = [p.name for p in (folder.weights("best"), folder.weights("last"), folder.file(RESULTS_FILE))]
        print(
            f"tiny_transformers: the run in {folder.root} is already finished ({epochs} epochs, top-1 "
            f"{result.top1:.2f}%); its results are there ({', '.join(results)}, ...). Raise --train.epochs to "
            "train it further, or give another --train.output_dir for a new run"
            + (f"; to push it: tiny-transformers push {folder.root}." if config.hub.push else "."),
            flush=True,
        )
    return result


def _result(history: list[dict[str, Any]], output_dir: Path, best_top1: float) -> FinetuneResult:
    """A run's result from its history: the numbers of the weights in last/ and best/ and which they are (raw or
    EMA: rundir.saved_scores), NaN for a run that finished no epoch."""
    nan = float("nan")
    records = history or [{"epoch": 0, "top1": nan, "top5": nan, "eval_loss": nan}]
    last, best = saved_scores(records[-1], "last"), saved_scores(best_record(records), "best")
    return FinetuneResult(
        top1=last["top1"],
        top5=last["top5"],
        loss=last["eval_loss"],
        best_top1=best_top1,
        epochs_completed=len(history),
        output_dir=output_dir,
        history=list(history),
        weights=last["weights"],
        best_weights=best["weights"],
    )


def build_run(config: FinetuneConfig, folder: RunDir) -> Run:
    """Data, plan, model, optimizer, schedule and accelerator of ``config``, resumed from its checkpoint if any; the
    start written and printed (:func:`_announce`). Call after :func:`~tiny_transformers.validation.validate`."""
    # before the process group exists every process checks the same config and files (the main process alone downloads
    # a Hub checkpoint, and says what fails in it)
    with raised_on_every_process():
        resume_from = find_resume_checkpoint(config, folder.root)
        claim(folder, config, resuming=resume_from is not None)
        data = _load_data(config, folder, resume_from)
        plan = Plan.build(config, world_size_from_env(), len(data.train))

        set_seed(config.train.seed)  # the new head's initialisation, identical on every process
        model = build_model(config.model, data.num_classes, config.data.image_size, teacher=config.distill.teacher)
        if config.model.head_from and resume_from is None:  # probe, then fine-tune (a resumed run's head is saved)
            load_probe_head(model, config.model.head_from, config.model.name, data.class_ids, config.data)
        speed_up_backbone(model, config)  # model.backbone_dtype bf16/fp8's cast and train.compile (full: all of it)
        mean, std = normalization(model, config.data.normalization)
        features, cache_line = FeatureCache.for_run(config, model, len(data.train), plan.micro_batch_size)
        optimizer = build_optimizer(config.optim, model)
    scheduler = build_schedule(optimizer, config.optim, plan)
    ema = ModelEmaV3(model, config.train.ema_decay, use_warmup=config.train.ema_warmup, stochastic_rounding=False)
    ema = ema if config.train.ema_decay else None

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.train.mixed_precision,
        log_with=list(config.train.log_with) or None,
        project_dir=str(folder.root),
    )
    evaluation = eval_loader(data, config, config.data.native_size, accelerator)
    # The scheduler is neither prepared nor checkpointed: its lr is a function of the updates done and of the plan, so
    # 1 or N processes agree and a resumed run with more train.epochs follows the new, longer cosine.
    model, optimizer, evaluation = accelerator.prepare(model, optimizer, evaluation)
    teacher = _on_device(accelerator, config, model, ema, data, (mean, std))
    augment = BatchAugment(
        config.data.image_size, mean, std, data.num_classes, config.augment, accelerator.device, config.data.preprocess
    )
    state, resume_from = (
        _resume(accelerator, resume_from, config, folder.root) if resume_from else (TrainerState(), None)
    )
    state.check_data(len(data.train), len(data.eval), config.data.source)  # recorded, or the same as recorded
    scheduler.step_update(state.global_step)
    run = Run(
        config=config,
        folder=folder,
        data=data,
        plan=plan,
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        augment=augment,
        eval_loader=evaluation,
        state=state,
        ema=ema,
        teacher=teacher,
        features=features,
    )
    _announce(run, resume_from, cache_line)
    return run


def _load_data(config: FinetuneConfig, folder: RunDir, resume_from: Path | None) -> DataBundle:
    """The run's data, after the checks that need none (each cheaper before it loads) and with the checks it allows."""
    check_image_size(config.model, config.data.image_size)  # a size the model cannot see whole
    check_teacher(config.model, config.distill.teacher)  # a teacher for a student without one
    check_targets(config.model)  # lora mode's model.lora_targets naming no layer
    data = load_data(config.data)
    if not config.data.skip_corrupt:  # a broken eval image found now costs nothing; after an epoch, the epoch
        verify_images(data.eval, "eval", config.data.native_size, config.train.progress and is_main_launch_process())
    if resume_from:
        _check_same_classes(folder, data, config)
    return data


def _on_device(
    accelerator: Accelerator,
    config: FinetuneConfig,
    model: torch.nn.Module,
    ema: ModelEmaV3 | None,
    data: DataBundle,
    normalized: tuple[tuple[float, ...], tuple[float, ...]],
) -> torch.nn.Module | None:
    """What goes on the device after ``prepare``: the EMA (checkpointed), fp8's copies (shared with the EMA) and the
    teacher, returned, which converts the student's batch (``normalized``: its mean and std) to its own."""
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    if config.model.backbone_dtype == "fp8":
        layers = fp8_backbone(accelerator.unwrap_model(model), *([ema.module] if ema else []))
        accelerator.print(f"model.backbone_dtype fp8: {layers} linear layers compute in fp8, the rest in bf16")
    if not config.distill.teacher:
        return None
    d = config.data
    teacher = build_teacher(
        config.distill.teacher, data.num_classes, d.image_size, data.class_ids, normalized, d.preprocess, d.native_size
    )
    accelerator.unwrap_model(model).set_distilled_training(True)  # the forward returns (class, distillation)
    return teacher.to(accelerator.device)


def _announce(run: Run, resume_from: Path | None, cache_line: str) -> None:
    """``config.json`` and ``labels.json`` written, what will run printed (the derived numbers included), the
    trackers started, warnings said."""
    accelerator, config, data, state = run.accelerator, run.config, run.data, run.state
    total, trainable = count_parameters(accelerator.unwrap_model(run.model))
    if accelerator.is_main_process:
        run.folder.write_start(config, data.class_ids, data.class_names, data.source_kind)
    at = f"epoch {state.epoch + 1}, step {state.step_in_epoch}"
    resuming = f"\nresuming from {resume_from.name}: {at}" if resume_from else ""
    accelerator.print(
        f"tiny_transformers: {config.model.name} ({_count(total)} parameters, {_count(trainable)} trainable, "
        f"{config.model.train_mode} mode) on {data.source_kind} data: {len(data.train)} train / {len(data.eval)} "
        f"eval images, {data.num_classes} classes\n{run.plan.describe()}\n{cache_line}\noutputs: {run.folder.root}"
        f"{resuming}"
    )
    resumed_at = state.global_step if resume_from else None
    main, log_with = accelerator.is_main_process, config.train.log_with
    trackers = run.folder.tracker_init_kwargs(resumed_at) if main and log_with else {}
    accelerator.init_trackers("tiny_transformers", config=flat_config(config), init_kwargs=trackers)
    warnings = push_warnings(run.folder.root, config.hub) + cpu_threads_warnings(run.plan.num_processes)
    for warning in warnings if main else []:
        print(f"warning: {warning}", file=sys.stderr, flush=True)


def finish(run: Run, pushes: BackgroundPublisher | None = None) -> FinetuneResult:
    """After the last epoch: ``last/``, the report and the Hub push on the main process; the run's result."""
    accelerator, state = run.accelerator, run.state
    last_weights = run.ema.module if run.ema is not None else accelerator.unwrap_model(run.model)  # last/'s
    if accelerator.is_main_process:
        run.export("last", ema=run.ema is not None)
        write_run_report(
            run.folder.root,
            run.config,
            state.history,
            last_weights,
            run.data.eval,
            run.data.class_names,
            run.augment.resize_normalize,
            accelerator.autocast,
            weights="ema" if run.ema is not None else None,
        )
        pushes = pushes or BackgroundPublisher(run.folder.root, run.config.hub)
        if run.config.hub.push:
            pushes.submit()
        pushes.wait()  # the last upload ends before the run does; each push's outcome is printed as it ends
        run.folder.write_finished(state.history)  # last: a run killed before this line is unfinished and resumes
    accelerator.wait_for_everyone()
    accelerator.end_training()
    result = _result(state.history, run.folder.root, state.best_top1)
    which = {None: "", "ema": " (EMA weights)", "raw": " (raw weights)"}
    accelerator.print(
        f"done: top-1 {result.top1:.2f}%{which[result.weights]}, best top-1 {result.best_top1:.2f}%"
        f"{which[result.best_weights]}; outputs in {run.folder.root}"
    )
    return result


def _resume(
    accelerator: Accelerator, folder: Path, config: FinetuneConfig, output_dir: Path
) -> tuple[TrainerState, Path]:
    """Load the checkpoint the main process chose, on every process; with train.resume auto, all fall back together
    to an older one when any process cannot read it. Returns the state and the checkpoint really loaded (the start
    banner names it). A process that cannot see the main process's choice stops the run, naming it."""
    candidates = [folder]
    if config.train.resume == "auto":
        candidates += [p for p in reversed(list_checkpoints(output_dir)) if p < folder]
    candidates = [Path(p) for p in broadcast_object_list([[str(p) for p in candidates]])[0]]  # the main's view
    for index, candidate in enumerate(candidates):
        blind = _processes_where(accelerator, not is_checkpoint(candidate))
        if blind:
            raise CheckpointError(
                f"Process(es) {', '.join(map(str, blind))} cannot see {candidate}, the checkpoint the main process "
                "resumes from; every process must see the same train.output_dir (several machines need a shared "
                "file system: docs/scaling.md)."
            )
        error: CheckpointError | None = None
        try:
            state = load_checkpoint(accelerator, candidate)
        except CheckpointError as failed:
            error = failed
        if not _processes_where(accelerator, error is not None):
            return state, candidate
        if index == len(candidates) - 1:
            raise error or CheckpointError(f"Checkpoint '{candidate}' could not be loaded on another process.")
        accelerator.print(f"warning: {error or candidate} Falling back to the previous checkpoint.")
    raise AssertionError("unreachable: the loop returns or raises")


def _processes_where(accelerator: Accelerator, condition: bool) -> list[int]:
    """The process indices where ``condition`` holds (one all-gather)."""
    flags = accelerator.gather(torch.tensor([float(condition)], device=accelerator.device))
    return [rank for rank, flag in enumerate(flags.tolist()) if flag]


def _check_same_classes(folder: RunDir, data: DataBundle, config: FinetuneConfig) -> None:
    """A resumed run must see the classes it was trained on: a changed dataset is not a damaged checkpoint."""
    recorded = folder.read_labels()
    if recorded is not None and list(recorded[0]) != list(data.class_ids):
        raise CheckpointError(
            f"The classes of data.source '{config.data.source}' ({data.num_classes}) differ from the "
            f"{len(recorded[0])} this run in {folder.root} was trained on; the checkpoints are fine: resume with the "
            "data the run was trained on, or train on the new data in a new train.output_dir."
        )


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _gathered_mean(accelerator: Accelerator, loss: RunningLoss) -> float:
    """The mean training loss over every process's images."""
    loss.settle()
    sums = accelerator.reduce(
        torch.tensor([loss.total, float(loss.images)], dtype=torch.float64, device=accelerator.device), "sum"
    )
    return (sums[0] / sums[1].clamp(min=1)).item()
