"""Sharing a finished run: a timm-compatible folder with a model card, exported locally or pushed to the Hub.

The exported folder holds exactly :data:`EXPORT_FILES`:

- ``model.safetensors`` and ``config.json``: the run's ``last/`` (or ``best/``, with ``hub.weights best``)
  as timm's ``save_for_hf`` wrote them: architecture, ``num_classes``, ``label_names`` (the class ids),
  ``label_descriptions`` (readable names) and a ``pretrained_cfg`` with the input size, mean/std and
  interpolation used in training, so ``timm.create_model("hf-hub:owner/name", pretrained=True)`` loads it;
- ``README.md``: the model card (YAML metadata with a ``model-index``, then results, usage, the training
  config and the paper's citation);
- ``training_curves.png`` and ``metrics.jsonl``.

Never checkpoints or optimizer state. Authentication is huggingface_hub's own: the ``HF_TOKEN``
environment variable or a token stored by ``hf auth login`` (``huggingface-cli login`` in older
versions). A failed push raises :class:`PublishError` naming the cause and the retry command; a push
never changes or removes the run's local files.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants, get_token, snapshot_download
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import validate_repo_id

from .config import HubConfig, validate_hub
from .errors import ConfigError, ModelError, PublishError, TinyTransformersError, clean_message
from .paper import CITATION, resolve_model_name
from .report import plot_training_curves, public_value, results_table
from .rundir import CURVES_FILE, RunSummary, read_run

EXPORT_DIR = "export"  # default export folder, inside the run's output directory
EXPORT_FILES = ("model.safetensors", "config.json", "README.md", CURVES_FILE, "metrics.jsonl")
TINY_IMAGENET_HUB_ID = "zh-plus/tiny-imagenet"  # the Hub copy of Tiny ImageNet, recorded for local sources
_DOWNLOAD_FILES = ["config.json", "model.safetensors", "pytorch_model.bin"]
_LOGIN_HINT = "set HF_TOKEN or run `hf auth login` (`huggingface-cli login` in older huggingface_hub)"


def offline() -> bool:
    """Whether Hugging Face's offline mode is on (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE``), however it was set.

    huggingface_hub reads the variables once at import; the environment is read too, so a variable set later
    (a notebook, a test) counts.

    >>> import os; os.environ["HF_HUB_OFFLINE"] = "1"; offline()
    True
    """
    flags = (os.environ.get(name, "").strip().lower() for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(flag in ("1", "true", "yes", "on") for flag in flags)


def is_hub_id(text: str) -> bool:
    """Whether ``text`` names a repo on the Hub (``owner/name`` or a bare ``name``) rather than a local path.

    A string that exists on disk, starts with ``.``, ``/`` or ``~``, ends in ``.zip``/``.parquet``, has more
    parts than ``owner/name``, has a file suffix after its slash (``data/train.v2``), or is not a valid repo id
    (huggingface_hub's ``validate_repo_id``) is a path.

    >>> is_hub_id("zh-plus/tiny-imagenet"), is_hub_id("./tiny-imagenet-200"), is_hub_id("data/a/b"), is_hub_id("x.zip")
    (True, False, False, False)
    """
    if not text or text.startswith((".", "/", "~")) or text.lower().endswith((".zip", ".parquet")):
        return False
    if Path(text).expanduser().exists() or text.count("/") > 1 or (os.sep != "/" and os.sep in text):
        return False
    if "/" in text and Path(text).suffix:
        return False
    try:
        validate_repo_id(text)
    except hf_errors.HFValidationError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# The exported folder and its model card
# --------------------------------------------------------------------------------------------------


def weights_folder(run: RunSummary, weights: str = "last") -> Path:
    """The run's ``last/`` or ``best/`` folder, checked to hold what timm needs."""
    folder = run.output_dir / weights
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        hint = (
            "last/ is written when training finishes: finish or resume the run, or publish the best epoch with "
            "--hub.weights best"
            if weights == "last"
            else "best/ is written after an epoch improves top-1: train at least one epoch"
        )
        raise PublishError(f"'{folder}' holds no exported weights (model.safetensors + config.json); {hint}.")
    return folder


def _is_hub_dataset(source: str) -> bool:
    return not (source.startswith(("/", "~", ".")) or Path(source).expanduser().exists() or source.count("/") != 1)


def _config_rows(run: RunSummary) -> list[tuple[str, Any]]:
    """Every training field as (dotted name, value), local paths shortened (a card is public)."""
    config = run.config.to_dict()
    config.pop("hub")  # publishing settings do not describe the training
    return [
        (f"{section}.{name}", public_value(value))
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


def model_card(run: RunSummary, hub: HubConfig | None = None) -> ModelCard:
    """The model card of ``run``: YAML metadata with a ``model-index`` of the published epoch's top-1/top-5,
    then the results beside the paper's number, how to load it, the training config, curves and citation.

    >>> card = model_card(read_run("outputs/run"), HubConfig(model_id="me/vit-l-tiny-imagenet"))  # doctest: +SKIP
    >>> card.data.eval_results[0].metric_value  # doctest: +SKIP
    86.51
    """
    hub = hub or HubConfig()
    config, record = run.config, run.record_for(hub.weights)
    timm_name = resolve_model_name(config.model.name)
    paper = run.paper
    name = hub.model_id or run.output_dir.name
    source = config.data.source
    dataset_id = source if _is_hub_dataset(source) else TINY_IMAGENET_HUB_ID
    split = "validation"
    results = [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset_id,
            dataset_name="Tiny ImageNet",
            dataset_split=split,
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=round(float(record[key]), 2),
        )
        for key, metric_type, metric_name in (
            ("top1", "accuracy", "Top-1 accuracy"),
            ("top5", "top_5_accuracy", "Top-5 accuracy"),
        )
    ]
    tags = ["image-classification", "timm", "vision-transformer", "tiny-imagenet", "tiny_transformers"]
    data = ModelCardData(
        library_name="timm",
        license=hub.license,
        datasets=[dataset_id],
        metrics=["accuracy"],
        tags=tags,
        pipeline_tag="image-classification",
        base_model=_base_model(run),
        model_name=name,
        eval_results=results,
    )
    pretrained_cfg = json.loads((weights_folder(run, hub.weights) / "config.json").read_text()).get(
        "pretrained_cfg", {}
    )
    size = pretrained_cfg.get("input_size", [3, config.data.image_size, config.data.image_size])[-1]
    which = (
        f"the last epoch (epoch {record['epoch']} of {len(run.history)})"
        if hub.weights == "last"
        else f"the epoch with the best eval top-1 (epoch {record['epoch']} of {len(run.history)}; chosen on the eval "
        "split itself, so its numbers are slightly optimistic)"
    )
    load_id = f"hf-hub:{hub.model_id}" if hub.model_id else "local-dir:path/to/this/folder"
    checkpoint = f"hf-hub:{hub.model_id}" if hub.model_id else "path/to/this/folder"
    title = paper.title if paper else timm_name
    lines = [
        f"# {name}",
        "",
        f"{title} (`{timm_name}`) fine-tuned for image classification on Tiny ImageNet-style data "
        f"({len(run.class_ids)} classes, {config.data.native_size}x{config.data.native_size} images resized to "
        f"{size}x{size}) with tiny_transformers, the reproduction of *Vision Transformers in "
        "2022: An Update on Tiny ImageNet* (Huynh, 2022). These are the weights of " + which + ".",
        "",
        "## Results",
        "",
        f"Top-1 and top-5 accuracy (%) on the eval split of `{public_value(source)}`; the `model-index` above reports the "
        f"{'final' if hub.weights == 'last' else 'best top-1'} row.",
        "",
        results_table(config, run.history),
        "",
    ]
    if paper is None:
        lines += ["The paper reports no number for this architecture.", ""]
    lines += [
        "## How to use",
        "",
        "With timm (the preprocessing below is the one recorded in `config.json`: input size, bicubic "
        "interpolation, mean and std):",
        "",
        "```python",
        "import timm",
        "import torch",
        "",
        f'model = timm.create_model("{load_id}", pretrained=True).eval()',
        "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))",
        "with torch.no_grad():",
        "    probabilities = model(transform(image).unsqueeze(0)).softmax(-1)  # image: a PIL RGB image",
        'class_ids = model.pretrained_cfg["label_names"]  # e.g. WordNet ids; readable names: "label_descriptions"',
        "```",
        "",
        "With transformers (its timm wrapper; neither tiny_transformers nor a custom class needed):",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'classify = pipeline("image-classification", model="{hub.model_id or "path/to/this/folder"}")',
        "names = classify.model.config.label_descriptions  # class id -> readable name",
        'print([(names[p["label"]], round(p["score"], 3)) for p in classify("photo.jpg")])',
        "```",
        "",
        "`AutoModelForImageClassification.from_pretrained(...)` loads the same weights and gives the same logits "
        "as timm. From the command line, with the preprocessing used in training (64x64, then upscaled):",
        "",
        "```bash",
        f"tiny-transformers predict --model.checkpoint {checkpoint} photo.jpg my_photos/",
        "```",
        "",
        "With tiny_transformers: top-1, top-5, loss and a per-class CSV on a dataset with the same classes, or "
        "further fine-tuning from these weights:",
        "",
        "```bash",
        f"tiny-transformers evaluate --model.checkpoint {checkpoint} --data.source {dataset_id}",
        f"tiny-transformers train {config.model.name} --model.checkpoint {checkpoint} --data.source {dataset_id}",
        "```",
        "",
        "```python",
        "from tiny_transformers import FinetuneConfig, evaluate_checkpoint",
        "",
        "config = FinetuneConfig()",
        f'config.model.checkpoint, config.data.source = "{checkpoint}", "{dataset_id}"',
        'print(evaluate_checkpoint(config)["top1"])',
        "```",
        "",
        "## Training",
        "",
        f"Preprocessing: {size}x{size} input, {pretrained_cfg.get('interpolation', 'bicubic')} interpolation, "
        f"mean {_format(pretrained_cfg.get('mean'))}, std {_format(pretrained_cfg.get('std'))}.",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| `{key}` | {_format(value)} |" for key, value in _config_rows(run)],
        "",
        f"![Training curves]({CURVES_FILE})",
        "",
        "Per-epoch metrics: `metrics.jsonl` (train loss, eval loss, top-1, top-5, learning rate).",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def export_run(output_dir: str | Path, hub: HubConfig | None = None, folder: str | Path | None = None) -> Path:
    """Write the timm-compatible folder of a run (:data:`EXPORT_FILES`) and return it; nothing is uploaded.

    ``folder`` defaults to ``<output_dir>/export``; an existing folder is replaced only if it holds nothing but
    a previous export, so no other file is ever deleted.

    >>> export_run("outputs/run", HubConfig(model_id="me/vit-l-tiny-imagenet"))  # doctest: +SKIP
    PosixPath('/home/me/outputs/run/export')
    """
    return _export(read_run(output_dir), hub or HubConfig(), folder)


def _export(run: RunSummary, hub: HubConfig, folder: str | Path | None) -> Path:
    validate_hub(hub)
    source = weights_folder(run, hub.weights)
    target = Path(folder).expanduser().resolve() if folder else run.output_dir / EXPORT_DIR
    own = (run.output_dir, run.output_dir / "best", run.output_dir / "last")
    if target in own or run.output_dir / "checkpoints" in (target, *target.parents):
        raise PublishError(f"Cannot export into '{target}', which holds the run itself; choose another folder.")
    if target.exists():
        foreign = (
            sorted(p.name for p in target.iterdir() if p.name not in EXPORT_FILES) if target.is_dir() else [target.name]
        )
        if foreign:
            raise PublishError(
                f"'{target}' already holds other files ({', '.join(foreign[:3])}); export into a new or empty folder."
            )
    # Built beside the target and swapped in, so a crash mid-export never leaves a half-written folder.
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        shutil.copyfile(source / "model.safetensors", staging / "model.safetensors")
        shutil.copyfile(source / "config.json", staging / "config.json")
        shutil.copyfile(run.output_dir / "metrics.jsonl", staging / "metrics.jsonl")
        plot_training_curves(run.history, staging / CURVES_FILE)
        model_card(run, hub).save(staging / "README.md")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------------
# Pushing
# --------------------------------------------------------------------------------------------------


def retry_command(output_dir: str | Path, hub: HubConfig) -> str:
    """The command that pushes ``output_dir`` again with the same settings.

    >>> retry_command("outputs/run", HubConfig(model_id="me/vit", private=True))
    'tiny-transformers push outputs/run --hub.model_id me/vit --hub.private true'
    """
    parts = [
        "tiny-transformers",
        "push",
        shlex.quote(str(output_dir)),
        "--hub.model_id",
        hub.model_id or "YOUR-USER/MODEL-NAME",
    ]
    if hub.private:
        parts += ["--hub.private", "true"]
    if hub.weights != "last":
        parts += ["--hub.weights", hub.weights]
    if hub.license != HubConfig().license:
        parts += ["--hub.license", shlex.quote(hub.license)]
    return " ".join(parts)


def commit_message(run: RunSummary, hub: HubConfig) -> str:
    """What the Hub commit says: model, epochs done and the published epoch's numbers.

    >>> from tiny_transformers.config import FinetuneConfig
    >>> run = RunSummary(Path("out"), FinetuneConfig(), [{"epoch": 1, "top1": 80.0, "top5": 95.5}], ["a"], ["ant"])
    >>> commit_message(run, HubConfig())
    'tiny_transformers: vit_l after epoch 1/30, top-1 80.00%, top-5 95.50% (last weights)'
    """
    record = run.record_for(hub.weights)
    return (
        f"tiny_transformers: {run.config.model.name} after epoch {len(run.history)}/{run.config.train.epochs}, "
        f"top-1 {record['top1']:.2f}%, top-5 {record['top5']:.2f}% ({hub.weights} weights)"
    )


def _status(error: BaseException) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


def _why(error: BaseException, owner: str) -> str:
    """The cause of a failed Hub call, in words a user can act on."""
    status = _status(error)
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if isinstance(error, hf_errors.OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so nothing can be uploaded (unset it first)"
    if isinstance(error, hf_errors.LocalTokenNotFoundError) or (status == 401 and get_token() is None):
        return f"no Hugging Face token was found; {_LOGIN_HINT}"
    if status == 401:
        return f"the Hub rejected the token (401 Unauthorized); log in again with a valid token: {_LOGIN_HINT}"
    if status == 403:
        return f"the token may not write to '{owner}' (403 Forbidden); use a token with write access to it"
    if isinstance(error, hf_errors.RepositoryNotFoundError) or status == 404:
        return f"the owner '{owner}' or the repo was not found, or the token cannot see it ({first_line})"
    if status is not None:
        return f"the Hub answered {status} ({first_line})"
    if (
        isinstance(error, (ConnectionError, TimeoutError, OSError))
        or "connect" in type(error).__name__.lower()
        or "timeout" in type(error).__name__.lower()
    ):
        return f"the Hub could not be reached ({first_line})"
    return f"{type(error).__name__}: {first_line}"


def push_run(
    output_dir: str | Path, hub: HubConfig, folder: str | Path | None = None, message: str | None = None
) -> str:
    """Export ``output_dir`` (see :func:`export_run`) and upload that folder to ``hub.model_id``; returns the commit URL.

    The repo is created (``hub.private``) when missing. Only :data:`EXPORT_FILES` are uploaded. A failure raises
    :class:`PublishError` with the cause and the command to retry; local files are never touched.

    >>> push_run("outputs/run", HubConfig(model_id="me/vit-l-tiny-imagenet"))  # doctest: +SKIP
    'https://huggingface.co/me/vit-l-tiny-imagenet/commit/3f2c...'
    """
    if not hub.model_id:
        raise ConfigError("Pushing needs hub.model_id; add --hub.model_id your-user/model-name.")
    run = read_run(output_dir)
    exported = _export(run, hub, folder)
    owner = hub.model_id.split("/")[0]
    try:
        api = HfApi()  # token: HF_TOKEN or the one stored by `hf auth login`, as huggingface_hub always does
        api.create_repo(hub.model_id, private=hub.private, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            repo_id=hub.model_id,
            folder_path=str(exported),
            repo_type="model",
            commit_message=message or commit_message(run, hub),
            allow_patterns=list(EXPORT_FILES),  # the export folder holds only these; this makes sure of it
        )
    except Exception as error:  # noqa: BLE001 - network, auth and HTTP errors all end the same way for the user
        raise PublishError(
            f"Pushing '{run.output_dir}' to the Hub as '{hub.model_id}' failed: {_why(error, owner)}. Nothing local "
            f"was lost (the run and its export in '{exported}' are in place); retry with: "
            f"{retry_command(run.output_dir, hub)}"
        ) from error
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{hub.model_id}")


def publish_after_training(output_dir: str | Path, hub: HubConfig) -> str | None:
    """:func:`push_run` for ``finetune``: prints the outcome and never raises, so a failed export or push cannot
    lose a finished run's result. Returns the commit URL, or None when it failed.

    >>> publish_after_training("outputs/run", HubConfig(push=True, model_id="me/vit"))  # doctest: +SKIP
    'https://huggingface.co/me/vit/commit/3f2c...'
    """
    try:
        url = push_run(output_dir, hub)
    except Exception as error:  # noqa: BLE001 - publishing is an extra: whatever breaks it, training's result stands
        text = (
            clean_message(error)
            if isinstance(error, TinyTransformersError)
            else (f"Exporting or pushing '{output_dir}' failed ({type(error).__name__}: {error}).")
        )
        if "tiny-transformers push" not in text:
            text += f" The run's files are intact; push them later with: {retry_command(output_dir, hub)}"
        print(f"warning: {text}", file=sys.stderr, flush=True)
        return None
    print(f"pushed to https://huggingface.co/{hub.model_id} ({url})", flush=True)
    return url


def push_warnings(output_dir: str | Path, hub: HubConfig) -> list[str]:
    """Problems that will make the push after training fail, told before training starts (not hours later).

    >>> push_warnings("outputs/run", HubConfig())
    []
    """
    if not hub.push:
        return []
    later = f"the run's files will be kept; push them later with: {retry_command(output_dir, hub)}"
    if constants.HF_HUB_OFFLINE:
        return [
            f"hub.push is on but HF_HUB_OFFLINE is set, so the push will fail; unset it before training ends, or {later}"
        ]
    if get_token() is None:
        return [f"hub.push is on but no Hugging Face token was found, so the push will fail; {_LOGIN_HINT}, or {later}"]
    return []


# --------------------------------------------------------------------------------------------------
# Loading from the Hub
# --------------------------------------------------------------------------------------------------


def download_model(location: str) -> Path:
    """The local folder (Hugging Face cache) of ``hf-hub:owner/name``: its config.json and weights only.

    Works offline when the model is already in the cache.

    >>> download_model("hf-hub:me/vit-l-tiny-imagenet")  # doctest: +SKIP
    PosixPath('/home/me/.cache/huggingface/hub/models--me--vit-l-tiny-imagenet/snapshots/3f2c...')
    """
    repo_id = location[len("hf-hub:") :] if location.startswith("hf-hub:") else location
    try:
        return Path(snapshot_download(repo_id, repo_type="model", allow_patterns=_DOWNLOAD_FILES))
    except hf_errors.HFValidationError as error:
        raise ModelError(
            f"model.checkpoint '{location}' is not a Hub model id; write it as hf-hub:owner/name."
        ) from error
    except Exception as error:  # noqa: BLE001 - offline, not found, no access: each gets its own sentence below
        if isinstance(error, hf_errors.LocalEntryNotFoundError) or constants.HF_HUB_OFFLINE:
            reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
            raise ModelError(
                f"model.checkpoint '{location}' is not in the local Hugging Face cache and {reason}; connect (and "
                "unset HF_HUB_OFFLINE) to download it, or pass a local folder written by `tiny-transformers export`."
            ) from error
        if isinstance(error, hf_errors.RepositoryNotFoundError) or _status(error) in (401, 403, 404):
            raise ModelError(
                f"model.checkpoint '{location}' was not found on the Hub, or is private and needs a token; check the "
                f"id, or {_LOGIN_HINT}."
            ) from error
        raise ModelError(
            f"model.checkpoint '{location}' could not be downloaded ({_why(error, repo_id.split('/')[0])}); retry, or "
            "pass a local folder written by `tiny-transformers export`."
        ) from error
