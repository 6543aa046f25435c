"""Sharing a finished run: a timm-compatible folder with a model card, exported locally or pushed to the Hub.

The exported folder holds exactly :data:`EXPORT_FILES`:

- ``model.safetensors`` and ``config.json``: the run's ``last/`` (or ``best/``, with ``hub.weights best``)
  as timm's ``save_for_hf`` wrote them: architecture, ``num_classes``, ``label_names`` (the class ids),
  ``label_descriptions`` (readable names) and a ``pretrained_cfg`` with the input size, mean/std and
  interpolation used in training, so ``timm.create_model("hf-hub:owner/name", pretrained=True)`` loads it;
- ``README.md``: the model card (card.py);
- ``training_curves.png`` and ``metrics.jsonl``.

Never checkpoints or optimizer state. A failed push raises :class:`PublishError` naming the cause and the
retry command; a push never changes or removes the run's local files.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file

from . import hub as hub_io
from .card import model_card, weights_folder
from .config import HubConfig, validate_hub
from .errors import ConfigError, PublishError, TinyTransformersError, clean_message
from .report import plot_training_curves
from .rundir import CONFIG_FILE, CURVES_FILE, METRICS_FILE, WEIGHTS_FILE, RunSummary, read_run

EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, "README.md", CURVES_FILE, METRICS_FILE)


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
    target = Path(folder).expanduser().resolve() if folder else run.folder.export
    own = (run.output_dir, run.folder.weights("best"), run.folder.weights("last"))
    if target in own or run.folder.checkpoints in (target, *target.parents):
        raise PublishError(f"Cannot export into '{target}', which holds the run itself; choose another folder.")
    if target.exists():
        foreign = (
            sorted(p.name for p in target.iterdir() if p.name not in EXPORT_FILES) if target.is_dir() else [target.name]
        )
        if foreign:
            raise PublishError(
                f"'{target}' already holds other files ({', '.join(foreign[:3])}); export into a new or empty folder."
            )
    _check_finite(source / WEIGHTS_FILE)
    # Built beside the target and swapped in, so a crash mid-export never leaves a half-written folder.
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
    except OSError as error:
        raise PublishError(
            f"Cannot write the export to '{target}' ({error.strerror or error}); choose a folder you can write to "
            "with --to."
        ) from error
    try:
        shutil.copyfile(source / WEIGHTS_FILE, staging / WEIGHTS_FILE)
        shutil.copyfile(source / CONFIG_FILE, staging / CONFIG_FILE)
        shutil.copyfile(run.folder.metrics, staging / METRICS_FILE)
        plot_training_curves(run.history, staging / CURVES_FILE)
        model_card(run, hub).save(staging / "README.md")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _check_finite(weights: Path) -> None:
    """Weights with NaN or inf (a diverged run) are never exported or pushed: they would publish a broken model."""
    tensors = load_file(weights)
    broken = [name for name, tensor in tensors.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if broken:
        raise PublishError(
            f"'{weights}' holds non-finite values in {len(broken)} tensor(s) (e.g. {broken[0]}), the weights of a "
            "diverged run; nothing was exported or pushed. Train again with a lower optim.lr."
        )


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


def push_run(
    output_dir: str | Path, hub: HubConfig, folder: str | Path | None = None, message: str | None = None
) -> str:
    """Export ``output_dir`` (see :func:`export_run`) and upload that folder to ``hub.model_id``; returns the commit
    URL.

    The repo is created (``hub.private``) when missing. Only :data:`EXPORT_FILES` are uploaded. A failure raises
    :class:`PublishError` with the cause and the command to retry; local files are never touched.

    >>> push_run("outputs/run", HubConfig(model_id="me/vit-l-tiny-imagenet"))  # doctest: +SKIP
    'https://huggingface.co/me/vit-l-tiny-imagenet/commit/3f2c...'
    """
    if not hub.model_id:
        raise ConfigError("Pushing needs hub.model_id; add --hub.model_id your-user/model-name.")
    run = read_run(output_dir)
    exported = _export(run, hub, folder)
    message = message or commit_message(run, hub)
    try:  # only the export's files: it holds nothing else, and this makes sure of it
        return hub_io.upload_folder(exported, hub.model_id, hub.private, message, EXPORT_FILES)
    except Exception as error:  # noqa: BLE001 - network, auth and HTTP errors all end the same way for the user
        raise PublishError(
            f"Pushing '{run.output_dir}' to the Hub as '{hub.model_id}' failed: "
            f"{hub_io.explain(error, hub.model_id)}. Nothing local was lost (the run and its export in '{exported}' "
            "are in place); retry with: "
            f"{retry_command(run.output_dir, hub)}"
        ) from error


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
    if hub_io.offline():
        return [
            "hub.push is on but HF_HUB_OFFLINE is set, so the push will fail; unset it before training ends, "
            f"or {later}"
        ]
    if hub_io.token() is None:
        return [
            "hub.push is on but no Hugging Face token was found, so the push will fail; "
            f"{hub_io.LOGIN_HINT}, or {later}"
        ]
    return []
