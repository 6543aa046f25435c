"""The machine the figures are measured on, and the timing helpers every measurement shares."""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tiny_transformers.engine import usable_cores

if TYPE_CHECKING:
    from accelerate import Accelerator

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
# Dense fp32 peaks without tensor cores, the same way: the ceiling of an fp32 evaluation (train.eval_precision fp32),
# whose matrix products PyTorch runs in true fp32 unless TF32 is allowed (torch.backends.cuda.matmul.allow_tf32, off
# by default since torch 1.12, the official code's version; cuDNN's convolutions use TF32 by default, so a ViT's patch
# embedding may run faster than this).
DATASHEET_FP32_FLOPS = {
    "H200": 66.9e12,
    "H100 PCIe": 51.2e12,
    "H100": 66.9e12,
    "A100": 19.5e12,
    "L40S": 91.6e12,
    "L4": 30.3e12,
}


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

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable_cores(),
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
    """The GPU when torch sees one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a torch.device; None: :func:`default_device`."""
    return torch.device(device) if device is not None else default_device()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    """Collect garbage and give cached device memory back, between measurements."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Pin torch's intra-op threads inside the block (restored after), so 'per core' means one core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def autocast(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts for ``precision`` ("bf16", "fp16" or "no": none)."""
    if precision == "no":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def fresh_accelerator(device: torch.device, mixed_precision: str) -> Accelerator:
    """An Accelerator with this precision even if another precision was used earlier in this process.

    Accelerate keeps one process-wide state and refuses a second precision; a benchmark compares
    precisions in one process, so it resets that state first (single process only, never in training).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mixed_precision)


def measured_matmul_flops(device: torch.device, n: int = 8192, repeats: int = 10, dtype=torch.bfloat16) -> float:
    """Matrix-product FLOP/s in ``dtype`` measured on ``device`` (the practical ceiling when no datasheet peak is
    known)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def peak_flops(device: torch.device, precision: str = "bf16") -> tuple[float | None, str]:
    """(peak FLOP/s, where it comes from) for MFU at ``precision`` (bf16 and fp16 share the tensor-core peak; "no"
    or "fp32": the fp32 peak); (None, ...) on a CPU.

    >>> peak_flops(torch.device("cpu"))
    (None, 'none (CPU)')
    """
    if device.type != "cuda":
        return None, "none (CPU)"
    fp32 = precision in ("no", "fp32")
    table, label = (DATASHEET_FP32_FLOPS, "fp32") if fp32 else (DATASHEET_BF16_FLOPS, "bf16")
    name = torch.cuda.get_device_name(device)
    for key, flops in table.items():
        if key in name:
            return flops, f"datasheet dense {label} for {key}"
    dtype = torch.float32 if fp32 else torch.bfloat16
    return measured_matmul_flops(device, dtype=dtype), f"measured 8192^3 {label} matrix product"
