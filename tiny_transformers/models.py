"""Building timm models for fine-tuning: name resolution, weights, the new head, head-only training, and full
fine-tuning's model side: gradient checkpointing and the frozen teacher of distillation."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from pathlib import Path

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from torch import nn

from . import hub
from .attention import use_fast_attention
from .config import ModelConfig
from .errors import ConfigError, ModelError
from .lora import add_lora, head_names
from .paper import PAPER_MODELS, resolve_model_name
from .rundir import CONFIG_FILE, WEIGHTS_FILE


def _timm_name(name: str) -> str:
    """``model.name`` resolved to a timm model name, or a ModelError suggesting close names."""
    timm_name = resolve_model_name(name)
    if timm.is_model(timm_name):
        return timm_name
    close = difflib.get_close_matches(timm_name, [*PAPER_MODELS, *timm.list_models()], n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else " See timm.list_models() for the names."
    raise ModelError(
        f"model.name '{timm_name}' is neither a paper model ({', '.join(PAPER_MODELS)}) nor a timm model.{hint}"
    )


def _create(timm_name: str, image_size: int, **kwargs) -> nn.Module:
    """timm.create_model at ``image_size`` when the architecture takes ``img_size`` (ViT, DeiT, CaiT, Swin...)."""
    try:
        return timm.create_model(timm_name, img_size=image_size, **kwargs)
    except TypeError as error:
        if "img_size" not in str(error):
            raise
        return timm.create_model(timm_name, **kwargs)


def _is_classifier_key(key: str, model: nn.Module) -> bool:
    return any(key.startswith(f"{name}.") for name in head_names(model))


def _load_weights_file(
    model: nn.Module, path: Path, keep_head: bool, trained_size: int | None = None, trained_head: bool = False
) -> None:
    """Load a .safetensors/.pth state dict; drop classifier weights whose shape no longer fits (1000 -> N classes).
    ``trained_size`` (when recorded) names a size mismatch's fix; ``trained_head`` (inference) refuses another size."""
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same sentence
        raise ModelError(f"model.checkpoint '{path}' could not be read as a weights file ({error}).") from error
    own = model.state_dict()
    if trained_head:
        _require_head(model, state, own, path)
    for key in list(state):
        if _is_classifier_key(key, model) and (not keep_head or own.get(key, state[key]).shape != state[key].shape):
            del state[key]
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        architecture = model.pretrained_cfg.get("architecture")
        key = mismatched[0]
        fix = f"use --data.image_size {trained_size}, the size it" if trained_size else "check model.name and the size"
        raise ModelError(
            f"model.checkpoint '{path}' does not fit {architecture} as built here ({key}: "
            f"{tuple(state[key].shape)} saved, {tuple(own[key].shape)} here); {fix} was trained at."
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _is_classifier_key(k, model)]
    if missing or unexpected:
        raise ModelError(
            f"model.checkpoint '{path}' does not fit {model.pretrained_cfg.get('architecture')}: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}) and {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}); check model.name."
        )


def _require_head(model: nn.Module, state: dict, own: dict, path: Path) -> None:
    """A trained model scores with its own head: one missing, or sized for another class count, is refused (a
    random head in its place would score as chance without a word)."""
    heads = [key for key in own if _is_classifier_key(key, model)]
    missing = [key for key in heads if key not in state]
    if missing:
        raise ModelError(
            f"The weights in '{path}' hold no classifier head ({missing[0]} is missing), so they cannot classify; "
            "give a trained folder (e.g. <output_dir>/best) or fine-tune them first with --model.checkpoint."
        )
    wrong = [key for key in heads if state[key].shape != own[key].shape]
    if wrong:
        raise ModelError(
            f"The weights in '{path}' have a head for {state[wrong[0]].shape[0]} classes and "
            f"{own[wrong[0]].shape[0]} are expected here (the data's classes, or config.json's num_classes); "
            "evaluate them on the data they were trained on, or fine-tune them on this data with "
            "tiny-transformers train --model.checkpoint."
        )


