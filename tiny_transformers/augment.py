"""Batch transforms on the training device: upscale, RandAugment (randaugment.py's batched, or timm's per PIL image
on the host), normalize, timm's Mixup/CutMix and random erasing. The loader hands over 64x64 uint8 images (12 KB
each): they grow to 384x384 float (1.77 MB each) only here, batched, on the device that trains."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import PIL.Image
import torch
from timm.data import Mixup
from timm.data.auto_augment import rand_augment_transform
from timm.data.mixup import mixup_target
from timm.data.random_erasing import RandomErasing
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .config import AugmentConfig
from .randaugment import BatchRandAugment, resize_uint8


class BatchAugment:
    """Turns uint8 batches into model inputs (and soft targets when training).

    >>> aug = BatchAugment(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=10, augment=AugmentConfig())
    >>> x, y = aug.train(torch.zeros(4, 3, 64, 64, dtype=torch.uint8), torch.arange(4))
    >>> tuple(x.shape), tuple(y.shape)
    ((4, 3, 32, 32), (4, 10))
    """

    def __init__(
        self,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        num_classes: int,
        augment: AugmentConfig,
        device: torch.device | str = "cpu",
        preprocess: str = "default",
    ) -> None:
        self.image_size = image_size
        self.device = torch.device(device)
        self.official = preprocess == "official"
        ops, magnitude, host_config = augment.randaugment_ops, augment.randaugment_magnitude, augment.timm_randaugment
        self.randaugment = BatchRandAugment(ops, magnitude) if ops > 0 else None
        # timm's, per PIL image: train() takes the batch on the host and moves it
        self.host_randaugment = timm_randaugment(host_config, mean) if host_config is not None else None
        self.mean = list(mean)
        self.std = list(std)
        # mean and std as tensors on the batch's device, made once: torchvision's normalize copies them from the
        # host on every call, a sync per micro-batch (docs/benchmarks.md)
        self._statistics: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self.num_classes = num_classes
        self.label_smoothing = augment.label_smoothing
        self.mixup = None
        if augment.mixup_alpha > 0 or augment.cutmix_alpha > 0:
            self.mixup = Mixup(
                mixup_alpha=augment.mixup_alpha,
                cutmix_alpha=augment.cutmix_alpha,
                prob=augment.mixup_prob,
                switch_prob=augment.switch_prob,
                mode="batch",
                label_smoothing=augment.label_smoothing,
                num_classes=num_classes,
            )
        erasing = augment.random_erasing
        self.erasing = RandomErasing(probability=erasing, mode="pixel", device=str(device)) if erasing > 0 else None
        # the host generators train() draws from besides torch's (for engine.keyed_rng): timm's Mixup/CutMix NumPy's,
        # its RandomErasing Python's `random`, its RandAugment both
        host = self.host_randaugment is not None
        self.host_generators = {"numpy": self.mixup is not None or host, "python": self.erasing is not None or host}

    def resize_normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, h, w) -> float32 (B, 3, S, S), the evaluation path: bicubic resize (the official uint8 one
        with ``official`` preprocessing), clamped to [0, 1], normalized."""
        return self._normalize(resize_uint8(images, self.image_size) if self.official else images)

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 in [0, 1], resized with antialiasing when not yet at the model's size, normalized."""
        x = images.to(torch.float32, copy=True).div_(255)  # a copy: the steps below work in place
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = TF.resize(
                x, [self.image_size, self.image_size], interpolation=InterpolationMode.BICUBIC, antialias=True
            )
            x = x.clamp_(0, 1)
        key = (x.device, x.dtype)
        if key not in self._statistics:
            self._statistics[key] = tuple(
                torch.tensor(v, dtype=x.dtype, device=x.device).view(-1, 1, 1) for v in (self.mean, self.std)
            )
        mean, std = self._statistics[key]
        return x.sub_(mean).div_(std)  # torchvision's Normalize arithmetic, in place on this fresh tensor

    def train(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs and soft targets (B, num_classes) for one training micro-batch."""
        if self.host_randaugment is not None:
            images = self._host_randaugment(images)
        if self.official:
            images = resize_uint8(images, self.image_size)  # RandAugment then sees 384 px images, as officially
        if self.randaugment is not None:
            # drawn on the CPU (keyed by engine.keyed_rng): the host knows each image's op without a device read
            ops, signs = self.randaugment.draw(len(images), device="cpu")
            images = self.randaugment.apply(images, ops, signs)
        x = self._normalize(images)
        x, targets = self._mix(x, labels) if self.mixup is not None else (x, self.targets(labels))
        if self.erasing is not None:
            x = self.erasing(x)
        return x, targets

    def _host_randaugment(self, images: torch.Tensor) -> torch.Tensor:
        """timm's RandAugment on each image of a uint8 batch as a PIL image, then the batch on the training device."""
        arrays = images.permute(0, 2, 3, 1).cpu().numpy()
        out = np.stack([np.asarray(self.host_randaugment(PIL.Image.fromarray(a))) for a in arrays])
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(self.device, non_blocking=True)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The soft targets of a micro-batch without Mixup/CutMix (label smoothing only): what :meth:`train` gives
        with them off, for a micro-batch whose model input is not needed (the feature cache, features.py)."""
        return mixup_target(labels, self.num_classes, lam=1.0, smoothing=self.label_smoothing)

    def _mix(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # timm's batch Mixup needs an even batch: an odd last micro-batch is mixed with its first image appended,
        # that extra row dropped afterwards, so every image is still mixed once
        if len(x) % 2:
            x, targets = self.mixup(torch.cat([x, x[:1]]), torch.cat([labels, labels[:1]]))
            return x[:-1], targets[:-1]
        return self.mixup(x, labels)


def timm_randaugment(config: str, mean: tuple[float, ...]) -> Callable[[PIL.Image.Image], PIL.Image.Image]:
    """timm's ``rand_augment_transform(config)`` with the hyper-parameters of timm's ``transforms_imagenet_train``:
    the geometric ops' fill from the normalisation's mean, bicubic interpolation (DeiT's, BEiT's and Swin's).

    >>> op = timm_randaugment("rand-m9-mstd0.5-inc1", (0.485, 0.456, 0.406))
    >>> op(PIL.Image.new("RGB", (64, 64))).size
    (64, 64)
    """
    fill = tuple(min(255, round(255 * x)) for x in mean)
    return rand_augment_transform(config, {"img_mean": fill, "interpolation": PIL.Image.Resampling.BICUBIC})
