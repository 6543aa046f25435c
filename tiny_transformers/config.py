"""Configuration as data: nested dataclasses whose defaults are the paper's recipe, each field overridable on the
command line by its dotted name (``--train.epochs 1``). Checks live in :mod:`.validation`, derived numbers in
:mod:`.plan`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError
from .paper import PAPER_MODELS

RESUMABLE = "resumable"  # dataclass field metadata key


def resumable(default: Any) -> Any:
    """A field that a resumed run may change, as it leaves the optimisation trajectory alone (length, logging,
    paths, publishing); resuming with any other field changed is refused (``checkpoint.find_resume_checkpoint``)."""
    return field(default=default, metadata={RESUMABLE: True})


def resumable_fields() -> set[str]:
    """Dotted names of the fields marked :func:`resumable`.

    >>> sorted(resumable_fields())[:3]
    ['data.max_eval_samples', 'data.num_workers', 'hub.license']
    """
    return {
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(FinetuneConfig)
        for f in dataclasses.fields(section.default_factory)
        if f.metadata.get(RESUMABLE)
    }


@dataclass
class ModelConfig:
    """Which network to fine-tune and how much of it trains."""

    name: str = "vit_l"  # a paper short name (vit_l, cait_s36, deit_b_distilled, swin_l) or any timm model name
    pretrained: bool = True  # start from ImageNet weights (from the Hub, or from `checkpoint`)
    checkpoint: str | None = None  # .safetensors/.pth file, a save_for_hf folder, or hf-hub:owner/name
    # head: frozen backbone, as the official code; full: every parameter; lora: low-rank adapters (peft) on the
    # backbone's linear layers, the classifier head(s) trained whole, the rest frozen (tiny_transformers.lora)
    train_mode: Literal["head", "full", "lora"] = "head"
    # lora mode: each adapter's rank r and scale alpha (update x alpha / r), its input dropout (a probability) and
    # the backbone's nn.Linear layers that get one, by last name: attention qkv (CaiT's class attention: q, k, v),
    # proj, MLP fc1 and fc2. r = alpha = 16: peft's ViT guide; dropout costs memory (docs/benchmarks.md#lora)
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("qkv", "q", "k", "v", "proj", "fc1", "fc2")
    # the new classifier head's initialisation: timm's, or linear: reset_classifier's nn.Linear (the official code's)
    head_init: Literal["timm", "linear"] = "timm"
    drop_path_rate: float = 0.1  # stochastic depth inside the backbone (paper 2.2), a probability in [0, 1]
    # timm's set_grad_checkpointing: activations recomputed in backward; less memory, one more forward, same gradients
    grad_checkpointing: bool = False
    # attention with fewer memory passes, same outputs to float rounding (attention.use_fast_attention): CaiT's
    # talking heads rewritten, Swin's window attention fused; refused for a model with neither
    fast_attention: bool = False
    # head mode, with train.mixed_precision bf16: bf16 stores the frozen backbone's linear and conv weights in bf16
    # (backbone.cast_backbone; the same outputs as autocast's), the head's in fp32; fp8 also computes its linear
    # layers in fp8 with torchao (within fp8's rounding; a GPU of compute capability 8.9+); fp32: as loaded
    backbone_dtype: Literal["fp32", "bf16", "fp8"] = "fp32"
    # full mode's start from a probe: a head-mode run's folder (its best/) or an exported folder, whose head(s)
    # replace the new head, the backbone still from the pretrained weights (or model.checkpoint); None: a new head
    head_from: str | None = None


@dataclass
class DataConfig:
    """Where the images come from and the size the model sees."""

    source: str = "zh-plus/tiny-imagenet"  # Hub id, Stanford folder or zip, imagefolder, save_to_disk folder, parquet
    image_size: int = 384  # pixels per side given to the model, bicubic upscaling on the training device
    native_size: int = 64  # pixels per side of the uint8 images the loader hands over (Tiny ImageNet is 64x64)
    normalization: Literal["imagenet", "model"] = "imagenet"  # imagenet: the paper's mean/std for all four models
    # default: float bicubic resize with antialiasing (a = -0.5), RandAugment at the native size; official: the
    # paper's uint8 bicubic resize (a = -0.75, no antialiasing, rounded), RandAugment at image_size (docs/recipes.md)
    preprocess: Literal["default", "official"] = "default"
    drop_last: bool = False  # drop each epoch's last partial micro-batch, as the official loader does
    # loader processes per training process; None: up to 4, within the launch's share of the cores (engine.py)
    num_workers: int | None = resumable(None)
    skip_corrupt: bool = False  # False: stop at the first unreadable image, naming it; True: scan, skip and count them
    max_train_samples: int | None = None  # use a fixed random subset of N training images (quick experiments)
    max_eval_samples: int | None = resumable(None)  # use a fixed random subset of N evaluation images


@dataclass
class AugmentConfig:
    """Batch augmentation on the training device (timm Mixup/CutMix, random erasing) and RandAugment."""

    mixup_alpha: float = 0.8  # Beta(alpha, alpha) for Mixup; 0 switches it off
    cutmix_alpha: float = 1.0  # Beta(alpha, alpha) for CutMix; 0 switches it off
    mixup_prob: float = 1.0  # probability that a batch is mixed at all
    switch_prob: float = 0.5  # probability of CutMix instead of Mixup when both are on
    label_smoothing: float = 0.1  # applied inside Mixup's soft targets, as timm does
    random_erasing: float = 0.25  # probability per image, 'pixel' mode (per-pixel normal noise), after Mixup
    # RandAugment ops per image, drawn on the training device; 0: none. The paper's code runs 2 at magnitude 0,
    # which still changes about a third of the images
    randaugment_ops: int = 0
    randaugment_magnitude: int = 9  # 0-30, torchvision's scale (the paper's first runs: 9; its final setting: 0)
    # timm's RandAugment by its config string (e.g. rand-m9-mstd0.5-inc1, as DeiT, BEiT and Swin fine-tune), per
    # image at the native size on the host; None: off. Instead of randaugment_ops, not with it
    timm_randaugment: str | None = None


@dataclass
class DistillConfig:
    """DeiT's distillation (its DistillationLoss) for a student with a distillation head: the teacher and the loss."""

    # a trained folder (e.g. outputs/swin_l/best), a training checkpoint, hf-hub:owner/name or a timm name (its
    # pretrained weights); None: no distillation
    teacher: str | None = None
    # hard: the distillation head learns the teacher's top-1 class; soft: its softened probabilities (KL divergence)
    type: Literal["hard", "soft"] = "hard"
    temperature: float = 1.0  # softmax temperature of soft distillation (DeiT's tau)
    alpha: float = 0.5  # loss = (1 - alpha) x the class head's + alpha x the distillation head's (DeiT's default)