def build_model(
    cfg: ModelConfig, num_classes: int, image_size: int, trained_head: bool = False, teacher: str | None = None
) -> nn.Module:
    """The network with a fresh ``num_classes`` head at ``image_size``, its backbone frozen in head mode, LoRA
    adapters in lora mode; weights from ``cfg.checkpoint``, else the Hub's when ``cfg.pretrained``, else random.
    ``trained_head`` (inference) keeps the checkpoint's own head, which must have ``num_classes`` outputs; with a
    ``teacher``, a student without a distillation head is refused.

    >>> model = build_model(ModelConfig(name="test_vit", pretrained=False), num_classes=10, image_size=32)
    >>> sum(p.numel() for p in trainable_parameters(model))
    650
    """
    timm_name = _timm_name(cfg.name)
    kwargs = dict(num_classes=num_classes, drop_path_rate=cfg.drop_path_rate)
    checkpoint = Path(cfg.checkpoint).expanduser() if cfg.checkpoint else None
    if cfg.checkpoint and hub.hub_repo(cfg.checkpoint) is not None:  # pushed by this library (or any timm folder)
        checkpoint = hub.download_model(cfg.checkpoint)

    if checkpoint is not None and checkpoint.is_dir():
        model = _create_from_folder(checkpoint, timm_name, num_classes, image_size, kwargs)
    elif checkpoint is not None:
        model = _create(timm_name, image_size, pretrained=False, **kwargs)
        _load_weights_file(model, checkpoint, keep_head=True, trained_head=trained_head)
    elif cfg.pretrained:
        try:
            model = _create(timm_name, image_size, pretrained=True, **kwargs)
        except Exception as error:  # noqa: BLE001 - huggingface_hub raises several types when offline
            if hub.offline() or "connect" in str(error).lower() or "offline" in str(error).lower():
                raise ModelError(
                    f"Pretrained weights for '{timm_name}' must come from the Hugging Face Hub, which cannot be "
                    "reached; set model.checkpoint to a local .safetensors/.pth file or save_for_hf folder, "
                    "or model.pretrained false for random weights."
                ) from error
            raise
    else:
        model = _create(timm_name, image_size, pretrained=False, **kwargs)

    if cfg.head_init == "linear" and checkpoint is None:
        # the official code's new head: reset_classifier makes plain nn.Linear layers (PyTorch's default init)
        model.reset_classifier(num_classes)
    if cfg.fast_attention and not use_fast_attention(model):  # the module swap, before anything compiles it
        raise ConfigError(
            "model.fast_attention rewrites CaiT's talking-heads attention and Swin's window attention, and "
            f"{cfg.name} has neither; use --model.fast_attention false."
        )
    if cfg.train_mode == "head":
        freeze_backbone(model)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model, timm_name)
    if teacher:
        _require_distillation_head(model, cfg.name)
    if cfg.train_mode == "lora":  # last: the timm model, ready, inside peft's PeftModel (lora.py)
        model = add_lora(model, cfg)
    return model


def enable_grad_checkpointing(model: nn.Module, name: str) -> None:
    """timm's gradient checkpointing (activations recomputed in the backward pass); a model without it is refused.

    >>> model = timm.create_model("test_vit", pretrained=False)
    >>> enable_grad_checkpointing(model, "test_vit"); model.grad_checkpointing
    True
    """
    try:
        model.set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError, AttributeError, TypeError) as error:  # timm asserts 'not supported'
        raise ConfigError(
            f"model.grad_checkpointing is not supported by {name} in timm; use --model.grad_checkpointing false, "
            "or a model that has it (ViT, DeiT, CaiT, Swin)."
        ) from error


def has_distillation_head(model: nn.Module) -> bool:
    """Whether ``model`` can learn from a teacher: timm's distilled DeiT (``head_dist``, ``set_distilled_training``).

    >>> has_distillation_head(timm.create_model("test_vit", pretrained=False))
    False
    """
    return hasattr(model, "head_dist") and callable(getattr(model, "set_distilled_training", None))


def _require_distillation_head(model: nn.Module, name: str) -> None:
    if not has_distillation_head(model):
        raise ConfigError(
            f"distill.teacher needs a student with a distillation head (timm's distilled DeiT, e.g. deit_b_distilled) "
            f"and {name} has none; drop --distill.teacher or choose such a --model.name."
        )


