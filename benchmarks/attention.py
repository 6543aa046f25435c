"""timm's CaiT ``TalkingHeadAttn`` against ``tiny_transformers.attention.FastTalkingHeadAttn`` at the CaiT-S36-384
shape (dim 384, 8 heads, 576 patch tokens), inference forward, in the same run; the last line printed is JSON.

    python benchmarks/attention.py                                   # CPU, fp32, batch 2 (~20 s on 2 cores)
    python benchmarks/attention.py --dtype bf16                      # bf16 autocast
    python benchmarks/attention.py --device cuda --dtype bf16 --batch 64 --compile

Both modules share one set of parameters, so the outputs are compared too (max abs difference). Timing: warmup
calls first (``--compile`` compiles during them), then ``--repeats`` timed calls per module, interleaved so that
load from other processes hits both alike; CUDA is synchronized before and after each call; the median is
reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# CaiT-S36 at 384 px: embed_dim 384, 8 heads, (384 / 16)^2 = 576 patch tokens in the talking-heads blocks (the
# class token joins only in the two class-attention blocks, which are a different module).
DIM, HEADS, TOKENS = 384, 8, 576


def _time_call(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(
    device: str = "cpu",
    dtype: str = "fp32",
    batch: int = 2,
    tokens: int = TOKENS,
    warmup: int = 3,
    repeats: int = 10,
    compile: bool = False,
) -> dict[str, Any]:
    """Median ms per call of timm's talking-heads attention and the rewrite, their ratio and output difference.

    >>> r = measure(batch=1, tokens=16, warmup=1, repeats=2)
    >>> sorted(r)[:3], r["max_abs_diff"] < 1e-4
    (['batch', 'compile', 'device'], True)
    """
    from timm.models.cait import TalkingHeadAttn

    from tiny_transformers.attention import FastTalkingHeadAttn

    dev = torch.device(device)
    torch.manual_seed(0)
    ref = TalkingHeadAttn(DIM, num_heads=HEADS, qkv_bias=True, device=dev).eval()
    fast = FastTalkingHeadAttn.from_timm(ref)
    x = torch.randn(batch, tokens, DIM, device=dev)
    modules: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"timm": ref, "fast": fast}
    if compile:
        modules = {name: torch.compile(m) for name, m in modules.items()}
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    times: dict[str, list[float]] = {name: [] for name in modules}
    with torch.inference_mode(), autocast:
        outputs = {name: m(x).float() for name, m in modules.items()}
        for _ in range(warmup):
            for m in modules.values():
                m(x)
        for _ in range(repeats):
            for name, m in modules.items():
                times[name].append(_time_call(lambda m=m: m(x), dev))
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "dtype": dtype,
        "batch": batch,
        "tokens": tokens,
        "dim": DIM,
        "heads": HEADS,
        "compile": compile,
        "timm_ms": round(ms["timm"], 3),
        "fast_ms": round(ms["fast"], 3),
        "speedup": round(ms["timm"] / ms["fast"], 3),
        "max_abs_diff": (outputs["timm"] - outputs["fast"]).abs().max().item(),
        "torch": torch.__version__,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options (``--help`` lists them)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 runs under autocast")
    parser.add_argument("--batch", type=int, default=None, help="images per call (default 2 on CPU, 64 on CUDA)")
    parser.add_argument("--tokens", type=int, default=TOKENS)
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per module (default 3, 10 on CUDA)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per module (default 10, 50 on CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both modules (warmup compiles)")
    parser.add_argument("--json", type=Path, help="also append the JSON line to this file (one line per run)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the command line, measure, print a summary line and the JSON line."""
    args = parse_args(argv)
    cuda = args.device.startswith("cuda")
    result = measure(
        device=args.device,
        dtype=args.dtype,
        batch=args.batch or (64 if cuda else 2),
        tokens=args.tokens,
        warmup=args.warmup if args.warmup is not None else (10 if cuda else 3),
        repeats=args.repeats or (50 if cuda else 10),
        compile=args.compile,
    )
    print(
        f"{result['device']} {result['dtype']} batch {result['batch']} compile={result['compile']}: "
        f"timm {result['timm_ms']:.2f} ms, fast {result['fast_ms']:.2f} ms, {result['speedup']:.2f}x, "
        f"max abs diff {result['max_abs_diff']:.2e}",
        file=sys.stderr,
    )
    print(json.dumps(result))
    if args.json:
        with args.json.open("a") as lines:
            lines.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
    main()
