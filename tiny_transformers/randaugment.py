"""The paper's official preprocessing, batched on any device: uint8 bicubic resize and per-image RandAugment.

The official code (torchvision 0.13) resizes each uint8 64x64 training image with ``Resize(384, BICUBIC)``, then
runs ``RandAugment(num_ops=2, magnitude=0)`` on uint8: at magnitude 0, AutoContrast, Equalize and Solarize still
act, so about a third of the images change. Here each image draws its own ops and signs, and the images that drew
the same (op, sign) in a round go through torchvision's op together. On CPU this is bitwise equal to torchvision's
per-image RandAugment given the same draws (tests/test_randaugment.py): v1 kernels (v2's round differently:
docs/benchmarks.md) except v2's Equalize (integer, vectorised), NEAREST geometric ops. On CUDA the float steps may
round one uint8 level off at rare pixels, and the draws come from the CUDA generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torchvision.transforms.v2.functional as F2
from torchvision.transforms import InterpolationMode
from torchvision.transforms import RandAugment as _TorchvisionRandAugment
from torchvision.transforms.autoaugment import _apply_op as _torchvision_op

__all__ = ["BatchRandAugment", "resize_uint8"]


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, C, h, w) -> uint8 (B, C, size, size): bicubic (a = -0.75), no antialias, clamped and rounded, bit
    for bit the official code's ``Resize(size, BICUBIC)`` (torchvision 0.13) of its square images on CPU.

    >>> x = torch.full((2, 3, 64, 64), 255, dtype=torch.uint8)
    >>> y = resize_uint8(x, 384)
    >>> y.shape, y.dtype, int(y.min())
    (torch.Size([2, 3, 384, 384]), torch.uint8, 255)
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"resize_uint8 takes a uint8 (B, C, h, w) batch, got {images.dtype} {tuple(images.shape)}")
    x = torch.nn.functional.interpolate(
        images.to(torch.float32), size=[size, size], mode="bicubic", align_corners=False, antialias=False
    )
    # bicubic overshoots (a 0/255 edge rings to about -19 and 274): clamp, then round, as torchvision does
    return x.clamp_(0, 255).round_().to(torch.uint8)


# ops that leave every pixel as it is at magnitude 0 (Identity's is always 0; Posterize: at 8 bits): skipped
_IDENTITY_AT_ZERO = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast"}
_IDENTITY_AT_ZERO |= {"Sharpness", "Identity"}


def _is_identity(name: str, magnitude: float) -> bool:
    if name in ("TranslateX", "TranslateY"):
        return int(magnitude) == 0  # torchvision translates by int(magnitude) pixels
    if name == "Posterize":
        return int(magnitude) >= 8
    return name in _IDENTITY_AT_ZERO and magnitude == 0.0


def _apply_op(images: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """torchvision's own RandAugment op with its defaults (NEAREST, fill None), on a batch; Equalize from v2,
    vectorised over the batch (v1 loops over images and channels) and integer arithmetic, so equal bit for bit."""
    if name == "Equalize":
        return F2.equalize(images)
    return _torchvision_op(images, name, magnitude, interpolation=InterpolationMode.NEAREST, fill=None)


@lru_cache(maxsize=32)
def _op_table(num_magnitude_bins: int, magnitude: int, height: int, width: int) -> tuple[tuple[str, float, bool], ...]:
    """(name, magnitude, signed) per op, in torchvision's order, read from torchvision's own RandAugment."""
    space = _TorchvisionRandAugment(magnitude=magnitude)._augmentation_space(num_magnitude_bins, (height, width))
    return tuple(
        (name, float(values[magnitude].item()) if values.ndim > 0 else 0.0, bool(signed))
        for name, (values, signed) in space.items()
    )


@dataclass(eq=False)  # compared and hashed by identity, as a plain object
class BatchRandAugment:
    """torchvision's ``RandAugment(num_ops, magnitude, num_magnitude_bins)`` on a uint8 batch, draws per image.

    One ``torch.randint`` call per batch (from ``generator``, else the device's global generator, which
    ``engine.keyed_rng`` seeds), image by image: the first k images get the draws of a batch of those k alone.

    >>> aug = BatchRandAugment(num_ops=2, magnitude=0)
    >>> images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    >>> out = aug(images, generator=torch.Generator().manual_seed(0))
    >>> out.shape, out.dtype
    (torch.Size([4, 3, 32, 32]), torch.uint8)
    >>> ops, signs = aug.draw(4, generator=torch.Generator().manual_seed(0))
    >>> torch.equal(out, aug.apply(images, ops, signs))
    True
    >>> aug.op_names[:3]
    ('Identity', 'ShearX', 'ShearY')
    """

    num_ops: int = 2
    magnitude: int = 9
    num_magnitude_bins: int = 31

    def __post_init__(self) -> None:
        if not 0 <= self.magnitude < self.num_magnitude_bins:
            raise ValueError(f"magnitude must be in [0, {self.num_magnitude_bins}), got {self.magnitude}")
        table = _op_table(self.num_magnitude_bins, self.magnitude, 1, 1)
        self.op_names: tuple[str, ...] = tuple(name for name, _, _ in table)

    def draw(
        self, batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's ops and signs: two int64 (batch_size, num_ops) tensors from one ``torch.randint`` call.

        ``ops[i, k]`` indexes :attr:`op_names`; ``signs[i, k] == 1`` negates a signed op's magnitude. Drawn on
        ``generator``'s device if given, else on ``device`` (default CPU).

        >>> ops, signs = BatchRandAugment().draw(3, generator=torch.Generator().manual_seed(0))
        >>> ops.shape, bool(ops.max() < 14), bool(signs.max() <= 1)
        (torch.Size([3, 2]), True, True)
        """
        if generator is not None:
            device = generator.device
        codes = torch.randint(0, 2 * len(self.op_names), (batch_size, self.num_ops), device=device, generator=generator)
        return codes // 2, codes % 2

    def apply(self, images: torch.Tensor, ops: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        """Each image's ``ops`` (with ``signs``, as :meth:`draw` returns them) applied round by round, as torchvision
        would, to a copy of the uint8 (B, C, H, W) ``images``. Reads the draws back to the host: a sync on CUDA.

        >>> aug = BatchRandAugment(num_ops=1, magnitude=0)
        >>> x = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(2, 3, 4, 3)
        >>> solarize = aug.op_names.index("Solarize")
        >>> aug.apply(x, torch.tensor([[0], [solarize]]), torch.zeros(2, 1))[:, 0, 0].tolist()
        [[0, 128, 255], [0, 128, 0]]
        """
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"BatchRandAugment takes a uint8 (B, C, H, W) batch, got {images.dtype} {images.shape}")
        batch = images.shape[0]
        if ops.shape != (batch, self.num_ops) or signs.shape != (batch, self.num_ops):
            raise ValueError(
                f"ops and signs must be ({batch}, {self.num_ops}), got {tuple(ops.shape)} and {tuple(signs.shape)}"
            )
        table = _op_table(self.num_magnitude_bins, self.magnitude, images.shape[-2], images.shape[-1])
        ops_host = ops.detach().to("cpu", torch.int64).tolist()  # the only host read-back (a sync on CUDA)
        signs_host = signs.detach().to("cpu", torch.int64).tolist()
        out = images
        for round_ in range(self.num_ops):
            groups: dict[tuple[int, bool], list[int]] = {}
            for i in range(batch):
                op = ops_host[i][round_]
                name, magnitude, signed = table[op]
                negative = signed and bool(signs_host[i][round_])
                if not _is_identity(name, magnitude):
                    groups.setdefault((op, negative), []).append(i)
            if not groups:
                continue
            if out is images:
                out = images.clone()  # the caller's batch stays as it was
            keys = sorted(groups)
            order = torch.tensor([i for key in keys for i in groups[key]])
            if images.is_cuda:  # from pinned memory, asynchronously: a pageable copy would wait for the GPU's queue
                order = order.pin_memory().to(images.device, non_blocking=True)
            for (op, negative), index in zip(keys, order.split([len(groups[key]) for key in keys])):
                name, magnitude, _ = table[op]
                out.index_copy_(
                    0, index, _apply_op(out.index_select(0, index), name, -magnitude if negative else magnitude)
                )
        return out

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw per-image ops (:meth:`draw`, on the batch's device unless ``generator`` is given), apply them.

        >>> x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
        >>> _ = torch.manual_seed(0); a = BatchRandAugment(2, 9)(x)
        >>> _ = torch.manual_seed(0); b = BatchRandAugment(2, 9)(x)
        >>> torch.equal(a, b)
        True
        """
        ops, signs = self.draw(len(images), device=images.device, generator=generator)
        return self.apply(images, ops, signs)