def check_teacher(cfg: ModelConfig, teacher: str | None) -> None:
    """Refuse, before any data loads, a ``distill.teacher`` for a student without a distillation head (built on the
    meta device: shapes only).

    >>> check_teacher(ModelConfig(name="test_vit"), "outputs/swin_l/best")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tiny_transformers.errors.ConfigError: distill.teacher needs a student with a distillation head ...
    >>> check_teacher(ModelConfig(name="deit_tiny_distilled_patch16_224"), "outputs/swin_l/best")
    """
    if not teacher:
        return
    with torch.device("meta"):
        model = timm.create_model(_timm_name(cfg.name), pretrained=False, num_classes=2)
    _require_distillation_head(model, cfg.name)


def check_image_size(cfg: ModelConfig, image_size: int) -> None:
    """Refuse, before any data loads, an image size the model cannot see whole (timm crops what is left of a patch
    grid silently) or cannot run: built on the meta device (shapes only) and run once on an empty batch.

    >>> check_image_size(ModelConfig(name="test_vit", pretrained=False), 40)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tiny_transformers.errors.ConfigError: data.image_size 40 is not a multiple of ...; use 32 or 48.
    """
    timm_name = _timm_name(cfg.name)
    try:
        with torch.device("meta"):
            model = _create(timm_name, image_size, pretrained=False, num_classes=2)
    except Exception:  # noqa: BLE001 - build_model reports construction problems in its own words
        return
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch) if patch else None
    problem = f"is not a multiple of the {patch} px patches of {timm_name}" if patch and image_size % patch else None
    if problem is None:
        try:
            model(torch.empty(1, 3, image_size, image_size, device="meta"))
        except Exception as error:  # noqa: BLE001 - any failure at this size is the same mistake for the user
            problem = f"does not fit {timm_name} ({type(error).__name__}: {str(error).strip()[:100]})"
    if problem:
        step = patch or 32
        below = max(step, image_size // step * step)
        raise ConfigError(f"data.image_size {image_size} {problem}; use {below} or {below + step}.")


def _create_from_folder(folder: Path, timm_name: str, num_classes: int, image_size: int, kwargs: dict) -> nn.Module:
    """A folder written by timm's ``save_for_hf`` (this library's best/ and last/): keep its head if it fits."""
    config_file = folder / CONFIG_FILE
    weights = [folder / name for name in (WEIGHTS_FILE, "pytorch_model.bin") if (folder / name).exists()]
    if not config_file.exists() or not weights:
        raise ModelError(
            f"model.checkpoint '{folder}' is not a timm weights folder; it needs config.json and model.safetensors "
            "(as written by timm.models.save_for_hf or this library's best/ and last/)."
        )
    saved = json.loads(config_file.read_text())
    if saved.get("architecture") != timm_name:
        raise ModelError(
            f"model.checkpoint '{folder}' holds a '{saved.get('architecture')}' but model.name resolves to "
            f"'{timm_name}'; set --model.name {saved.get('architecture')}."
        )
    model = _create(timm_name, image_size, pretrained=False, **kwargs)
    trained_size = saved.get("pretrained_cfg", {}).get("input_size", [None])[-1]
    _load_weights_file(model, weights[0], keep_head=saved.get("num_classes") == num_classes, trained_size=trained_size)
    return model


def head_modules(model: nn.Module) -> list[nn.Module]:
    """The classifier head(s): one for most models, two for distilled DeiT (``head`` and ``head_dist``)."""
    head = model.get_classifier()
    return list(head) if isinstance(head, (tuple, list)) else [head]


def freeze_backbone(model: nn.Module) -> None:
    """Train only the classifier head(s), as the paper's official code does (every other weight frozen)."""
    model.requires_grad_(False)
    for module in head_modules(model):
        module.requires_grad_(True)


def trainable_parameters(model: nn.Module) -> Iterable[nn.Parameter]:
    return (p for p in model.parameters() if p.requires_grad)


def normalization(model: nn.Module | str, mode: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std): ImageNet's for every model (``imagenet``, the paper's choice) or the model's own (``model``:
    its timm pretrained_cfg), for a built model or a timm name.

    >>> normalization("vit_large_patch16_384", "model")
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    """
    if mode == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    cfg = model.pretrained_cfg if isinstance(model, nn.Module) else timm.models.get_pretrained_cfg(model).to_dict()
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in trainable_parameters(model))


def unwrap_logits(output: torch.Tensor | tuple) -> torch.Tensor:
    """Logits from a forward pass; distilled DeiT returns (head, head_dist) only in distillation training."""
    return (output[0] + output[1]) / 2 if isinstance(output, (tuple, list)) else output
