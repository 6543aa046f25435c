"""Benchmarks: the data path, the training loop's own cost, and training throughput in head and full mode.

Every figure is a median over repeated runs, and every ratio compares two sides measured in the same
process, one after the other, on the same machine. Nothing here downloads anything: the models have
random weights and the images are JPEGs made in memory. The measurements are plain functions that return
dicts (the tests call them with tiny settings); :func:`main` is ``tiny-transformers benchmark``.
What each figure means, and the figures measured so far: docs/benchmarks.md.

>>> figures = train_throughput("test_vit", "head", micro_batch=2, image_size=32, device="cpu", precision="no",
...                            steps=1, warmup=1, repeats=1)
>>> figures["mode"], figures["images_per_s"] > 0, figures["mfu"]  # MFU only on a GPU
('head', True, None)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.utils.data import DataLoader, Dataset

from .augment import BatchAugment
from .config import AugmentConfig, DataConfig, FinetuneConfig, ModelConfig, OptimConfig, TrainConfig
from .models import IMAGENET_MEAN, IMAGENET_STD
from .paper import paper_model_for, resolve_model_name

# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s, SXM parts, no sparsity), for MFU.
# A GPU not listed here gets MFU against the bf16 matrix-product rate measured on it instead.
# Matched in this order against torch.cuda.get_device_name() (so "H100 PCIe" wins over "H100").
DATASHEET_BF16_FLOPS = {
    "H200": 989.4e12,
    "H100 PCIe": 756.5e12,
    "H100": 989.4e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
}

OFF = AugmentConfig(mixup_alpha=0.0, cutmix_alpha=0.0, random_erasing=0.0)  # label smoothing stays (cheap)


# --------------------------------------------------------------------------------------------------
# Machine and timing helpers
# --------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, GPU, library versions, date.

    >>> sorted(describe_machine())[:4]
    ['cpu', 'cpu_cores', 'cpu_cores_usable', 'cuda']
    """
    import timm
    import torchvision

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "cuda": torch.version.cuda if gpu else None,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": gpu,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpu else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "timm": timm.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torchvision": torchvision.__version__,
    }


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Pin torch's intra-op threads inside the block (restored after), so 'per core' means one core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fresh_accelerator(device: torch.device, mixed_precision: str) -> Accelerator:  # noqa: F821
    """An Accelerator with this precision even if another precision was used earlier in this process.

    Accelerate keeps one process-wide state and refuses a second precision; a benchmark compares
    precisions in one process, so it resets that state first (single process only, never in training).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mixed_precision)


# --------------------------------------------------------------------------------------------------
# 1. Data path: the paper's per-sample CPU path against this library's uint8 + on-device path
# --------------------------------------------------------------------------------------------------


def synthetic_jpegs(count: int, size: int = 64, seed: int = 0, quality: int = 90) -> list[bytes]:
    """``count`` distinct size x size RGB JPEGs made in memory: smooth colour fields plus sensor-like noise.

    They decode like Tiny ImageNet's photos (a few KB each); nothing is read from disk or the network.

    >>> len(synthetic_jpegs(2, size=16))
    2
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = PIL.Image.fromarray(rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((size, size), PIL.Image.Resampling.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 12, size=smooth.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        PIL.Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


class PaperSamples(Dataset):
    """The paper's data path, one sample at a time on the CPU: decode, ``Resize(384, bicubic)`` on the PIL
    image, float tensor, ``Normalize``; the loader then collates 1.77 MB per image for the device.

    >>> image, label = PaperSamples(synthetic_jpegs(1), 384, IMAGENET_MEAN, IMAGENET_STD)[0]
    >>> tuple(image.shape), image.dtype
    ((3, 384, 384), torch.float32)
    """

    def __init__(self, jpegs: list[bytes], image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        from torchvision import transforms as T

        self.jpegs = jpegs
        self.transform = T.Compose(
            [
                T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        )

    def __len__(self) -> int:
        return len(self.jpegs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with PIL.Image.open(io.BytesIO(self.jpegs[index])) as image:
            rgb = image.convert("RGB")
        return self.transform(rgb), index % 200


def library_samples(jpegs: list[bytes], native_size: int = 64):
    """This library's loader input: a ``datasets`` table of undecoded images with its train transform
    (decode to uint8 only), exactly what :func:`tiny_transformers.train.finetune` iterates.

    >>> sample = library_samples(synthetic_jpegs(1))[0]
    >>> tuple(sample["pixels"].shape), sample["pixels"].dtype
    ((3, 64, 64), torch.uint8)
    """
    import datasets

    from .data import train_transform

    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.Value("int64")})
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in jpegs], "label": [i % 200 for i in range(len(jpegs))]},
        features=features,
    )
    return table.with_transform(train_transform(native_size))


class _CyclingBatches:
    """Batches of indices cycling over ``rows`` rows, ``batches`` of them: a long epoch from few images."""

    def __init__(self, rows: int, batch_size: int, batches: int) -> None:
        self.rows, self.batch_size, self.batches = rows, batch_size, batches

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.batches):
            yield [(b * self.batch_size + i) % self.rows for i in range(self.batch_size)]

    def __len__(self) -> int:
        return self.batches


