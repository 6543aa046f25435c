"""1. Data path: the paper's per-sample CPU path against this library's uint8 + on-device path."""

from __future__ import annotations

import io
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch
from torch.utils.data import DataLoader, Dataset

from tiny_transformers.augment import BatchAugment
from tiny_transformers.config import AugmentConfig
from tiny_transformers.models import IMAGENET_MEAN, IMAGENET_STD
from tiny_transformers.synthetic import synthetic_jpegs

from .machine import free, resolve_device, sync, threads

if TYPE_CHECKING:
    import datasets

OFF = AugmentConfig(mixup_alpha=0.0, cutmix_alpha=0.0, random_erasing=0.0)  # label smoothing stays (cheap)


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


def library_samples(jpegs: list[bytes], native_size: int = 64) -> datasets.Dataset:
    """This library's loader input: a ``datasets`` table of undecoded images with its train transform
    (decode to uint8 only), exactly what :func:`tiny_transformers.train.finetune` iterates.

    >>> sample = library_samples(synthetic_jpegs(1))[0]
    >>> tuple(sample["pixels"].shape), sample["pixels"].dtype
    ((3, 64, 64), torch.uint8)
    """
    import datasets

    from tiny_transformers.data import DecodeTransform

    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.Value("int64")})
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in jpegs], "label": [i % 200 for i in range(len(jpegs))]},
        features=features,
    )
    return table.with_transform(DecodeTransform(native_size))


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
    sync(device)
    first_batch = time.perf_counter() - started
    for _ in range(warmup - 1):
        consume(next(batches))
    sync(device)
    started, images = time.perf_counter(), 0
    for batch in batches:
        images += len(consume(batch))
        if images >= min_images and time.perf_counter() - started >= min_seconds:
            break
    sync(device)
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
    >>> sorted(r["ready"])[:4]
    ['library_first_batch_s', 'library_images_per_s', 'library_images_per_s_per_core', 'paper_first_batch_s']
    >>> sorted(r["ready"])[4:]
    ['paper_images_per_s', 'paper_images_per_s_per_core', 'ratio']
    """
    from tiny_transformers.data import collate

    device = resolve_device(device)
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
    with threads(1):
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
    free(device)
    return result
