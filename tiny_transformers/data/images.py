"""The loader-worker path: an undecoded image in, a uint8 RGB tensor out, batches stacked by :func:`collate`.

Everything here runs inside ``DataLoader`` workers, on one image (or one batch) at a time, and is picklable so
that workers started with spawn get it too. :func:`decode_image` turns a ``datasets.Image(decode=False)`` dict
(or a PIL image) of any mode into RGB uint8 at the data's native size; :class:`DecodeTransform`
wraps it for ``Dataset.with_transform``; resizing to the model's size, normalising and
mixing happen later, on the training device. :data:`IMAGE_EXTENSIONS` is the library's one list of image file
suffixes (the Stanford loader and ``predict`` both use it).

>>> decode_image(PIL.Image.new("LA", (30, 50)), native_size=64).shape
torch.Size([3, 64, 64])
>>> batch = DecodeTransform(64)({"image": [PIL.Image.new("RGB", (64, 64))], "label": [7]})
>>> images, labels = collate([{"pixels": batch["pixels"][0], "label": batch["label"][0]}])
>>> images.dtype, tuple(images.shape), labels
(torch.uint8, (1, 3, 64, 64), tensor([7]))
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import threading
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".jfif"}
)
SKIP_CORRUPT_HINT = "set --data.skip_corrupt true to skip and count unreadable images"


def _to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL mode to 8-bit RGB.

    PIL's own ``convert("RGB")`` clips 16/32-bit and float greyscale to 255 (a 16-bit PNG turns white), so
    those are rescaled first: ``I;16*`` always by 1/257, ``I`` only when its values exceed 8 bits, ``F`` by
    255 when it holds values in [0, 1]. Every other mode (L, LA, RGBA, P, CMYK, 1, YCbCr...) is PIL's
    conversion, alpha dropped without compositing.
    """
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
    with warnings.catch_warnings():
        # Palette images with transparency warn that RGBA would keep it; we drop alpha on purpose.
        warnings.simplefilter("ignore", UserWarning)
        return img.convert("RGB")


def _describe(image: Any) -> str:
    path = image.get("path") if isinstance(image, Mapping) else getattr(image, "filename", None)
    return f"'{path}'" if path else "an image without a path"


def decode_image(image: Mapping[str, Any] | PIL.Image.Image, native_size: int) -> torch.Tensor:
    """Decode one image to a uint8 RGB tensor of shape (3, native_size, native_size).

    ``image`` is a ``datasets.Image(decode=False)`` dict (``bytes`` and/or ``path``) or a PIL image. Any
    mode becomes RGB; the image is resized with PIL bicubic only when it is not already
    native_size x native_size (a non-square image is stretched, not cropped). A corrupt or truncated file
    raises :class:`DataError` naming it, here rather than later, because the pixels are loaded eagerly.

    >>> decode_image({"bytes": None, "path": "train/n01443537/images/n01443537_0.JPEG"}, 64).shape  # doctest: +SKIP
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
            f"{SKIP_CORRUPT_HINT}."
        ) from error
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class DecodeTransform:
    """The loader workers' whole job, as a picklable ``Dataset.with_transform`` callable (a closure would break
    DataLoader workers under spawn): decode each image to RGB uint8 at ``native_size``. Everything random
    (RandAugment, Mixup, erasing) happens on the training device, keyed per micro-batch.

    >>> batch = DecodeTransform(64)({"image": [PIL.Image.new("L", (10, 10), 7)], "label": [3]})
    >>> batch["pixels"][0].shape, batch["label"]
    (torch.Size([3, 64, 64]), [3])
    """

    def __init__(self, native_size: int) -> None:
        self.native_size = native_size

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        pixels = [decode_image(image, self.native_size) for image in batch["image"]]
        return {"pixels": pixels, "label": [int(label) for label in batch["label"]]}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(native_size={self.native_size})"


_STOPS = {signal.SIGTERM, signal.SIGINT}


def ignore_stop_signals(worker_id: int) -> None:
    """The ``worker_init_fn`` of the library's loaders: the worker leaves SIGTERM and SIGINT to the main process.

    A scheduler stops a job by signalling its whole process group (SLURM, ``kill -TERM -- -PGID``, Ctrl-C in a
    terminal); a worker that died of it would take the main process down ("DataLoader worker ... exited
    unexpectedly") before its stop checkpoint. So SIGINT is ignored, and SIGTERM (blocked since the worker started,
    :data:`WORKER_CONTEXT`) is taken by a thread that ends the worker only when the main process sends it
    (multiprocessing's ``terminate``, at that process's exit) and ignores it from anyone else.
    """
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

    >>> collate([{"pixels": torch.zeros(3, 2, 2, dtype=torch.uint8), "label": 5}])[1]
    tensor([5])
    """
    images = torch.stack([sample["pixels"] for sample in samples])
    labels = torch.tensor([int(sample["label"]) for sample in samples], dtype=torch.int64)
    return images, labels