def _images_per_second(
    loader: DataLoader, consume: Callable, device: torch.device, warmup: int, min_images: int, min_seconds: float
) -> tuple[float, float]:
    """(images/s delivered by ``loader`` through ``consume`` after ``warmup`` batches, seconds to the first batch).

    The first batch's wait is the loader's start-up (worker processes), which persistent workers would save
    once per epoch; it is reported apart and kept out of the rate.
    """
    started = time.perf_counter()
    batches = iter(loader)
    consume(next(batches))
    _sync(device)
    first_batch = time.perf_counter() - started
    for _ in range(warmup - 1):
        consume(next(batches))
    _sync(device)
    started, images = time.perf_counter(), 0
    for batch in batches:
        images += len(consume(batch))
        if images >= min_images and time.perf_counter() - started >= min_seconds:
            break
    _sync(device)
    elapsed = time.perf_counter() - started
    del batches  # shuts the workers down before the other side runs
    return images / elapsed, first_batch


def data_path(
    num_workers: int = 0,
    batch_size: int = 64,
    image_size: int = 384,
    native_size: int = 64,
    device: torch.device | str | None = None,
    repeats: int = 3,
    min_images: int = 256,
    min_seconds: float = 1.0,
    warmup: int = 2,
    pin_memory: bool | None = None,
    unique_images: int = 256,
    sides: Sequence[str] = ("paper", "library"),
) -> dict[str, Any]:
    """Images/s from JPEG bytes to model-ready float batches on ``device``: the paper's path vs this library's.

    ``ready``: the whole path (paper: decode, PIL resize, float, normalize per sample, then transfer;
    library: decode to uint8, transfer, then :meth:`BatchAugment.resize_normalize` on the device).
    ``loader_only``: what the loader processes deliver, before any transfer: the CPU work per image.
    Both sides use the same ``num_workers``; torch runs one intra-op thread in every process, so
    ``per_core`` divides by the processes doing the work (``max(num_workers, 1)``).

    >>> r = data_path(batch_size=4, image_size=32, min_images=8, min_seconds=0, repeats=1, unique_images=8)
    >>> sorted(r["ready"])
    ['library_first_batch_s', 'library_images_per_s', 'library_images_per_s_per_core', 'paper_first_batch_s', 'paper_images_per_s', 'paper_images_per_s_per_core', 'ratio']
    """
    from .data import collate

    device = torch.device(device) if device is not None else default_device()
    pin = device.type == "cuda" if pin_memory is None else pin_memory
    jpegs = synthetic_jpegs(unique_images, native_size)
    augment = BatchAugment(image_size, IMAGENET_MEAN, IMAGENET_STD, 200, OFF, device)
    cores = max(num_workers, 1)
    # Enough batches for the slowest side to reach min_seconds; each loop stops as soon as it has.
    batches = warmup + max(math.ceil(min_images / batch_size), 1) * 1000

    def paper_ready(batch):
        return batch[0].to(device, non_blocking=True)

    def library_ready(batch):
        return augment.resize_normalize(batch[0].to(device, non_blocking=True))

    def loader_only(batch):
        return batch[0]

    datasets = {
        "paper": (PaperSamples(jpegs, image_size, IMAGENET_MEAN, IMAGENET_STD), None),
        "library": (library_samples(jpegs, native_size), collate),
    }
    consumers = {
        "ready": {"paper": paper_ready, "library": library_ready},
        "loader_only": {"paper": loader_only, "library": loader_only},
    }
    result: dict[str, Any] = {
        "num_workers": num_workers,
        "batch_size": batch_size,
        "image_size": image_size,
        "native_size": native_size,
        "device": str(device),
        "pin_memory": pin,
        "jpeg_bytes_mean": round(float(np.mean([len(j) for j in jpegs]))),
        "repeats": repeats,
    }
    with _threads(1):
        for measure, consume in consumers.items():
            rates: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
            for _ in range(repeats):  # alternate the sides so that drift hits both alike
                for side in sides:
                    dataset, collate_fn = datasets[side]
                    loader = DataLoader(
                        dataset,
                        batch_sampler=_CyclingBatches(len(jpegs), batch_size, batches),
                        num_workers=num_workers,
                        collate_fn=collate_fn,
                        pin_memory=pin,
                    )
                    rates[side].append(
                        _images_per_second(loader, consume[side], device, warmup, min_images, min_seconds)
                    )
            figures: dict[str, float] = {}
            for side in sides:
                rate = statistics.median(r for r, _ in rates[side])
                figures[f"{side}_images_per_s"] = rate
                figures[f"{side}_images_per_s_per_core"] = rate / cores
                figures[f"{side}_first_batch_s"] = statistics.median(f for _, f in rates[side])
            if len(sides) == 2:
                figures["ratio"] = figures["library_images_per_s"] / figures["paper_images_per_s"]
            result[measure] = dict(sorted(figures.items()))
    _free(device)
    return result


# --------------------------------------------------------------------------------------------------
# 2. Loop overhead: finetune() per optimizer step against a bare PyTorch loop
# --------------------------------------------------------------------------------------------------


