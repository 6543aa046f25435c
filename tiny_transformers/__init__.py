"""tiny_transformers: fine-tune vision transformers on Tiny ImageNet with Accelerate, datasets and timm.

>>> from tiny_transformers import FinetuneConfig, finetune
>>> config = FinetuneConfig()  # the paper's recipe for ViT-L/16
>>> config.optim.lr
0.001
"""

import importlib

from .config import (
    AugmentConfig,
    DataConfig,
    DistillConfig,
    FinetuneConfig,
    HubConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    paper_config,
)
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    PublishError,
    TinyTransformersError,
    TrainingDiverged,
    TrainingInterrupted,
)

__version__ = "0.1.0"

__all__ = [
    "AugmentConfig",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataConfig",
    "DistillConfig",
    "FinetuneConfig",
    "FinetuneResult",
    "HubConfig",
    "ModelConfig",
    "ModelError",
    "OptimConfig",
    "PublishError",
    "TinyTransformersError",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "evaluate_checkpoint",
    "finetune",
    "paper_config",
    "run",
]


_LAZY = {"finetune": "train", "FinetuneResult": "train", "evaluate_checkpoint": "evaluation", "run": "cli"}


def __getattr__(name: str):
    # torch, timm and datasets load only when training or evaluation is asked for, so that
    # `--print-config` and config building stay instant.
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'tiny_transformers' has no attribute '{name}'")
