"""The batch pipeline's Mixup/CutMix and random erasing draw what timm's implementations draw.

Statistical checks with fixed seeds, so each runs the same way every time. Draws go through
``engine.keyed_rng`` exactly as in training (one derived seed per micro-batch). A distribution "matches"
when a Kolmogorov-Smirnov or binomial test does not reject it at p = 0.001; with the seeds fixed, the
p-values are fixed too (each test's comment gives the value seen).
"""

import math
import random

import numpy as np
import pytest
import torch
from scipy import stats
from timm.data.mixup import cutmix_bbox_and_lam
from timm.data.random_erasing import RandomErasing

from tiny_transformers.augment import BatchAugment
from tiny_transformers.config import AugmentConfig
from tiny_transformers.engine import keyed_rng

CPU = torch.device("cpu")
P_MIN = 1e-3
BATCHES = 400  # micro-batches of 4 images, one Mixup/CutMix draw each


def mixed_batches(augment: AugmentConfig, batches: int = BATCHES, size: int = 16, seed: int = 0):
    """(clean, augmented, targets) per micro-batch of 4 random images labelled 0..3, mean 0 / std 1 so that
    the augmented pixels are directly comparable with image / 255 (no resize: native size = model size)."""
    aug = BatchAugment(size, (0.0,) * 3, (1.0,) * 3, num_classes=4, augment=augment)
    generator = torch.Generator().manual_seed(seed)
    for g in range(batches):
        images = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=generator)
        with keyed_rng(CPU, seed, 0, g, **aug.host_generators):
            x, targets = aug.train(images, torch.arange(4))
        yield images.float() / 255, x, targets


def classify(clean: torch.Tensor, x: torch.Tensor, targets: torch.Tensor) -> tuple[str, float]:
    """('cutmix' | 'mixup', lambda) of a batch, read from image 0 (label 0), mixed with image 3 (label 3)."""
    lam = targets[0, 0].item()
    assert targets[0, 0] + targets[0, 3] == pytest.approx(1.0, abs=1e-6)
    own, partner = (x[0] == clean[0]).all(0), (x[0] == clean[3]).all(0)
    if (own | partner).all():  # every pixel copied from one of the two: CutMix
        rows, cols = partner.any(1).nonzero(), partner.any(0).nonzero()
        if len(rows):
            box = partner[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert box.all() and partner.sum() == box.numel(), "the pasted region is one rectangle"
        # timm corrects lambda to the pasted area actually inside the image
        assert lam == pytest.approx(1 - partner.sum().item() / partner.numel(), abs=1e-6)
        return "cutmix", lam
    assert torch.allclose(x[0], lam * clean[0] + (1 - lam) * clean[3], atol=1e-5), "a convex blend of the pair"
    return "mixup", lam


def test_mixup_lambda_follows_beta_08():
    config = AugmentConfig(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0, random_erasing=0.0)
    kinds, lams = zip(*(classify(*batch) for batch in mixed_batches(config)))
    assert set(kinds) == {"mixup"}
    assert stats.kstest(lams, stats.beta(0.8, 0.8).cdf).pvalue > P_MIN  # p = 0.37 with these seeds


def test_paper_mixup_cutmix_switch_probability_and_lambdas():
    config = AugmentConfig(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=0.0, random_erasing=0.0)
    draws = [classify(*batch) for batch in mixed_batches(config, seed=1)]
    cutmix = [lam for kind, lam in draws if kind == "cutmix"]
    mixup = [lam for kind, lam in draws if kind == "mixup"]
    assert stats.binomtest(len(cutmix), len(draws), 0.5).pvalue > P_MIN  # 211 of 400 CutMix, p = 0.29
    assert stats.kstest(mixup, stats.beta(0.8, 0.8).cdf).pvalue > P_MIN
    # CutMix's corrected lambda against timm's own box sampler fed Beta(1, 1) draws (a separate stream)
    rng = np.random.default_rng(123)
    np.random.seed(123)
    reference = [cutmix_bbox_and_lam((4, 3, 16, 16), rng.beta(1.0, 1.0))[1] for _ in range(4000)]
    assert stats.ks_2samp(cutmix, reference).pvalue > P_MIN


def erased_boxes(images: int = 1600, size: int = 64, seed: int = 0):
    """Per image of a constant grey batch after the pipeline's erasing: (top, left, h, w) or None, and the noise."""
    aug = BatchAugment(
        size, (0.0,) * 3, (1.0,) * 3, 10, AugmentConfig(mixup_alpha=0, cutmix_alpha=0, random_erasing=0.25)
    )
    grey = torch.full((32, 3, size, size), 128, dtype=torch.uint8)
    boxes, noise = [], []
    for g in range(images // 32):
        with keyed_rng(CPU, seed, 0, g, **aug.host_generators):
            x, _ = aug.train(grey, torch.zeros(32, dtype=torch.long))
        for image in x:
            boxes.append(box_of(image, 128 / 255, noise))
    return boxes, torch.cat(noise)


def box_of(image: torch.Tensor, background: float, noise: list) -> tuple[int, int, int, int] | None:
    changed = (image != background).any(0)
    if not changed.any():
        return None
    rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
    top, left = rows.min().item(), cols.min().item()
    h, w = rows.max().item() + 1 - top, cols.max().item() + 1 - left
    assert changed[top : top + h, left : left + w].all() and changed.sum() == h * w, "one filled rectangle"
    noise.append(image[:, top : top + h, left : left + w].flatten())
    return top, left, h, w


def timm_reference_boxes(images: int = 4000, size: int = 64) -> list:
    """timm's RandomErasing applied to one image at a time on the CPU, as a timm data pipeline does."""
    random.seed(7)
    torch.manual_seed(7)
    erase = RandomErasing(probability=0.25, mode="pixel", device="cpu")
    boxes = []
    for _ in range(images):
        image = torch.full((3, size, size), 0.5)
        boxes.append(box_of(erase(image), 0.5, []))
    return boxes


def test_random_erasing_probability_area_aspect_and_noise_match_timm():
    size = 64
    boxes, noise = erased_boxes(size=size)
    erased = [b for b in boxes if b is not None]
    assert stats.binomtest(len(erased), len(boxes), 0.25).pvalue > P_MIN  # 400 of 1600 images, p = 1.0

    h, w = (np.array([b[k] for b in erased], dtype=float) for k in (2, 3))
    area = h * w / size**2
    # timm draws area in [0.02, 1/3] of the image and log-aspect uniformly in [log 0.3, log 1/0.3], then
    # rounds h and w to whole pixels: allow exactly that rounding.
    rounding = (0.5 * (h + w) + 0.25) / size**2
    assert (area >= 0.02 - rounding).all() and (area <= 1 / 3 + rounding).all()
    assert ((h + 0.5) / np.maximum(w - 0.5, 0.5) >= 0.3).all() and ((h - 0.5) / (w + 0.5) <= 1 / 0.3).all()

    reference = [b for b in timm_reference_boxes(size=size) if b is not None]
    ref_h, ref_w = (np.array([b[k] for b in reference], dtype=float) for k in (2, 3))
    assert stats.ks_2samp(area, ref_h * ref_w / size**2).pvalue > P_MIN
    assert stats.ks_2samp(np.log(h / w), np.log(ref_h / ref_w)).pvalue > P_MIN

    # 'pixel' mode: independent standard normal noise in every erased pixel and channel
    assert abs(noise.mean().item()) < 5 / math.sqrt(len(noise))
    assert noise.std().item() == pytest.approx(1.0, abs=0.01)
    assert stats.kstest(noise[::37].numpy(), "norm").pvalue > P_MIN
