"""The paper's table as the recipe files run it: each recipe's own configuration measured on this machine and projected
to its whole run (issue 12's "projection you can trust").

A recipe is measured with what its ``config`` says, after any overrides: the model and its options
(``model.fast_attention``, ``model.backbone_dtype``, ``train.compile``), the training micro-batch and
``train.mixed_precision`` (the paper recipes' fp16 autocast with its gradient scaler), ``data.preprocess`` and the
augmentation (exact mode: the uint8 resize and RandAugment at full size on the device), and the evaluation at
``train.eval_batch_size`` in ``train.eval_precision`` (the paper recipes: fp32, as the official code evaluated).
Random weights, random 64x64 images; nothing is downloaded.

    python -m benchmarks --sections recipes                      # the four paper recipes as written
    python -m benchmarks --sections recipes --recipe-variants "" "train.eval_precision=autocast"

A variant is a space-separated list of ``field=value`` overrides (``""``: the recipes as written); one prefixed with a
recipe's file stem, ``cait_s36:model.fast_attention=true``, applies to that recipe alone.

Each head-mode recipe is projected three ways from the same measurements: as ``train.cache_features false`` runs it
(every pass through the backbone: ``projected_minutes``), with the feature cache (``cached``: the evaluation's
features computed at the first epoch, later evaluations the head alone; the training's too when nothing random
happens before the head), and as the ``probe`` ablation row would run it (training: one backbone pass in the first
epoch, then the head alone; evaluation as cached). A head-only pass is counted from its FLOPs, at the FLOP rate
measured for the whole pass it replaces (``head_passes``): a floor, which leaves out the per-step overhead
(launches, optimizer steps) that dominates such tiny passes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tiny_transformers.config import FinetuneConfig
from tiny_transformers.features import training_cache_off

from .throughput import (
    EVAL_IMAGES,
    TRAIN_IMAGES,
    Workload,
    inference_throughput,
    measure,
    projected_minutes,
    train_throughput,
)

PAPER_RECIPES = tuple(f"recipes/{name}.py" for name in ("vit_l", "cait_s36", "deit_b_distilled", "swin_l"))


def overrides_for(recipe: str | Path, variant: str) -> list[str]:
    """The command-line arguments that ``variant`` adds to ``recipe``: its plain overrides and those prefixed with
    the recipe's stem.

    >>> overrides_for("recipes/cait_s36.py", "train.compile=true cait_s36:model.fast_attention=true swin_l:x=1")
    ['--train.compile', 'true', '--model.fast_attention', 'true']
    """
    stem, args = Path(recipe).stem, []
    for item in variant.split():
        scope, _, assignment = item.rpartition(":")
        if scope and scope != stem:
            continue
        field, equals, value = assignment.partition("=")
        if not equals or not field:
            raise ValueError(f"recipe override '{item}' is not field=value (e.g. train.compile=true)")
        args += [f"--{field}", value]
    return args


def load_recipe(recipe: str | Path, overrides: Sequence[str] = ()) -> FinetuneConfig:
    """The ``config`` a recipe file defines, with ``overrides`` (command-line arguments) applied and validated, as
    ``accelerate launch RECIPE OVERRIDES`` would run it.

    >>> config = load_recipe("recipes/cait_s36.py", ["--train.mixed_precision", "bf16"])  # fp16 needs a GPU
    >>> config.train.micro_batch_size, config.train.eval_precision, config.data.preprocess
    (128, 'fp32', 'official')
    """
    from tiny_transformers.cli import parse_config
    from tiny_transformers.validation import validate

    path = Path(recipe)
    if not path.is_file():
        raise FileNotFoundError(
            f"recipe {path} does not exist in {Path.cwd()}; run from the repository root or give the recipe's path"
        )
    spec = importlib.util.spec_from_file_location(f"_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # a recipe runs only under `if __name__ == "__main__"`
    config, _ = parse_config(module.config, list(overrides), prog=str(path))
    validate(config, num_processes=1)
    return config


def recipe_throughput(
    recipe: str | Path,
    variant: str = "",
    steps: int = 10,
    warmup: int = 3,
    repeats: int = 3,
    device: Any = None,
    isolate: bool = False,
) -> dict[str, Any]:
    """One recipe's training step and evaluation pass as its config runs them, and its projected run; on a GPU also
    ``minutes_at_peak``, the run's FLOPs at the datasheet peaks (fp32's for an fp32 evaluation), and
    ``fraction_of_peak``, that over the projection.

    >>> r = recipe_throughput("recipes/deit_b_distilled.py", "model.name=test_vit data.image_size=32 "
    ...     "train.mixed_precision=no", steps=1, warmup=1, repeats=1, device="cpu")  # doctest: +SKIP
    >>> r["eval_precision"], r["projected_minutes"] > 0  # doctest: +SKIP
    ('fp32', True)
    """
    config = load_recipe(recipe, overrides_for(recipe, variant))
    m, t = config.model, config.train
    workload = Workload(
        m.name, t.micro_batch_size, config.data.image_size, device, t.mixed_precision, steps, warmup, repeats
    )
    workload = dataclasses.replace(workload, device=workload.torch_device())
    result: dict[str, Any] = {"recipe": str(recipe), "model": m.name, "variant": variant, "epochs": t.epochs}
    result["train"] = measure(
        train_throughput,
        workload,
        isolate,
        mode=m.train_mode,
        fused_optimizer=config.optim.fused,
        compile=t.compile,
        augment=config.augment,
        backbone_dtype=m.backbone_dtype,
        model_config=m,
        preprocess=config.data.preprocess,
    )
    eval_precision = "no" if t.eval_precision == "fp32" else t.mixed_precision
    result["eval_precision"] = "fp32" if eval_precision == "no" else eval_precision
    result["eval"] = measure(
        inference_throughput,
        dataclasses.replace(workload, micro_batch=t.eval_batch_size or t.micro_batch_size, precision=eval_precision),
        isolate,
        backbone_dtype=m.backbone_dtype,
        # train_mode head compiles forward_features as train.compile does in head mode; full mode compiles the model
        compile=t.compile and m.train_mode == "head",
        model_config=m,
    )
    train, evaluation = result["train"], result["eval"]
    if "error" in train or "error" in evaluation:
        return result
    result["projected_minutes"] = projected_minutes(train["images_per_s"], evaluation["images_per_s"], t.epochs)
    result["train_minutes"] = t.epochs * TRAIN_IMAGES / train["images_per_s"] / 60
    result["eval_minutes"] = t.epochs * EVAL_IMAGES / evaluation["images_per_s"] / 60
    if train["mfu"] is not None and evaluation["mfu"] is not None:
        # the same run at the datasheet peaks (fp32's for an fp32 evaluation: each MFU is against its precision's
        # peak), its floor on this GPU: a part's time at the peak is its measured time x its MFU
        result["minutes_at_peak"] = result["train_minutes"] * train["mfu"] + result["eval_minutes"] * evaluation["mfu"]
        result["fraction_of_peak"] = result["minutes_at_peak"] / result["projected_minutes"]
    if m.train_mode == "head" and t.cache_features:
        result["cached"] = cached_projection(
            train, evaluation, t.epochs, training_cached=training_cache_off(config) is None
        )
        result["probe"] = cached_projection(train, evaluation, t.epochs, training_cached=True)
    return result


def head_passes(epochs: int, flops_per_image: float, head_flops_per_image: float) -> float:
    """A run's passes over one split in units of a whole pass, when the features are computed once: the first
    epoch's whole pass, then ``epochs - 1`` passes of the head alone, each its share of the FLOPs.

    >>> head_passes(30, 100e9, 0.5e9)  # 1 + 29 x 0.005
    1.145
    """
    return 1 + (epochs - 1) * head_flops_per_image / flops_per_image


def cached_projection(
    train: dict[str, Any], evaluation: dict[str, Any], epochs: int, training_cached: bool
) -> dict[str, float]:
    """Minutes of a head-mode run with the feature cache, from the measured passes (``train_throughput``'s and
    ``inference_throughput``'s figures): the evaluation's features once (:func:`head_passes`), the training's too
    when ``training_cached``; with MFUs (a GPU), the same at the datasheet peaks.

    >>> train = {"images_per_s": 1000.0, "flops_per_image": 3e11, "head_flops_per_image": 6e8, "mfu": None}
    >>> evaluation = {"images_per_s": 500.0, "flops_per_image": 1e11, "head_flops_per_image": 1e8, "mfu": None}
    >>> round(cached_projection(train, evaluation, 30, training_cached=False)["eval_minutes"], 4)  # 20 s x 1.029
    0.343
    """
    train_passes = head_passes(epochs, train["flops_per_image"], train["head_flops_per_image"])
    eval_passes = head_passes(epochs, evaluation["flops_per_image"], evaluation["head_flops_per_image"])
    minutes = {
        "train_minutes": (train_passes if training_cached else epochs) * TRAIN_IMAGES / train["images_per_s"] / 60,
        "eval_minutes": eval_passes * EVAL_IMAGES / evaluation["images_per_s"] / 60,
    }
    minutes["projected_minutes"] = minutes["train_minutes"] + minutes["eval_minutes"]
    if train["mfu"] is not None and evaluation["mfu"] is not None:
        minutes["minutes_at_peak"] = (
            minutes["train_minutes"] * train["mfu"] + minutes["eval_minutes"] * evaluation["mfu"]
        )
    return minutes


def recipe_table(
    recipes: Sequence[str | Path] = PAPER_RECIPES,
    variants: Sequence[str] = ("",),
    on_progress: Callable[[list[dict[str, Any]]], None] | None = None,
    **measure_options: Any,
) -> list[dict[str, Any]]:
    """Every recipe under every variant, variant by variant; each variant's ``projected_table_minutes`` sums its
    recipes' projections (``complete``: all of them measured) and, on a GPU, ``table_minutes_at_peak`` what they would
    take at the datasheet peaks, ``table_fraction_of_peak`` the ratio of the two; ``cached`` and ``probe`` the same
    sums with the feature cache and as linear probes (head-mode recipes with ``train.cache_features``).
    ``on_progress`` gets the table after each recipe. A recipe that fails (a bad override, out of memory) is recorded
    with its error and the others go on."""
    table: list[dict[str, Any]] = []
    for variant in variants:
        entry: dict[str, Any] = {"variant": variant, "recipes": [], "projected_table_minutes": 0.0, "complete": False}
        table.append(entry)
        for recipe in recipes:
            try:
                result = recipe_throughput(recipe, variant, **measure_options)
            except Exception as error:  # noqa: BLE001 - one recipe's failure must not lose the others
                result = {"recipe": str(recipe), "variant": variant, "error": f"{type(error).__name__}: {error}"}
            entry["recipes"].append(result)
            done = [r for r in entry["recipes"] if "projected_minutes" in r]
            entry["projected_table_minutes"] = sum(r["projected_minutes"] for r in done)
            entry["complete"] = len(done) == len(recipes)
            if done and all("minutes_at_peak" in r for r in done):
                entry["table_minutes_at_peak"] = sum(r["minutes_at_peak"] for r in done)
                entry["table_fraction_of_peak"] = entry["table_minutes_at_peak"] / entry["projected_table_minutes"]
            for kind in ("cached", "probe"):  # the same table with the feature cache, and as linear probes
                parts = [r[kind] for r in done if kind in r]
                if parts:
                    entry[kind] = {"projected_table_minutes": sum(p["projected_minutes"] for p in parts)}
                    entry[kind]["complete"] = len(parts) == len(recipes)
                    if all("minutes_at_peak" in p for p in parts):
                        entry[kind]["table_minutes_at_peak"] = sum(p["minutes_at_peak"] for p in parts)
            if on_progress is not None:
                on_progress(table)
    return table
