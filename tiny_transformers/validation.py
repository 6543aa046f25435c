"""All validation of a :class:`~tiny_transformers.config.FinetuneConfig`: one function per config section, then the
rules that relate sections, run by :func:`validate` before any process group or data loader starts."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import types
import typing
from pathlib import Path

from .config import (
    AugmentConfig,
    DataConfig,
    FinetuneConfig,
    HubConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from .errors import ConfigError
from .hub import hub_repo, is_repo_id, resume_repo


def world_size_from_env() -> int:
    """Processes in this launch, read before any process group exists (accelerate launch and torchrun set it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _check_speed_options(o: OptimConfig, t: TrainConfig, cuda_available: bool) -> None:
    """optim.fused and train.compile need a torch (and, for compile on the CPU, a C++ compiler) that has them.

    >>> _check_speed_options(OptimConfig(fused=True), TrainConfig(), cuda_available=False)  # torch >= 2.4 here
    """
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
    _check_choices(config)
    _validate_model(config.model)
    _validate_data(config.data)
    _validate_augment(config.augment)
    _check_ranges("distill", config.distill, positive="temperature", fraction="alpha")
    _validate_optim(config.optim)
    _validate_train(config.train, num_processes or world_size_from_env())
    validate_hub(config.hub)
    _validate_across_sections(config, cuda_available)


def _choices(hint: object) -> tuple:
    """The values a ``Literal[...]`` hint allows (``None`` too for ``Literal[...] | None``); () for any other hint.

    >>> _choices(typing.Optional[typing.Literal["a", "b"]]), _choices(int)
    (('a', 'b', None), ())
    """
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    arms = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    literals = sum((_choices(arm) for arm in arms), ())
    return literals + ((None,) if literals and type(None) in arms else ())


def _check_choices(config: FinetuneConfig) -> None:
    """Every ``Literal`` field holds one of its values. The type hint is the one list of them (tyro reads the same
    for the command line), so a Python caller's typo gets this sentence, not a ValueError from inside Accelerate."""
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        for name, hint in typing.get_type_hints(type(values)).items():
            choices, value = _choices(hint), getattr(values, name)
            if choices and value not in choices:
                listed = ", ".join(repr(c) for c in choices)
                hint = _CHOICE_HINTS.get(f"{section.name}.{name}", "")
                raise ConfigError(f"{section.name}.{name} {value!r} is not one of {listed}; set one of those{hint}.")


_CHOICE_HINTS = {"train.mixed_precision": " ('no' is full fp32)"}  # the values whose meaning is not their name


_RANGES = {
    "positive": (lambda v: v > 0, "must be positive"),
    "non_negative": (lambda v: v >= 0, "must be zero or positive"),
    "probability": (lambda v: 0.0 <= v <= 1.0, "is a probability and must lie in [0, 1]"),
    "fraction": (lambda v: 0.0 <= v <= 1.0, "must lie in [0, 1]"),
}


def _check_ranges(name: str, section: object, **fields: str) -> None:
    """The fields of config section ``name`` in their range (``fields``: range -> field names, space-separated);
    None (unset: "all" or "the default") passes. tests/test_config.py checks that every numeric field is named."""
    for kind, names in fields.items():
        for field in names.split():
            value = getattr(section, field)
            if value is not None and not math.isfinite(value):  # nan slips through every comparison
                raise ConfigError(f"{name}.{field} must be a finite number, got {value}.")
            if value is not None and not _RANGES[kind][0](value):
                raise ConfigError(f"{name}.{field} {_RANGES[kind][1]}, got {value}.")


def _validate_model(m: ModelConfig) -> None:
    _check_ranges("model", m, probability="drop_path_rate lora_dropout", positive="lora_rank lora_alpha")
    if m.train_mode == "lora":
        from .lora import require_peft  # lora.py imports torch: only for the mode that needs it

        require_peft()
        if not m.lora_targets:
            raise ConfigError(
                "model.lora_targets is empty; name the linear layers that get adapters, e.g. "
                "--model.lora_targets qkv proj fc1 fc2."
            )
        if m.head_from:  # peft wraps the head it is given (modules_to_save); a probe's head is not put in yet
            raise ConfigError(
                "model.head_from starts full fine-tuning from a probe's head and is not supported with "
                "model.train_mode lora yet; drop --model.head_from (the head trains beside the adapters), or use "
                "--model.train_mode full."
            )
    if m.checkpoint is not None and hub_repo(m.checkpoint) is None and not Path(m.checkpoint).expanduser().exists():
        raise ConfigError(
            f"model.checkpoint '{m.checkpoint}' does not exist; give a .safetensors/.pth file or a folder "
            "with model.safetensors and config.json."
        )


def _validate_data(d: DataConfig) -> None:
    _check_ranges(
        "data", d, positive="image_size native_size max_train_samples max_eval_samples", non_negative="num_workers"
    )
    if not d.source.strip():
        # An empty path means the working directory to pathlib, which would be searched for a dataset layout.
        raise ConfigError(
            "data.source is empty; give a Hub dataset id (zh-plus/tiny-imagenet) or a local path "
            "(./tiny-imagenet-200, tiny-imagenet-200.zip)."
        )


# timm's rand_augment_transform options (timm/data/auto_augment.py); it silently ignores what it does not know
_TIMM_RANDAUGMENT = r"rand(-(m\d+|n\d+|p\d*\.?\d+|mstd\d*\.?\d+|mmax\d+|inc[01]))*"


def _validate_augment(a: AugmentConfig) -> None:
    _check_ranges(
        "augment",
        a,
        non_negative="mixup_alpha cutmix_alpha randaugment_ops randaugment_magnitude",
        probability="mixup_prob switch_prob label_smoothing random_erasing",
    )
    if a.randaugment_magnitude > 30:
        raise ConfigError(
            f"augment.randaugment_magnitude {a.randaugment_magnitude} is above 30, the top of RandAugment's scale."
        )
    if a.timm_randaugment is not None and not re.fullmatch(_TIMM_RANDAUGMENT, a.timm_randaugment):
        raise ConfigError(
            f"augment.timm_randaugment '{a.timm_randaugment}' is not a timm RandAugment string; write rand- then "
            "dash-separated m<magnitude>, n<ops>, p<probability>, mstd<std>, mmax<max>, inc<0|1>, e.g. "
            "rand-m9-mstd0.5-inc1 (or None for none)."
        )
    if a.timm_randaugment is not None and a.randaugment_ops > 0:
        raise ConfigError(
            f"augment.timm_randaugment {a.timm_randaugment} and augment.randaugment_ops {a.randaugment_ops} both ask "
            "for RandAugment; keep one (--augment.randaugment_ops 0 or --augment.timm_randaugment None)."
        )


def _validate_optim(o: OptimConfig) -> None:
    _check_ranges(
        "optim",
        o,
        positive="lr",
        non_negative="weight_decay min_lr warmup_epochs warmup_lr clip_grad",
        fraction="momentum layer_decay",
    )
    if o.warmup_epochs and o.warmup_lr > o.lr:
        raise ConfigError(f"optim.warmup_lr {o.warmup_lr} is above optim.lr {o.lr}; the warmup must rise.")
    if o.min_lr > o.lr:
        raise ConfigError(f"optim.min_lr {o.min_lr} is above optim.lr {o.lr}; the cosine must decay.")


def _validate_train(t: TrainConfig, num_processes: int) -> None:
    _check_ranges(
        "train",
        t,
        positive="epochs batch_size micro_batch_size keep_checkpoints eval_batch_size",
        non_negative="checkpoint_every log_every preempt_seconds seed",
        fraction="ema_decay",
    )
    if t.seed > 2**32 - 1:  # numpy's seed range: Accelerate's set_seed would fail with a ValueError
        raise ConfigError(f"train.seed {t.seed} is above 4294967295 (2**32 - 1), the largest seed numpy accepts.")
    if t.ema_decay == 1.0:
        raise ConfigError("train.ema_decay 1 would never move the average; use a value below 1 (e.g. 0.9998), or 0.")
    if not t.output_dir.strip():
        raise ConfigError("train.output_dir is empty; give the folder the run writes into, e.g. outputs/vit_l.")
    if t.log_with:
        _check_trackers(t.log_with)
    for variable, plugin in (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")):
        if os.environ.get(variable, "false").lower() == "true":
            # DeepSpeed owns accumulation and steps in backward(); FSDP shards what best/ and last/ export: untested
            raise ConfigError(
                f"accelerate launch was configured for {plugin}, which tiny_transformers does not support yet; "
                "launch with plain data parallelism (accelerate config: 'multi-GPU', no FSDP/DeepSpeed), see "
                "docs/scaling.md."
            )
    unit = t.micro_batch_size * num_processes
    if t.batch_size % unit:
        below = max(unit, t.batch_size // unit * unit)
        raise ConfigError(
            f"train.batch_size {t.batch_size} is not a multiple of train.micro_batch_size {t.micro_batch_size} "
            f"x {num_processes} process(es) = {unit}; use {below} or {below + unit}, or change train.micro_batch_size."
        )


def _check_trackers(log_with: tuple[str, ...]) -> None:
    """``train.log_with`` names trackers Accelerate knows (custom registered ones included) and can start here:
    Accelerate drops one whose package is missing without a word, and the run would log nothing."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
    from accelerate.utils import LoggerType

    if isinstance(log_with, str):  # a Python caller's "wandb" would be read as the trackers w, a, n, d and b
        raise ConfigError(
            f"train.log_with is a tuple of tracker names, not the text {log_with!r}; use ({log_with!r},)."
        )
    builtin = LoggerType.list()
    known = [*builtin, *(name for name in LOGGER_TYPE_TO_CLASS if name not in builtin)]
    for name in log_with:
        if name not in known:
            raise ConfigError(
                f"train.log_with '{name}' is not a tracker Accelerate knows; choose among {', '.join(known)}."
            )
    installed = {str(tracker) for tracker in get_available_trackers()}
    for name in log_with:
        if name in builtin and name != "all" and name not in installed:  # the pip package is the tracker's name
            raise ConfigError(
                f"train.log_with {name} needs the {name} package, which this Python does not have; install it "
                f"(pip install {name}) or leave {name} out of train.log_with."
            )
    if "all" in log_with and not installed:
        raise ConfigError(
            "train.log_with all finds no tracker installed in this Python; install one (pip install tensorboard) "
            "or leave train.log_with empty."
        )


def _validate_across_sections(config: FinetuneConfig, cuda_available: bool | None) -> None:
    """The rules that relate two sections (or a section and the machine)."""
    m, o, t = config.model, config.optim, config.train
    if o.warmup_epochs >= t.epochs:
        raise ConfigError(
            f"optim.warmup_epochs {o.warmup_epochs} is not shorter than train.epochs {t.epochs}; the cosine needs "
            "updates after the warmup."
        )
    if m.train_mode == "head" and (m.grad_checkpointing or o.layer_decay not in (0.0, 1.0)):
        field_name = "model.grad_checkpointing" if m.grad_checkpointing else "optim.layer_decay"
        raise ConfigError(
            f"{field_name} needs model.train_mode full or lora: in head mode the backbone is frozen (nothing to "
            "checkpoint or to decay per layer)."
        )
    if m.backbone_dtype != "fp32":
        # the bf16 weights (fp8's too) need bf16 autocast on every forward, evaluation's included (backbone.py)
        fix = {
            m.train_mode != "head": "model.train_mode head (in full and lora mode weights train and need fp32)",
            t.mixed_precision != "bf16": "train.mixed_precision bf16 (the backbone computes under bf16 autocast)",
            t.eval_precision != "autocast": "train.eval_precision autocast (an fp32 evaluation needs fp32 weights)",
        }.get(True)
        if fix:
            raise ConfigError(
                f"model.backbone_dtype {m.backbone_dtype} needs {fix}; set it, or use --model.backbone_dtype fp32."
            )
    if m.backbone_dtype == "fp8":  # the settings first, then whether this machine runs it
        from . import backbone  # imports torch: only for the option that needs it

        if reason := backbone.fp8_unavailable():
            raise ConfigError(f"model.backbone_dtype fp8 needs {reason}; use --model.backbone_dtype bf16.")
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
    rid = resume_repo(t.resume, config.hub.model_id or "")  # "": hub with no hub.model_id, which names no repo
    if t.resume not in ("auto", "never") and not (is_repo_id(rid) if rid else Path(t.resume).expanduser().exists()):
        raise ConfigError(
            f"train.resume '{t.resume}' {'does not exist' if rid is None else 'names no Hub repo'}; give a checkpoint "
            "folder, 'auto' (newest in train.output_dir), 'never', or hf-hub:owner/name ('hub': hub.model_id)."
        )


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
