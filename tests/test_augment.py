"""Batch pipeline: matches a per-sample torchvision reference; timm's Mixup and erasing behave as configured."""

import pytest
import torch
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from tiny_transformers.augment import BatchAugment
from tiny_transformers.config import AugmentConfig
from tiny_transformers.models import IMAGENET_MEAN, IMAGENET_STD

OFF = AugmentConfig(mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.0, random_erasing=0.0)


def test_batch_resize_normalize_matches_per_sample_torchvision():
    images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    reference = T.Compose(
        [
            T.ToDtype(torch.float32, scale=True),
            T.Resize(384, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.Lambda(lambda x: x.clamp(0, 1)),  # an image stays an image: bicubic overshoot is clipped as PIL does
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    expected = torch.stack([reference(img) for img in images])
    batch = BatchAugment(384, IMAGENET_MEAN, IMAGENET_STD, 10, OFF).resize_normalize(images)
    assert batch.shape == (6, 3, 384, 384) and batch.dtype == torch.float32
    assert (batch - expected).abs().max().item() < 1e-3


def test_normalization_is_torchvisions_arithmetic_and_leaves_the_input_alone():
    """The statistics are device tensors made once (no host-to-device copy per batch); the result is the one
    torchvision's normalize gives, bit for bit, on every call, at the native size and after upscaling."""
    augment = BatchAugment(64, IMAGENET_MEAN, IMAGENET_STD, 10, OFF)
    for size in (64, 32):  # 64: no resize; 32: upscaled to 64
        images = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8)
        kept = images.clone()
        scaled = images.float() / 255
        if size != 64:
            scaled = TF.resize(scaled, [64, 64], interpolation=T.InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
        expected = TF.normalize(scaled, IMAGENET_MEAN, IMAGENET_STD)
        for _ in range(2):
            assert torch.equal(augment.resize_normalize(images), expected)
        assert torch.equal(images, kept)


def test_without_mixing_targets_are_smoothed_one_hot():
    aug = BatchAugment(
        32,
        IMAGENET_MEAN,
        IMAGENET_STD,
        4,
        AugmentConfig(mixup_alpha=0, cutmix_alpha=0, label_smoothing=0.1, random_erasing=0),
    )
    _, targets = aug.train(torch.zeros(2, 3, 64, 64, dtype=torch.uint8), torch.tensor([1, 3]))
    expected = torch.full((2, 4), 0.1 / 4)
    expected[0, 1] = expected[1, 3] = 1 - 0.1 + 0.1 / 4
    assert torch.allclose(targets, expected)


@pytest.mark.parametrize("batch", [4, 5])
def test_mixup_targets_are_distributions_for_even_and_odd_batches(batch):
    torch.manual_seed(0)
    aug = BatchAugment(32, IMAGENET_MEAN, IMAGENET_STD, 10, AugmentConfig(random_erasing=0))
    images = torch.randint(0, 256, (batch, 3, 64, 64), dtype=torch.uint8)
    labels = torch.arange(batch)
    x, targets = aug.train(images, labels)
    assert x.shape == (batch, 3, 32, 32) and targets.shape == (batch, 10)
    assert torch.allclose(targets.sum(dim=1), torch.ones(batch))
    # each image keeps at least the lam share of its own label (lam >= 0 with smoothing), and mixes in its partner's
    own = targets[torch.arange(batch), labels]
    assert (own > 0.1 / 10).all()


def test_random_erasing_probability_one_changes_every_image_with_noise():
    aug = BatchAugment(32, (0.0,) * 3, (1.0,) * 3, 10, AugmentConfig(mixup_alpha=0, cutmix_alpha=0, random_erasing=1.0))
    images = torch.full((8, 3, 32, 32), 128, dtype=torch.uint8)
    x, _ = aug.train(images, torch.zeros(8, dtype=torch.long))
    changed = (x != 128 / 255).flatten(1)
    assert changed.any(dim=1).all()  # every image erased somewhere
    assert (changed.float().mean(dim=1) < 0.5).all()  # timm's default max area is 1/3 of the image


def test_timm_randaugment_is_timms_own_transform_on_each_image_drawn_from_the_keyed_generators():
    """augment.timm_randaugment rand-m9-mstd0.5-inc1 (DeiT's, BEiT's and Swin's): each image of a micro-batch goes
    through timm's rand_augment_transform built with the hyper-parameters timm's training transform gives it, drawing
    from Python's and NumPy's generators as engine.keyed_rng seeds them per micro-batch."""
    import random

    import numpy as np
    import PIL.Image
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.transforms import str_to_pil_interp

    from tiny_transformers.engine import keyed_rng
    from tiny_transformers.sampler import derive_seed

    config = AugmentConfig(
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        label_smoothing=0.0,
        random_erasing=0.0,
        timm_randaugment="rand-m9-mstd0.5-inc1",
    )
    aug = BatchAugment(64, (0.0,) * 3, (1.0,) * 3, 10, config)  # no resize, identity normalisation: x = pixels / 255
    assert aug.host_generators == {"numpy": True, "python": True}
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with keyed_rng(torch.device("cpu"), 0, 3, 5, **aug.host_generators):
        x, _ = aug.train(images, torch.zeros(8, dtype=torch.long))
    # timm's transforms_imagenet_train: translate_const int(size * 0.45), img_mean from the mean, the interpolation
    hparams = {"translate_const": int(64 * 0.45), "img_mean": (0, 0, 0), "interpolation": str_to_pil_interp("bicubic")}
    reference = rand_augment_transform("rand-m9-mstd0.5-inc1", hparams)
    seed = derive_seed(0, 3, 5)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    expected = [np.asarray(reference(PIL.Image.fromarray(i.permute(1, 2, 0).numpy()))) for i in images]
    expected = torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2)
    assert torch.equal((x * 255).round().to(torch.uint8), expected)  # bitwise: the same ops, magnitudes, fills
    assert not torch.equal(expected, images)  # and it did change the images


@pytest.mark.parametrize(
    "value,message",
    [("rand-m9-foo", "not a timm RandAugment string"), ("augmix-m5", "not a timm RandAugment string")],
)
def test_a_timm_randaugment_string_timm_would_misread_is_refused(value, message):
    from tiny_transformers.config import FinetuneConfig
    from tiny_transformers.errors import ConfigError
    from tiny_transformers.validation import validate

    with pytest.raises(ConfigError, match=message):
        validate(FinetuneConfig(augment=AugmentConfig(timm_randaugment=value)), num_processes=1)
    with pytest.raises(ConfigError, match="both ask for RandAugment"):
        validate(FinetuneConfig(augment=AugmentConfig(timm_randaugment="rand-m9", randaugment_ops=2)), num_processes=1)
