"""A synthetic Tiny-ImageNet-sized dataset for timing a real end-to-end epoch: 200 classes, 100,000 training and
10,000 validation 64x64 JPEGs (about 2.4 KB each, like Tiny ImageNet's), written as the zh-plus/tiny-imagenet
parquet layout (``data/train-*.parquet``, ``data/valid-*.parquet``) with tiny_transformers.synthetic's images.

    python benchmarks/tiny_imagenet_like.py /tmp/tiny-like        # about 45 s on one core, ~270 MB
    accelerate launch recipes/deit_b_distilled.py --data.source /tmp/tiny-like --model.pretrained false \\
        --train.epochs 1 --train.output_dir /tmp/deit-epoch

The recipe's own printout and ``metrics.jsonl`` (``epoch_seconds``) give the measured epoch, to set beside
``python -m benchmarks --model deit_b_distilled``'s ``projected_recipe_minutes`` / 30 (docs/benchmarks.md).
"""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from tiny_transformers.engine import usable_cores
from tiny_transformers.synthetic import synthetic_jpegs

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, SHARD = 200, 500, 50, 10_000


def _write_shard(path: Path, labels: list[int], names: list[str], seed: int) -> Path:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    jpegs = synthetic_jpegs(len(labels), seed=seed)
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in jpegs], "label": labels}, features
    )
    table.to_parquet(str(path))
    return path


def write(
    root: Path,
    classes: int = CLASSES,
    train_per_class: int = TRAIN_PER_CLASS,
    val_per_class: int = VAL_PER_CLASS,
    workers: int | None = None,
) -> Path:
    """Write the parquet shards under ``root/data`` (shards of 10,000 images, as the Hub's) and return ``root``.

    Shards are written by ``workers`` processes (default: one per usable core): 2,400 JPEGs/s per core (2-core CPU,
    2026-11-28), so the full set takes about 45 s on one core and a few seconds on a GPU machine's 16.

    >>> write(Path("/tmp/tiny-like-small"), classes=2, train_per_class=3)  # doctest: +SKIP
    PosixPath('/tmp/tiny-like-small')
    """
    names = [f"n{index:08d}" for index in range(classes)]
    (root / "data").mkdir(parents=True, exist_ok=True)
    jobs = []
    for split, per_class, seed in (("train", train_per_class, 0), ("valid", val_per_class, 1)):
        labels = [index % classes for index in range(classes * per_class)]
        starts = range(0, len(labels), SHARD)
        for number, start in enumerate(starts):
            path = root / "data" / f"{split}-{number:05d}-of-{len(starts):05d}.parquet"
            jobs.append((path, labels[start : start + SHARD], names, seed * 1000 + number))
    workers = min(workers or usable_cores(), len(jobs))
    with ProcessPoolExecutor(workers) as pool:
        for _ in tqdm(pool.map(_write_shard, *zip(*jobs)), total=len(jobs), desc="shards", unit="shard"):
            pass
    return root


if __name__ == "__main__":
    print(write(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-imagenet-like")))
