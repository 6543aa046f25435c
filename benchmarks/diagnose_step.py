"""Why a training step is slower than inference: host-device syncs, and (--profile) where device time goes.

    python benchmarks/diagnose_step.py [MODEL] [--mode head|full] [--profile]   # default: deit_b_distilled, head

Runs ``benchmark.train_throughput`` (the library's own step: transfer, upscaling, Mixup/CutMix, erasing,
forward, backward, AdamW) and watches one 5-step epoch after warm-up:
- on a GPU, torch's sync debug mode warns at every operation that makes the CPU wait for the GPU; each
  wait lets the GPU run dry while the CPU prepares the next micro-batch. Expected: 2 per epoch, none per
  step (the benchmark's clock at the epoch's end, and the epoch's loss read once);
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
from tiny_transformers import benchmark

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model", nargs="?", default="deit_b_distilled")
parser.add_argument("--mode", choices=["head", "full"], default="head")
parser.add_argument("--profile", action="store_true")
args = parser.parse_args()
device = benchmark.default_device()
cuda = device.type == "cuda"
precision = "bf16" if cuda else "no"
micro_batch, image_size = benchmark._model_defaults(args.model, None, None)
activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
steps, syncs = 5, collections.Counter()


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


real_epoch, calls = engine.train_one_epoch, []


def watched_epoch(*a, **kw):
    calls.append(1)
    if len(calls) != 3:  # 1: warm-up, 2: first timed epoch, 3: watched
        return real_epoch(*a, **kw)
    with watch_syncs(), profile(activities=activities) if args.profile else contextlib.nullcontext() as prof:
        result = real_epoch(*a, **kw)
        benchmark._sync(device)
    if prof is not None:
        print(f"=== {args.model}, {args.mode}-mode training, {steps} steps of micro-batch {micro_batch}")
        print(prof.key_averages().table(sort_by=sort_by, row_limit=22, max_name_column_width=70))
    return result


engine.train_one_epoch = watched_epoch
benchmark.train_throughput(
    args.model, args.mode, micro_batch, image_size, device, precision, steps=steps, warmup=2, repeats=2
)
if cuda:
    print(f"{args.model} ({args.mode} mode): host-device syncs in {steps} training steps: {sum(syncs.values())}")
    for where, count in syncs.most_common(5):
        print(f"  {count} x {where}")
else:
    print("no CUDA GPU: host-device syncs not counted (torch's sync debug mode watches CUDA work only)")

if args.profile:
    net = benchmark._build(args.model, "full", image_size, device).eval()
    x = torch.randn(micro_batch, 3, image_size, image_size, device=device)
    with torch.inference_mode(), benchmark._autocast(device, precision)():
        for _ in range(3):
            net(x)
        benchmark._sync(device)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                net(x)
            benchmark._sync(device)
    print(f"=== {args.model}, inference, {steps} batches of {micro_batch}")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=15, max_name_column_width=70))
