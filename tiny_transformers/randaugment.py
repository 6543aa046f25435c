"""The paper's official preprocessing as batched ops: uint8 bicubic resize and RandAugment, per image, on a batch.

The official code (torchvision 0.13) transforms each training image, a uint8 64x64 tensor, in the loader:
``Resize(384, BICUBIC)`` (PyTorch's bicubic, a = -0.75, no antialias, rounded back to uint8), then
``RandAugment(num_ops=2, magnitude=0)`` (9 with its ``--randaug`` flag) on uint8, then /255 and Normalize.
At magnitude 0 eleven of the fourteen ops are the identity, but AutoContrast and Equalize act at full
strength and Solarize (threshold 255) turns saturated pixels black: about a third of the images change.

This module does the same on a whole batch, on any device: :func:`resize_uint8` and :class:`BatchRandAugment`.
Each image still draws its own ops and signs (as torchvision draws per image); the images that drew the same
(op, sign) in the same round go through torchvision's op together, as one sub-batch. On CPU the result is
bitwise equal to torchvision's per-image ``transforms.RandAugment`` given the same draws
(tests/test_randaugment.py); the op functions are the ones torchvision's RandAugment calls
(``torchvision.transforms.functional``), except Equalize, whose v2 kernel is vectorised over the batch
(v1 loops over images and channels in Python) and is integer arithmetic, so equal bit for bit.

Not v2 for the rest: v2's AutoContrast, Color and Sharpness round differently from v1's, one uint8 level off on
some pixels (measured: docs/benchmarks.md). The geometric ops use NEAREST, torchvision's RandAugment default, so
they copy pixels and need no tolerance either.

On CUDA the float steps (bicubic resize, blends, grid sampling) may round differently from the CPU at rare
pixels (one uint8 level); the draws come from the CUDA generator, so they differ from a CPU run's.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torchvision.transforms.functional as F
import torchvision.transforms.v2.functional as F2
from torchvision.transforms import InterpolationMode
from torchvision.transforms import RandAugment as _TorchvisionRandAugment

__all__ = ["BatchRandAugment", "resize_uint8"]


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, C, h, w) -> uint8 (B, C, size, size): bicubic (a = -0.75), no antialias, clamped and rounded.

    What torchvision's ``Resize(size, BICUBIC)`` did to the official code's uint8 tensors (torchvision 0.13
    did not antialias tensors by default), bit for bit on CPU: ``F.resize(x, [size, size], BICUBIC,
    antialias=False)``. The official images are square, so its shorter-edge ``Resize(384)`` is 384x384.

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
    # Bicubic overshoots (a = -0.75 has negative lobes: a 0/255 edge rings to about -19 and 274), so clamp
    # before the cast, and round rather than truncate: torchvision's order, clamp then round (the two commute
    # for the integer bounds 0 and 255).
    return x.clamp_(0, 255).round_().to(torch.uint8)


# torchvision's RandAugment draws the op, then a sign only for the signed ops; these ops at magnitude 0
# (or Posterize at 8 bits) leave every pixel as it is, so the batch skips them: at magnitude 0, 11 of 14 ops.
_IDENTITY_AT_ZERO = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast"}
_IDENTITY_AT_ZERO |= {"Sharpness"}


def _is_identity(name: str, magnitude: float) -> bool:
    if name == "Identity":
        return True
    if name in ("TranslateX", "TranslateY"):
        return int(magnitude) == 0  # torchvision translates by int(magnitude) pixels
    if name == "Posterize":
        return int(magnitude) >= 8
    return name in _IDENTITY_AT_ZERO and magnitude == 0.0


def _apply_op(images: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """torchvision.transforms.autoaugment._apply_op with its RandAugment defaults (NEAREST, fill None), batched."""
    nearest = InterpolationMode.NEAREST
    if name == "ShearX":
        shear = [math.degrees(math.atan(magnitude)), 0.0]
        return F.affine(images, 0.0, [0, 0], 1.0, shear, interpolation=nearest, fill=None, center=[0, 0])
    if name == "ShearY":
        shear = [0.0, math.degrees(math.atan(magnitude))]
        return F.affine(images, 0.0, [0, 0], 1.0, shear, interpolation=nearest, fill=None, center=[0, 0])
    if name == "TranslateX":
        return F.affine(images, 0.0, [int(magnitude), 0], 1.0, [0.0, 0.0], interpolation=nearest, fill=None)
    if name == "TranslateY":
        return F.affine(images, 0.0, [0, int(magnitude)], 1.0, [0.0, 0.0], interpolation=nearest, fill=None)
    if name == "Rotate":
        return F.rotate(images, magnitude, interpolation=nearest, fill=None)
    if name == "Brightness":
        return F.adjust_brightness(images, 1.0 + magnitude)
    if name == "Color":
        return F.adjust_saturation(images, 1.0 + magnitude)
    if name == "Contrast":
        # Each image's grey mean is a float32 reduction over its own pixels; batched, ATen reduces each image
        # alone all the same (tested bitwise against the per-image call on CPU).
        return F.adjust_contrast(images, 1.0 + magnitude)
    if name == "Sharpness":
        return F.adjust_sharpness(images, 1.0 + magnitude)
    if name == "Posterize":
        return F2.posterize(images, int(magnitude))
    if name == "Solarize":
        return F2.solarize(images, magnitude)
    if name == "AutoContrast":
        return F.autocontrast(images)
    if name == "Equalize":
        return F2.equalize(images)  # vectorised over the batch; v1 loops over images and channels
    if name == "Identity":
        return images
    raise ValueError(f"unknown RandAugment op {name!r}")


@lru_cache(maxsize=32)
def _op_table(num_magnitude_bins: int, magnitude: int, height: int, width: int) -> tuple[tuple[str, float, bool], ...]:
    """(name, magnitude, signed) per op, in torchvision's order, read from torchvision's own RandAugment."""
    space = _TorchvisionRandAugment(magnitude=magnitude)._augmentation_space(num_magnitude_bins, (height, width))
    # torchvision: float(magnitudes[self.magnitude].item()) if magnitudes.ndim > 0 else 0.0
    return tuple(
        (name, float(values[magnitude].item()) if values.ndim > 0 else 0.0, bool(signed))
        for name, (values, signed) in space.items()
    )


class BatchRandAugment:
    """torchvision's ``RandAugment(num_ops, magnitude, num_magnitude_bins)`` on a uint8 batch, draws per image.

    ``aug(images)`` draws each image's ``num_ops`` ops and signs with one ``torch.randint`` call (from
    ``generator``, else torch's global generator of the batch's device, which ``engine.keyed_rng`` seeds),
    then applies them: the same number of generator calls per batch whatever was drawn, and ``apply`` draws
    nothing. Draws are made image by image, in order: the first k images of a batch get the same draws as
    a batch of those k images alone from the same generator state.

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

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31) -> None:
        if not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"magnitude must be in [0, {num_magnitude_bins}), got {magnitude}")
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.num_magnitude_bins = num_magnitude_bins
        self.op_names: tuple[str, ...] = tuple(name for name, _, _ in _op_table(num_magnitude_bins, magnitude, 1, 1))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude}, "
            f"num_magnitude_bins={self.num_magnitude_bins})"
        )

    def draw(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's ops and signs: two int64 (batch_size, num_ops) tensors, one ``torch.randint`` call.

        ``ops[i, k]`` indexes :attr:`op_names`; ``signs[i, k] == 1`` negates the magnitude (torchvision's
        ``if signed and torch.randint(2, (1,))``), ignored by unsigned ops. One draw in [0, 2 x 14) per
        (image, round) gives both, uniform and independent: row-major, so image i's draws come before
        image i + 1's. Drawn on ``generator``'s device if given, else on ``device`` (default CPU).

        >>> ops, signs = BatchRandAugment().draw(3, generator=torch.Generator().manual_seed(0))
        >>> ops.shape, bool(ops.max() < 14), bool(signs.max() <= 1)
        (torch.Size([3, 2]), True, True)
        """
        if generator is not None:
            device = generator.device
        codes = torch.randint(0, 2 * len(self.op_names), (batch_size, self.num_ops), device=device, generator=generator)
        return codes // 2, codes % 2

    def apply(self, images: torch.Tensor, ops: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        """The ops ``ops`` (with ``signs``) applied to each image, round by round, as torchvision would.

        ``images`` is uint8 (B, C, H, W) (C = 1 or 3); ``ops`` and ``signs`` are (B, num_ops) integer tensors
        (on any device) as :meth:`draw` returns them. The input is not modified. Reads one small tensor back
        to the host (the draws), to group the images by (op, sign): a sync on CUDA.

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
            # One index tensor per round, copied to the device once; each group is a slice of it.
            keys = sorted(groups)
            order = torch.tensor([i for key in keys for i in groups[key]])
            if images.is_cuda:  # from pinned memory, asynchronously: a pageable copy would wait for the GPU's queue
                order = order.pin_memory().to(images.device, non_blocking=True)
            start = 0
            for key in keys:
                op, negative = key
                name, magnitude, _ = table[op]
                index = order[start : start + len(groups[key])]
                start += len(groups[key])
                out.index_copy_(
                    0, index, _apply_op(out.index_select(0, index), name, -magnitude if negative else magnitude)
                )
        return out

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw per-image ops (:meth:`draw`, on the batch's device unless ``generator`` says otherwise), apply them.

        >>> x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
        >>> _ = torch.manual_seed(0); a = BatchRandAugment(2, 9)(x)
        >>> _ = torch.manual_seed(0); b = BatchRandAugment(2, 9)(x)
        >>> torch.equal(a, b)
        True
        """
        ops, signs = self.draw(len(images), device=images.device, generator=generator)
        return self.apply(images, ops, signs)
