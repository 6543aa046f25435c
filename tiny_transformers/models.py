"""Building timm models for fine-tuning: name resolution, weights, the new head, head-only training, and full
fine-tuning's model side: gradient checkpointing and the frozen teacher of distillation."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from . import hub
from .checkpoint import checkpoint_labels, is_checkpoint, read_state
from .config import ModelConfig
from .errors import ConfigError, ModelError
from .paper import PAPER_MODELS, resolve_model_name
from .rundir import CONFIG_FILE, WEIGHTS_FILE, RunDir

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_name(timm_name: str) -> None:
    if timm.is_model(timm_name):
        return
    known = list(PAPER_MODELS) + timm.list_models()
    close = difflib.get_close_matches(timm_name, known, n=3, cutoff=0.6)
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
    classifier = model.pretrained_cfg.get("classifier", "head")
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    return any(key.startswith(f"{name}.") for name in names)


def _load_weights_file(model: nn.Module, path: Path, keep_head: bool, trained_size: int | None = None) -> None:
    """Load a .safetensors/.pth state dict; drop classifier weights whose shape no longer fits (1000 -> N classes).

    ``trained_size`` (the image size the weights were trained at, when recorded) names the fix of a size mismatch.
    """
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same sentence
        raise ModelError(f"model.checkpoint '{path}' could not be read as a weights file ({error}).") from error
    own = model.state_dict()
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


def build_model(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    """Create the network with a fresh ``num_classes`` head at ``image_size``; freeze the backbone in head mode.

    Weights: ``cfg.checkpoint`` if given, else the Hub's pretrained weights when ``cfg.pretrained``, else random.

    >>> model = build_model(ModelConfig(name="test_vit", pretrained=False), num_classes=10, image_size=32)
    >>> sum(p.numel() for p in trainable_parameters(model))
    650
    """
    timm_name = resolve_model_name(cfg.name)
    _check_name(timm_name)
    kwargs = dict(num_classes=num_classes, drop_path_rate=cfg.drop_path_rate)
    checkpoint = Path(cfg.checkpoint).expanduser() if cfg.checkpoint else None
    if cfg.checkpoint and cfg.checkpoint.startswith("hf-hub:"):  # a model pushed by this library (or any timm folder)
        checkpoint = hub.download_model(cfg.checkpoint)

    if checkpoint is not None and checkpoint.is_dir():
        model = _create_from_folder(checkpoint, timm_name, num_classes, image_size, kwargs)
    elif checkpoint is not None:
        model = _create(timm_name, image_size, pretrained=False, **kwargs)
        _load_weights_file(model, checkpoint, keep_head=True)
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
    if cfg.train_mode == "head":
        freeze_backbone(model)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model, timm_name)
    if cfg.teacher:
        _require_distillation_head(model, cfg.name)
    return model


def enable_grad_checkpointing(model: nn.Module, name: str) -> None:
    """timm's gradient checkpointing: each block's activations are recomputed in the backward pass instead of kept
    (the same gradients, less memory, about one more forward of compute); a model without it is refused.

    >>> model = timm.create_model("test_vit", pretrained=False)
    >>> enable_grad_checkpointing(model, "test_vit"); model.grad_checkpointing
    True
    """
    setter = getattr(model, "set_grad_checkpointing", None)
    try:
        if setter is None:
            raise NotImplementedError(name)
        setter(True)
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
            f"model.teacher needs a student with a distillation head (timm's distilled DeiT, e.g. deit_b_distilled) "
            f"and {name} has none; drop --model.teacher or choose such a --model.name."
        )


def check_teacher(cfg: ModelConfig) -> None:
    """Refuse, before any data loads, a ``model.teacher`` for a student without a distillation head (built on the
    meta device: shapes only, well under a second). Nothing to check without a teacher.

    >>> check_teacher(ModelConfig(name="test_vit", teacher="outputs/swin_l/best"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tiny_transformers.errors.ConfigError: model.teacher needs a student with a distillation head ...
    >>> check_teacher(ModelConfig(name="deit_tiny_distilled_patch16_224", teacher="outputs/swin_l/best"))
    """
    if not cfg.teacher:
        return
    timm_name = resolve_model_name(cfg.name)
    _check_name(timm_name)
    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False, num_classes=2)
    _require_distillation_head(model, cfg.name)


def build_teacher(location: str, num_classes: int, image_size: int, class_ids: list[str] | None = None) -> nn.Module:
    """The frozen (no parameter requires grad), eval-mode teacher of distillation, from a trained folder (this
    library's ``best/``, ``last/``, ``export/``, or any timm ``save_for_hf`` folder), a training checkpoint folder,
    ``hf-hub:owner/name``, or a timm model name (its pretrained ImageNet weights, from the Hub).

    Refused, one sentence each: a teacher with another number of classes than the data (a timm ImageNet model has
    1000), trained at another image size than ``image_size``, or (with ``class_ids``, the data's label order) whose
    recorded classes are other classes or in another order, which would make its answers wrong labels.

    >>> teacher = build_teacher("outputs/swin_l/best", num_classes=200, image_size=384)  # doctest: +SKIP
    >>> teacher.training, any(p.requires_grad for p in teacher.parameters())  # doctest: +SKIP
    (False, False)
    """
    what = f"model.teacher '{location}'"
    folder = Path(location).expanduser()
    if location.startswith("hf-hub:") or folder.exists():
        if folder.is_dir() and not (folder / WEIGHTS_FILE).is_file():
            inside = [name for name in ("best", "last", "export") if (folder / name / WEIGHTS_FILE).is_file()]
            hint = f" (this looks like a run folder: use {folder / inside[0]})" if inside else ""
            raise ModelError(
                f"{what} holds no trained model; give a run's exported folder (e.g. outputs/swin_l/best), a training "
                f"checkpoint folder, hf-hub:owner/name or a timm model name{hint}."
            )
        weights = describe_trained_weights(location)
        if weights.num_classes != num_classes:
            raise ConfigError(
                f"{what} predicts {weights.num_classes} classes and the data has {num_classes}; the teacher must be "
                "trained on the same classes (e.g. outputs/swin_l/best of a run on this data)."
            )
        if class_ids is not None and weights.class_ids is not None and list(weights.class_ids) != list(class_ids):
            raise ConfigError(
                f"{what} was trained on other classes or another label order than this data (e.g. its first class "
                f"is {weights.class_ids[0]}, the data's {class_ids[0]}); give a teacher trained on this data."
            )
        if weights.image_size != image_size:
            raise ConfigError(
                f"{what} was trained at {weights.image_size} px and the student sees {image_size} px; use "
                f"--data.image_size {weights.image_size} or a teacher trained at {image_size} px."
            )
        model = build_trained_model(weights, num_classes)
    elif timm.is_model(resolve_model_name(location)):
        timm_name = resolve_model_name(location)
        pretrained = timm.models.get_pretrained_cfg(timm_name)
        classes = getattr(pretrained, "num_classes", num_classes)
        size = int(getattr(pretrained, "input_size", (3, image_size, image_size))[-1])
        if classes != num_classes:
            raise ConfigError(
                f"{what} is timm's ImageNet model with {classes} classes and the data has {num_classes}; fine-tune "
                "it on this data first (e.g. python recipes/full/swin_l.py) and pass that run's best/ folder."
            )
        if size != image_size:
            raise ConfigError(
                f"{what} was trained at {size} px and the student sees {image_size} px; use --data.image_size "
                f"{size} or a teacher trained at {image_size} px."
            )
        cfg = ModelConfig(name=timm_name, pretrained=True, train_mode="full", drop_path_rate=0.0)
        model = build_model(cfg, num_classes, image_size)
    else:
        raise ModelError(
            f"{what} is neither a trained folder, a training checkpoint, hf-hub:owner/name nor a timm model name; "
            "give e.g. outputs/swin_l/best."
        )
    model.requires_grad_(False)
    return model.eval()


def check_image_size(cfg: ModelConfig, image_size: int) -> None:
    """Refuse, before any data loads, an image size the model cannot see whole: a ViT at 40 px with 16 px patches
    would never see its last 8 rows and columns (timm crops them silently), other sizes fail only after loading.

    The model is built on PyTorch's meta device (shapes only: no memory, no weights, well under a second for the
    four paper models) and run once on an empty batch of that size.

    >>> check_image_size(ModelConfig(name="test_vit", pretrained=False), 40)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tiny_transformers.errors.ConfigError: data.image_size 40 is not a multiple of ...; use 32 or 48.
    """
    timm_name = resolve_model_name(cfg.name)
    _check_name(timm_name)
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


def save_for_timm(
    model: nn.Module,
    folder: Path,
    class_ids: list[str],
    class_names: list[str],
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    native_size: int | None = None,
    mixed_precision: str | None = None,
    weights: str | None = None,
    preprocess: str | None = None,
    eval_precision: str | None = None,
) -> None:
    """Write ``model.safetensors`` + ``config.json``, loadable by ``timm.create_model("local-dir:<folder>", True)``.

    The config carries the class ids, readable names and the preprocessing used in training; with
    ``native_size`` and ``mixed_precision``, also the size images were decoded to before upscaling and the
    autocast used in training (under ``tiny_transformers``, a key timm and transformers ignore), so
    ``predict`` and ``evaluate`` feed new images the same way and reproduce the run's numbers.
    """
    descriptions = dict(zip(class_ids, class_names))
    timm.models.save_for_hf(
        model,
        str(folder),
        model_config={"label_names": list(class_ids), "label_descriptions": descriptions},
        safe_serialization=True,
        data_config={
            "input_size": (3, image_size, image_size),
            "interpolation": "bicubic",
            "mean": tuple(mean),
            "std": tuple(std),
            "crop_pct": 1.0,
        },
    )
    # timm records num_classes both at the top of config.json and inside model_args; transformers'
    # TimmWrapper passes both to timm.create_model and fails ("got multiple values for keyword argument
    # 'num_classes'"). The top-level value is the one timm's loader reads, so model_args drops its copy.
    config_file = Path(folder) / CONFIG_FILE
    config = json.loads(config_file.read_text())
    config.get("model_args", {}).pop("num_classes", None)
    recorded = {
        "native_size": native_size,
        "mixed_precision": mixed_precision,
        "weights": weights,
        "preprocess": preprocess,
        "eval_precision": eval_precision,
    }
    if any(value is not None for value in recorded.values()):
        config["tiny_transformers"] = {k: v for k, v in recorded.items() if v is not None}
    config_file.write_text(json.dumps(config, indent=2))


def unwrap_logits(output: torch.Tensor | tuple) -> torch.Tensor:
    """Logits from a forward pass; distilled DeiT returns (head, head_dist) only in distillation training."""
    if isinstance(output, (tuple, list)):
        return (output[0] + output[1]) / 2
    return output


@dataclass(frozen=True)
class TrainedWeights:
    """What a trained-weights location says about the model it holds and how it was fed."""

    timm_name: str
    weights_file: Path
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_ids: list[str] | None  # the label order the head was trained with, when recorded
    class_names: list[str] | None = None  # readable names in the same order, when recorded
    num_classes: int | None = None
    native_size: int | None = None  # images were decoded to this size before upscaling, when recorded
    mixed_precision: str | None = None  # the autocast of training, when recorded
    preprocess: str | None = None  # data.preprocess of training (official: the uint8 resize), when recorded
    eval_precision: str | None = None  # fp32 when the run evaluated without autocast, when recorded


def describe_trained_weights(location: str | Path) -> TrainedWeights:
    """Read an exported folder (``best/``, ``last/``, ``export/``, timm ``save_for_hf``), a training checkpoint
    folder, or a model on the Hub (``hf-hub:owner/name``, downloaded to the Hugging Face cache).

    >>> describe_trained_weights("outputs/run/best").timm_name  # doctest: +SKIP
    'vit_large_patch16_384'
    """
    if str(location).startswith("hf-hub:"):
        location = hub.download_model(str(location))
    folder = Path(location).expanduser()
    weights, config_file = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    if weights.is_file() and is_checkpoint(folder):  # a training checkpoint: its trainer state holds the config
        _, saved = read_state(folder)
        # the checkpoint's own record; older checkpoints only have their run folder's labels.json, two levels up
        labels = checkpoint_labels(folder) or RunDir.of_checkpoint(folder).read_labels()
        if labels is None:
            raise ModelError(
                f"Checkpoint '{folder}' does not record its classes and has no labels.json two folders up (it was "
                "copied out of its run folder); evaluate the run's exported best/ or last/ instead, or put the "
                "checkpoint back under <output_dir>/checkpoints/."
            )
        class_ids, class_names = labels
        timm_name = resolve_model_name(saved["model"]["name"])
        mean, std = normalization(timm_name, saved["data"]["normalization"])
        return TrainedWeights(
            timm_name,
            weights,
            saved["data"]["image_size"],
            mean,
            std,
            class_ids,
            class_names,
            len(class_ids) if class_ids else None,
            saved["data"]["native_size"],
            saved["train"]["mixed_precision"],
            saved["data"].get("preprocess"),  # absent before the official preprocessing existed
            saved["train"].get("eval_precision"),
        )
    if weights.is_file() and config_file.is_file():
        saved = json.loads(config_file.read_text())
        pretrained_cfg = saved.get("pretrained_cfg", {})
        labels = saved.get("label_names")
        labels = list(labels) if isinstance(labels, (list, tuple)) else None
        descriptions = saved.get("label_descriptions") or {}
        recorded = saved.get("tiny_transformers", {})  # written by save_for_timm
        return TrainedWeights(
            saved["architecture"],
            weights,
            int(pretrained_cfg.get("input_size", (3, 224, 224))[-1]),
            tuple(pretrained_cfg.get("mean", IMAGENET_MEAN)),
            tuple(pretrained_cfg.get("std", IMAGENET_STD)),
            labels,
            [descriptions.get(label, label) for label in labels] if labels else None,
            saved.get("num_classes"),
            recorded.get("native_size"),
            recorded.get("mixed_precision"),
            recorded.get("preprocess"),
            recorded.get("eval_precision"),
        )
    raise ModelError(
        f"model.checkpoint '{folder}' holds no trained model; give an exported folder (model.safetensors + "
        "config.json, e.g. <output_dir>/best) or a training checkpoint (<output_dir>/checkpoints/step_...)."
    )


def build_trained_model(weights: TrainedWeights, num_classes: int | None = None) -> nn.Module:
    """The model in ``weights`` with its trained head, for inference (no drop path); ``num_classes`` defaults to
    the recorded one.

    >>> model = build_trained_model(describe_trained_weights("outputs/run/best")).eval()  # doctest: +SKIP
    """
    cfg = ModelConfig(
        name=weights.timm_name,
        pretrained=False,
        checkpoint=str(weights.weights_file),
        train_mode="full",
        drop_path_rate=0.0,
    )
    return build_model(cfg, num_classes if num_classes is not None else weights.num_classes, weights.image_size)