@dataclass
class OptimConfig:
    """Optimizer and schedule: linear warmup (optional), then a cosine to min_lr, stepped once per optimizer update."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3  # peak learning rate, cosine-annealed to min_lr over all optimizer updates
    weight_decay: float = 0.05
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    min_lr: float = 0.0  # end of the cosine
    fused: bool = False  # torch's fused AdamW/SGD kernel (fused=True); measured effect: docs/benchmarks.md
    # per-layer lr multipliers decay**(layers above), timm's layer_decay; 0 or 1: off; e.g. 0.75 (BEiT, DeiT III)
    layer_decay: float = 0.0
    warmup_epochs: float = 0.0  # epochs of linear warmup from warmup_lr to lr, per optimizer update; 0: none
    warmup_lr: float = 1e-6  # learning rate at the first update of the warmup
    clip_grad: float = 0.0  # clip the global gradient norm of each update to this (after accumulation); 0: off
    # weight decay on biases and norms too, as the official code's plain AdamW; false: timm's factory spares them
    decay_all: bool = False


@dataclass
class TrainConfig:
    """Length, batch arithmetic, precision and where outputs go."""

    epochs: int = resumable(30)  # passes over the training split
    batch_size: int = 128  # effective images per optimizer update, over all processes and accumulation steps
    micro_batch_size: int = 64  # images per forward pass on one device
    eval_batch_size: int | None = resumable(None)  # images per evaluation forward pass; default: micro_batch_size
    mixed_precision: Literal["bf16", "fp16", "no"] = "bf16"  # autocast dtype; fp16 adds a gradient scaler
    # evaluation under the training autocast or fp32
    eval_precision: Literal["autocast", "fp32"] = resumable("autocast")
    seed: int = 0  # model head init, data order, every augmentation draw; 0 to 2**32 - 1 (numpy's range)
    output_dir: str = resumable("outputs/run")  # checkpoints, metrics.jsonl, config.json, best/ and last/
    # auto: the newest checkpoint in output_dir, if any; never: start fresh (refused if output_dir holds some); a
    # checkpoint folder; hf-hub:owner/name: its last-checkpoint/ (hub.strategy checkpoint); hub: hub.model_id's
    resume: str = resumable("auto")
    checkpoint_every: int = resumable(0)  # also save every N optimizer updates; 0: only at epoch ends
    keep_checkpoints: int = resumable(3)  # newest checkpoints kept in output_dir/checkpoints
    log_with: tuple[str, ...] = resumable(())  # Accelerate trackers, e.g. tensorboard wandb
    # with log_with: also log the epoch's running train loss, lr, grad norm (with clipping) and images/s every N
    # optimizer updates (one host-device read each time); 0: once per epoch only
    log_every: int = resumable(50)
    progress: bool = resumable(True)  # tqdm bars on the main process
    # on SIGTERM/SIGINT: seconds from the signal within which the checkpoint's Hub push (hub.strategy checkpoint)
    # must end; after it the run exits anyway and the local checkpoint stays (docs/scaling.md: preemption)
    preempt_seconds: float = resumable(60.0)
    # torch.compile: full mode, the whole model in place; head mode, the frozen backbone's forward only, once per
    # run at fixed batch sizes (backbone.compile_backbone: 2 graphs, train and eval); docs/benchmarks.md
    compile: bool = False
    # EMA of the weights (timm's ModelEmaV3), updated every optimizer update, evaluated every epoch; 0: off; e.g. 0.9998
    ema_decay: float = 0.0
    ema_warmup: bool = False  # ramp the EMA decay up over the first updates (timm's use_warmup)
    # head mode: compute what the frozen backbone hands the head once per run (features.py; the training images'
    # only when nothing random comes before the head), the same scores and weights bitwise; false: every time
    cache_features: bool = resumable(True)


@dataclass
class HubConfig:
    """Publishing the trained model to the Hugging Face Hub (docs/publishing.md); never changes training."""

    push: bool = resumable(False)  # upload the exported folder (weights, card, curves, metrics) to hub.model_id
    model_id: str | None = resumable(None)  # Hub repo 'owner/name'; created when missing
    private: bool = resumable(False)  # visibility of a repo that the push creates (an existing repo keeps its own)
    # end: push after training; epoch: also after every epoch; checkpoint: as epoch, plus the training checkpoint
    strategy: Literal["end", "epoch", "checkpoint"] = resumable("end")
    weights: Literal["last", "best"] = resumable("last")  # last: the final epoch (the reported numbers); best: top-1
    license: str = resumable("apache-2.0")  # the model card's license (a Hub license id)


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run needs; defaults are the paper's recipe for ViT-L/16.

    >>> cfg = FinetuneConfig(model=ModelConfig(name="swin_l"), train=TrainConfig(micro_batch_size=32))
    >>> cfg.optim.lr, cfg.train.batch_size
    (0.001, 128)
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as nested plain data (what ``--print-config`` and ``config.json`` show)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        """Rebuild a config from :meth:`to_dict` output (:data:`RENAMED` fields under their new names); unknown keys
        are an error naming them.

        >>> FinetuneConfig.from_dict({"model": {"teacher": "t/best"}, "augment": {"distill_type": "soft"}}).distill
        DistillConfig(teacher='t/best', type='soft', temperature=1.0, alpha=0.5)
        """
        sections = {f.name: f.default_factory for f in dataclasses.fields(cls)}
        kwargs = {}
        for section, values in upgrade(data).items():
            if section not in sections:
                raise ConfigError(f"Unknown config section '{section}'; expected one of {sorted(sections)}.")
            unknown = sorted(set(values) - {f.name for f in dataclasses.fields(sections[section])})
            if unknown:
                raise ConfigError(f"Unknown config field(s) {', '.join(f'{section}.{k}' for k in unknown)}.")
            # JSON has no tuples: the tuple fields (train.log_with, model.lora_targets) come back as lists
            values = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
            kwargs[section] = sections[section](**values)
        return cls(**kwargs)


# old dotted name -> new, for config.json files written before a field moved (read by from_dict and the comparisons)
RENAMED = {
    "model.teacher": "distill.teacher",
    "augment.distill_type": "distill.type",
    "augment.distill_temperature": "distill.temperature",
}


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config's nested dict with the fields of :data:`RENAMED` under their new names (a copy).

    >>> upgrade({"model": {"name": "x", "teacher": None}})
    {'model': {'name': 'x'}, 'distill': {'teacher': None}}
    """
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for old, new in RENAMED.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        if isinstance(out.get(old_section), dict) and old_key in out[old_section]:
            out.setdefault(new_section, {})[new_key] = out[old_section].pop(old_key)
    return out


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()}


