"""``model.train_mode lora`` through peft: low-rank adapters on the backbone's linear layers, the head(s) trained
whole (``modules_to_save``). Checkpoints hold peft's names; ``best/`` and ``last/`` hold plain timm weights
(:func:`plain_model`) and the adapter alone (:func:`save_adapter`). peft, an optional dependency, is imported only
here and only in LoRA mode.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import timm
import torch
from torch import nn

from .config import ModelConfig
from .errors import ConfigError, ModelError
from .paper import resolve_model_name
from .runfiles import writing

INSTALL = "pip install 'tiny_transformers[lora]'"


def require_peft() -> None:
    """Refuse LoRA mode in one sentence when peft is not installed (nothing is imported to find out).

    >>> require_peft()  # installed here
    """
    if importlib.util.find_spec("peft") is None:
        raise ConfigError(
            f"model.train_mode lora needs the peft library, which is not installed; install it with {INSTALL}."
        )


def head_names(model: nn.Module) -> list[str]:
    """The classifier head(s) the model's ``pretrained_cfg`` names: what LoRA mode trains whole.

    >>> head_names(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False))
    ['head', 'head_dist']
    """
    classifier = model.pretrained_cfg.get("classifier", "head")
    return list(classifier) if isinstance(classifier, (list, tuple)) else [classifier]


def target_names(model: nn.Module, targets: tuple[str, ...] | list[str]) -> list[str]:
    """Full names of the backbone's ``nn.Linear`` layers (heads excluded) whose last name is one of ``targets``.

    >>> target_names(timm.create_model("test_vit", pretrained=False), ("qkv", "proj"))[:3]
    ['blocks.0.attn.qkv', 'blocks.0.attn.proj', 'blocks.1.attn.qkv']
    """
    heads = head_names(model)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name.rsplit(".", 1)[-1] in targets
        and not any(name == head or name.startswith(f"{head}.") for head in heads)
    ]


def _require_targets(model: nn.Module, cfg: ModelConfig) -> list[str]:
    names = target_names(model, cfg.lora_targets)
    if not names:
        every = target_names(model, [n.rsplit(".", 1)[-1] for n, _ in model.named_modules()])  # heads left out
        linear = sorted({name.rsplit(".", 1)[-1] for name in every})
        raise ConfigError(
            f"model.lora_targets ({' '.join(cfg.lora_targets)}) names none of {cfg.name}'s linear layers (their last "
            f"names: {', '.join(linear)}); use some of them, e.g. --model.lora_targets {' '.join(linear)}."
        )
    return names


def check_targets(cfg: ModelConfig) -> None:
    """Refuse, before any data loads, ``model.lora_targets`` that name no linear layer of the model (on the meta
    device).

    >>> check_targets(ModelConfig(name="test_vit", train_mode="lora", lora_targets=("query",)))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tiny_transformers.errors.ConfigError: model.lora_targets (query) names none of test_vit's linear layers ...
    """
    if cfg.train_mode != "lora":
        return
    with torch.device("meta"):
        model = timm.create_model(resolve_model_name(cfg.name), pretrained=False, num_classes=2)
    _require_targets(model, cfg)


def add_lora(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """``model`` (changed in place) inside peft's ``PeftModel``: a LoRA adapter on each layer :func:`target_names`
    finds, the heads trained whole, the rest frozen; the adapters start at zero, so it computes what ``model`` did.

    >>> model = add_lora(timm.create_model("test_vit", pretrained=False, num_classes=4), ModelConfig(name="test_vit"))
    >>> sorted({n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_" in n})
    ['fc1', 'fc2', 'proj', 'qkv']
    """
    require_peft()
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=_require_targets(model, cfg),  # full names: exactly these layers, nothing peft guesses
        modules_to_save=head_names(model),
        bias="none",
    )
    return get_peft_model(model, config)


def is_lora(model: nn.Module) -> bool:
    """Whether ``model`` is a LoRA model of :func:`add_lora` (False without importing peft when it never was)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def plain_model(model: nn.Module) -> nn.Module:
    """The plain timm model of ``model``: itself, or a LoRA model's copy with its adapters merged (peft's
    ``merge_and_unload``); the LoRA model keeps training.

    >>> model = add_lora(timm.create_model("test_vit", pretrained=False, num_classes=4), ModelConfig(name="test_vit"))
    >>> plain_model(model).state_dict().keys() == timm.create_model("test_vit", num_classes=4).state_dict().keys()
    True
    """
    return copy.deepcopy(model).merge_and_unload() if is_lora(model) else model


def save_adapter(model: nn.Module, folder: Path) -> None:
    """Write the adapters and trained heads alone (peft's ``save_pretrained``), for ``PeftModel.from_pretrained``."""
    with writing(Path(folder) / "adapter_model.safetensors"):
        model.save_pretrained(str(folder))


def load_merged(model: nn.Module, weights_file: Path) -> nn.Module:
    """A LoRA checkpoint's weights (peft's names) loaded into ``model``, built as its run built it, and merged."""
    state = timm.models.load_state_dict(str(weights_file))
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ModelError(
            f"The LoRA checkpoint weights '{weights_file}' do not fit the model its trainer_state.json describes "
            f"({str(error).splitlines()[0][:120]}); evaluate the run's exported best/ or last/ instead."
        ) from error
    return model.merge_and_unload()