def write_stanford_folder(
    root: Path, classes: int, train_per_class: int, val_per_class: int = 1, size: int = 64
) -> Path:
    """A minimal Stanford ``tiny-imagenet-200`` folder of synthetic JPEGs under ``root``; returns it.

    >>> folder = write_stanford_folder(Path(tempfile.mkdtemp()), classes=2, train_per_class=2)
    >>> sorted(p.name for p in folder.iterdir())
    ['train', 'val', 'wnids.txt']
    """
    folder = Path(root) / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(classes)]
    jpegs = iter(synthetic_jpegs(classes * (train_per_class + val_per_class), size))
    for wnid in wnids:
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(train_per_class):
            (images / f"{wnid}_{i}.JPEG").write_bytes(next(jpegs))
    (folder / "val" / "images").mkdir(parents=True)
    lines = []
    for i in range(classes * val_per_class):
        (folder / "val" / "images" / f"val_{i}.JPEG").write_bytes(next(jpegs))
        lines.append(f"val_{i}.JPEG\t{wnids[i % classes]}\t0\t0\t{size - 1}\t{size - 1}\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    return folder


def _clocks() -> np.ndarray:
    return np.array([time.perf_counter(), time.process_time()])


class _BareLoop:
    """What a hand-written PyTorch loop does for the same run, one optimizer step per :meth:`step`: the same
    data, model, loss and optimizer arithmetic, and nothing else (no Accelerate, no per-batch seeding, no
    progress bar, no stop-signal check)."""

    def __init__(self, config: FinetuneConfig, num_classes: int) -> None:
        from .data import collate, load_data, train_transform
        from .models import build_model
        from .train import build_optimizer

        torch.manual_seed(config.train.seed)
        self.model = build_model(config.model, num_classes, config.data.image_size).train()
        self.optimizer = build_optimizer(config.optim, self.model)  # timm's AdamW, finetune()'s parameter groups
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=10_000)
        self.augment = BatchAugment(config.data.image_size, IMAGENET_MEAN, IMAGENET_STD, num_classes, OFF)
        self.accumulation = config.train.batch_size // config.train.micro_batch_size
        self.label_smoothing = config.augment.label_smoothing
        self.loader = DataLoader(
            load_data(config.data).train.with_transform(train_transform(config.data.native_size)),
            batch_size=config.train.micro_batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=config.data.num_workers,
            collate_fn=collate,
        )
        self.batches = iter(self.loader)

    def _next(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)

    def step(self) -> None:
        import torch.nn.functional as F

        for _ in range(self.accumulation):
            images, labels = self._next()
            logits = self.model(self.augment.resize_normalize(images))
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing) / self.accumulation
            loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


@contextlib.contextmanager
def _paired_steps(bare: _BareLoop) -> Iterator[dict[str, list[np.ndarray]]]:
    """Time the optimizer steps of whatever trains inside the block, each paired with one bare-loop step.

    torch's global optimizer-step hook fires after every step of the loop under test; there, one step of
    ``bare`` runs and is timed. The loop's own step is the time from the end of that bare step to its
    next optimizer step. The two sides alternate step by step, so a burst of load from other programs
    on the machine hits both alike. Times are (wall, process CPU) pairs.
    """
    from torch.optim.optimizer import register_optimizer_step_post_hook

    times: dict[str, list[np.ndarray]] = {"library": [], "bare": []}
    last_end: list[np.ndarray | None] = [None]

    def hook(optimizer, *_):
        if optimizer is bare.optimizer:
            return
        started = _clocks()
        if last_end[0] is not None:
            times["library"].append(started - last_end[0])
        bare.step()
        last_end[0] = _clocks()
        times["bare"].append(last_end[0] - started)

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield times
    finally:
        handle.remove()


def loop_overhead(
    model: str = "test_vit",
    image_size: int = 32,
    micro_batch: int = 8,
    accumulation: int = 2,
    steps: int = 20,
    repeats: int = 3,
    num_workers: int = 0,
    skip: int = 2,
    progress: bool = True,
    workdir: Path | str | None = None,
) -> dict[str, Any]:
    """Time per optimizer step of the real :func:`finetune` against a bare PyTorch loop, step by step.

    A step of each side runs in turn (see :func:`_paired_steps`). A step includes loading and decoding its
    micro-batches, forward and backward passes, the optimizer and schedule steps, and for finetune()
    everything it does between steps (per-batch seeding, progress bar, stop-signal check); start-up,
    evaluation and checkpoints happen outside the steps of an epoch and are not counted. Augmentation is
    off on both sides (label smoothing on); CPU, float32, one intra-op thread. ``ratio`` compares the
    medians of process CPU time per step, which other programs on a shared machine inflate least;
    ``ratio_wall`` the medians of wall-clock time. The first ``skip`` steps of each run are warm-up.

    >>> loop_overhead(steps=4, repeats=1, skip=1)["ratio"] > 0  # doctest: +SKIP
    True
    """
    from .train import finetune

    device = torch.device("cpu")
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="tiny-transformers-bench-"))
    classes = 4
    per_class = math.ceil(micro_batch * accumulation * (steps + 1) / classes)
    source = write_stanford_folder(workdir / "data", classes, per_class)
    library: list[np.ndarray] = []
    bare_steps: list[np.ndarray] = []
    # One intra-op thread: on a shared machine, OpenMP threads waiting for a preempted sibling turn a
    # 20 ms step into seconds now and then, which no median hides.
    with _threads(1):
        for repeat in range(repeats):
            config = FinetuneConfig(
                model=ModelConfig(name=model, pretrained=False, train_mode="full"),
                data=DataConfig(source=str(source), image_size=image_size, num_workers=num_workers),
                augment=OFF,
                train=TrainConfig(
                    epochs=1,
                    batch_size=micro_batch * accumulation,
                    micro_batch_size=micro_batch,
                    mixed_precision="no",
                    output_dir=str(workdir / f"run{repeat}"),
                    resume="never",
                    progress=progress,
                ),
            )
            bare = _BareLoop(config, classes)
            _fresh_accelerator(device, "no")
            # finetune()'s prints and progress bar go to the null device (written, as to a terminal, not shown).
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                with _paired_steps(bare) as times:
                    finetune(config)
            if len(times["library"]) <= skip:
                raise ValueError(f"only {len(times['library'])} steps were timed; raise steps above {skip + 1}.")
            library.append(np.median(times["library"][skip:], axis=0))
            bare_steps.append(np.median(times["bare"][skip:], axis=0))
    library_wall, library_cpu = np.median(library, axis=0)
    bare_wall, bare_cpu = np.median(bare_steps, axis=0)
    return {
        "model": model,
        "image_size": image_size,
        "micro_batch": micro_batch,
        "accumulation": accumulation,
        "steps": steps,
        "repeats": repeats,
        "num_workers": num_workers,
        "progress_bar": progress,
        "finetune_cpu_seconds_per_step": float(library_cpu),
        "bare_cpu_seconds_per_step": float(bare_cpu),
        "ratio": float(library_cpu / bare_cpu),
        "ratio_per_repeat": [round(float(a[1] / b[1]), 4) for a, b in zip(library, bare_steps)],
        "finetune_wall_seconds_per_step": float(library_wall),
        "bare_wall_seconds_per_step": float(bare_wall),
        "ratio_wall": float(library_wall / bare_wall),
    }


