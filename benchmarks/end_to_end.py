"""The projection checked against a real run: one epoch of a recipe, ``accelerate launch RECIPE``, on a
Tiny-ImageNet-sized synthetic set (benchmarks/tiny_imagenet_like.py), timed whole and set beside what
``python -m benchmarks --sections recipes`` projected for one epoch of the same recipe and variant.

    python -m benchmarks --sections recipes --json gpu.json
    python -m benchmarks.end_to_end --recipe recipes/deit_b_distilled.py --data /tmp/tiny-like \\
        --projection gpu.json --json end-to-end.json

The set is written first if ``--data`` holds none (about 45 s on one core, seconds on many). The run has random
weights (``--model.pretrained false``: nothing is downloaded) and one epoch; everything else is the recipe's.
``epoch_seconds`` (the run's own metrics.jsonl: the epoch's steps and its evaluation) is what the projection
predicts, scaled to the set's size; ``process_seconds`` adds the fixed costs of a run (imports, loading and
decode-checking the data, building the model, the checkpoint, the exports).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import tyro

from .machine import describe_machine
from .recipes import overrides_for
from .report import write_json
from .throughput import projected_minutes


@dataclass(frozen=True)
class Settings:
    """One epoch of a recipe on a synthetic Tiny-ImageNet-sized set, timed, against its projection."""

    recipe: str = "recipes/deit_b_distilled.py"  # the recipe file to launch
    data: str = "/tmp/tiny-imagenet-like"  # the synthetic set (written here if absent), used as --data.source
    output_dir: str = "/tmp/end-to-end-run"  # the run's folder, emptied first
    variant: str = ""  # overrides as in --recipe-variants: space-separated field=value
    projection: str | None = None  # JSON of `python -m benchmarks --sections recipes` holding this recipe and variant
    classes: int = 200  # the synthetic set's size: Tiny ImageNet's 200 classes x 500 training (+ 50 validation)
    train_per_class: int = 500
    val_per_class: int = 50
    json: str | None = None  # write the figures here


def projected_epoch_seconds(
    projection: dict[str, Any], recipe: str, variant: str, train_images: int = 100_000, eval_images: int = 10_000
) -> float | None:
    """Seconds that ``projection`` (the JSON of ``--sections recipes``) predicts for one epoch of ``recipe`` under
    ``variant`` over ``train_images`` and an evaluation of ``eval_images``, or None if it did not measure them.

    >>> rates = {"train": {"images_per_s": 5000.0}, "eval": {"images_per_s": 2000.0}}
    >>> table = {"recipes": [{"variant": "", "recipes": [{"recipe": "r.py", **rates}]}]}
    >>> projected_epoch_seconds(table, "r.py", ""), projected_epoch_seconds(table, "r.py", "train.compile=true")
    (25.0, None)
    """
    for entry in projection.get("recipes", []):
        for r in entry["recipes"] if entry["variant"] == variant else ():
            rates = [r.get(part, {}).get("images_per_s") for part in ("train", "eval")]
            if Path(r["recipe"]).resolve() == Path(recipe).resolve() and all(rates):
                return 60 * projected_minutes(*rates, epochs=1, train_images=train_images, eval_images=eval_images)
    return None


def end_to_end(settings: Settings) -> dict[str, Any]:
    """Write the set if needed, launch one epoch of the recipe, time it; the figures as a dict."""
    from .tiny_imagenet_like import write

    data, out = Path(settings.data), Path(settings.output_dir)
    result: dict[str, Any] = {"recipe": settings.recipe, "variant": settings.variant, "data": str(data)}
    if not any(data.glob("data/*.parquet")):
        started = time.perf_counter()
        write(data, settings.classes, settings.train_per_class, settings.val_per_class)
        result["write_seconds"] = time.perf_counter() - started
    result.update(launch_recipe(settings.recipe, data, out, settings.variant, epochs=1))
    if "error" in result:
        return result
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    result["epoch_seconds"] = record["epoch_seconds"]
    result["fixed_seconds"] = result["process_seconds"] - record["epoch_seconds"]
    if settings.projection:
        projection = json.loads(Path(settings.projection).read_text())
        images = settings.classes * settings.train_per_class, settings.classes * settings.val_per_class
        projected = projected_epoch_seconds(projection, settings.recipe, settings.variant, *images)
        if projected is not None:
            result["projected_epoch_seconds"] = projected
            result["epoch_over_projection"] = record["epoch_seconds"] / projected
    return result


def launch_recipe(recipe: str, data: Path, out: Path, variant: str = "", epochs: int = 1) -> dict[str, Any]:
    """Run ``epochs`` of ``recipe`` on ``data`` into ``out`` (emptied first: never a resume of an earlier run) with
    random weights, timed whole: ``command``, ``process_seconds``, ``returncode`` and, on failure, ``error``."""
    shutil.rmtree(out, ignore_errors=True)
    # accelerate launch gives a process 1 thread (OMP_NUM_THREADS=1) unless told otherwise; the projection measured
    # with this process's threads, and so must the run it is checked against
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
    command += ["--num_cpu_threads_per_process", str(torch.get_num_threads())]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", recipe, "--data.source", str(data)]
    command += ["--model.pretrained", "false", "--train.epochs", str(epochs), "--train.output_dir", str(out)]
    command += overrides_for(recipe, variant)
    result: dict[str, Any] = {"command": shlex.join(["accelerate", "launch", *command[3:]])}
    started = time.perf_counter()
    launched = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    result["process_seconds"] = time.perf_counter() - started
    result["returncode"] = launched.returncode
    if launched.returncode != 0:
        result["error"] = (launched.stderr or launched.stdout)[-2000:]
    return result


def parse_settings(argv: list[str] | None = None) -> Settings:
    """The settings that ``argv`` (without the program name) asks for.

    >>> parse_settings(["--variant", "train.eval_precision=autocast"]).variant
    'train.eval_precision=autocast'
    """
    return tyro.cli(Settings, args=argv, prog="python -m benchmarks.end_to_end")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m benchmarks.end_to_end [--recipe R] [--data DIR] [--projection JSON] [--json OUT]``."""
    settings = parse_settings(argv)
    result = {"machine": describe_machine(), **end_to_end(settings)}
    write_json(settings.json, result)
    if "error" in result:
        print(f"{settings.recipe} failed (exit {result['returncode']}):\n{result['error']}", file=sys.stderr)
        return result
    line = (
        f"{settings.recipe}: one epoch {result['epoch_seconds']:.1f} s, whole process {result['process_seconds']:.1f} s"
    )
    if "projected_epoch_seconds" in result:
        line += f"; projected epoch {result['projected_epoch_seconds']:.1f} s, measured / projected "
        line += f"{result['epoch_over_projection']:.3f}"
    print(line)
    return result


if __name__ == "__main__":
    main()
