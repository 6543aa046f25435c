"""The whole ``tiny-transformers train`` process against timm's own ``train.py`` on the same small job.

    python -m benchmarks.versus_timm --timm-train /path/to/pytorch-image-models/train.py

Both train the same tiny ViT (``test_vit`` at 64 px, random weights) on the same ~1000-image ImageFolder made by
:mod:`tiny_transformers.synthetic`, for 15 epochs at batch 32, fp32, on the CPU, one loader worker, augmentation
off but label smoothing 0.1, AdamW with a cosine schedule and no warmup, evaluation and a checkpoint every epoch.
Each side is one process, timed from its start to its exit (wall clock, and the CPU time it used: robust on a
shared machine); the sides alternate, ``--repeats`` times each, and medians are compared. The import cost of each
side (``import tiny_transformers.train`` against ``import torch, timm``) is timed the same way.

timm's ``train.py`` is not a dependency: pass its path (a checkout of pytorch-image-models matching the installed
timm); without it the benchmark says so and measures nothing. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tyro

from .machine import describe_machine
from .report import write_json


@dataclass(frozen=True)
class VersusTimm:
    """The whole training process, tiny-transformers against timm's train.py, on a small from-scratch job."""

    timm_train: str | None = None  # path to timm's train.py (pytorch-image-models); absent: skip with a message
    repeats: int = 2  # runs of each side, alternating; medians compared
    epochs: int = 15
    classes: int = 10
    train_per_class: int = 100  # 1000 training images with the defaults
    val_per_class: int = 20
    batch: int = 32
    workers: int = 1
    import_repeats: int = 3  # timed imports of each side
    json: str | None = None  # default: benchmarks/results/versus-timm-<date>.json
    workdir: str | None = None  # data and run folders; default: a temporary folder, removed at the end


def skip_reason(timm_train: str | None) -> str | None:
    """Why the comparison cannot run (no path, or no such file), or None when it can.

    >>> skip_reason(None).startswith("skipped")
    True
    """
    if not timm_train:
        return "skipped: pass --timm-train PATH (train.py of a pytorch-image-models checkout matching timm)"
    if not Path(timm_train).is_file():
        return f"skipped: {timm_train} does not exist (train.py of a pytorch-image-models checkout matching timm)"
    return None


def make_dataset(root: Path, settings: VersusTimm) -> Path:
    """The synthetic ImageFolder (``train/<wnid>/``, ``val/<wnid>/``) both sides read; returns its folder."""
    from tiny_transformers.synthetic import make_imagefolder, write_stanford_folder

    stanford = write_stanford_folder(
        root / "stanford", settings.classes, settings.train_per_class, settings.val_per_class
    )
    return make_imagefolder(stanford, root / "imagefolder")


def ours_command(data: Path, out: Path, s: VersusTimm) -> list[str]:
    """``tiny-transformers train`` on the job (the installed command's module, with this Python)."""
    return [
        sys.executable, "-m", "tiny_transformers.cli", "train", "test_vit",
        "--model.pretrained", "false", "--model.train_mode", "full", "--model.drop_path_rate", "0",
        "--data.source", str(data), "--data.image_size", "64", "--data.num_workers", str(s.workers),
        "--augment.mixup_alpha", "0", "--augment.cutmix_alpha", "0", "--augment.random_erasing", "0",
        "--augment.label_smoothing", "0.1", "--optim.lr", "1e-3", "--optim.weight_decay", "0.05",
        "--train.epochs", str(s.epochs), "--train.batch_size", str(s.batch), "--train.micro_batch_size", str(s.batch),
        "--train.mixed_precision", "no", "--train.progress", "false", "--train.output_dir", str(out),
    ]  # fmt: skip


def timm_command(timm_train: str, data: Path, out: Path, s: VersusTimm) -> list[str]:
    """timm's ``train.py`` on the same job: same model, size, optimizer, schedule, smoothing; ``--no-aug``."""
    return [
        sys.executable, timm_train, "--data-dir", str(data), "--train-split", "train", "--val-split", "val",
        "--model", "test_vit", "--num-classes", str(s.classes), "--img-size", "64", "--device", "cpu",
        "--epochs", str(s.epochs), "-b", str(s.batch), "--validation-batch-size", str(s.batch),
        "--workers", str(s.workers), "--no-prefetcher", "--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.05",
        "--sched", "cosine", "--warmup-epochs", "0", "--smoothing", "0.1", "--mixup", "0", "--cutmix", "0",
        "--reprob", "0", "--drop-path", "0", "--no-aug", "--seed", "0", "--output", str(out), "--log-interval", "1000",
    ]  # fmt: skip