# --------------------------------------------------------------------------------------------------
# 3. Training and inference throughput, FLOPs, memory
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _fused_attention(enabled: bool | None) -> Iterator[None]:
    """timm's fused attention (F.scaled_dot_product_attention) on or off for models built inside the block."""
    if enabled is None:
        yield
        return
    from timm.layers import config as timm_config

    previous = timm_config._USE_FUSED_ATTN
    timm_config.set_fused_attn(enabled)
    try:
        yield
    finally:
        timm_config._USE_FUSED_ATTN = previous


def _build(model: str, mode: str, image_size: int, device: torch.device, fused_attention: bool | None = None):
    from .models import build_model

    paper = paper_model_for(model)
    cfg = ModelConfig(
        name=model, pretrained=False, train_mode=mode, drop_path_rate=paper.drop_path_rate if paper else 0.1
    )
    torch.manual_seed(0)
    # Built on the device itself: initialising 300M parameters on the CPU would take longer than the benchmark.
    with _fused_attention(fused_attention), torch.device(device):
        return build_model(cfg, 200, image_size)


def saved_for_backward_bytes(model: torch.nn.Module, x: torch.Tensor, autocast: Callable) -> int:
    """Bytes of activations autograd keeps for the backward pass of one forward (parameters not counted).

    Storages are counted whole, as memory is held. In head mode only the head's input is kept (the frozen
    backbone builds no graph): for test_vit at 32 px, the class token is a view of the final (2, 5, 64)
    float32 token tensor, 2 x 5 x 64 x 4 bytes.

    >>> from tiny_transformers.models import build_model
    >>> m = build_model(ModelConfig(name="test_vit", pretrained=False, train_mode="head"), 10, 32)
    >>> saved_for_backward_bytes(m, torch.zeros(2, 3, 32, 32), contextlib.nullcontext)
    2560
    """
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, torch.UntypedStorage] = {}

    def pack(t: torch.Tensor) -> None:
        # Held here, as autograd would hold it, so that no later tensor reuses its address; the graph itself
        # keeps nothing: a hook returning an op's own output makes a reference cycle through the C++ graph
        # that Python's collector cannot see, and the whole graph (31 GiB for ViT-L) would leak.
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage

    def unpack(_: None) -> torch.Tensor:
        raise RuntimeError("saved_for_backward_bytes only measures; its graph cannot be backpropagated")

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack), autocast():
        model(x)
    total = sum(storage.nbytes() for storage in kept.values())
    kept.clear()
    return total


def _count_flops(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, autocast: Callable) -> int:
    """FLOPs of one training forward + backward (as far as anything requires grad), torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    from .engine import loss_fn_per_image
    from .models import unwrap_logits

    with FlopCounterMode(display=False) as counter:
        with autocast():
            logits = unwrap_logits(model(x))
        loss_fn_per_image(logits.float(), targets).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measured_matmul_flops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """bf16 matrix-product FLOP/s measured on ``device`` (the practical ceiling when no datasheet peak is known)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def peak_flops(device: torch.device) -> tuple[float | None, str]:
    """(peak bf16 FLOP/s, where it comes from) for MFU; (None, ...) on a CPU."""
    if device.type != "cuda":
        return None, "none (CPU)"
    name = torch.cuda.get_device_name(device)
    for key, flops in DATASHEET_BF16_FLOPS.items():
        if key in name:
            return flops, f"datasheet dense bf16 for {key}"
    return measured_matmul_flops(device), "measured 8192^3 bf16 matrix product"


def inference_throughput(
    model: str,
    micro_batch: int,
    image_size: int,
    device: torch.device | str | None = None,
    precision: str = "bf16",
    steps: int = 10,
    warmup: int = 3,
    repeats: int = 3,
    fused_attention: bool | None = None,
) -> dict[str, Any]:
    """Images/s of the model's forward pass alone: eval mode, inference mode, autocast, inputs ready on the device.

    >>> inference_throughput("test_vit", 2, 32, "cpu", "no", steps=1, warmup=0, repeats=1)["images_per_s"] > 0  # doctest: +SKIP
    True
    """
    device = torch.device(device) if device is not None else default_device()
    net = _build(model, "full", image_size, device, fused_attention).eval()
    x = torch.randn(micro_batch, 3, image_size, image_size, device=device)
    autocast = _autocast(device, precision)
    times = []
    with torch.inference_mode(), autocast():
        for _ in range(warmup):
            net(x)
        for _ in range(repeats):
            _sync(device)
            started = time.perf_counter()
            for _ in range(steps):
                net(x)
            _sync(device)
            times.append((time.perf_counter() - started) / steps)
    del net, x
    _free(device)
    seconds = statistics.median(times)
    return {
        "model": model,
        "micro_batch": micro_batch,
        "image_size": image_size,
        "precision": precision,
        "seconds_per_batch": seconds,
        "images_per_s": micro_batch / seconds,
    }


