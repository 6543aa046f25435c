"""Predictions for your own pictures: top-k classes with readable names, preprocessed as in training."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .augment import BatchAugment
from .config import AugmentConfig
from .data import IMAGE_EXTENSIONS, decode_image
from .errors import ConfigError, DataError, ModelError
from .hub import hub_repo
from .models import unwrap_logits
from .weights import build_trained_model, describe_trained_weights


@dataclass
class Prediction:
    """The top-k classes of one image, best first; probabilities in [0, 1]."""

    file: str
    class_ids: list[str]
    names: list[str]
    probabilities: list[float]

    def to_dict(self) -> dict:
        ranked = zip(self.class_ids, self.names, self.probabilities)
        return {"file": self.file, "predictions": [{"class_id": c, "name": n, "probability": p} for c, n, p in ranked]}


@dataclass
class Predictor:
    """A trained model with the preprocessing it was trained with.

    >>> predictor = Predictor.load("outputs/swin_l")  # doctest: +SKIP
    >>> predictor.predict(["cat.jpg"])[0].names[0]  # doctest: +SKIP
    'Egyptian cat'
    """

    model: torch.nn.Module
    augment: BatchAugment
    decode_size: int  # images are decoded to this square size first (the training data's native size)
    class_ids: list[str]
    class_names: list[str]
    device: torch.device
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, location: str | Path, device: str | torch.device | None = None) -> Predictor:
        """From an exported folder, a run's output dir (its ``best/``), a training checkpoint or ``hf-hub:id``."""
        if hub_repo(location) is None and not Path(location).expanduser().exists():
            raise ModelError(
                f"model.checkpoint '{location}' does not exist; give an exported folder, a run's output dir or "
                "hf-hub:owner/name."
            )
        weights = describe_trained_weights(location)
        if weights.num_classes is None:
            raise ModelError(
                f"model.checkpoint '{location}' does not record its number of classes (config.json num_classes)."
            )
        class_ids = weights.class_ids or [str(i) for i in range(weights.num_classes)]
        class_names = weights.class_names or class_ids
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = build_trained_model(weights)
        augment = BatchAugment(
            weights.image_size,
            weights.mean,
            weights.std,
            weights.num_classes,
            AugmentConfig(),
            device,
            weights.preprocess or "default",
        )
        return cls(
            model.to(device).eval(), augment, weights.native_size or weights.image_size, class_ids, class_names, device
        )

    @torch.no_grad()
    def predict(
        self, files: Sequence[str | Path], top_k: int = 5, batch_size: int = 64, progress: bool = True
    ) -> list[Prediction]:
        """Top-k predictions for each readable image; unreadable files are skipped and listed in ``self.skipped``."""
        for name, value, example in (("top_k", top_k, 5), ("batch_size", batch_size, 64)):
            if value < 1:
                raise ConfigError(f"{name} must be 1 or more, got {value}; e.g. --{name} {example}.")
        top_k = min(top_k, len(self.class_ids))
        results: list[Prediction] = []
        batches = range(0, len(files), batch_size)
        for start in tqdm(batches, desc="predict", disable=not progress or len(batches) < 2, file=sys.stderr):
            pixels, read = [], []
            for file in files[start : start + batch_size]:
                try:
                    pixels.append(decode_image({"bytes": None, "path": str(file)}, self.decode_size))
                    read.append(str(file))
                except DataError as error:  # not an image, or a broken one: report it, go on with the rest
                    cause = error.__cause__ or error
                    self.skipped.append(f"{file}: not a readable image ({type(cause).__name__}: {cause})")
            if not pixels:
                continue
            x = self.augment.resize_normalize(torch.stack(pixels).to(self.device))
            probabilities = unwrap_logits(self.model(x)).float().softmax(dim=-1)
            top = probabilities.topk(top_k, dim=-1)
            for file, values, indices in zip(read, top.values.tolist(), top.indices.tolist()):
                ids, labels = [self.class_ids[i] for i in indices], [self.class_names[i] for i in indices]
                results.append(Prediction(file, ids, labels, values))
        return results


def find_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given (whatever their suffix), and the image files under the folders given (recursively, sorted)."""
    inputs = list(inputs)
    if not inputs:  # before the model loads: nothing to predict
        raise DataError(
            "No image was given; name image files or folders after the options, e.g. tiny-transformers predict "
            "--model.checkpoint outputs/run photo.jpg my_photos/."
        )
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"'{item}' does not exist; give image files or folders of images.")
    return found


def format_predictions(predictions: Sequence[Prediction]) -> str:
    """Human-readable lines: the file, then one line per class with its probability."""
    lines = []
    for image in predictions:
        lines.append(image.file)
        for rank, (class_id, name, p) in enumerate(zip(image.class_ids, image.names, image.probabilities), 1):
            label = name if name == class_id else f"{name} ({class_id})"
            lines.append(f"  {rank}. {label:<40} {100 * p:6.2f}%")
    return "\n".join(lines)