_PATH_FIELDS = ("data.source", "model.checkpoint", "model.head_from")  # compared as the folders they name


def trajectory_differences(saved: dict[str, Any], current: FinetuneConfig) -> list[str]:
    """Dotted names of fields that differ and would change the training trajectory: a field the saved config lacks
    counts as its default; local paths are compared as the files they name."""
    old, new = _flattened(saved), _flatten(current.to_dict())
    return sorted(
        name
        for name in old.keys() | new.keys()
        if name not in resumable_fields() and _normal(name, old.get(name)) != _normal(name, new.get(name))
    )


def describe_differences(saved: dict[str, Any], current: FinetuneConfig, names: list[str]) -> str:
    """``name: saved -> current`` for each of ``names``, for messages that must show both values.

    >>> describe_differences({"optim": {"lr": 0.001}}, FinetuneConfig(optim=OptimConfig(lr=5e-4)), ["optim.lr"])
    'optim.lr: 0.001 -> 0.0005'
    """
    old, new = _flattened(saved), _flatten(current.to_dict())
    return ", ".join(f"{name}: {old.get(name)!s} -> {new.get(name)!s}" for name in names)


def _flattened(saved: dict[str, Any]) -> dict[str, Any]:
    return {**_flatten(FinetuneConfig().to_dict()), **_flatten(upgrade(saved))}


