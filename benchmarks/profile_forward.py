"""Where a model's inference forward spends its time, by kind of operation (issue 12: Swin-L and CaiT-S36).

    python -m benchmarks.profile_forward                                    # CPU, fp32, batch 2, swin_l cait_s36
    python -m benchmarks.profile_forward --device cuda --dtype bf16 --batch 64 --json profile.json
    python -m benchmarks.profile_forward --fast-attention                   # with model.fast_attention's rewrites

Each model is built as head mode builds it (random weights, 200 classes, eval mode, no grad: the frozen
backbone's forward, which is what head mode and every evaluation run), then ``--repeats`` forwards run under
``torch.profiler`` after ``--warmup`` untimed ones. The operators' self time (CUDA time on a GPU, CPU time
otherwise) is summed by kind:

- ``matmul``: linear layers and batched matrix products (where the FLOPs are);
- ``attention``: fused scaled-dot-product attention kernels;
- ``softmax``, ``norm`` (layer norm), ``activation`` (GELU);
- ``copy``: contiguous/copy/cat/index/pad/roll, what window partition and reverse, shifted windows and the
  relative-position-bias gather cost;
- ``elementwise``: add/mul/div (bias, masks, residuals, scales);
- ``other``.

A model whose time goes to ``copy`` and ``elementwise`` is memory-bound there, and that is where a rewrite pays;
the ``top`` list names the operators. The CPU's split is not the GPU's; the GPU run is ``benchmarks/gpu.sh``.

>>> rows = measure(["test_vit"], image_size=32, repeats=1, warmup=0)
>>> rows[0]["model"], round(sum(rows[0]["share"].values()), 6)
('test_vit', 1.0)
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from tiny_transformers.config import ModelConfig
from tiny_transformers.models import build_model
from tiny_transformers.paper import paper_model_for

from .report import write_json

KINDS = {  # first match wins; names are aten operators without the "aten::" prefix
    "attention": ("scaled_dot_product", "_flash_attention", "_efficient_attention", "flash_attn"),
    "matmul": ("addmm", "mm", "bmm", "matmul", "linear", "baddbmm", "conv", "gemm"),
    "softmax": ("softmax",),
    "norm": ("layer_norm", "native_layer_norm"),
    "activation": ("gelu",),
    "copy": ("copy_", "contiguous", "clone", "cat", "index", "gather", "roll", "constant_pad", "pad", "_to_copy"),
    "elementwise": ("add", "mul", "div", "sub", "masked_fill", "where"),
}


def kind_of(operator: str) -> str:
    """The kind of an aten operator's name.

    >>> kind_of("aten::addmm"), kind_of("aten::roll"), kind_of("aten::_softmax"), kind_of("aten::erf")
    ('matmul', 'copy', 'softmax', 'other')
    """
    name = operator.removeprefix("aten::")
    for kind, markers in KINDS.items():
        if any(name == m or name.startswith(m) or name.startswith(f"_{m}") for m in markers):
            return kind
    return "other"


def measure(
    models: Sequence[str] = ("swin_l", "cait_s36"),
    device: str = "cpu",
    dtype: str = "fp32",
    batch: int = 2,
    image_size: int | None = None,
    warmup: int = 2,
    repeats: int = 3,
    fast_attention: bool = False,
) -> list[dict[str, Any]]:
    """One row per model: self time per kind (seconds per forward), its share, and the ten costliest operators."""
    rows = []
    target = torch.device(device)
    for name in models:
        paper = paper_model_for(name)
        size = image_size or 384
        config = ModelConfig(name=name, pretrained=False, fast_attention=fast_attention)
        model = build_model(config, 200, size).to(target).eval()
        images = torch.randn(batch, 3, size, size, device=target)
        autocast = torch.autocast(target.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
        with torch.no_grad(), autocast:
            for _ in range(warmup):
                model(images)
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if target.type == "cuda" else [])
            with profile(activities=activities) as profiler:
                for _ in range(repeats):
                    model(images)
                if target.type == "cuda":
                    torch.cuda.synchronize(target)
        per_kind: dict[str, float] = defaultdict(float)
        per_operator: dict[str, float] = defaultdict(float)
        for event in profiler.key_averages():
            # self time: what the operator itself ran, not its children (no double counting)
            micros = event.self_device_time_total if target.type == "cuda" else event.self_cpu_time_total
            if micros <= 0 or not event.key.startswith("aten::"):
                continue
            per_kind[kind_of(event.key)] += micros / 1e6 / repeats
            per_operator[event.key] += micros / 1e6 / repeats
        total = sum(per_kind.values())
        rows.append(
            {
                "model": name,
                "timm_name": paper.timm_name if paper else name,
                "device": str(target),
                "dtype": dtype,
                "batch": batch,
                "image_size": size,
                "fast_attention": fast_attention,
                "seconds_per_forward": total,
                "seconds": dict(sorted(per_kind.items(), key=lambda kv: -kv[1])),
                "share": {k: v / total for k, v in sorted(per_kind.items(), key=lambda kv: -kv[1])},
                "top": [
                    {"operator": op, "seconds": s, "share": s / total}
                    for op, s in sorted(per_operator.items(), key=lambda kv: -kv[1])[:10]
                ],
            }
        )
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line's options (``--help`` lists them)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_forward", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["swin_l", "cait_s36"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=None, help="default: 384, the paper's")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fast-attention", action="store_true", help="apply model.fast_attention's rewrites")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Profile, print each model's split by kind of operator and its top operators, optionally write the JSON."""
    args = parse_args(argv)
    rows = measure(
        args.models,
        args.device,
        args.dtype,
        args.batch,
        args.image_size,
        args.warmup,
        args.repeats,
        args.fast_attention,
    )
    for row in rows:
        print(f"{row['model']} ({row['device']}, {row['dtype']}, batch {row['batch']}): "
              f"{row['seconds_per_forward'] * 1e3:.1f} ms of operator time per forward")  # fmt: skip
        print("  " + "  ".join(f"{k} {v:.1%}" for k, v in row["share"].items()))
        for top in row["top"][:6]:
            print(f"    {top['operator']:40s} {top['share']:6.1%}")
    write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
