"""The optimizer and its schedule: timm's factory (weight-decay groups, layer decay) and timm's cosine with warmup,
stepped once per optimizer update."""

from __future__ import annotations

import timm.optim
import torch
from timm.scheduler import CosineLRScheduler

from .config import OptimConfig
from .errors import ConfigError
from .plan import Plan


def build_schedule(optimizer: torch.optim.Optimizer, cfg: OptimConfig, plan: Plan) -> CosineLRScheduler:
    """timm's cosine with linear warmup, per optimizer update: ``optim.warmup_epochs`` of updates from
    ``optim.warmup_lr`` to ``optim.lr``, then the cosine to ``optim.min_lr`` at the plan's last update.

    >>> from tiny_transformers.config import FinetuneConfig, TrainConfig
    >>> config = FinetuneConfig(train=TrainConfig(epochs=2, batch_size=4, micro_batch_size=4))
    >>> plan = Plan.build(config, 1, train_samples=40)
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    >>> schedule = build_schedule(optimizer, OptimConfig(warmup_epochs=0.5, warmup_lr=0.0), plan)
    >>> [round(max(schedule._get_lr(t)), 6) for t in (0, 5, 10, 20)]
    [0.0, 0.001, 0.00075, 0.0]
    """
    return _cosine(optimizer, cfg, plan.steps_per_epoch, plan.total_steps)


def _cosine(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, total_steps: int):
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total_steps - warmup, 1),
        lr_min=cfg.min_lr,
        warmup_t=warmup,
        warmup_lr_init=cfg.warmup_lr,
        warmup_prefix=True,  # the cosine starts after the warmup and ends at the plan's last update
        t_in_epochs=False,
    )


def lr_per_update(cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> list[float]:
    """The base lr after each optimizer update of a run, 0 to ``steps_per_epoch * epochs`` (the lr of the next
    update, what the metrics log as ``lr`` at an epoch's end), from the schedule :func:`build_schedule` makes.

    >>> [round(lr, 6) for lr in lr_per_update(OptimConfig(lr=1e-3, min_lr=0.0), steps_per_epoch=2, epochs=2)]
    [0.001, 0.000854, 0.0005, 0.000146, 0.0]
    """
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)  # one group at scale 1: the head's
    schedule, lrs = _cosine(optimizer, cfg, steps_per_epoch, steps_per_epoch * epochs), []
    for updates in range(steps_per_epoch * epochs + 1):
        schedule.step_update(updates)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def build_optimizer(cfg: OptimConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer factory over the trainable parameters: no weight decay on biases and norms unless
    ``optim.decay_all`` (the official code's plain AdamW decays every parameter), per-layer lr with layer decay."""
    # lora mode: the timm model inside peft's wrapper, whose parameter names timm's grouping reads (the same tensors)
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = "adamw" if cfg.name == "adamw" else ("sgd" if cfg.nesterov else "momentum")  # timm's 'sgd' is Nesterov
    kwargs = {"momentum": cfg.momentum} if cfg.name == "sgd" else {}
    if cfg.fused:
        kwargs["fused"] = True  # passed through to torch's AdamW/SGD: one kernel for all parameters
    if cfg.layer_decay not in (0.0, 1.0):
        if not hasattr(model, "group_matcher"):
            raise ConfigError(
                f"optim.layer_decay needs timm's layer grouping, which {type(model).__name__} does not have; "
                "use --optim.layer_decay 0."
            )
        kwargs["layer_decay"] = cfg.layer_decay
    return timm.optim.create_optimizer_v2(
        model, opt=name, lr=cfg.lr, weight_decay=cfg.weight_decay, filter_bias_and_bn=not cfg.decay_all, **kwargs
    )
