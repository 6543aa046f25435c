"""Benchmarks of tiny_transformers: the data path, the training loop's own cost, and training throughput in
head and full mode. Run from a checkout as ``python -m benchmarks [options]`` (``--help`` lists them).

This package lives beside the library, not inside it (as timm keeps its ``benchmark.py``): it measures
the product and is not part of it, so it is not installed with it and the library carries no second
training loop or command for it. It imports the library as any user would.

Every figure is a median over repeated runs, and every ratio compares two sides measured in the same
process, one after the other, on the same machine. Nothing here downloads anything: the models have
random weights and the images are JPEGs made in memory. The measurements are plain functions that return
dicts (the tests call them with tiny settings), one module per section:

- :mod:`benchmarks.data_path`: 1. the paper's per-sample CPU data path against the library's;
- :mod:`benchmarks.loop_overhead`: 2. finetune() per optimizer step against a bare PyTorch loop;
- :mod:`benchmarks.throughput`: 3. inference and training throughput, FLOPs, MFU and memory of a
  :class:`Workload`;
- :mod:`benchmarks.options`: GPU speed options, each against the default;
- :mod:`benchmarks.recipes`: the recipe files as their configs run them, projected to their whole run and the table
  (``--sections recipes``); :mod:`benchmarks.end_to_end` times one real epoch of a recipe against that projection;
- :mod:`benchmarks.cuda_smoke`: benchmarks/gpu.sh's first stage, every GPU-only path once on tiny models, pass or
  fail (``python -m benchmarks.cuda_smoke``);
- :mod:`benchmarks.versus_timm`: the whole ``tiny-transformers train`` process against timm's ``train.py``
  (``python -m benchmarks.versus_timm --timm-train PATH``);
- :mod:`benchmarks.machine`, :mod:`benchmarks.report`, :mod:`benchmarks.cli`: the machine and timing
  helpers, the report, and the command (``main``).

What each figure means, and the figures measured so far: docs/benchmarks.md.
"""

from .cli import Settings, main, parse_settings, run_benchmark
from .data_path import data_path
from .loop_overhead import loop_overhead
from .machine import describe_machine
from .options import option_effects
from .report import format_report
from .throughput import Workload, inference_throughput, model_throughput, saved_for_backward_bytes, train_throughput

__all__ = [
    "Settings",
    "Workload",
    "data_path",
    "describe_machine",
    "format_report",
    "inference_throughput",
    "loop_overhead",
    "main",
    "model_throughput",
    "option_effects",
    "parse_settings",
    "run_benchmark",
    "saved_for_backward_bytes",
    "train_throughput",
]