def timed_process(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall seconds from start to exit and the CPU seconds (user + system) the process and its children used.

    >>> timed_process([sys.executable, "-c", "pass"], dict(os.environ))["wall_s"] > 0
    True
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n{done.stdout[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def _alternate(sides: dict[str, Any], repeats: int) -> dict[str, list[dict[str, float]]]:
    """Each side's timings, the sides run one after the other ``repeats`` times."""
    times: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for repeat in range(repeats):
        for name, run in sides.items():
            times[name].append(run(repeat))
            print(
                f"  {name} #{repeat + 1}: {times[name][-1]['wall_s']:.1f} s wall, {times[name][-1]['cpu_s']:.1f} s CPU"
            )
    return times


def _summary(times: dict[str, list[dict[str, float]]], ours: str, theirs: str) -> dict[str, Any]:
    median = {
        name: {k: statistics.median(t[k] for t in runs) for k in ("wall_s", "cpu_s")} for name, runs in times.items()
    }
    return {
        "runs": times,
        "median": median,
        "ratio_wall": median[ours]["wall_s"] / median[theirs]["wall_s"],
        "ratio_cpu": median[ours]["cpu_s"] / median[theirs]["cpu_s"],
    }


def versus_timm(settings: VersusTimm) -> dict[str, Any] | None:
    """Run the comparison and return its figures (None when skipped, after printing why).

    >>> versus_timm(VersusTimm(timm_train=None))  # doctest: +ELLIPSIS
    skipped: pass --timm-train PATH ...
    """
    reason = skip_reason(settings.timm_train)
    if reason:
        print(reason)
        return None
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    root = Path(settings.workdir or tempfile.mkdtemp(prefix="versus-timm-"))
    try:
        data = make_dataset(root, settings)
        print("imports (python -c ...):")
        imports = _summary(
            _alternate(
                {
                    "tiny_transformers": lambda _: timed_process(
                        [sys.executable, "-c", "import tiny_transformers.train"], env
                    ),
                    "timm": lambda _: timed_process([sys.executable, "-c", "import torch, timm"], env),
                },
                settings.import_repeats,
            ),
            "tiny_transformers",
            "timm",
        )

        def ours(repeat: int) -> dict[str, float]:
            out = root / f"ours-{repeat}"
            shutil.rmtree(out, ignore_errors=True)
            return timed_process(ours_command(data, out, settings), env)

        def theirs(repeat: int) -> dict[str, float]:
            out = root / f"timm-{repeat}"
            shutil.rmtree(out, ignore_errors=True)
            return timed_process(timm_command(str(settings.timm_train), data, out, settings), env)

        print("whole training process:")
        whole = _summary(
            _alternate({"tiny_transformers": ours, "timm": theirs}, settings.repeats), "tiny_transformers", "timm"
        )
    finally:
        if settings.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    result = {
        "machine": describe_machine(),
        "settings": asdict(settings),
        "command_ours": " ".join(ours_command(Path("DATA"), Path("OUT"), settings)[1:]),
        "command_timm": " ".join(timm_command("train.py", Path("DATA"), Path("OUT"), settings)[1:]),
        "imports": imports,
        "whole_process": whole,
    }
    ours_import, timm_import = (imports["median"][side]["wall_s"] for side in ("tiny_transformers", "timm"))
    print(
        f"import: {ours_import:.2f} s vs {timm_import:.2f} s"
        f" (ratio {imports['ratio_wall']:.2f})\nwhole process: {whole['median']['tiny_transformers']['wall_s']:.1f} s "
        f"vs timm {whole['median']['timm']['wall_s']:.1f} s: ratio {whole['ratio_wall']:.2f} wall, "
        f"{whole['ratio_cpu']:.2f} CPU time"
    )
    return result


def main(args: list[str] | None = None) -> dict[str, Any] | None:
    """``python -m benchmarks.versus_timm [options]``; writes the figures to ``--json`` (or benchmarks/results/)."""
    settings = tyro.cli(VersusTimm, args=args, prog="python -m benchmarks.versus_timm")
    result = versus_timm(settings)
    if result is not None:
        date = result["machine"].get("date", time.strftime("%Y-%m-%d"))[:10]
        path = Path(settings.json or Path(__file__).parent / "results" / f"versus-timm-{date}.json")
        write_json(path, result)
        print(f"figures written to {path}")
    return result


if __name__ == "__main__":
    main()
