"""The model card of a run: ``templates/model_card.md`` rendered by huggingface_hub's ``ModelCard.from_template``.

The metadata is huggingface_hub's ``ModelCardData``/``EvalResult``; the text is edited as Markdown with Jinja
variables, and only what the template cannot compute is computed here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .config import HubConfig
from .errors import PublishError
from .hub import is_hub_id
from .paper import CITATION, paper_model_for, resolve_model_name
from .report import public_value, results_table
from .rundir import CONFIG_FILE, CURVES_FILE, WEIGHTS_FILE, RunSummary
from .runfiles import read_json

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
TINY_IMAGENET_HUB_ID = "zh-plus/tiny-imagenet"  # the Hub copy of Tiny ImageNet, named so in the model-index
_TAGS = ["image-classification", "timm", "vision-transformer", "tiny_transformers"]  # plus tiny-imagenet when it is


def weights_folder(run: RunSummary, weights: str = "last") -> Path:
    """The run's ``last/`` or ``best/`` folder, checked to hold what timm needs."""
    folder = run.folder.weights(weights)
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        hint = (
            "last/ is written when training finishes: finish or resume the run, or publish the best epoch with "
            "--hub.weights best"
            if weights == "last"
            else "best/ is written after an epoch improves top-1: train at least one epoch"
        )
        raise PublishError(f"'{folder}' holds no exported weights ({WEIGHTS_FILE} + {CONFIG_FILE}); {hint}.")
    return folder


def _eval_results(record: dict, dataset_id: str | None) -> list[EvalResult]:
    """The model-index results of the published epoch (top-1, top-5 on the Hub dataset's validation split)."""
    if not dataset_id:
        return []
    return [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset_id,
            dataset_name="Tiny ImageNet" if dataset_id == TINY_IMAGENET_HUB_ID else dataset_id,
            dataset_split="validation",
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=round(float(record[key]), 2),
        )
        for key, metric_type, metric_name in (
            ("top1", "accuracy", "Top-1 accuracy"),
            ("top5", "top_5_accuracy", "Top-5 accuracy"),
        )
    ]


def model_card(run: RunSummary, hub: HubConfig | None = None) -> ModelCard:
    """The model card of ``run``: metadata (a ``model-index`` of the published epoch's top-1/top-5 when it trained
    on a Hub dataset), the results beside the paper's, how to load it, the training config, curves and citation.

    >>> card = model_card(read_run("outputs/run"), HubConfig(model_id="me/vit-l-tiny-imagenet"))  # doctest: +SKIP
    >>> card.data.eval_results[0].metric_value  # doctest: +SKIP
    86.51
    """
    hub = hub or HubConfig()
    config, record = run.config, run.record_for(hub.weights)
    timm_name = resolve_model_name(config.model.name)
    paper = paper_model_for(config.model.name)
    name = hub.model_id or run.output_dir.name
    # A Hub id when the run trained on one (as recorded; guessed from the string for older runs); a local copy is
    # no Hub dataset: no `datasets` entry, no model-index result (the body's table still gives the numbers).
    on_hub = run.source_kind == "hub" if run.source_kind else is_hub_id(config.data.source)
    dataset_id = config.data.source if on_hub else None
    results = _eval_results(record, dataset_id)
    metadata = ModelCardData(
        library_name="timm",
        license=hub.license,
        datasets=[dataset_id] if dataset_id else None,
        metrics=["accuracy"],
        tags=[*_TAGS, "tiny-imagenet"] if _is_tiny_imagenet(run.class_ids, dataset_id) else _TAGS,
        pipeline_tag="image-classification",
        base_model=_base_model(run),
        model_name=name if results else None,
        eval_results=results or None,
    )
    pretrained_cfg = read_json(weights_folder(run, hub.weights) / CONFIG_FILE).get("pretrained_cfg", {})
    return ModelCard.from_template(
        metadata,
        template_path=str(TEMPLATE),
        name=name,
        title=paper.title if paper else timm_name,
        timm_name=timm_name,
        model_name_short=config.model.name,
        num_classes=len(run.class_ids),
        native_size=config.data.native_size,
        size=pretrained_cfg.get("input_size", [3, config.data.image_size, config.data.image_size])[-1],
        which=_which(record, hub.weights, len(run.history)),
        source=dataset_id or f"…/{Path(config.data.source).name}",  # a local path is private: its last part
        reported_row="final" if hub.weights == "last" else "best top-1",
        results_table=results_table(config, run.history),
        paper_number=paper is not None,
        load_id=f"hf-hub:{hub.model_id}" if hub.model_id else "local-dir:path/to/this/folder",
        pipeline_id=hub.model_id or "path/to/this/folder",
        checkpoint=f"hf-hub:{hub.model_id}" if hub.model_id else "path/to/this/folder",
        dataset_id=dataset_id or "path/to/your/data",  # a local copy's path is private: the reader's own
        model_index=bool(results),
        interpolation=pretrained_cfg.get("interpolation", "bicubic"),
        mean=_format(pretrained_cfg.get("mean")),
        std=_format(pretrained_cfg.get("std")),
        config_rows=_config_rows(run),
        curves_file=CURVES_FILE,
        citation=CITATION,
    )


def _which(record: dict, weights: str, epochs: int) -> str:
    """The published weights in words: which epoch and, with an EMA, which of the two the folder holds."""
    which = (
        f"the last epoch (epoch {record['epoch']} of {epochs})"
        if weights == "last"
        else f"the epoch with the best eval top-1 (epoch {record['epoch']} of {epochs}; chosen on the eval split "
        "itself, so its numbers are slightly optimistic)"
    )
    if record["weights"]:
        ema = record["weights"] == "ema"
        which += ", the exponential moving average (EMA) of the weights" if ema else ", the raw weights (not their EMA)"
    return which


def _is_tiny_imagenet(class_ids: list[str], dataset_id: str | None) -> bool:
    """Whether the run's data is Tiny ImageNet as far as it can tell: the Hub copy, or 200 classes named by WordNet
    ids (Tiny ImageNet's own 200 wnids, in any layout); a demo's digits or another dataset get no such tag.

    >>> _is_tiny_imagenet([f"n{i:08d}" for i in range(200)], None), _is_tiny_imagenet(["0", "1"], None)
    (True, False)
    """
    wordnet = len(class_ids) == 200 and all(re.fullmatch(r"n\d{8}", str(c)) for c in class_ids)
    return dataset_id == TINY_IMAGENET_HUB_ID or wordnet


def _config_rows(run: RunSummary) -> list[tuple[str, str]]:
    """Every training field as (dotted name, value as text), local paths shortened (a card is public)."""
    config = run.config.to_dict()
    config.pop("hub")  # publishing settings do not describe the training
    return [
        (f"{section}.{name}", _format(public_value(value)))
        for section, values in config.items()
        for name, value in values.items()
    ]


def _format(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "–"
    return "–" if value is None else str(value)


def _base_model(run: RunSummary) -> str | None:
    """The Hub repo of the pretrained weights the run started from (timm's default tag), when it did."""
    model = run.config.model
    if not model.pretrained or model.checkpoint:
        return None
    try:
        import timm

        return timm.models.get_pretrained_cfg(resolve_model_name(model.name)).hf_hub_id or None
    except Exception:  # noqa: BLE001 - unknown names or cfgs without a Hub id: the card just omits base_model
        return None
