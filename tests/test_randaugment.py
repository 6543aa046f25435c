"""randaugment.py against torchvision itself: the official code's uint8 resize and per-image RandAugment.

The reference is torchvision's own ``transforms.RandAugment`` run image by image, as the official loader ran
it. To feed our batch the draws torchvision made, the tests record them rather than re-derive them: they wrap
``torchvision.transforms.autoaugment._apply_op`` (the module global that ``RandAugment.forward`` calls once per
op) so each call logs the op name and its signed magnitude, then pass the image through unchanged. Re-seeding
and replaying torchvision's draw sequence would also work, but would copy its control flow (a sign is drawn
only for signed ops) into the test; recording is what it did, whatever its version does. The sign of a
magnitude-0 op survives as -0.0 (``magnitude *= -1.0``), read with ``math.copysign``.

All comparisons are bitwise (``torch.equal``): the geometric ops use NEAREST (RandAugment's default), so they
copy pixels; the colour ops call the same functions torchvision's RandAugment does (Equalize excepted, whose
v2 kernel is integer arithmetic). No op needs a tolerance on CPU.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.autoaugment as tv_autoaugment
import torchvision.transforms.functional as F
import torchvision.transforms.v2.functional as F2
from PIL import Image
from scipy.stats import chisquare
from torchvision.transforms import InterpolationMode, RandAugment

from tiny_transformers.engine import keyed_rng
from tiny_transformers.randaugment import BatchRandAugment, resize_uint8
from tiny_transformers.synthetic import synthetic_jpegs

OP_NAMES = BatchRandAugment().op_names


def varied_images(size: int = 64) -> torch.Tensor:
    """12 uint8 (3, size, size) images that exercise every op's edge cases."""
    rng = np.random.default_rng(0)
    photos = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in synthetic_jpegs(4, size=size)]
    yy, xx = np.mgrid[0:size, 0:size]
    ramp = (xx * 255 // (size - 1)).astype(np.uint8)
    images = [
        *photos,  # smooth colour fields plus noise, as Tiny ImageNet's photos decode
        np.clip(photos[0].astype(int) * 2, 0, 255).astype(np.uint8),  # over-exposed: many saturated 255s
        np.full((size, size, 3), (255, 255, 255), np.uint8),  # flat white: AutoContrast/Equalize leave it
        np.full((size, size, 3), (90, 140, 30), np.uint8),  # flat colour
        np.repeat(photos[1].mean(-1, keepdims=True).astype(np.uint8), 3, -1),  # greyscale in RGB
        np.repeat(np.where((xx // 8 + yy // 8) % 2, 255, 0).astype(np.uint8)[..., None], 3, -1),  # checkerboard
        (100 + photos[2] // 8).astype(np.uint8),  # low contrast: AutoContrast stretches it
        rng.integers(0, 256, (size, size, 3), dtype=np.uint8),  # noise
        np.stack([ramp, ramp.T, 255 - ramp], -1),  # ramps: every level, one channel descending
    ]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def images384() -> torch.Tensor:
    return resize_uint8(varied_images(), 384)


def torchvision_reference(
    images: torch.Tensor, num_ops: int, magnitude: int, seed: int, only: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's RandAugment image by image from ``torch.manual_seed(seed)``: outputs, ops and signs drawn.

    ``only`` restricts torchvision's op table to that one op (a subclass whose ``_augmentation_space`` keeps
    one entry), so its forward still draws the sign and calls its own ``_apply_op``.
    """

    class OneOp(RandAugment):
        def _augmentation_space(self, num_bins, image_size):
            return {only: super()._augmentation_space(num_bins, image_size)[only]}

    transform = (OneOp if only else RandAugment)(num_ops=num_ops, magnitude=magnitude)
    calls: list[tuple[str, float]] = []
    original = tv_autoaugment._apply_op

    def recording(img, op_name, magnitude, *args, **kwargs):
        calls.append((op_name, magnitude))
        return original(img, op_name, magnitude, *args, **kwargs)

    outputs = []
    tv_autoaugment._apply_op = recording
    try:
        torch.manual_seed(seed)
        for image in images:
            outputs.append(transform(image))
    finally:
        tv_autoaugment._apply_op = original
    assert len(calls) == len(images) * num_ops
    ops = torch.tensor([OP_NAMES.index(name) for name, _ in calls]).view(len(images), num_ops)
    signs = torch.tensor([int(math.copysign(1.0, m) < 0) for _, m in calls]).view(len(images), num_ops)
    return torch.stack(outputs), ops, signs


# --------------------------------------------------------------------------------------------------
# resize_uint8
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), [(64, 384), (64, 224), (48, 40)])
def test_resize_uint8_is_torchvision_bicubic_without_antialias(source, target):
    x = varied_images(source)
    expected = F.resize(x, [target, target], InterpolationMode.BICUBIC, antialias=False)
    got = resize_uint8(x, target)
    assert got.dtype == torch.uint8 and got.shape == (len(x), 3, target, target)
    assert torch.equal(got, expected)
    # Not v2's resize: on CPU it sends uint8 bicubic to ATen's native uint8 kernel (separable passes with a
    # uint8 intermediate, clamped between them), not torchvision 0.13's float path: on these images it differs
    # in 14% of the pixels at 64 -> 384, by up to 35 levels at the checkerboard's edges.
    assert not torch.equal(got, F2.resize(x, [target, target], InterpolationMode.BICUBIC, antialias=False))
    # The checkerboard rings past [0, 255] before the clamp: the clamp is exercised, not vacuous.
    unclamped = torch.nn.functional.interpolate(x.float(), size=target, mode="bicubic", align_corners=False)
    assert unclamped.min() < -0.5 and unclamped.max() > 255.5


def test_resize_uint8_refuses_float():
    with pytest.raises(TypeError, match="uint8"):
        resize_uint8(torch.zeros(1, 3, 8, 8), 16)


# --------------------------------------------------------------------------------------------------
# BatchRandAugment against torchvision's RandAugment
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("magnitude", [0, 9])
def test_batch_equals_torchvision_per_image(images384, magnitude):
    batch = images384.repeat(3, 1, 1, 1)  # 36 images: most (op, sign) groups hold several, some one
    expected, ops, signs = torchvision_reference(batch, num_ops=2, magnitude=magnitude, seed=5)
    got = BatchRandAugment(num_ops=2, magnitude=magnitude).apply(batch, ops, signs)
    assert torch.equal(got, expected)
    assert len(set(ops.flatten().tolist())) >= 12  # nearly the whole table, in both rounds mixed
    changed = (got != batch).flatten(1).any(1)
    if magnitude == 0:  # a mix of changed and untouched images (about a third change, see the benchmark)
        assert 0 < changed.sum() < len(batch)


@pytest.mark.parametrize("magnitude", [0, 9])
@pytest.mark.parametrize("op", OP_NAMES)
def test_each_op_equals_torchvision(images384, op, magnitude):
    expected, ops, signs = torchvision_reference(images384, num_ops=2, magnitude=magnitude, seed=1, only=op)
    assert (ops == OP_NAMES.index(op)).all()
    got = BatchRandAugment(num_ops=2, magnitude=magnitude).apply(images384, ops, signs)
    assert torch.equal(got, expected)
    if RandAugment()._augmentation_space(31, (384, 384))[op][1]:  # a signed op
        assert set(signs.flatten().tolist()) == {0, 1}  # both directions compared
    acts_at_zero = op in ("AutoContrast", "Equalize", "Solarize")
    if magnitude == 0 and not acts_at_zero:
        assert torch.equal(got, images384)


def test_magnitude_zero_solarize_blackens_saturated_pixels(images384):
    aug = BatchRandAugment(num_ops=1, magnitude=0)
    solarize = torch.full((len(images384), 1), OP_NAMES.index("Solarize"))
    out = aug.apply(images384, solarize, torch.zeros_like(solarize))
    assert torch.equal(out, torch.where(images384 == 255, 0, images384))
    assert (images384 == 255).any()


def test_call_draws_then_applies_and_leaves_input(images384):
    aug = BatchRandAugment(num_ops=2, magnitude=9)
    before = images384.clone()
    out = aug(images384, generator=torch.Generator().manual_seed(3))
    ops, signs = aug.draw(len(images384), generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, aug.apply(images384, ops, signs))
    assert torch.equal(images384, before)


# --------------------------------------------------------------------------------------------------
# The draws
# --------------------------------------------------------------------------------------------------


def test_draws_are_uniform_over_ops_and_signs():
    aug = BatchRandAugment(num_ops=2, magnitude=9)
    ops, signs = aug.draw(20_000, generator=torch.Generator().manual_seed(0))
    op_counts = torch.bincount(ops.flatten(), minlength=len(OP_NAMES)).numpy()
    assert chisquare(op_counts).pvalue > 0.01
    for round_ in range(2):  # each round alone too
        assert chisquare(torch.bincount(ops[:, round_], minlength=len(OP_NAMES)).numpy()).pvalue > 0.01
    # The sign is independent of the op: uniform within each op.
    for op in range(len(OP_NAMES)):
        assert chisquare(torch.bincount(signs[ops == op], minlength=2).numpy()).pvalue > 0.001


def test_generator_calls_do_not_depend_on_what_was_drawn(images384):
    """One randint per batch: the generator ends in the same state whatever the ops, and apply draws nothing."""
    small = images384[:, :, :32, :32].contiguous()
    states = set()
    for magnitude, batch in [(0, images384), (9, images384), (9, small)]:
        generator = torch.Generator().manual_seed(11)
        BatchRandAugment(2, magnitude)(batch, generator=generator)
        states.add(bytes(generator.get_state().numpy()))
    assert len(states) == 1
    aug = BatchRandAugment(2, 9)
    ops, signs = aug.draw(len(images384), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    aug.apply(images384, ops, signs)
    assert torch.equal(torch.get_rng_state(), before)


def test_split_batch_equals_whole_on_cpu(images384):
    """Draws are made image by image in order, so the first k images get the same draws as a batch of k alone;
    on CPU (one 32-bit Mersenne Twister draw per (image, round)) the rest continue from where those stopped.
    On CUDA the prefix holds too (each element's Philox subsequence is its index), the continuation does not.
    """
    aug = BatchRandAugment(2, 9)
    whole = aug(images384, generator=torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    first = aug(images384[:5], generator=generator)
    rest = aug(images384[5:], generator=generator)
    assert torch.equal(torch.cat([first, rest]), whole)
    ops, _ = aug.draw(64, generator=torch.Generator().manual_seed(7))
    assert torch.equal(aug.draw(16, generator=torch.Generator().manual_seed(7))[0], ops[:16])


def test_global_generator_is_keyed_by_keyed_rng(images384):
    aug = BatchRandAugment(2, 9)
    outputs = []
    for key in [(0, 1, 2), (0, 1, 2), (0, 1, 3)]:
        with keyed_rng(torch.device("cpu"), *key, python=False, numpy=False):
            outputs.append(aug(images384))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


def test_apply_checks_its_arguments(images384):
    aug = BatchRandAugment(2, 9)
    ops = torch.zeros(len(images384), 2, dtype=torch.int64)
    with pytest.raises(TypeError, match="uint8"):
        aug.apply(images384.float(), ops, ops)
    with pytest.raises(ValueError, match=r"\(12, 2\)"):
        aug.apply(images384, ops[:, :1], ops[:, :1])
    with pytest.raises(ValueError, match="magnitude"):
        BatchRandAugment(2, 31)
