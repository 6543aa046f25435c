"""``evaluate_checkpoint(config)``: the scores of any trained model on a dataset, fed and scored as in training (as
its folder records: image size, normalization, preprocessing, autocast, classes).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from accelerate import Accelerator

from . import metrics
from .augment import BatchAugment
from .config import AugmentConfig, FinetuneConfig
from .data import load_data
from .engine import check_process_precision, eval_loader, evaluate
from .errors import ConfigError, DataError, raised_on_every_process
from .validation import validate
from .weights import TrainedWeights, build_trained_model, describe_trained_weights


def evaluate_checkpoint(config: FinetuneConfig, mixed_precision: str | None = None) -> dict[str, Any]:
    """Top-1, top-5 and loss of the trained model at ``config.model.checkpoint`` (an exported folder, a run's output
    dir, a training checkpoint or ``hf-hub:owner/name``) on ``config.data``'s eval split, with per-image
    ``predictions``, ``references`` and the ``class_ids``/``class_names`` they index; refuses other classes.

    ``mixed_precision`` (``bf16``, ``fp16``, ``no``): by default the autocast the weights record (:func:`_precision`),
    so that the run's own numbers come back; ``config.train.mixed_precision`` only when they record none.

    >>> cfg = FinetuneConfig()
    >>> cfg.model.checkpoint, cfg.data.source = "outputs/run/best", "./tiny-imagenet-200"
    >>> evaluate_checkpoint(cfg)["top1"]  # doctest: +SKIP
    86.5
    """
    with raised_on_every_process():  # before the process group exists every process checks the same things
        if not config.model.checkpoint:
            raise ConfigError(
                "evaluate needs --model.checkpoint: a run's output dir (its best/), an exported folder (e.g. "
                "outputs/run/last) or a checkpoint."
            )
        weights = describe_trained_weights(config.model.checkpoint)
        precision, source = _precision(mixed_precision, weights, config)
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, mixed_precision=precision))
        validate(config)
        check_process_precision(precision, source, fix="pass mixed_precision='{current}' to evaluate_checkpoint,")
        data = load_data(config.data)
        if weights.class_ids is not None and list(weights.class_ids) != list(data.class_ids):
            raise DataError(
                f"The classes of data.source '{config.data.source}' ({data.num_classes}, starting "
                f"{data.class_ids[:3]}) are not the {len(weights.class_ids)} classes model.checkpoint was trained on "
                f"(starting {weights.class_ids[:3]}); evaluate on the dataset it was trained with."
            )
        model = build_trained_model(weights, data.num_classes)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
    # decoded as in training: the run recorded its native size (64 for Tiny ImageNet)
    loader = eval_loader(data, config, weights.native_size or config.data.native_size, accelerator)
    model, loader = accelerator.prepare(model, loader)
    preprocess = weights.preprocess or "default"
    augment = BatchAugment(
        weights.image_size, weights.mean, weights.std, data.num_classes, AugmentConfig(), accelerator.device, preprocess
    )
    scores = metrics.TopKAccuracy(k=min(5, data.num_classes))  # an `evaluate` Metric: the same numbers as training's
    result = evaluate(accelerator, model, loader, augment, data.num_classes, config.train.progress, True, metric=scores)
    result["class_ids"] = data.class_ids
    result["class_names"] = data.class_names  # for the per-class table (report.per_class_accuracy)
    # every collective is done: under a launch each process leaves the process group now, so that one returning
    # before the others (only the main one reports) does not exit with gloo's threads still running
    accelerator.end_training()
    return result


def _precision(keyword: str | None, weights: TrainedWeights, config: FinetuneConfig) -> tuple[str, str]:
    """The autocast to evaluate in, and where it came from in words: the keyword; else as the run scored itself
    (fp32 for an fp16 run on a machine without CUDA, which fp16 needs); else ``config.train.mixed_precision``."""
    if keyword:
        return keyword, f"mixed_precision {keyword!r} (the keyword of evaluate_checkpoint)"
    where = f"recorded with model.checkpoint '{config.model.checkpoint}'"
    if weights.eval_precision == "fp32":
        return "no", f"The precision 'no' {where} (its run evaluated in fp32)"
    if weights.mixed_precision == "fp16" and not torch.cuda.is_available():
        return "no", f"The precision 'no' {where} (its run trained in fp16, which needs CUDA: fp32 on this machine)"
    if weights.mixed_precision:
        return weights.mixed_precision, f"The precision {weights.mixed_precision!r} {where} (its run's autocast)"
    precision = config.train.mixed_precision
    return precision, f"config.train.mixed_precision {precision!r} (model.checkpoint records no precision)"
