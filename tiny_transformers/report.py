"""What a finished run shows people: training curves, a prediction grid, ``results.md``, per-class accuracy.

Figures are standalone :class:`matplotlib.figure.Figure` objects, never ``pyplot``: no display needed, no global
backend switched (a notebook's stays), no figure left in pyplot's registry.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .config import FinetuneConfig
from .data import decode_image
from .hub import is_hub_id
from .models import unwrap_logits
from .optim import lr_per_update
from .paper import CITATION, PAPER_MODELS, paper_model_for, resolve_model_name
from .rundir import CURVES_FILE, GRID_FILE, RESULTS_FILE, RunDir, best_record, saved_scores
from .runfiles import write_atomic, writing

CURVES_DPI = 100
CURVES_SIZE = (1500, 420)  # pixels (width, height) of training_curves.png
GRID_IMAGES = 16  # images in the prediction grid written after training
GRID_COLUMNS = 4
_GRID_DPI = 100
_GRID_MIN_CELL = 160  # native images are upscaled by a whole factor to at least this many pixels a side
_GRID_TITLE = 34  # pixels above each image for its two title lines
_GRID_PAD = 8  # pixels around each image
_GRID_CAPTION = 24  # pixels below the grid for its caption (which weights predicted), when it has one
_WRONG = "#c62828"  # red: title and frame of a wrong prediction
_RIGHT = "#1b5e20"


def training_curves_figure(
    history: Sequence[dict[str, Any]], x: Literal["epoch", "step"] = "epoch", config: FinetuneConfig | None = None
):
    """Three panels against epochs (or optimizer steps): losses, top-1/top-5, learning rate (with ``config``: its
    schedule at every update so far, the epochs' recorded values marked on it).

    >>> fig = training_curves_figure([{"epoch": 1, "step": 3, "train_loss": 1.2, "eval_loss": 1.1, "top1": 40.0,
    ...                                "top5": 90.0, "lr": 5e-4}])
    >>> [ax.get_title() for ax in fig.axes]
    ['Loss', 'Eval accuracy (%)', 'Learning rate']
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=tuple(pixels / CURVES_DPI for pixels in CURVES_SIZE), dpi=CURVES_DPI, layout="constrained")
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    xs = [record[x] for record in history]
    style = dict(marker="o", markersize=4, linewidth=1.5)
    loss_ax.plot(xs, [r["train_loss"] for r in history], label="train", **style)
    loss_ax.plot(xs, [r["eval_loss"] for r in history], label="eval", **style)
    acc_ax.plot(xs, [r["top1"] for r in history], label="top-1", **style)
    acc_ax.plot(xs, [r["top5"] for r in history], label="top-5", **style)
    per_update, lrs = _lr_per_update(history, config), [r["lr"] for r in history]
    if per_update:  # the schedule as trained, the epochs' recorded values on it
        scale = history[-1]["step"] / history[-1]["epoch"] if x == "epoch" else 1  # updates per x unit
        lr_ax.plot([u / scale for u in range(len(per_update))], per_update, color="tab:gray", label="per update")
        lr_ax.plot(xs, lrs, color="tab:gray", marker="o", markersize=4, linestyle="none", label="epoch end")
        lr_ax.legend()
    else:
        lr_ax.plot(xs, lrs, color="tab:gray", **style)
    for ax, title in ((loss_ax, "Loss"), (acc_ax, "Eval accuracy (%)"), (lr_ax, "Learning rate")):
        ax.set(title=title, xlabel="epoch" if x == "epoch" else "optimizer step")
        ax.grid(alpha=0.3)
        if x == "epoch":
            ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.legend()
    acc_ax.legend()
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))  # 1e-3 .. 0 reads better in powers of ten
    return fig


