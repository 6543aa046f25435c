"""Activations kept for the backward pass, per image, with and without gradient checkpointing (full mode).

    python -m benchmarks.activation_memory [--models vit_l cait_s36 deit_b_distilled swin_l] [--image-size 384]
                                           [--precision fp32] [--json activation_memory.json]

Each model is built as ``model.train_mode full`` would build it (random weights, 200 classes, the paper's drop
path), once with ``model.grad_checkpointing`` off and once on, and runs one forward pass of a batch of two and
of three images on the CPU while a ``saved_tensors_hooks`` pack hook records every tensor autograd keeps
(:func:`benchmarks.throughput.saved_for_backward_bytes`; parameters not counted, storages counted whole). The
difference of the two batches is the cost of one more image (``per_image``; not taken from a batch of one, where
some copies are views: CaiT's talking heads keep 0.33 GiB less at batch 1 than the slope says); the rest does not
grow with the batch (``fixed``: under bf16 autocast, mostly the bf16 copies of the weights that the matrix
products keep, 2 bytes a parameter). With checkpointing, what remains is each block's input (saved by the
checkpoint itself) and what lies outside the blocks (patch embedding, final norm, head). A step keeps
``fixed + per_image x micro-batch``; docs/recipes.md turns that into each recipe's memory budget.

>>> rows = measure(["test_vit"], image_size=32)
>>> rows[0]["model"], rows[0]["checkpointed_bytes"] < rows[0]["plain_bytes"]
('test_vit', True)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

import torch

from tiny_transformers.config import ModelConfig
from tiny_transformers.models import build_model
from tiny_transformers.paper import PAPER_MODELS, paper_model_for

from .throughput import saved_for_backward_bytes

MIB = 2**20


def measure(models: Sequence[str], image_size: int = 384, precision: str = "fp32") -> list[dict[str, Any]]:
    """Saved-for-backward bytes per image (and fixed, per forward) of each model, without and with gradient
    checkpointing.

    >>> measure(["test_vit"], image_size=32)[0]["plain_bytes"] > 0
    True
    """
    autocast = (
        contextlib.nullcontext if precision == "fp32" else (lambda: torch.autocast("cpu", dtype=torch.bfloat16))  # noqa: E731 - a context factory
    )
    rows = []
    for name in models:
        paper = paper_model_for(name)
        drop_path = paper.drop_path_rate if paper else 0.1
        row: dict[str, Any] = {"model": name, "image_size": image_size, "precision": precision}
        for key, checkpointing in (("plain", False), ("checkpointed", True)):
            cfg = ModelConfig(
                name=name,
                pretrained=False,
                train_mode="full",
                drop_path_rate=drop_path,
                grad_checkpointing=checkpointing,
            )
            model = build_model(cfg, num_classes=200, image_size=image_size)
            started = time.perf_counter()
            two, three = (
                saved_for_backward_bytes(model, torch.zeros(n, 3, image_size, image_size), autocast) for n in (2, 3)
            )
            row[f"{key}_seconds"] = round((time.perf_counter() - started) / 5, 2)  # per image forwarded
            row[f"{key}_bytes"], row[f"{key}_fixed_bytes"] = three - two, 3 * two - 2 * three
            row["parameters"] = sum(p.numel() for p in model.parameters())
            del model
        row["ratio"] = row["checkpointed_bytes"] / row["plain_bytes"]
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as the markdown table of docs/benchmarks.md (MiB per image).

    >>> row = {"model": "m", "parameters": 10**6, "precision": "fp32", "plain_bytes": 2 * MIB,
    ...        "checkpointed_bytes": MIB, "ratio": 0.5, "plain_fixed_bytes": 0, "checkpointed_fixed_bytes": 0,
    ...        "plain_seconds": 1.0, "checkpointed_seconds": 0.5}
    >>> print(format_table([row]).splitlines()[-1])
    | m | 1.0M | fp32 | 2.0 MiB | 1.0 MiB | 0.500 | 0.0 / 0.0 MiB | 1.0 / 0.5 |
    """
    lines = [
        "| model | parameters | precision | per image, plain | per image, grad checkpointing | ratio "
        "| fixed, plain / checkpointing | CPU s per image (plain / ckpt) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['precision']} | {r['plain_bytes'] / MIB:.1f} MiB | "
            f"{r['checkpointed_bytes'] / MIB:.1f} MiB | {r['ratio']:.3f} | {r['plain_fixed_bytes'] / MIB:.1f} / "
            f"{r['checkpointed_fixed_bytes'] / MIB:.1f} MiB | {r['plain_seconds']} / {r['checkpointed_seconds']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The command: measure, print the table, optionally write the rows as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(PAPER_MODELS))
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for name in args.models:  # one at a time, printed as it comes: the large models take a while on a CPU
        rows += measure([name], args.image_size, args.precision)
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
