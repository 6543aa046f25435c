"""Trained weights as files: the folder this library exports (``best/``, ``last/``: timm's ``save_for_hf`` layout
plus what training recorded), and any trained-weights location read back: described, rebuilt for inference, or
loaded as the frozen teacher of distillation."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import timm
import torch
from torch import nn

from . import hub
from .checkpoint import checkpoint_labels, is_checkpoint, read_state
from .config import DataConfig, ModelConfig
from .errors import ConfigError, ModelError
from .lora import load_merged
from .models import IMAGENET_MEAN, IMAGENET_STD, build_model, head_modules, normalization
from .paper import resolve_model_name
from .rundir import CONFIG_FILE, WEIGHTS_FILE, RunDir
from .runfiles import read_json, write_atomic, writing

_DAMAGED_WEIGHTS = "copy the folder again from its run (best/ or last/), or export it anew (tiny-transformers export)"


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
    """Write ``model.safetensors`` + ``config.json``, loadable by ``timm.create_model("local-dir:<folder>", True)``,
    with the class ids and names, the preprocessing and (under ``tiny_transformers``, a key timm ignores) what else
    training recorded, so that ``predict`` and ``evaluate`` feed new images the same way."""
    with writing(Path(folder) / WEIGHTS_FILE):  # a full disk or read-only folder: one sentence naming the file
        timm.models.save_for_hf(
            model,
            str(folder),
            model_config={"label_names": list(class_ids), "label_descriptions": dict(zip(class_ids, class_names))},
            safe_serialization=True,
            data_config={
                "input_size": (3, image_size, image_size),
                "interpolation": "bicubic",
                "mean": tuple(mean),
                "std": tuple(std),
                "crop_pct": 1.0,
            },
        )
    # transformers' TimmWrapper passes both copies of num_classes to timm ("got multiple values for keyword argument
    # 'num_classes'"); timm's loader reads the top-level one, so model_args drops its copy
    config_file = Path(folder) / CONFIG_FILE
    config = read_json(config_file)
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
    write_atomic(config_file, json.dumps(config, indent=2))


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
    interpolation: str = "bicubic"  # the resize its images had (timm's pretrained_cfg); this library's is bicubic
    lora: dict | None = None  # a lora-mode training checkpoint's lora_* settings: its weights carry peft's names


def trained_folder(location: str | Path) -> Path:
    """The folder of trained weights ``location`` names: a run's output dir is read as its ``best/`` (``outputs/run``
    -> ``outputs/run/best``), any other path as it is."""
    folder = Path(location).expanduser()
    best = RunDir(folder).weights("best")
    if not (folder / WEIGHTS_FILE).is_file() and (best / WEIGHTS_FILE).is_file() and (best / CONFIG_FILE).is_file():
        return best
    return folder


def describe_trained_weights(location: str | Path) -> TrainedWeights:
    """Read an exported folder (timm ``save_for_hf``), a run's output dir (its ``best/``), a training checkpoint or
    ``hf-hub:owner/name`` (downloaded): ``model.checkpoint`` of ``evaluate`` and ``predict``. E.g.
    ``describe_trained_weights("outputs/run/best").timm_name`` is ``'vit_large_patch16_384'`` for a ViT-L run."""
    if hub.hub_repo(location) is not None:
        location = hub.download_model(str(location))
    folder = trained_folder(location)
    weights, config_file = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    if weights.is_file() and is_checkpoint(folder):  # a training checkpoint: its trainer state holds the config
        return _checkpoint_weights(folder)
    if weights.is_file() and config_file.is_file():
        return _folder_weights(folder)
    raise ModelError(
        f"model.checkpoint '{folder}' holds no trained model; give a run's output dir, an exported folder "
        "(model.safetensors + config.json, e.g. <output_dir>/best) or a training checkpoint "
        "(<output_dir>/checkpoints/step_...)."
    )


def _checkpoint_weights(folder: Path) -> TrainedWeights:
    """A training checkpoint's weights, described by its trainer state's config and its recorded classes."""
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
        timm_name=timm_name,
        weights_file=folder / WEIGHTS_FILE,
        image_size=saved["data"]["image_size"],
        mean=mean,
        std=std,
        class_ids=class_ids,
        class_names=class_names,
        num_classes=len(class_ids) if class_ids else None,
        native_size=saved["data"]["native_size"],
        mixed_precision=saved["train"]["mixed_precision"],
        preprocess=saved["data"].get("preprocess"),  # absent before the official preprocessing existed
        eval_precision=saved["train"].get("eval_precision"),
        lora={k: v for k, v in saved["model"].items() if k.startswith("lora_")}
        if saved["model"].get("train_mode") == "lora"
        else None,
    )


def _folder_weights(folder: Path) -> TrainedWeights:
    """A timm ``save_for_hf`` folder's weights (this library's exports record more in ``tiny_transformers``)."""
    saved = read_json(folder / CONFIG_FILE, fix=_DAMAGED_WEIGHTS)
    pretrained_cfg = saved.get("pretrained_cfg", {})
    labels = saved.get("label_names")
    labels = list(labels) if isinstance(labels, (list, tuple)) else None
    descriptions = saved.get("label_descriptions") or {}
    recorded = saved.get("tiny_transformers", {})  # written by save_for_timm
    return TrainedWeights(
        timm_name=saved["architecture"],
        weights_file=folder / WEIGHTS_FILE,
        image_size=int(pretrained_cfg.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(pretrained_cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(pretrained_cfg.get("std", IMAGENET_STD)),
        class_ids=labels,
        class_names=[descriptions.get(label, label) for label in labels] if labels else None,
        num_classes=saved.get("num_classes"),
        native_size=recorded.get("native_size"),
        mixed_precision=recorded.get("mixed_precision"),
        preprocess=recorded.get("preprocess"),
        eval_precision=recorded.get("eval_precision"),
        interpolation=str(pretrained_cfg.get("interpolation") or "bicubic"),
    )


def build_trained_model(weights: TrainedWeights, num_classes: int | None = None) -> nn.Module:
    """The model in ``weights`` with its trained head, for inference (no drop path); ``num_classes`` defaults to
    the recorded one, and a head of another size is refused, whatever config.json says. E.g.
    ``build_trained_model(describe_trained_weights("outputs/run/best")).eval()``."""
    classes = num_classes if num_classes is not None else weights.num_classes
    cfg = ModelConfig(name=weights.timm_name, pretrained=False, train_mode="full", drop_path_rate=0.0)
    if weights.lora is not None:  # a lora checkpoint: built as its run built it, loaded, adapters merged (lora.py)
        lora = build_model(replace(cfg, train_mode="lora", **weights.lora), classes, weights.image_size)
        return load_merged(lora, weights.weights_file)
    return build_model(
        replace(cfg, checkpoint=str(weights.weights_file)), classes, weights.image_size, trained_head=True
    )


class TeacherInput(nn.Module):
    """The teacher behind a per-channel affine map from the student's normalised batch to its own normalisation:
    ``(x * std_s + mean_s - mean_t) / std_t`` (the same image in [0, 1], normalised as the teacher was trained).

    >>> teacher = TeacherInput(nn.Identity(), ((0.5,) * 3, (0.5,) * 3), ((0.0,) * 3, (1.0,) * 3))
    >>> teacher(torch.zeros(1, 3, 1, 1)).flatten().tolist()  # the student's 0 is grey 0.5, which is the teacher's 0
    [0.5, 0.5, 0.5]
    """

    def __init__(self, model: nn.Module, student: tuple[tuple, tuple], teacher: tuple[tuple, tuple]) -> None:
        super().__init__()
        self.model = model
        (mean_s, std_s), (mean_t, std_t) = (
            tuple(torch.tensor(v, dtype=torch.float64) for v in p) for p in (student, teacher)
        )
        self.register_buffer("scale", (std_s / std_t).float().view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean_s - mean_t) / std_t).float().view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor):
        return self.model(torch.addcmul(self.shift, x, self.scale))


def build_teacher(
    location: str,
    num_classes: int,
    image_size: int,
    class_ids: list[str] | None = None,
    student: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    preprocess: str | None = None,
    native_size: int | None = None,
) -> nn.Module:
    """The frozen, eval-mode teacher of distillation, e.g. ``build_teacher("outputs/swin_l/best", 200, 384)``: any
    location :func:`describe_trained_weights` reads, or a timm model name (its pretrained weights). Refused when its
    classes, label order or inputs differ from the student's (:func:`_check_teacher`); another mean/std than
    ``student``'s is converted on the device (:class:`TeacherInput`)."""
    what = f"distill.teacher '{location}'"
    folder = Path(location).expanduser()
    if hub.hub_repo(location) is not None or folder.exists():
        if folder.is_dir() and not (trained_folder(folder) / WEIGHTS_FILE).is_file():
            inside = [name for name in ("last", "export") if (folder / name / WEIGHTS_FILE).is_file()]
            hint = f" (this looks like a run folder: use {folder / inside[0]})" if inside else ""
            raise ModelError(
                f"{what} holds no trained model; give a run's exported folder (e.g. outputs/swin_l/best), a training "
                f"checkpoint folder, hf-hub:owner/name or a timm model name{hint}."
            )
        weights = describe_trained_weights(location)
        _check_teacher(what, weights, num_classes, image_size, class_ids, preprocess, native_size)
        model = build_trained_model(weights, num_classes)
        own = (weights.mean, weights.std)
    elif timm.is_model(resolve_model_name(location)):
        model = _timm_teacher(what, resolve_model_name(location), num_classes, image_size)
        own = normalization(model, "model")
    else:
        raise ModelError(
            f"{what} is neither a trained folder, a training checkpoint, hf-hub:owner/name nor a timm model name; "
            "give e.g. outputs/swin_l/best."
        )
    if student is not None and tuple(map(tuple, student)) != tuple(map(tuple, own)):
        model = TeacherInput(model, student, own)
    return model.requires_grad_(False).eval()


