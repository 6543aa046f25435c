"""Why a training step is slower than inference: host-device syncs, and (--profile) where device time goes.

    python -m benchmarks.diagnose_step [MODEL] [--mode head|full] [--profile]   # default: deit_b_distilled, head

Runs ``benchmarks.train_throughput`` (the library's own step: transfer, upscaling, Mixup/CutMix, erasing,
forward, backward, AdamW) and watches one 5-step epoch after warm-up:
- on a GPU, torch's sync debug mode warns at every operation that makes the CPU wait for the GPU; each
  wait lets the GPU run dry while the CPU prepares the next micro-batch. Expected: none from the steps
  themselves (the benchmark reads its clock and the epoch's loss once, after the last step);
- with --profile, torch.profiler's table of that epoch and of 5 inference batches, by device time.
Figures and how they were used: docs/benchmarks.md.
"""

import argparse
import collections
import contextlib
import traceback
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

import tiny_transformers.engine as engine

from .machine import autocast, default_device, sync
from .throughput import Workload, build, train_throughput


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.diagnose_step", description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="deit_b_distilled")
    parser.add_argument("--mode", choices=["head", "full"], default="head")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    device = default_device()
    cuda = device.type == "cuda"
    steps, syncs = 5, collections.Counter()
    workload = Workload.for_model(
        args.model, device=device, precision="bf16" if cuda else "no", steps=steps, warmup=2, repeats=2
    )
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"

    def record_sync(message, category, filename, lineno, file=None, line=None):
        frames = [
            f
            for f in traceback.extract_stack()
            if "/site-packages/torch/" not in f.filename and "warnings" not in f.filename
        ]
        syncs[" <- ".join(f"{f.filename.split('/')[-1]}:{f.lineno}" for f in frames[-4:])] += 1

    @contextlib.contextmanager
    def watch_syncs():
        if not cuda:
            yield
            return
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record_sync
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")

    real_steps, calls = engine.train_steps, []

    def watched_steps(*a, **kw):
        calls.append(1)
        if len(calls) != 3:  # 1: warm-up, 2: first timed epoch, 3: watched
            yield from real_steps(*a, **kw)
            return
        with watch_syncs(), profile(activities=activities) if args.profile else contextlib.nullcontext() as prof:
            yield from real_steps(*a, **kw)
            sync(device)
        if prof is not None:
            print(f"=== {args.model}, {args.mode}-mode training, {steps} steps of micro-batch {workload.micro_batch}")
            print(prof.key_averages().table(sort_by=sort_by, row_limit=22, max_name_column_width=70))

    engine.train_steps = watched_steps
    try:
        train_throughput(workload, args.mode)
    finally:
        engine.train_steps = real_steps
    if cuda:
        print(f"{args.model} ({args.mode} mode): host-device syncs in {steps} training steps: {sum(syncs.values())}")
        for where, count in syncs.most_common(5):
            print(f"  {count} x {where}")
    else:
        print("no CUDA GPU: host-device syncs not counted (torch's sync debug mode watches CUDA work only)")

    if args.profile:
        net = build(args.model, "full", workload.image_size, device).eval()
        x = torch.randn(workload.micro_batch, 3, workload.image_size, workload.image_size, device=device)
        with torch.inference_mode(), autocast(device, workload.precision)():
            for _ in range(3):
                net(x)
            sync(device)
            with profile(activities=activities) as prof:
                for _ in range(steps):
                    net(x)
                sync(device)
        print(f"=== {args.model}, inference, {steps} batches of {workload.micro_batch}")
        print(prof.key_averages().table(sort_by=sort_by, row_limit=15, max_name_column_width=70))


if __name__ == "__main__":
    main()