def _normal(name: str, value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if name in _PATH_FIELDS and isinstance(value, str) and value and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


def flat_config(config: FinetuneConfig) -> dict[str, Any]:
    """The config as flat dotted keys, as trackers show it: numbers stay numbers; tuples and None (which
    TensorBoard's hyperparameters cannot hold) become text.

    >>> flat_config(FinetuneConfig())["optim.lr"], flat_config(FinetuneConfig())["train.log_with"]
    (0.001, '')
    """
    flat = _flatten(config.to_dict())
    text = {k: (", ".join(map(str, v)) if isinstance(v, (list, tuple)) else "None") for k, v in flat.items()}
    return {k: v if isinstance(v, (bool, int, float, str)) else text[k] for k, v in flat.items()}


def paper_config(name: str) -> FinetuneConfig:
    """The paper's recipe for one of its four models (``vit_l``, ``cait_s36``, ``deit_b_distilled``, ``swin_l``).

    >>> paper_config("cait_s36").train.micro_batch_size
    128
    """
    if name not in PAPER_MODELS:
        raise ConfigError(f"'{name}' is not a paper recipe; choose one of {', '.join(PAPER_MODELS)}.")
    paper = PAPER_MODELS[name]
    return FinetuneConfig(  # exact mode: every setting as the official code ran it (docs/recipes.md)
        model=ModelConfig(name=name, train_mode="head", drop_path_rate=paper.drop_path_rate, head_init="linear"),
        data=DataConfig(preprocess="official", drop_last=True),
        augment=AugmentConfig(randaugment_ops=2, randaugment_magnitude=0),
        optim=OptimConfig(decay_all=True),
        train=TrainConfig(
            micro_batch_size=paper.micro_batch_size,
            mixed_precision="fp16",
            eval_precision="fp32",
            output_dir=f"outputs/{name}",
        ),
    )
