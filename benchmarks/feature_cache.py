"""Head mode's feature cache (``train.cache_features``) measured on a whole run: the same recipe and variant launched
with the cache off and on, in turn, on a synthetic Tiny-ImageNet-like set; the wall-time ratio of the whole
processes (and of their epochs), and whether the two runs' metrics.jsonl scores are the same.

    python -m benchmarks.feature_cache --recipe recipes/deit_b_distilled.py --data /tmp/cpu-like \\
        --classes 20 --train-per-class 64 --val-per-class 20 --epochs 3 --variant "model.name=..."

The set is written first if ``--data`` holds none. Runs alternate off, on, off, on... (``--repeats``), so a machine
that slows down or speeds up during the measurement weighs on both alike; the ratio is of the medians.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tyro

from .end_to_end import launch_recipe
from .machine import describe_machine
from .report import write_json


@dataclass(frozen=True)
class Settings:
    """A recipe run with the feature cache off and on, timed, and its scores compared."""

    recipe: str = "recipes/deit_b_distilled.py"  # the recipe file to launch
    data: str = "/tmp/tiny-imagenet-like"  # the synthetic set (written here if absent), used as --data.source
    output_dir: str = "/tmp/feature-cache-run"  # the runs' folders are made under it, emptied first
    variant: str = ""  # overrides as in --recipe-variants: space-separated field=value
    epochs: int = 3  # epochs of each run
    repeats: int = 1  # runs of each setting, alternating
    classes: int = 200  # the synthetic set's size: Tiny ImageNet's 200 classes x 500 training (+ 50 validation)
    train_per_class: int = 500
    val_per_class: int = 50
    json: str | None = None  # write the figures here


def scores(out: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl without the one field that is a timing."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_seconds"} for line in lines]


def epoch_seconds(out: Path) -> float:
    return sum(json.loads(line)["epoch_seconds"] for line in (out / "metrics.jsonl").read_text().splitlines())


def measure(settings: Settings) -> dict[str, Any]:
    """Launch the runs, alternating the setting; the figures as a dict."""
    from .tiny_imagenet_like import write

    data = Path(settings.data)
    if not any(data.glob("data/*.parquet")):
        write(data, settings.classes, settings.train_per_class, settings.val_per_class)
    runs: dict[str, list[dict[str, Any]]] = {"false": [], "true": []}
    for repeat in range(settings.repeats):
        for cache in runs:
            out = Path(settings.output_dir) / f"cache-{cache}-{repeat}"
            variant = f"{settings.variant} train.cache_features={cache}".strip()
            run = launch_recipe(settings.recipe, data, out, variant, epochs=settings.epochs)
            if "error" in run:
                return {"cache_features": cache, **run}
            runs[cache].append({**run, "epoch_seconds": epoch_seconds(out), "scores": scores(out)})
    off, on = runs["false"], runs["true"]
    median = {
        k: {c: statistics.median(r[k] for r in runs[c]) for c in runs} for k in ("process_seconds", "epoch_seconds")
    }
    return {
        "recipe": settings.recipe,
        "variant": settings.variant,
        "epochs": settings.epochs,
        "runs": runs,
        "same_scores": all(r["scores"] == off[0]["scores"] for r in off + on),
        "process_ratio": median["process_seconds"]["true"] / median["process_seconds"]["false"],
        "epochs_ratio": median["epoch_seconds"]["true"] / median["epoch_seconds"]["false"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m benchmarks.feature_cache [--recipe R] [--variant V] [--epochs N] [--json OUT]``."""
    settings = tyro.cli(Settings, args=argv, prog="python -m benchmarks.feature_cache")
    result = {"machine": describe_machine(), **measure(settings)}
    write_json(settings.json, result)
    if "error" in result:
        print(f"{settings.recipe} failed (exit {result['returncode']}):\n{result['error']}", file=sys.stderr)
        return result
    print(
        f"{settings.recipe}, {settings.epochs} epochs: cache on / off {result['process_ratio']:.3f} of the whole "
        f"process, {result['epochs_ratio']:.3f} of the epochs; same metrics.jsonl scores: {result['same_scores']}"
    )
    return result


if __name__ == "__main__":
    main()
