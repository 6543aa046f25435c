"""All validation of a :class:`~tiny_transformers.config.FinetuneConfig`, in one place: :func:`validate` runs before
any process group or data loader starts and raises :class:`ConfigError` with one sentence naming the field and the fix.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .config import FinetuneConfig, HubConfig, OptimConfig, TrainConfig
from .errors import ConfigError
from .hub import hub_repo, is_repo_id


def world_size_from_env() -> int:
    """Processes in this launch, read before any process group exists (accelerate launch and torchrun set it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _valid_batch_sizes(micro_batch_size: int, num_processes: int, around: int) -> list[int]:
    unit = micro_batch_size * num_processes
    below = max(unit, (around // unit) * unit)
    return sorted({below, below + unit})


def _check_speed_options(o: OptimConfig, t: TrainConfig, cuda_available: bool) -> None:
    """optim.fused and train.compile need a torch (and, for compile on the CPU, a C++ compiler) that has them.

    >>> _check_speed_options(OptimConfig(fused=True), TrainConfig(), cuda_available=False)  # torch >= 2.4 here
    """
    import shutil

    import torch

    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    if o.fused and not cuda_available and version < (2, 4):
        raise ConfigError(
            f"optim.fused on the CPU needs torch 2.4 or newer (this is {torch.__version__}); "
            "use --optim.fused false, or run on a CUDA GPU."
        )
    if t.compile and not hasattr(torch.nn.Module, "compile"):
        raise ConfigError(
            f"train.compile needs torch 2.2 or newer (this is {torch.__version__}); use --train.compile false."
        )
    if t.compile and not cuda_available and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        # Inductor writes C++ for the CPU and compiles it at the first step; fail now, not there.
        raise ConfigError(
            "train.compile on the CPU needs a C++ compiler (g++ or clang++) on PATH; install one or use "
            "--train.compile false."
        )


def validate(config: FinetuneConfig, num_processes: int | None = None, cuda_available: bool | None = None) -> None:
    """Check every field before anything starts; raise :class:`ConfigError` with one sentence on the first problem.

    >>> config = FinetuneConfig(train=TrainConfig(batch_size=100, micro_batch_size=64))
    >>> validate(config, num_processes=1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tiny_transformers.errors.ConfigError: train.batch_size 100 is not a multiple of ... = 64; use 64 or 128, or ...
    """
    num_processes = num_processes or world_size_from_env()
    m, d, a, o, t = config.model, config.data, config.augment, config.optim, config.train

    # Every numeric field, by the range it must lie in (tests/test_config.py checks that none is missing).
    positive = {
        "data.image_size": d.image_size,
        "data.native_size": d.native_size,
        "train.epochs": t.epochs,
        "train.batch_size": t.batch_size,
        "train.micro_batch_size": t.micro_batch_size,
        "train.keep_checkpoints": t.keep_checkpoints,
        "optim.lr": o.lr,
        "augment.distill_temperature": a.distill_temperature,
        # unset (None) means "all" or "the default"
        "train.eval_batch_size": t.eval_batch_size,
        "data.max_train_samples": d.max_train_samples,
        "data.max_eval_samples": d.max_eval_samples,
    }
    non_negative = {
        "data.num_workers": d.num_workers,
        "train.checkpoint_every": t.checkpoint_every,
        "train.log_every": t.log_every,
        "train.preempt_seconds": t.preempt_seconds,
        "train.seed": t.seed,
        "optim.weight_decay": o.weight_decay,
        "optim.min_lr": o.min_lr,
        "optim.warmup_epochs": o.warmup_epochs,
        "optim.warmup_lr": o.warmup_lr,
        "optim.clip_grad": o.clip_grad,
        "augment.mixup_alpha": a.mixup_alpha,
        "augment.cutmix_alpha": a.cutmix_alpha,
        "augment.randaugment_ops": a.randaugment_ops,
        "augment.randaugment_magnitude": a.randaugment_magnitude,
    }
    if a.randaugment_magnitude > 30:
        raise ConfigError(
            f"augment.randaugment_magnitude {a.randaugment_magnitude} is above 30, the top of RandAugment's scale."
        )
    probabilities = {
        "model.drop_path_rate": m.drop_path_rate,
        "augment.mixup_prob": a.mixup_prob,
        "augment.switch_prob": a.switch_prob,
        "augment.label_smoothing": a.label_smoothing,
        "augment.random_erasing": a.random_erasing,
    }
    fractions = {"optim.momentum": o.momentum, "optim.layer_decay": o.layer_decay, "train.ema_decay": t.ema_decay}
    for name, value in {**positive, **non_negative, **probabilities, **fractions}.items():
        if value is not None and not math.isfinite(value):  # nan slips through every comparison below
            raise ConfigError(f"{name} must be a finite number, got {value}.")
    for name, value in positive.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}.")
    for name, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{name} must be zero or positive, got {value}.")
    for name, value in probabilities.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} is a probability and must lie in [0, 1], got {value}.")
    for name, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must lie in [0, 1], got {value}.")
    if t.ema_decay == 1.0:
        raise ConfigError("train.ema_decay 1 would never move the average; use a value below 1 (e.g. 0.9998), or 0.")
    if o.warmup_epochs >= t.epochs:
        raise ConfigError(
            f"optim.warmup_epochs {o.warmup_epochs} is not shorter than train.epochs {t.epochs}; the cosine needs "
            "updates after the warmup."
        )
    if o.warmup_epochs and o.warmup_lr > o.lr:
        raise ConfigError(f"optim.warmup_lr {o.warmup_lr} is above optim.lr {o.lr}; the warmup must rise.")
    if m.train_mode == "head" and (m.grad_checkpointing or o.layer_decay not in (0.0, 1.0)):
        field_name = "model.grad_checkpointing" if m.grad_checkpointing else "optim.layer_decay"
        raise ConfigError(
            f"{field_name} needs model.train_mode full: in head mode the backbone is frozen (nothing to "
            "checkpoint or to decay per layer)."
        )
    if m.backbone_dtype != "fp32":
        # the bf16 weights (fp8's too) need bf16 autocast on every forward, evaluation's included (backbone.py)
        fix = {
            m.train_mode != "head": "model.train_mode head (in full mode the backbone trains and needs fp32 weights)",
            t.mixed_precision != "bf16": "train.mixed_precision bf16 (the backbone computes under bf16 autocast)",
            t.eval_precision != "autocast": "train.eval_precision autocast (an fp32 evaluation needs fp32 weights)",
        }.get(True)
        if fix:
            raise ConfigError(
                f"model.backbone_dtype {m.backbone_dtype} needs {fix}; set it, or use --model.backbone_dtype fp32."
            )
    if m.backbone_dtype == "fp8":
        from . import backbone  # imports torch: only for the option that needs it

        if reason := backbone.fp8_unavailable():
            raise ConfigError(f"model.backbone_dtype fp8 needs {reason}; use --model.backbone_dtype bf16.")
    if not t.output_dir.strip():
        raise ConfigError("train.output_dir is empty; give the folder the run writes into, e.g. outputs/vit_l.")
    if o.min_lr > o.lr:
        raise ConfigError(f"optim.min_lr {o.min_lr} is above optim.lr {o.lr}; the cosine must decay.")
    if not config.data.source.strip():
        # An empty path means the working directory to pathlib, which would be searched for a dataset layout.
        raise ConfigError(
            "data.source is empty; give a Hub dataset id (zh-plus/tiny-imagenet) or a local path "
            "(./tiny-imagenet-200, tiny-imagenet-200.zip)."
        )

    for variable, plugin in (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")):
        if os.environ.get(variable, "false").lower() == "true":
            # DeepSpeed's engine owns accumulation and steps inside backward(); FSDP shards what best/ and
            # last/ export. Neither can run here (no GPU) to be verified: refuse rather than train wrongly.
            raise ConfigError(
                f"accelerate launch was configured for {plugin}, which tiny_transformers does not support yet; "
                "launch with plain data parallelism (accelerate config: 'multi-GPU', no FSDP/DeepSpeed), see "
                "docs/scaling.md."
            )

    unit = t.micro_batch_size * num_processes
    if t.batch_size % unit:
        raise ConfigError(
            f"train.batch_size {t.batch_size} is not a multiple of train.micro_batch_size {t.micro_batch_size} "
            f"x {num_processes} process(es) = {unit}; use "
            f"{' or '.join(map(str, _valid_batch_sizes(t.micro_batch_size, num_processes, t.batch_size)))}, "
            "or change train.micro_batch_size."
        )

    needs_device = t.mixed_precision == "fp16" or o.fused or t.compile
    if needs_device and cuda_available is None:  # torch is imported only when a check needs it
        import torch

        cuda_available = torch.cuda.is_available()
    if t.mixed_precision == "fp16" and not cuda_available:
        raise ConfigError(
            "train.mixed_precision fp16 needs a CUDA GPU and none is visible; "
            "use --train.mixed_precision bf16 (or no) on this machine."
        )
    if o.fused or t.compile:
        _check_speed_options(o, t, cuda_available)

    rid = (config.hub.model_id or "") if t.resume == "hub" else hub_repo(t.resume)
    if t.resume not in ("auto", "never") and not (is_repo_id(rid) if rid else Path(t.resume).expanduser().exists()):
        raise ConfigError(
            f"train.resume '{t.resume}' {'does not exist' if rid is None else 'names no Hub repo'}; give a checkpoint "
            "folder, 'auto' (newest in train.output_dir), 'never', or hf-hub:owner/name ('hub': hub.model_id)."
        )
    if m.checkpoint is not None and hub_repo(m.checkpoint) is None:
        if not Path(m.checkpoint).expanduser().exists():
            raise ConfigError(
                f"model.checkpoint '{m.checkpoint}' does not exist; give a .safetensors/.pth file or a folder "
                "with model.safetensors and config.json."
            )
    validate_hub(config.hub)


def validate_hub(hub: HubConfig) -> None:
    """Check the ``hub`` section: a push needs an ``owner/name`` model id; raise :class:`ConfigError` otherwise.

    >>> validate_hub(HubConfig(push=True))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tiny_transformers.errors.ConfigError: hub.push is on but hub.model_id is not set; add --hub.model_id your-user/...
    """
    if hub.push and not hub.model_id:
        raise ConfigError(
            "hub.push is on but hub.model_id is not set; add --hub.model_id your-user/model-name (or --hub.push false)."
        )
    if hub.model_id is not None and not is_repo_id(hub.model_id):
        raise ConfigError(
            f"hub.model_id '{hub.model_id}' is not a Hub model id; write it as owner/name (your user or organisation, "
            "a slash, then letters, digits, '-', '_' or '.'), e.g. --hub.model_id your-user/vit-l-tiny-imagenet."
        )
    if not hub.license.strip():
        raise ConfigError("hub.license is empty; give a Hub license id such as apache-2.0, mit or other.")