def _autocast(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "no":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def train_throughput(
    model: str,
    mode: str,
    micro_batch: int,
    image_size: int,
    device: torch.device | str | None = None,
    precision: str = "bf16",
    steps: int = 10,
    warmup: int = 3,
    repeats: int = 3,
    native_size: int = 64,
    fused_optimizer: bool = False,
    compile: bool = False,
    fused_attention: bool | None = None,
    augment: AugmentConfig | None = None,
) -> dict[str, Any]:
    """Images/s of the library's own training step (``engine.train_one_epoch``) in ``mode``, with FLOPs and memory.

    Micro-batches of random 64x64 uint8 images come from pinned host memory (the loader's side is item 1),
    so this times: transfer, upscaling and the paper's augmentation on the device, forward, backward,
    optimizer and schedule steps. One micro-batch per optimizer step. ``peak_memory_gib`` is
    ``torch.cuda.max_memory_allocated`` (GPU only); ``saved_for_backward_mib`` is the activation memory
    autograd keeps per micro-batch, measured on any device.

    >>> train_throughput("test_vit", "head", 2, 32, "cpu", "no", steps=1, warmup=1, repeats=1)["images_per_s"] > 0  # doctest: +SKIP
    True
    """
    from .checkpoint import TrainerState
    from .config import Plan
    from .engine import train_one_epoch
    from .train import build_optimizer

    device = torch.device(device) if device is not None else default_device()
    augment_cfg = augment if augment is not None else AugmentConfig()
    accelerator = _fresh_accelerator(device, precision)
    net = _build(model, mode, image_size, device, fused_attention)
    optimizer = build_optimizer(OptimConfig(fused=fused_optimizer), net)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10_000)
    autocast = _autocast(device, precision)

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (micro_batch, 3, native_size, native_size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 200, (micro_batch,), generator=generator)
    if device.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()
    batch_augment = BatchAugment(image_size, IMAGENET_MEAN, IMAGENET_STD, 200, augment_cfg, device)

    # Memory and FLOPs first, on the uncompiled model (FlopCounterMode and saved-tensor hooks see every op).
    net.train()
    x, targets = batch_augment.train(images.to(device), labels.to(device))
    saved = saved_for_backward_bytes(net, x, autocast)
    flops = _count_flops(net, x, targets, autocast)
    del x, targets

    if compile:
        net.compile()
    net, optimizer = accelerator.prepare(net, optimizer)
    config = FinetuneConfig(train=TrainConfig(batch_size=micro_batch, micro_batch_size=micro_batch, epochs=1))

    def epoch(n: int) -> float:
        plan = Plan.build(config, 1, n * micro_batch)
        _sync(device)
        started = time.perf_counter()
        train_one_epoch(
            accelerator,
            net,
            optimizer,
            scheduler,
            [(images, labels)] * n,
            batch_augment,
            plan,
            TrainerState(),
            0,
            lambda *_: False,
            progress=False,
        )
        _sync(device)
        return time.perf_counter() - started

    first = epoch(max(warmup, 1))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [epoch(steps) / steps for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del net, optimizer, scheduler
    accelerator.free_memory()
    _free(device)

    seconds = statistics.median(times)
    images_per_s = micro_batch / seconds
    peak_device_flops, peak_source = peak_flops(device)
    achieved = flops / micro_batch * images_per_s
    return {
        "model": model,
        "timm_name": resolve_model_name(model),
        "mode": mode,
        "micro_batch": micro_batch,
        "image_size": image_size,
        "precision": precision,
        "fused_optimizer": fused_optimizer,
        "compile": compile,
        "fused_attention": fused_attention,
        "seconds_per_step": seconds,
        "images_per_s": images_per_s,
        "warmup_seconds": first,
        "flops_per_image": flops / micro_batch,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / peak_device_flops if peak_device_flops else None,
        "peak_flops_source": peak_source,
        "peak_memory_gib": peak,
        "saved_for_backward_mib": saved / 2**20,
    }


def _attempt(measure: Callable[..., dict[str, Any]], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``measure(**kwargs)``, or {"error": ..., "out_of_memory": bool} if it raises: one model's failure must
    not lose the other figures. Memory is freed after the exception (and the frames it holds) is gone."""
    try:
        return measure(**kwargs)
    except Exception as error:  # noqa: BLE001
        failure = {
            "error": f"{type(error).__name__}: {str(error)[:300]}",
            "out_of_memory": isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower(),
        }
    _free(torch.device(kwargs.get("device") or default_device()))
    return failure


def _measure(measure: Callable[..., dict[str, Any]], isolate: bool, **kwargs: Any) -> dict[str, Any]:
    """:func:`_attempt`, in a fresh spawned process when ``isolate``.

    In its own process a measurement's peak memory is its own whatever ran before, and all the memory it
    took comes back when it exits. Costs a process start-up (imports, CUDA context) per measurement.
    """
    if not isolate:
        return _attempt(measure, kwargs)
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(_attempt, measure, kwargs).result()
        except Exception as error:  # noqa: BLE001 - the process itself died (killed, crashed)
            return {
                "error": f"measurement process failed: {type(error).__name__}: {str(error)[:250]}",
                "out_of_memory": False,
            }


def model_throughput(
    model: str,
    micro_batch: int,
    image_size: int,
    modes: Sequence[str] = ("head", "full"),
    device: torch.device | str | None = None,
    precision: str = "bf16",
    steps: int = 10,
    warmup: int = 3,
    repeats: int = 3,
    isolate: bool = False,
    on_progress: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Inference, then training in each mode, for one model; a mode that runs out of memory is retried at
    half the micro-batch (down to 1) and the failure recorded. ``isolate``: each in its own process.
    ``on_progress`` gets the partial result after each measurement.

    >>> model_throughput("test_vit", 2, 32, device="cpu", precision="no", steps=1, warmup=1, repeats=1)["head"]["mode"]  # doctest: +SKIP
    'head'
    """
    device = torch.device(device) if device is not None else default_device()
    result: dict[str, Any] = {"model": model, "timm_name": resolve_model_name(model)}
    common = dict(
        model=model,
        image_size=image_size,
        device=device,
        precision=precision,
        steps=steps,
        warmup=warmup,
        repeats=repeats,
    )
    report = on_progress or (lambda _: None)
    result["inference"] = _measure(inference_throughput, isolate, micro_batch=micro_batch, **common)
    report(result)
    for mode in modes:
        batch, failures = micro_batch, []
        while True:
            result[mode] = _measure(train_throughput, isolate, mode=mode, micro_batch=batch, **common)
            if result[mode].get("out_of_memory") and batch > 1:
                failures.append(batch)
                batch //= 2
                continue
            break
        if failures:
            result[mode]["out_of_memory_at"] = failures
        report(result)
    inference = result["inference"].get("images_per_s")
    head = result.get("head", {})
    if inference and head.get("images_per_s") and head.get("micro_batch") == micro_batch:
        result["head_over_inference"] = head["images_per_s"] / inference
    if head.get("saved_for_backward_mib") and result.get("full", {}).get("saved_for_backward_mib"):
        result["full_over_head_saved_memory"] = (
            result["full"]["saved_for_backward_mib"] / head["saved_for_backward_mib"]
        )
    return result


# --------------------------------------------------------------------------------------------------
# Options that may make GPUs faster: each measured against the default, same model, same run
# --------------------------------------------------------------------------------------------------


def option_effects(
    model: str,
    micro_batch: int,
    image_size: int,
    device: torch.device | str | None = None,
    precision: str = "bf16",
    steps: int = 10,
    warmup: int = 3,
    repeats: int = 3,
    compile: bool = True,
    isolate: bool = False,
    on_effect: Callable[[dict], None] | None = None,
) -> list[dict[str, Any]]:
    """Full-mode training images/s with one option changed at a time against the defaults (``precision``,
    timm's fused attention on, unfused optimizer, no compile), each variant measured right after its own
    baseline run; ``speedup`` > 1 means the option is faster. ``on_effect`` gets each option's figures
    as soon as they are measured.

    >>> option_effects("test_vit", 2, 32, "cpu", "no", steps=1, warmup=1, repeats=1, compile=False)[0]["option"]  # doctest: +SKIP
    'bf16 autocast instead of fp32'
    """
    device = torch.device(device) if device is not None else default_device()
    common = dict(
        model=model,
        mode="full",
        micro_batch=micro_batch,
        image_size=image_size,
        device=device,
        precision=precision,
        steps=steps,
        warmup=warmup,
        repeats=repeats,
    )
    other_precision = "no" if precision != "no" else "bf16"
    variants = [
        (
            f"{'fp32 instead of ' + precision if other_precision == 'no' else 'bf16 autocast instead of fp32'}",
            dict(precision=other_precision),
        ),
        ("optim.fused (fused AdamW)", dict(fused_optimizer=True)),
        ("timm fused attention off", dict(fused_attention=False)),
    ]
    if compile:
        variants.append(("train.compile (torch.compile)", dict(compile=True)))
    effects = []
    for name, change in variants:
        baseline = _measure(train_throughput, isolate, **common)
        variant = _measure(train_throughput, isolate, **{**common, **change})
        if "error" in baseline or "error" in variant:
            effect = {"option": name, "error": baseline.get("error") or variant["error"]}
        else:
            effect = {
                "option": name,
                "model": model,
                "micro_batch": micro_batch,
                "precision": variant["precision"],
                "baseline_images_per_s": baseline["images_per_s"],
                "images_per_s": variant["images_per_s"],
                "speedup": variant["images_per_s"] / baseline["images_per_s"],
                "warmup_seconds": variant["warmup_seconds"],
                "baseline_peak_memory_gib": baseline["peak_memory_gib"],
                "peak_memory_gib": variant["peak_memory_gib"],
            }
        effects.append(effect)
        if on_effect is not None:
            on_effect(effect)
    return effects


# --------------------------------------------------------------------------------------------------
# The command: tiny-transformers benchmark
# --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiny-transformers benchmark",
        description="Data path, loop overhead and training throughput (docs/benchmarks.md). Random weights and "
        "synthetic images: nothing is downloaded.",
    )
    parser.add_argument(
        "--model",
        nargs="+",
        default=["test_vit"],
        help="paper short names or timm names for the throughput section (default: test_vit)",
    )
    parser.add_argument("--mode", nargs="+", choices=["head", "full"], default=["head", "full"])
    parser.add_argument(
        "--micro-batch", type=int, default=None, help="per forward pass (default: the paper's for paper models, else 8)"
    )
    parser.add_argument("--image-size", type=int, default=None, help="default: 384 for paper models, else 32")
    parser.add_argument(
        "--precision",
        choices=["bf16", "fp16", "no"],
        default=None,
        help="autocast for throughput (default: bf16 on a GPU, no on a CPU)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=None,
        help="loader processes for the data path (default: 0, plus 2 without --quick)",
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=["data", "loop", "train", "options"],
        default=["data", "loop", "train"],
        help="what to measure (options: GPU speed options)",
    )
    parser.add_argument("--options-model", default=None, help="model for --sections options (default: first --model)")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out of the options section")
    parser.add_argument("--quick", action="store_true", help="fewer images, steps and repeats: seconds on a CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 10, --quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3, --quick 1)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats, medians taken (default 3, --quick 2)")
    parser.add_argument(
        "--min-seconds", type=float, default=None, help="data path: seconds per side and repeat (default 1)"
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="each throughput measurement in its own process (clean peak memory; ~10 s more each)",
    )
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    return parser


def _model_defaults(model: str, micro_batch: int | None, image_size: int | None) -> tuple[int, int]:
    paper = paper_model_for(model)
    return (micro_batch or (paper.micro_batch_size if paper else 8), image_size or (384 if paper else 32))


def run_benchmark(
    args: argparse.Namespace, command: str = "", on_progress: Callable[[dict], None] | None = None
) -> dict[str, Any]:
    """Every section asked for, in order; ``on_progress`` gets the partial results after each measurement."""
    device = default_device()
    precision = args.precision or ("bf16" if device.type == "cuda" else "no")
    quick = args.quick
    repeats, steps, warmup = (2, 3, 1) if quick else (3, 10, 3)
    repeats, steps, warmup = args.repeats or repeats, args.steps or steps, args.warmup or warmup
    min_seconds = args.min_seconds if args.min_seconds is not None else (0.2 if quick else 1.0)
    isolate = args.isolate
    workers = args.workers if args.workers is not None else ([0] if quick else [0, 2])
    results: dict[str, Any] = {
        "command": command,
        "machine": describe_machine(),
        "device": str(device),
        "precision": precision,
        "quick": quick,
    }
    report = on_progress or (lambda _: None)

    def compute_threads() -> contextlib.AbstractContextManager:
        # On a CPU, one intra-op thread: figures per core, and no OpenMP stalls when other programs share it.
        return _threads(1) if device.type == "cpu" else contextlib.nullcontext()

    if "data" in args.sections:
        results["data_path"] = []
        for n in workers:
            results["data_path"].append(
                data_path(
                    num_workers=n,
                    batch_size=16 if quick else 64,
                    device=device,
                    repeats=repeats,
                    min_images=32 if quick else 256,
                    min_seconds=min_seconds,
                    warmup=1 if quick else 2,
                    unique_images=64 if quick else 256,
                )
            )
            report(results)
    if "loop" in args.sections:
        results["loop_overhead"] = loop_overhead(steps=8 if quick else 60, repeats=repeats if quick else 5)
        report(results)
    if "train" in args.sections:
        results["training"] = []
        for model in args.model:
            micro_batch, image_size = _model_defaults(model, args.micro_batch, args.image_size)
            results["training"].append({"model": model})

            def partial(result: dict[str, Any]) -> None:
                results["training"][-1] = result
                report(results)

            with compute_threads():
                partial(
                    model_throughput(
                        model,
                        micro_batch,
                        image_size,
                        args.mode,
                        device,
                        precision,
                        steps,
                        warmup,
                        repeats,
                        isolate,
                        on_progress=partial,
                    )
                )
    if "options" in args.sections:
        results["options"] = []
        if device.type == "cuda":
            # Pinned host memory for the loader's batches: the library's path with it on and off, same run.
            rates = [
                data_path(
                    num_workers=max(workers),
                    batch_size=16 if quick else 64,
                    device=device,
                    repeats=repeats,
                    min_images=32 if quick else 256,
                    min_seconds=min_seconds,
                    pin_memory=pin,
                    sides=("library",),
                )["ready"]["library_images_per_s"]
                for pin in (True, False)
            ]
            results["options"].append(
                {
                    "option": "pin_memory (library data path, ready on the device)",
                    "num_workers": max(workers),
                    "baseline_images_per_s": rates[1],
                    "images_per_s": rates[0],
                    "speedup": rates[0] / rates[1],
                }
            )
            report(results)
        model = args.options_model or args.model[0]
        micro_batch, image_size = _model_defaults(model, args.micro_batch, args.image_size)
        with compute_threads():
            # compile runs last: the slowest to measure (it compiles first), and the JSON keeps the rest if cut short
            option_effects(
                model,
                micro_batch,
                image_size,
                device,
                precision,
                steps,
                warmup,
                repeats,
                compile=not args.no_compile,
                isolate=isolate,
                on_effect=lambda effect: (results["options"].append(effect), report(results)),
            )
    return results


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def format_report(results: dict[str, Any]) -> str:
    """The human-readable report: the machine, then every figure measured.

    >>> print(format_report({"machine": {"cpu": "X", "cpu_cores": 2}, "device": "cpu"}).splitlines()[0])
    machine: X, 2 cores (2 usable), torch n/a, device cpu
    """
    m = results["machine"]
    lines = [
        f"machine: {m.get('cpu')}, {m.get('cpu_cores')} cores ({m.get('cpu_cores_usable', m.get('cpu_cores'))} usable), "
        f"torch {m.get('torch', 'n/a')}, device {results.get('device')}"
        + (f", GPU {m['gpu']} ({m['gpu_memory_gib']} GiB)" if m.get("gpu") else ""),
    ]
    if m.get("date"):
        lines.append(
            f"date: {m['date']}; timm {m.get('timm')}, torchvision {m.get('torchvision')}, python {m.get('python')}"
        )
    if results.get("command"):
        lines.append(f"command: {results['command']}")
    for d in results.get("data_path", []):
        lines.append(
            f"\n1. data path, {d['num_workers']} worker(s), batch {d['batch_size']}, {d['native_size']} px JPEG "
            f"({d['jpeg_bytes_mean']} B) -> {d['image_size']} px float on {d['device']} (pin_memory {d['pin_memory']}):"
        )
        for measure, label in (("ready", "ready for the model"), ("loader_only", "loader output only")):
            r = d[measure]
            lines.append(
                f"   {label:<20} paper {_fmt(r['paper_images_per_s'])} img/s ({_fmt(r['paper_images_per_s_per_core'])}/core)"
                f" | library {_fmt(r['library_images_per_s'])} img/s ({_fmt(r['library_images_per_s_per_core'])}/core)"
                f" | ratio {_fmt(r['ratio'], 2)}x"
            )
        lines.append(
            f"   loader start-up (first batch): paper {d['ready']['paper_first_batch_s']:.3f} s, "
            f"library {d['ready']['library_first_batch_s']:.3f} s"
        )
    if "loop_overhead" in results:
        o = results["loop_overhead"]
        lines.append(
            f"\n2. loop overhead ({o['model']} at {o['image_size']} px, micro-batch {o['micro_batch']} x {o['accumulation']} "
            f"accumulation, CPU fp32, 1 thread, {o['num_workers']} workers, progress bar {'on' if o['progress_bar'] else 'off'}):\n"
            f"   CPU time   finetune() {o['finetune_cpu_seconds_per_step'] * 1e3:.2f} ms/step | bare PyTorch loop "
            f"{o['bare_cpu_seconds_per_step'] * 1e3:.2f} ms/step | ratio {o['ratio']:.3f} "
            f"(per repeat {', '.join(f'{r:.3f}' for r in o['ratio_per_repeat'])})\n"
            f"   wall clock finetune() {o['finetune_wall_seconds_per_step'] * 1e3:.2f} ms/step | bare PyTorch loop "
            f"{o['bare_wall_seconds_per_step'] * 1e3:.2f} ms/step | ratio {o['ratio_wall']:.3f}"
        )
    for t in results.get("training", []):
        lines.append(f"\n3. training throughput: {t['model']} ({t['timm_name']})")
        inference = t.get("inference", {})
        if "error" in inference:
            lines.append(f"   inference: {inference['error']}")
        else:
            lines.append(
                f"   inference  micro-batch {inference['micro_batch']}, {inference['image_size']} px, {inference['precision']}: "
                f"{_fmt(inference['images_per_s'])} img/s"
            )
        for mode in ("head", "full"):
            if mode not in t:
                continue
            r = t[mode]
            if "error" in r:
                lines.append(f"   {mode:<5} {r['error']}")
                continue
            oom = f" (out of memory at {r['out_of_memory_at']})" if r.get("out_of_memory_at") else ""
            mfu = f"{r['mfu'] * 100:.1f}% ({r['peak_flops_source']})" if r["mfu"] is not None else "n/a (no GPU)"
            peak = f"{r['peak_memory_gib']:.2f} GiB" if r["peak_memory_gib"] is not None else "n/a (no GPU)"
            lines.append(
                f"   {mode:<5}      micro-batch {r['micro_batch']}{oom}: {_fmt(r['images_per_s'])} img/s, "
                f"{r['flops_per_image'] / 1e9:.4g} GFLOP/img, {r['achieved_tflops']:.4g} TFLOP/s, MFU {mfu}, "
                f"peak memory {peak}, kept for backward {r['saved_for_backward_mib']:.4g} MiB/micro-batch"
            )
        if "head_over_inference" in t:
            lines.append(f"   head-mode training / inference throughput: {t['head_over_inference']:.3f}")
        if "full_over_head_saved_memory" in t:
            lines.append(
                f"   activation memory kept for backward, full / head: {t['full_over_head_saved_memory']:,.0f}x"
            )
    if results.get("options"):
        lines.append("\noptions, each against the default in the same run (speedup > 1: faster):")
    for e in results.get("options", []):
        if "error" in e:
            lines.append(f"   {e['option']}: {e['error']}")
            continue
        where = (
            f"{e['model']}, full mode, micro-batch {e['micro_batch']}, first steps {e['warmup_seconds']:.1f} s"
            if "model" in e
            else f"{e['num_workers']} worker(s)"
        )
        lines.append(
            f"   {e['option']}: {_fmt(e['images_per_s'])} vs {_fmt(e['baseline_images_per_s'])} img/s, "
            f"speedup {e['speedup']:.3f} ({where})"
        )
    return "\n".join(lines)


def _write_json(path: str | None, results: dict[str, Any]) -> None:
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".partial")
    partial.write_text(json.dumps(results, indent=2, default=str))
    partial.replace(target)  # a run killed mid-write keeps the previous complete file


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``tiny-transformers benchmark [--model test_vit] [--quick] [--json PATH]``: measure, print, optionally save.

    The JSON file is rewritten after every measurement, so a run cut short keeps what it measured.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    command = " ".join(["tiny-transformers benchmark", *argv])
    results = run_benchmark(args, command, on_progress=lambda partial: _write_json(args.json, partial))
    _write_json(args.json, results)
    print(format_report(results))
    return results


if __name__ == "__main__":
    main()
