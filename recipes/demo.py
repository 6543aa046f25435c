"""The whole pipeline in under a minute on a CPU, with no network: a first look at tiny_transformers.

    accelerate launch recipes/demo.py        (or: python recipes/demo.py)

Real images that scikit-learn ships (its 1,797 handwritten digits, 8x8, 10 classes; pip install -e ".[demo]")
are written out once as a small dataset in the Stanford Tiny ImageNet layout (wnids.txt, words.txt, train/, val/)
in outputs/demo-data/ of the current directory, then a small timm vision transformer is trained on them from
scratch (no pretrained weights: nothing is downloaded) with the paper's augmentation and schedule, into
outputs/demo/ of the current directory. Expect about 80-90% top-1 after the default 6 epochs.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

try:
    from sklearn.datasets import load_digits
except ModuleNotFoundError:  # an extra of the package, not a requirement: say which one
    sys.exit(
        "error: recipes/demo.py trains on scikit-learn's digits and scikit-learn is not installed; "
        'install the demo extra: pip install -e ".[demo]" (or pip install scikit-learn).'
    )

from tiny_transformers import DataConfig, FinetuneConfig, ModelConfig, OptimConfig, TrainConfig, run
from tiny_transformers.synthetic import StanfordImage, encode, write_stanford_layout

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_digits(root: Path, size: int = 32, val_fraction: float = 0.2) -> Path:
    """Write scikit-learn's digits as a Stanford-layout folder under ``root`` (once) and return it."""
    final = root / "digits-200"
    if final.exists():
        return final
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    n_val = int(len(order) * val_fraction)
    wnids = [f"d{i:08d}" for i in range(10)]
    train, val = [], []
    for rank, index in enumerate(order):
        pixels = (digits.images[index] * (255 / 16)).astype(np.uint8)  # 0-16 grey levels -> 0-255
        image = Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST)
        wnid = wnids[digits.target[index]]
        name = f"val_{rank}.JPEG" if rank < n_val else f"{wnid}_{rank}.JPEG"
        (val if rank < n_val else train).append(
            StanfordImage(wnid, name, encode(image, quality=95), (0, 0, size, size))
        )
    # wnids.txt unsorted, as Stanford's is; several launched processes may write at once (the first one wins)
    return write_stanford_layout(final, wnids[::-1], train, val, words=list(zip(wnids, NAMES)), exist_ok=True)


# under the current directory, as every recipe's outputs/ (the data once, reused by later runs)
config = FinetuneConfig(
    model=ModelConfig(name="test_vit", pretrained=False, train_mode="full", drop_path_rate=0.0),
    data=DataConfig(source="outputs/demo-data/digits-200", image_size=32, native_size=32, num_workers=0),
    optim=OptimConfig(lr=1e-3, weight_decay=0.05),
    train=TrainConfig(epochs=6, batch_size=32, micro_batch_size=32, mixed_precision="no", output_dir="outputs/demo"),
)

if __name__ == "__main__":
    write_digits(Path(config.data.source).parent)
    run(config)
