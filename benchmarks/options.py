"""Options that may make GPUs faster: each measured against the default, same model, same run."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from tiny_transformers import backbone

from .data_path import data_path
from .machine import autocast
from .throughput import (
    Workload,
    build,
    frozen_backbone_dtype,
    inference_throughput,
    measure,
    model_config_for,
    train_throughput,
)

FP8_EVALUATION = "model.backbone_dtype fp8 (evaluation)"  # its effect also holds fp8_agreement's figures


def has_fast_attention(model: str) -> bool:
    """Whether ``model.fast_attention`` rewrites something in ``model`` (CaiT's talking heads, Swin's window
    attention), asked of the model built on the meta device: no memory, a fraction of a second.

    >>> has_fast_attention("cait_s36"), has_fast_attention("vit_l")
    (True, False)
    """
    from tiny_transformers.attention import use_fast_attention

    return use_fast_attention(build(model, "head", 384, torch.device("meta"))) > 0


def option_effects(
    workload: Workload,
    compile: bool = True,
    isolate: bool = False,
    on_effect: Callable[[dict], None] | None = None,
) -> list[dict[str, Any]]:
    """Full-mode training images/s with one option changed at a time against the defaults (the workload's
    precision, timm's fused attention on, unfused optimizer, no compile), each variant measured right after
    its own baseline run; ``speedup`` > 1 means the option is faster. ``compile``: torch.compile among them.
    ``on_effect`` gets each option's figures as soon as they are measured.

    >>> quick = Workload(device="cpu", precision="no", steps=1, warmup=1, repeats=1)
    >>> option_effects(quick, compile=False)[0]["option"]  # doctest: +SKIP
    'bf16 autocast instead of fp32'
    """
    workload = dataclasses.replace(workload, device=workload.torch_device())
    precision = workload.precision
    other_precision = "no" if precision != "no" else "bf16"
    # (option, the workload it changes, what it changes in train_throughput)
    variants: list[tuple[str, Workload, dict[str, Any]]] = [
        (
            f"fp32 instead of {precision}" if other_precision == "no" else "bf16 autocast instead of fp32",
            dataclasses.replace(workload, precision=other_precision),
            {},
        ),
        ("optim.fused (fused AdamW)", workload, dict(fused_optimizer=True)),
        ("timm fused attention off", workload, dict(fused_attention=False)),
    ]
    if compile:
        variants.append(("train.compile (torch.compile)", workload, dict(compile=True)))
    effects = []
    for name, changed, options in variants:
        baseline = measure(train_throughput, workload, isolate, mode="full")
        variant = measure(train_throughput, changed, isolate, mode="full", **options)
        if "error" in baseline or "error" in variant:
            effect = {"option": name, "error": baseline.get("error") or variant["error"]}
        else:
            effect = {
                "option": name,
                "model": workload.model,
                "micro_batch": workload.micro_batch,
                "precision": variant["precision"],
                "baseline_images_per_s": baseline["images_per_s"],
                "images_per_s": variant["images_per_s"],
                "speedup": variant["images_per_s"] / baseline["images_per_s"],
                "warmup_seconds": variant["warmup_seconds"],
                "baseline_peak_memory_gib": baseline["peak_memory_gib"],
                "peak_memory_gib": variant["peak_memory_gib"],
            }
        effects.append(effect)
        if on_effect is not None:
            on_effect(effect)
    return effects


def fp8_agreement(workload: Workload, batches: int = 4) -> dict[str, Any]:
    """How far ``model.backbone_dtype fp8``'s outputs are from bf16's (``model.backbone_dtype bf16``), the same
    weights on the same images: ``batches`` micro-batches of random normal images through ``workload.model`` with
    timm's random initialisation and a random 200-class head (nothing is downloaded). Reports the features' and the
    logits' relative error (norm of the difference over the norm of bf16's), the largest logit difference beside
    the logits' standard deviation, and the fraction of images whose top-1 class is the same.

    >>> fp8_agreement(Workload(device="cuda", precision="bf16"))["top1_agreement"]  # an fp8 GPU  # doctest: +SKIP
    0.99
    """
    device = workload.torch_device()
    bf16 = build(workload.model, "head", workload.image_size, device).eval()
    frozen_backbone_dtype(bf16, "bf16")
    fp8 = copy.deepcopy(bf16)
    frozen_backbone_dtype(fp8, "fp8")
    generator = torch.Generator().manual_seed(0)
    features: dict[str, list[torch.Tensor]] = {"bf16": [], "fp8": []}
    logits: dict[str, list[torch.Tensor]] = {"bf16": [], "fp8": []}
    with torch.inference_mode(), autocast(device, "bf16")():
        for _ in range(batches):
            images = torch.randn(workload.micro_batch, 3, workload.image_size, workload.image_size, generator=generator)
            for name, model in (("bf16", bf16), ("fp8", fp8)):
                x = model.forward_features(images.to(device))
                y = model.forward_head(x)
                features[name].append(x.flatten(1).float().cpu())
                logits[name].append((y[0] if isinstance(y, tuple) else y).float().cpu())  # distilled DeiT: a pair
    del bf16, fp8
    (f16, f8), (l16, l8) = ((torch.cat(each["bf16"]), torch.cat(each["fp8"])) for each in (features, logits))
    return {
        "images": len(l16),
        "weights": "random (timm's initialisation, random head)",
        "features_relative_error": ((f8 - f16).norm() / f16.norm()).item(),
        "logits_relative_error": ((l8 - l16).norm() / l16.norm()).item(),
        "logits_max_abs_difference": (l8 - l16).abs().max().item(),
        "logits_std": l16.std().item(),
        "top1_agreement": (l8.argmax(1) == l16.argmax(1)).float().mean().item(),
    }


def head_option_effects(
    workload: Workload,
    compile: bool = True,
    isolate: bool = False,
    on_effect: Callable[[dict], None] | None = None,
    eval_multiples: tuple[int, ...] = (2, 4),
    others: bool = True,
) -> list[dict[str, Any]]:
    """Head mode's options for one model, each against its default measured right before it in the same run
    (docs/benchmarks.md, "Head-mode options"): ``model.backbone_dtype`` bf16 against bf16 autocast of fp32 weights
    (training step), the evaluation batch at ``eval_multiples`` x the micro-batch against 1x (evaluation's forward,
    with its peak memory), ``model.fast_attention`` against timm's attention for CaiT and Swin (training step and
    evaluation), ``model.backbone_dtype`` fp8 against bf16 where this machine runs fp8 (training step, evaluation
    with :func:`fp8_agreement`'s figures under ``agreement``), then ``train.compile``'s backbone compile against
    eager, in the training step and in evaluation, and fp8 against bf16 both compiled (``warmup_seconds``: the
    first steps, mostly compiling). bf16 and fp8 options run under bf16 autocast whatever the workload's precision
    (they need it). ``speedup`` > 1 means the option is faster. ``others=False``
    measures the compile options only (``python -m benchmarks`` measures them after every model's other options).

    >>> quick = Workload(device="cpu", precision="no", steps=1, warmup=1, repeats=1)
    >>> [e["option"] for e in head_option_effects(quick, compile=False)][:2]  # doctest: +SKIP
    ['model.backbone_dtype bf16 (training step)', 'train.eval_batch_size 2x micro-batch (evaluation)']
    """
    workload = dataclasses.replace(workload, device=workload.torch_device())
    bf16 = dataclasses.replace(workload, precision="bf16")
    head = dict(mode="head")
    # (option, baseline measurement, its workload and options, variant measurement, its workload and options)
    variants: list[tuple[str, Callable, Workload, dict[str, Any], Workload, dict[str, Any]]] = []
    if others:
        variants += [
            (
                "model.backbone_dtype bf16 (training step)",
                train_throughput,
                bf16,
                head,
                bf16,
                dict(head, backbone_dtype="bf16"),
            ),
            (
                "model.backbone_dtype bf16 (evaluation)",
                inference_throughput,
                bf16,
                {},
                bf16,
                dict(backbone_dtype="bf16"),
            ),
        ]
        for multiple in eval_multiples:
            larger = dataclasses.replace(workload, micro_batch=workload.micro_batch * multiple)
            variants.append(
                (
                    f"train.eval_batch_size {multiple}x micro-batch (evaluation)",
                    inference_throughput,
                    workload,
                    {},
                    larger,
                    {},
                )
            )
        if has_fast_attention(workload.model):
            timms, fast = model_config_for(workload.model), model_config_for(workload.model, fast_attention=True)
            for part, measurement, options in (
                ("training step", train_throughput, head),
                ("evaluation", inference_throughput, {}),
            ):
                variants.append(
                    (
                        f"model.fast_attention ({part})",
                        measurement,
                        workload,
                        dict(options, model_config=timms),
                        workload,
                        dict(options, model_config=fast),
                    )
                )
    fp8 = backbone.fp8_unavailable() is None  # torchao and a GPU of compute capability 8.9+ (or a test's stand-in)
    if others and fp8:
        variants += [
            ("model.backbone_dtype fp8 (training step)", train_throughput, bf16, dict(head, backbone_dtype="bf16"),
             bf16, dict(head, backbone_dtype="fp8")),
            (FP8_EVALUATION, inference_throughput, bf16, dict(backbone_dtype="bf16"), bf16, dict(backbone_dtype="fp8")),
        ]  # fmt: skip
    if compile:  # last: each compiles first (the JSON keeps the rest if the run is cut short)
        variants.append(
            (
                "train.compile, head mode (training step)",
                train_throughput,
                workload,
                head,
                workload,
                dict(head, compile=True),
            )
        )
        variants.append(
            ("train.compile, head mode (evaluation)", inference_throughput, workload, {}, workload, dict(compile=True))
        )
    if compile and fp8:  # eager, each input's fp8 scale and cast are kernels of their own; torchao's examples compile
        variants.append(
            ("model.backbone_dtype fp8, compiled (evaluation)", inference_throughput, bf16,
             dict(backbone_dtype="bf16", compile=True), bf16, dict(backbone_dtype="fp8", compile=True))
        )  # fmt: skip
    effects = []
    for name, measurement, base_workload, base_options, changed, options in variants:
        baseline = measure(measurement, base_workload, isolate, **base_options)
        variant = measure(measurement, changed, isolate, **options)
        if "error" in baseline or "error" in variant:
            effect = {"option": name, "model": workload.model, "error": baseline.get("error") or variant["error"]}
        else:
            effect = {
                "option": name,
                "model": workload.model,
                "mode": "head",
                "micro_batch": variant["micro_batch"],
                "baseline_micro_batch": baseline["micro_batch"],
                "precision": variant["precision"],
                "baseline_images_per_s": baseline["images_per_s"],
                "images_per_s": variant["images_per_s"],
                "speedup": variant["images_per_s"] / baseline["images_per_s"],
                "warmup_seconds": variant.get("warmup_seconds", variant.get("first_seconds")),
                "baseline_warmup_seconds": baseline.get("warmup_seconds", baseline.get("first_seconds")),
                "baseline_peak_memory_gib": baseline["peak_memory_gib"],
                "peak_memory_gib": variant["peak_memory_gib"],
            }
        if name == FP8_EVALUATION:
            effect["agreement"] = measure(fp8_agreement, bf16, isolate)
        effects.append(effect)
        if on_effect is not None:
            on_effect(effect)
    return effects


def pin_memory_effect(num_workers: int, device: torch.device, **data_path_options: Any) -> dict[str, Any]:
    """Pinned host memory for the loader's batches: the library's data path (ready on the device) with it
    on and off, same run. ``data_path_options`` go to :func:`data_path` (batch size, repeats, ...)."""
    rates = [
        data_path(num_workers=num_workers, device=device, pin_memory=pin, sides=("library",), **data_path_options)[
            "ready"
        ]["library_images_per_s"]
        for pin in (True, False)
    ]
    return {
        "option": "pin_memory (library data path, ready on the device)",
        "num_workers": num_workers,
        "baseline_images_per_s": rates[1],
        "images_per_s": rates[0],
        "speedup": rates[0] / rates[1],
    }