def _lr_per_update(history: Sequence[dict[str, Any]], config: FinetuneConfig | None) -> list[float]:
    """The run's lr after each update up to its last recorded one; empty without a config or a step count."""
    last = history[-1] if history else {}
    if config is None or not last.get("step") or not last.get("epoch") or last["step"] % last["epoch"]:
        return []
    return lr_per_update(config.optim, last["step"] // last["epoch"], config.train.epochs)[: last["step"] + 1]


def plot_training_curves(
    history: Sequence[dict[str, Any]],
    path: str | Path,
    x: Literal["epoch", "step"] = "epoch",
    config: FinetuneConfig | None = None,
) -> Path:
    """Write :func:`training_curves_figure` as a PNG of :data:`CURVES_SIZE` pixels.

    >>> run = read_run("outputs/run")  # doctest: +SKIP
    >>> plot_training_curves(run.history, "curves.png", config=run.config)  # doctest: +SKIP
    PosixPath('curves.png')
    """
    path = Path(path)
    with writing(path):  # No bbox_inches="tight": the PNG keeps the figure's exact pixel size.
        training_curves_figure(history, x, config).savefig(path, dpi=CURVES_DPI)
    return path


def _short(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[: limit - 1].rstrip() + "…"


def grid_scale(native_size: int) -> int:
    """Whole upscaling factor of the grid's cells: every image pixel becomes a scale x scale square.

    >>> grid_scale(64), grid_scale(32), grid_scale(384)
    (3, 5, 1)
    """
    return max(1, math.ceil(_GRID_MIN_CELL / native_size))


def grid_pixel_size(
    count: int, native_size: int, columns: int = GRID_COLUMNS, caption: bool = False
) -> tuple[int, int]:
    """(width, height) in pixels of the PNG :func:`plot_prediction_grid` writes (with a caption strip below).

    >>> grid_pixel_size(16, 64), grid_pixel_size(16, 64, caption=True)
    ((832, 936), (832, 960))
    """
    side = native_size * grid_scale(native_size)
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    return columns * (side + 2 * _GRID_PAD), rows * (side + _GRID_TITLE + _GRID_PAD) + (_GRID_CAPTION if caption else 0)


def prediction_grid_figure(
    images: np.ndarray | Sequence[Any],
    true_names: Sequence[str],
    predicted_names: Sequence[str],
    columns: int = GRID_COLUMNS,
    caption: str | None = None,
):
    """One cell per uint8 RGB square image ((N, 3, H, W) or (N, H, W, 3)), upscaled by a whole factor (nearest, so
    its pixels stay visible), titled ``true: ...`` / ``pred: ...``, a wrong one in red; ``caption`` below the grid.

    >>> fig = prediction_grid_figure(np.zeros((2, 3, 8, 8), np.uint8), ["cat", "dog"], ["cat", "cat"])
    >>> [ax.get_title() for ax in fig.axes]
    ['true: cat\\npred: cat', 'true: dog\\npred: cat']
    """
    from matplotlib.figure import Figure

    array = np.asarray(images)
    if array.ndim == 4 and array.shape[1] == 3 and array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)  # (N, 3, H, W) -> (N, H, W, 3) for imshow
    if not (array.ndim == 4 and array.shape[-1] == 3 and array.shape[1] == array.shape[2]):
        raise ValueError(f"prediction_grid_figure takes square RGB images, got an array of shape {array.shape}.")
    if not len(array) == len(true_names) == len(predicted_names):
        raise ValueError(
            f"prediction_grid_figure got {len(array)} images, {len(true_names)} true and {len(predicted_names)} "
            "predicted names; give one of each per image."
        )
    count, native = len(array), array.shape[1]
    width, height = grid_pixel_size(count, native, columns, caption=caption is not None)
    columns = min(columns, count)
    side = native * grid_scale(native)
    fig = Figure(figsize=(width / _GRID_DPI, height / _GRID_DPI), dpi=_GRID_DPI)
    if caption is not None:  # in the strip below the cells, which are placed from the top
        fig.text(0.5, _GRID_CAPTION / 2 / height, caption, ha="center", va="center", fontsize=9)
    for i, (image, truth, predicted) in enumerate(zip(array, true_names, predicted_names)):
        row, column = divmod(i, columns)
        # axes in whole pixels, the image filling them: each source pixel is a scale x scale block of the PNG
        left = column * (side + 2 * _GRID_PAD) + _GRID_PAD
        top = row * (side + _GRID_TITLE + _GRID_PAD) + _GRID_TITLE
        ax = fig.add_axes((left / width, 1 - (top + side) / height, side / width, side / height))
        ax.imshow(image, interpolation="nearest", aspect="auto")
        ax.set(xticks=[], yticks=[])
        wrong = truth != predicted
        title = f"true: {_short(truth)}\npred: {_short(predicted)}"
        ax.set_title(title, fontsize=8, color=_WRONG if wrong else _RIGHT, pad=3, linespacing=1.2)
        ax.spines[:].set(visible=wrong, color=_WRONG, linewidth=3)
    return fig


def plot_prediction_grid(
    images: np.ndarray | Sequence[Any],
    true_names: Sequence[str],
    predicted_names: Sequence[str],
    path: str | Path,
    columns: int = GRID_COLUMNS,
    caption: str | None = None,
) -> Path:
    """Write :func:`prediction_grid_figure` as a PNG of :func:`grid_pixel_size` pixels.

    >>> images = np.zeros((2, 3, 64, 64), np.uint8)
    >>> plot_prediction_grid(images, ["cat", "dog"], ["cat", "cat"], "grid.png")  # doctest: +SKIP
    PosixPath('grid.png')
    """
    path = Path(path)
    with writing(path):
        prediction_grid_figure(images, true_names, predicted_names, columns, caption).savefig(path, dpi=_GRID_DPI)
    return path


def grid_sample(num_images: int, count: int = GRID_IMAGES, seed: int = 0) -> list[int]:
    """The eval-split indices shown in the grid: a fixed random sample, sorted, the same for every run with ``seed``.

    >>> grid_sample(12, count=4, seed=0) == grid_sample(12, count=4, seed=0)
    True
    >>> grid_sample(3, count=16)
    [0, 1, 2]
    """
    return sorted(random.Random(seed).sample(range(num_images), min(count, num_images)))


def sample_predictions(
    model: Any,
    eval_dataset: Any,
    native_size: int,
    preprocess: Callable[[Any], Any],
    count: int = GRID_IMAGES,
    seed: int = 0,
    autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
) -> tuple[np.ndarray, list[int], list[int]]:
    """(uint8 images (N, 3, S, S), true labels, top-1 predictions) of the :func:`grid_sample` of ``eval_dataset``,
    with evaluation's ``preprocess`` and ``autocast``, so the predictions are the ones evaluation counts."""
    rows = eval_dataset[grid_sample(len(eval_dataset), count, seed)]  # raw rows: Image(decode=False) dicts, int labels
    images = torch.stack([decode_image(image, native_size) for image in rows["image"]])
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast():
            x = preprocess(images.to(parameter.device)).to(parameter.dtype)
            predicted = unwrap_logits(model(x)).float().argmax(dim=-1).cpu().tolist()
    finally:
        model.train(was_training)
    return images.numpy(), [int(label) for label in rows["label"]], predicted


def results_table(config: FinetuneConfig, history: Sequence[dict[str, Any]]) -> str:
    """Markdown table: this run's final and best epochs beside the paper's top-1 for the model.

    >>> print(results_table(FinetuneConfig(), [{"epoch": 1, "top1": 80.0, "top5": 95.0, "eval_loss": 0.9}]))
    | | top-1 (%) | top-5 (%) | eval loss | epochs |
    |---|---:|---:|---:|---:|
    | this run, final (epoch 1) | 80.00 | 95.00 | 0.9000 | 1 |
    | this run, best top-1 (epoch 1) | 80.00 | 95.00 | 0.9000 | 1 |
    | paper: ViT-L/16 (Huynh 2022) | 86.43 | – | – | 30 |
    """
    final, best = saved_scores(history[-1], "last"), saved_scores(best_record(history), "best")
    lines = ["| | top-1 (%) | top-5 (%) | eval loss | epochs |", "|---|---:|---:|---:|---:|"]
    for row, r in (("final", final), ("best top-1", best)):
        which = f", {'EMA' if r['weights'] == 'ema' else 'raw'} weights" if r["weights"] else ""  # last/'s, best/'s
        lines.append(
            f"| this run, {row} (epoch {r['epoch']}{which}) | {r['top1']:.2f} | {r['top5']:.2f} | "
            f"{r['eval_loss']:.4f} | {len(history)} |"
        )
    paper = paper_model_for(config.model.name)
    if paper is not None:
        # the paper's protocol: 30 epochs (the official recipe), top-1 on the Tiny ImageNet validation set
        lines.append(f"| paper: {paper.title} (Huynh 2022) | {paper.paper_top1:.2f} | – | – | 30 |")
    return "\n".join(lines)


def results_markdown(config: FinetuneConfig, history: Sequence[dict[str, Any]]) -> str:
    """The text of ``results.md``: the results table, the gap to the paper and what was measured.

    >>> results_markdown(FinetuneConfig(), [{"epoch": 1, "top1": 80.0, "top5": 95.0, "eval_loss": 0.9}]).splitlines()[0]
    '# Results: vit_l (vit_large_patch16_384)'
    """
    final = saved_scores(history[-1], "last")  # the numbers of last/'s weights (the EMA's, with one)
    paper = paper_model_for(config.model.name)
    text = [
        f"# Results: {config.model.name} ({resolve_model_name(config.model.name)})",
        "",
        results_table(config, history),
        "",
    ]
    if paper is not None:
        gap = final["top1"] - paper.paper_top1
        text.append(
            f"Final top-1 is {abs(gap):.2f} points {'above' if gap >= 0 else 'below'} the paper's "
            f"{paper.paper_top1:.2f}% for {paper.title}."
        )
    else:
        text.append(f"The paper reports no number for {config.model.name}; it covers {', '.join(PAPER_MODELS)}.")
    text += [
        "",
        f"Measured on the eval split of `{public_value(config.data.source)}` at {config.data.image_size} px "
        f"({config.data.native_size} px images upscaled bicubic), {config.model.train_mode} fine-tuning, "
        f"{len(history)} of {config.train.epochs} epochs. The paper's numbers are top-1 on the Tiny ImageNet "
        "validation set after 30 epochs at 384 px (official README).",
        "",
        f"Pictures: [{CURVES_FILE}]({CURVES_FILE}), [{GRID_FILE}]({GRID_FILE}).",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(text)


def public_value(value: Any) -> Any:
    """A local path shortened to its last part (cards and reports are shared; the full path is private).

    >>> public_value("/home/me/data/tiny-imagenet-200"), public_value("zh-plus/tiny-imagenet"), public_value(384)
    ('…/tiny-imagenet-200', 'zh-plus/tiny-imagenet', 384)
    """
    if isinstance(value, str) and value and not is_hub_id(value) and Path(value).name:
        return f"…/{Path(value).name}"
    return value


PER_CLASS_COLUMNS = ["class_id", "class_name", "images", "correct", "top1"]  # the header evaluate recognises


def per_class_accuracy(
    references: Sequence[int], predictions: Sequence[int], class_ids: Sequence[str], class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per class: id, name, eval images, correct top-1 predictions and top-1 accuracy (%; None without images).

    >>> per_class_accuracy([0, 0, 1], [0, 1, 1], ["a", "b"], ["ant", "bee"])[0]
    {'class_id': 'a', 'class_name': 'ant', 'images': 2, 'correct': 1, 'top1': 50.0}
    """
    images = np.bincount(np.asarray(references, dtype=np.int64), minlength=len(class_ids))
    hits = np.asarray(references) == np.asarray(predictions)
    correct = np.bincount(np.asarray(references, dtype=np.int64)[hits], minlength=len(class_ids))
    return [
        dict(zip(PER_CLASS_COLUMNS, (class_id, name, int(n), int(k), float(k / n * 100) if n else None)))
        for class_id, name, n, k in zip(class_ids, class_names, images, correct)
    ]


def write_per_class_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write :func:`per_class_accuracy` rows as CSV (a class without eval images has an empty top1).

    >>> write_per_class_csv(per_class_accuracy([0], [0], ["a"], ["ant"]), "per_class_accuracy.csv")  # doctest: +SKIP
    PosixPath('per_class_accuracy.csv')
    """
    path = Path(path)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=PER_CLASS_COLUMNS)
    writer.writeheader()
    writer.writerows({**row, "top1": "" if row["top1"] is None else f"{row['top1']:.4f}"} for row in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, text.getvalue())


def write_run_report(
    output_dir: str | Path,
    config: FinetuneConfig,
    history: Sequence[dict[str, Any]],
    model: Any,
    eval_dataset: Any,
    class_names: Sequence[str],
    preprocess: Callable[[Any], Any],
    autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    weights: str | None = None,
) -> dict[str, Path]:
    """Write the training curves, the prediction grid of ``model`` (``last/``'s weights: ``weights``, ``ema`` or
    ``raw`` when the run has a choice, captions it) and ``results.md``; returns the written paths by kind
    (``{'curves': ..., 'results': ..., 'grid': ...}``)."""
    run = RunDir(Path(output_dir))
    written: dict[str, Path] = {}
    if history:
        written["curves"] = plot_training_curves(history, run.file(CURVES_FILE), config=config)
        written["results"] = write_atomic(run.file(RESULTS_FILE), results_markdown(config, history))
    if len(eval_dataset):
        images, labels, predicted = sample_predictions(
            model, eval_dataset, config.data.native_size, preprocess, GRID_IMAGES, config.train.seed, autocast
        )
        caption = f"predictions of last/: the {'EMA' if weights == 'ema' else 'raw'} weights" if weights else None
        truth, guesses = [class_names[i] for i in labels], [class_names[i] for i in predicted]
        written["grid"] = plot_prediction_grid(images, truth, guesses, run.file(GRID_FILE), caption=caption)
    return written
