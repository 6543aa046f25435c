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
    warmup = round(cfg.warmup_epochs * plan.steps_per_epoch)
    return CosineLRScheduler(
        optimizer,
        t_initial=max(plan.total_steps - warmup, 1),
        lr_min=cfg.min_lr,
        warmup_t=warmup,
        warmup_lr_init=cfg.warmup_lr,
        warmup_prefix=True,  # the cosine starts after the warmup and ends at the plan's last update
        t_in_epochs=False,
    )


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