def _check_teacher(
    what: str,
    weights: TrainedWeights,
    num_classes: int,
    image_size: int,
    class_ids: list[str] | None,
    preprocess: str | None,
    native_size: int | None,
) -> None:
    """build_teacher's refusals for a trained teacher: what its recording says it cannot be given."""
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
    for name, theirs, ours in (
        ("preprocess", weights.preprocess or "default", preprocess),
        ("native_size", weights.native_size, native_size),
    ):
        if ours is not None and theirs is not None and theirs != ours:
            raise ConfigError(
                f"{what} was trained with data.{name} {theirs} and the student uses {ours}, which its batch "
                f"cannot be converted from; use --data.{name} {theirs} or a teacher trained with {ours}."
            )
    if weights.interpolation != "bicubic":
        raise ConfigError(
            f"{what} records {weights.interpolation} resizing and the student's images are upscaled bicubic, "
            "which its batch cannot be converted from; give a teacher fine-tuned with bicubic resizing (as "
            "this library's runs are)."
        )


def _timm_teacher(what: str, timm_name: str, num_classes: int, image_size: int) -> nn.Module:
    """A timm model name as teacher: its pretrained weights, refused unless they fit the data's classes and size."""
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
    return build_model(cfg, num_classes, image_size)


def load_probe_head(
    model: nn.Module, location: str | Path, model_name: str, class_ids: list[str], data: DataConfig
) -> Path:
    """Put the trained head(s) of a head-mode run (``model.head_from``: a run folder, read as its ``best/``, or an
    exported folder) into ``model`` on its pretrained backbone, so fine-tuning starts where the probe ended; returns
    that folder. Refused in one sentence: no weights, a full run, another model, classes, inputs or head shape."""
    folder = trained_folder(location)
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        raise ConfigError(
            f"model.head_from '{location}' holds no trained head (no {WEIGHTS_FILE} and {CONFIG_FILE}); give the "
            f"output_dir of a finished head-mode run (`tiny-transformers train {model_name}` writes "
            f"outputs/{model_name})."
        )
    run = RunDir(folder.parent)  # best/ or last/ inside its run folder: the run's config says how it trained
    if run.config.is_file() and run.read_config().model.train_mode != "head":
        raise ConfigError(
            f"model.head_from '{location}' is a full fine-tuning run, whose head fits its own trained backbone, not "
            "the pretrained one; give a head-mode run (a probe: model.train_mode head)."
        )
    probe, timm_name = describe_trained_weights(folder), resolve_model_name(model_name)
    if probe.timm_name != timm_name:
        raise ConfigError(
            f"model.head_from '{location}' is a head of {probe.timm_name} and this run trains {timm_name}; give a "
            f"probe of {model_name}."
        )
    if probe.class_ids is not None and list(probe.class_ids) != list(class_ids):
        raise ConfigError(
            f"model.head_from '{location}' was trained on {len(probe.class_ids)} classes that are not this data's "
            f"{len(class_ids)} (ids or order differ); give a probe trained on the same data.source."
        )
    _check_probe_inputs(location, probe, model, data)
    heads = {id(module) for module in head_modules(model)}
    prefixes = tuple(f"{name}." for name, module in model.named_modules() if id(module) in heads)
    own = {key: value for key, value in model.state_dict().items() if key.startswith(prefixes)}
    saved = timm.models.load_state_dict(str(probe.weights_file))
    wrong = [key for key in own if key not in saved or saved[key].shape != own[key].shape]
    if wrong:
        shape = tuple(saved[wrong[0]].shape) if wrong[0] in saved else "missing"
        raise ConfigError(
            f"model.head_from '{location}' has no head that fits this model ({wrong[0]}: {shape} there, "
            f"{tuple(own[wrong[0]].shape)} here); give a probe of the same model and classes."
        )
    model.load_state_dict({key: saved[key] for key in own}, strict=False)
    return folder


def _check_probe_inputs(location: str | Path, probe: TrainedWeights, model: nn.Module, data: DataConfig) -> None:
    """load_probe_head's refusal of a probe fitted to other inputs than ``data``'s (size, preprocessing, mean/std)."""
    mean, std = normalization(model, data.normalization)
    inputs = {  # what the probe recorded -> what this run feeds; a field the probe did not record is not compared
        "data.image_size": (probe.image_size, data.image_size),
        "data.native_size": (probe.native_size, data.native_size),
        "data.preprocess": (probe.preprocess, data.preprocess),
        "data.normalization (mean, std)": ((probe.mean, probe.std), (mean, std)),
    }
    differ = [f"{name} {was} there, {now} here" for name, (was, now) in inputs.items() if was not in (None, now)]
    if differ:
        raise ConfigError(
            f"model.head_from '{location}' was fitted to other inputs than this run's ({'; '.join(differ)}); set "
            "those data fields as the probe's, so its head sees the features it was trained on."
        )
