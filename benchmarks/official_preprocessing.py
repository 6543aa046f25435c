"""What the official preprocessing does to the images, and what the batched version costs against torchvision's.

Run from a checkout: ``python benchmarks/official_preprocessing.py [--images 512] [--threads 1]``. Prints two
Markdown tables, for synthetic Tiny-ImageNet look-alikes (``tiny_transformers.synthetic.synthetic_jpegs``) and
for natural crops (scikit-learn's two sample photos, random square crops downscaled to 64x64):

1. effects: the fraction of images ``RandAugment(num_ops=2, magnitude=0)`` (the official default, no
   ``--randaug``) changes in at least one pixel, the mean absolute change in uint8 levels over the changed
   images' pixels, and the gap between the official resize (uint8 bicubic a = -0.75, no antialias, rounded)
   and the library's current one (``BatchAugment.resize_normalize``: float, antialiased bicubic, whose
   kernel is a = -0.5), in [0, 255] units before normalization: mean, 99th percentile, max over all pixels;
2. cost: milliseconds per 64-image batch at 384x384 of :class:`BatchRandAugment` against torchvision's
   ``RandAugment`` called image by image (as the official loader's workers did), medians of alternating runs
   in the same process, and their ratio.

Nothing is downloaded: scikit-learn ships its sample photos. Draws are seeded, so the figures repeat.

On one CPU thread (a shared 2-core machine, torch 2.14.1) the batch took 71 ms against 404 ms per 64 images at
magnitude 0: at 0 it skips the 11 ops that are the identity there, which torchvision runs anyway. At magnitude 9
the two are level (364 vs 331 ms, within this machine's noise): every op does the same arithmetic, and a whole
sub-batch's float32 copy (1.8 MB per image) outgrows the caches that one image fits in. The batch is for the
training device, where per-image calls would be a few small kernel launches each; that is not measured here.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import RandAugment

from tiny_transformers.augment import BatchAugment
from tiny_transformers.config import AugmentConfig
from tiny_transformers.randaugment import BatchRandAugment, resize_uint8
from tiny_transformers.synthetic import synthetic_jpegs

SIZE = 384
BATCH = 64


def synthetic_images(count: int, seed: int = 0) -> torch.Tensor:
    """uint8 (count, 3, 64, 64): the benchmark's Tiny-ImageNet look-alikes, decoded."""
    arrays = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in synthetic_jpegs(count, seed=seed)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def natural_images(count: int, seed: int = 0) -> torch.Tensor:
    """uint8 (count, 3, 64, 64): random square crops (96 to 320 px) of scikit-learn's china and flower photos,
    downscaled to 64 with Pillow's antialiased bicubic, as Tiny ImageNet was made from larger photos."""
    from sklearn.datasets import load_sample_images  # imported here: only this set needs scikit-learn

    photos = [Image.fromarray(a) for a in load_sample_images().images]  # 427 x 640 each
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(96, 321))
        left = int(rng.integers(0, photo.width - side + 1))
        top = int(rng.integers(0, photo.height - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize((64, 64), Image.Resampling.BICUBIC)
        out.append(np.asarray(crop))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def effects(images: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """RandAugment(2, 0)'s changes and the official-vs-library resize gap, over ``images`` (uint8, 64x64)."""
    augment = BatchRandAugment(num_ops=2, magnitude=0)
    # The library's resize with mean 0 and std 1: its output before normalization, in [0, 1].
    library = BatchAugment(SIZE, (0.0,) * 3, (1.0,) * 3, num_classes=2, augment=AugmentConfig())
    generator = torch.Generator().manual_seed(seed)
    changed, change_sum, change_pixels, gaps = 0, 0.0, 0, []
    for start in range(0, len(images), BATCH):
        batch = images[start : start + BATCH]
        official = resize_uint8(batch, SIZE)
        out = augment(official, generator=generator)
        diff = (out.to(torch.int16) - official.to(torch.int16)).abs()
        mask = diff.flatten(1).any(1)
        changed += int(mask.sum())
        change_sum += float(diff[mask].sum(dtype=torch.float64))
        change_pixels += diff[mask].numel()
        gaps.append((official.to(torch.float32) - library.resize_normalize(batch).mul_(255)).abs_().flatten())
    gap = torch.cat(gaps)
    # torch.quantile refuses inputs over 2**24 elements; 512 images at 384 are 226M values.
    p99 = float(np.percentile(gap.numpy(), 99))
    return {
        "images": len(images),
        "changed": changed / len(images),
        "change_levels": change_sum / max(change_pixels, 1),
        "gap_mean": float(gap.mean(dtype=torch.float64)),
        "gap_p99": p99,
        "gap_max": float(gap.max()),
    }


def cost(images: torch.Tensor, magnitude: int, repeats: int) -> dict[str, float]:
    """ms per 64-image 384x384 batch: BatchRandAugment against torchvision's RandAugment image by image.

    The two sides alternate run by run (after one warm-up each), so a busy shared machine slows both alike.
    """
    batch = resize_uint8(images[:BATCH], SIZE)
    ours = BatchRandAugment(num_ops=2, magnitude=magnitude)
    theirs = RandAugment(num_ops=2, magnitude=magnitude)
    sides = {"batched": lambda: ours(batch), "per_image": lambda: [theirs(image) for image in batch]}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for run in range(repeats + 1):
        for name, fn in sides.items():
            torch.manual_seed(run)  # both sides draw from the same state each run
            start = time.perf_counter()
            fn()
            if run:  # run 0 is the warm-up: first calls pay for allocations and lazy imports
                times[name].append(time.perf_counter() - start)
    batched, per_image = (1000 * statistics.median(times[name]) for name in sides)
    return {"magnitude": magnitude, "batched_ms": batched, "per_image_ms": per_image, "speedup": per_image / batched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="images per set (default 512)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as a loader worker)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per side (default 7)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sets = {"synthetic": synthetic_images(args.images), "natural crops": natural_images(args.images)}
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), {args.images} images per set\n")
    print(
        "| images | n | RandAugment(2, 0) changes | mean abs change of changed (levels) "
        "| resize gap mean | p99 | max (levels) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, images in sets.items():
        e = effects(images)
        print(
            f"| {name} | {e['images']} | {e['changed']:.1%} | {e['change_levels']:.1f} "
            f"| {e['gap_mean']:.2f} | {e['gap_p99']:.2f} | {e['gap_max']:.2f} |"
        )
    print(f"\n| RandAugment(2, m), {BATCH} images at {SIZE} (synthetic) | batched ms | per-image ms | speedup |")
    print("|---|---|---|---|")
    for magnitude in (0, 9):
        c = cost(sets["synthetic"], magnitude, args.repeats)
        print(f"| m = {magnitude} | {c['batched_ms']:.1f} | {c['per_image_ms']:.1f} | {c['speedup']:.1f}x |")


if __name__ == "__main__":
    main()
