"""The loader-worker path: an undecoded image in, a uint8 RGB tensor at the native size out, batches stacked by
:func:`collate`; picklable for workers started with spawn. :data:`IMAGE_EXTENSIONS` is the library's one list of
image file suffixes.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".jfif"}
)


def _to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL mode to 8-bit RGB, alpha dropped. PIL's ``convert("RGB")`` clips 16/32-bit and float greyscale to
    255, so those are rescaled first: ``I;16*`` by 1/257, ``I`` when above 8 bits, ``F`` by 255 when in [0, 1]."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        if img.mode.startswith("I;16") or (img.mode == "I" and peak > 255):
            arr = arr / 257.0
        elif img.mode == "F" and peak <= 1.0:
            arr = arr * 255.0
        img = PIL.Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    with warnings.catch_warnings():  # a palette image with transparency warns that RGBA would keep it
        warnings.simplefilter("ignore", UserWarning)
        return img.convert("RGB")


def _describe(image: Any) -> str:
    path = image.get("path") if isinstance(image, Mapping) else getattr(image, "filename", None)
    return f"'{path}'" if path else "an image without a path"


def decode_image(image: Mapping[str, Any] | PIL.Image.Image, native_size: int) -> torch.Tensor:
    """A ``datasets.Image(decode=False)`` dict (``bytes`` and/or ``path``) or PIL image as a uint8 RGB tensor
    (3, native_size, native_size), PIL-bicubic resized (stretched) when not that size; a corrupt or truncated file
    is a :class:`DataError` naming it.

    >>> decode_image(PIL.Image.new("LA", (30, 50)), native_size=64).shape
    torch.Size([3, 64, 64])
    """
    where = _describe(image)
    try:
        if isinstance(image, PIL.Image.Image):
            image.load()
            rgb = _to_rgb(image)
        elif isinstance(image, Mapping):
            data, path = image.get("bytes"), image.get("path")
            if data is None and not path:
                raise DataError("An image entry holds neither bytes nor a path; the dataset's image column is broken.")
            with PIL.Image.open(io.BytesIO(data) if data is not None else path) as opened:
                opened.load()  # truncated JPEGs raise here (PIL is lazy), not in a later resize
                rgb = _to_rgb(opened)
                rgb.load()
        else:
            raise DataError(
                f"decode_image got a {type(image).__name__}; it takes a datasets Image(decode=False) dict or a "
                "PIL image."
            )
        if rgb.size != (native_size, native_size):
            rgb = rgb.resize((native_size, native_size), PIL.Image.Resampling.BICUBIC)
        array = np.array(rgb, dtype=np.uint8)  # a writable copy, so torch does not warn
    except DataError:
        raise
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise DataError(
            f"Cannot read image {where} ({type(error).__name__}: {error}); replace or delete the file, or "
            "set --data.skip_corrupt true to skip and count unreadable images."
        ) from error
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@dataclass(eq=False)  # compared and hashed by identity, as a plain object
class DecodeTransform:
    """The loader workers' whole job, as a picklable ``Dataset.with_transform`` callable: decode each image to RGB
    uint8 at ``native_size`` (everything random happens on the training device).

    >>> batch = DecodeTransform(64)({"image": [PIL.Image.new("L", (10, 10), 7)], "label": [3]})
    >>> batch["pixels"][0].shape, batch["label"]
    (torch.Size([3, 64, 64]), [3])
    """

    native_size: int

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        pixels = [decode_image(image, self.native_size) for image in batch["image"]]
        return {"pixels": pixels, "label": [int(label) for label in batch["label"]]}


_STOPS = {signal.SIGTERM, signal.SIGINT}


def ignore_stop_signals(worker_id: int) -> None:
    """The loaders' ``worker_init_fn``: the worker leaves SIGTERM and SIGINT to the main process, as a scheduler
    signals the whole process group and a dying worker would take the main process down before its stop checkpoint.
    SIGINT is ignored; SIGTERM (blocked since start, :data:`WORKER_CONTEXT`) ends the worker only when the main
    process sends it (multiprocessing's ``terminate`` at its exit)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    threading.Thread(target=_exit_on_sigterm_from_parent, name="sigterm-from-parent", daemon=True).start()


def _exit_on_sigterm_from_parent() -> None:
    # status 0, as torch's own worker handler: a nonzero one makes the main process's SIGCHLD handler raise
    # "DataLoader worker ... exited unexpectedly" when multiprocessing terminates the workers at its exit
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == os.getppid():
            os._exit(0)


_DEFAULT_CONTEXT = multiprocessing.get_context()


class _WorkerProcess(_DEFAULT_CONTEXT.Process):  # type: ignore[name-defined,misc]
    """A loader worker started with SIGTERM and SIGINT blocked (held for the main process meanwhile, not lost)."""

    def start(self) -> None:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _WorkerContext(type(_DEFAULT_CONTEXT)):  # type: ignore[misc]
    Process = _WorkerProcess


WORKER_CONTEXT = _WorkerContext()  # the platform's default start method, workers started as above


def worker_options(num_workers: int) -> dict[str, Any]:
    """The DataLoader options that make ``num_workers`` workers leave SIGTERM/SIGINT to the main process.

    >>> sorted(worker_options(2)), worker_options(0)
    (['multiprocessing_context', 'worker_init_fn'], {})
    """
    if not num_workers or not hasattr(signal, "sigwaitinfo"):  # macOS and Windows have no sigwaitinfo: as torch does
        return {}
    return {"worker_init_fn": ignore_stop_signals, "multiprocessing_context": WORKER_CONTEXT}


def collate(samples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack transformed samples into (uint8 images B x 3 x S x S, int64 labels B).

    >>> images, labels = collate([{"pixels": torch.zeros(3, 2, 2, dtype=torch.uint8), "label": 5}])
    >>> images.dtype, tuple(images.shape), labels
    (torch.uint8, (1, 3, 2, 2), tensor([5]))
    """
    images = torch.stack([sample["pixels"] for sample in samples])
    labels = torch.tensor([int(sample["label"]) for sample in samples], dtype=torch.int64)
    return images, labels
