"""What LoRA saves against full fine-tuning: trainable parameters, gradient and AdamW bytes, activations per image.

    python -m benchmarks.lora_memory [--models vit_l cait_s36 deit_b_distilled swin_l] [--image-size 384]
                                     [--json lora_memory.json]

Counts and bytes, no timings (so a busy machine changes nothing). Each model is built as ``tiny-transformers train``
builds it, with 200 classes, random weights and the paper's drop path, once per mode: ``full``, ``lora`` (the
defaults: rank 16, no dropout, adapters on qkv/q/k/v/proj/fc1/fc2) and ``lora`` with dropout 0.1.

- parameters, trainable parameters, gradient bytes (one fp32 gradient per trainable parameter) and the AdamW state
  that the library's optimizer really allocates (timm's factory, one step taken on the meta device: shapes only;
  2 fp32 tensors per trainable parameter plus a step counter per tensor);
- activations autograd keeps for the backward pass, per image (fp32, no gradient checkpointing), measured as
  :mod:`benchmarks.activation_memory` does (a ``saved_tensors_hooks`` pack hook, parameters not counted, the
  difference between batches of 3 and 2) at ``--image-size``.

>>> rows = measure(["test_vit"], image_size=32)
>>> [r["mode"] for r in rows], rows[1]["trainable"] < rows[0]["trainable"]
(['full', 'lora', 'lora, dropout 0.1'], True)
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Sequence
from typing import Any

import torch

from tiny_transformers.config import ModelConfig, OptimConfig
from tiny_transformers.models import build_model
from tiny_transformers.optim import build_optimizer
from tiny_transformers.paper import PAPER_MODELS, paper_model_for

from .throughput import saved_for_backward_bytes

MIB = 2**20
MODES = {  # full first (the others are counted against it)
    "full": {"train_mode": "full"},
    "lora": {"train_mode": "lora"},  # the defaults: rank 16, no dropout
    "lora, dropout 0.1": {"train_mode": "lora", "lora_dropout": 0.1},  # peft's image-classification guide
}


def optimizer_state_bytes(model: torch.nn.Module) -> int:
    """Bytes of AdamW state the library's optimizer holds after one step (on the meta device: no memory used)."""
    optimizer = build_optimizer(OptimConfig(), model)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    return sum(t.nbytes for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t))


def measure(models: Sequence[str], image_size: int = 384) -> list[dict[str, Any]]:
    """One row per model and mode: counts, bytes, and saved activations per image."""
    rows = []
    for name in models:
        paper, full_trainable = paper_model_for(name), 0
        for mode, fields in MODES.items():
            drop_path = paper.drop_path_rate if paper else 0.1
            cfg = ModelConfig(name=name, pretrained=False, drop_path_rate=drop_path, **fields)
            with torch.device("meta"):
                meta = build_model(cfg, num_classes=200, image_size=image_size)
            trainable = sum(p.numel() for p in meta.parameters() if p.requires_grad)
            row = {"model": name, "mode": mode, "image_size": image_size, "trainable": trainable}
            full_trainable = full_trainable or trainable  # full mode comes first (MODES' order)
            row["of_full"] = trainable / full_trainable
            row["parameters"] = sum(p.numel() for p in meta.parameters())
            row["gradient_bytes"] = 4 * trainable
            row["optimizer_bytes"] = optimizer_state_bytes(meta)
            del meta
            torch.manual_seed(0)
            model = build_model(cfg, num_classes=200, image_size=image_size)
            two, three = (
                saved_for_backward_bytes(model, torch.zeros(n, 3, image_size, image_size), contextlib.nullcontext)
                for n in (2, 3)
            )
            row["activation_bytes_per_image"] = three - two
            del model
            rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as the markdown table of docs/benchmarks.md.

    >>> row = {"model": "m", "mode": "lora", "parameters": 10**6, "trainable": 10**4, "of_full": 0.01,
    ...        "gradient_bytes": 4 * 10**4,
    ...        "optimizer_bytes": 8 * 10**4, "activation_bytes_per_image": MIB, "image_size": 32}
    >>> print(format_table([row]).splitlines()[-1])
    | m | lora | 1.0M | 10,000 (1.00% of full) | 0.0 MiB | 0.1 MiB | 1.0 MiB |
    """
    lines = [
        "| model | mode | parameters | trainable | gradients (fp32) | AdamW state | activations per image (fp32) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['parameters'] / 1e6:.1f}M | {r['trainable']:,} "
            f"({100 * r['of_full']:.2f}% of full) | {r['gradient_bytes'] / MIB:.1f} MiB | "
            f"{r['optimizer_bytes'] / MIB:.1f} MiB | {r['activation_bytes_per_image'] / MIB:.1f} MiB |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The command: measure, print the table, optionally write the rows as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(PAPER_MODELS))
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = []
    for name in args.models:  # one at a time, printed as it comes: the large models take a while on a CPU
        rows += measure([name], args.image_size)
        print("\n".join(format_table(rows[-len(MODES) :]).splitlines()[2:]), flush=True)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
