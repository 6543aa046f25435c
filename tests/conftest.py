"""Shared fixtures: tiny Tiny-ImageNet look-alikes on disk, in every layout the loader accepts.

The environment is set before anything imports ``datasets``/``huggingface_hub`` (they read it at import):
the Hub is offline and every cache lives in a per-session temporary folder, so tests never read or write
the user's caches.

One Stanford folder is the ground truth; the zip, imagefolder, save_to_disk and parquet variants copy its
image files byte for byte, so every layout must load to exactly the same (label, image) pairs.
"""

from __future__ import annotations

import atexit
import colorsys
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="tiny-transformers-tests-"))
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["HF_HOME"] = str(_SESSION_DIR / "hf")
os.environ["HF_DATASETS_CACHE"] = str(_SESSION_DIR / "hf" / "datasets")
os.environ["TINY_TRANSFORMERS_CACHE"] = str(_SESSION_DIR / "tiny_transformers")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402  (after the environment on purpose)
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

STANFORD_NAME = "tiny-imagenet-200"
_NAMES = ["goldfish", "school bus", "teapot", "lemon", "volcano", "umbrella", "barn owl", "pretzel"]
# Special files among the training images, by position in (sorted wnid, index) order: every decoding
# path the real data can take (Tiny ImageNet has ~100 greyscale JPEGs) plus other extensions and sizes.
_TRAIN_SPECIALS = {1: "L", 3: "CMYK", 5: "P", 7: "RGBA", 9: "jpg", 11: "odd-size"}


def _class_colour(label: int, n_classes: int) -> np.ndarray:
    """Well separated mean colours, so a tiny model learns the classes in a few steps."""
    r, g, b = colorsys.hsv_to_rgb(label / max(n_classes, 1), 0.8, 0.85)
    return np.array([r, g, b]) * 255.0


def _pixels(rng: np.random.Generator, label: int, n_classes: int, height: int, width: int) -> np.ndarray:
    noise = rng.normal(0.0, 18.0, size=(height, width, 3))
    return np.clip(_class_colour(label, n_classes) + noise, 0, 255).astype(np.uint8)


def _save(array: np.ndarray, path: Path, kind: str) -> Path:
    """Write ``array`` as ``kind``; returns the path actually written (PNG kinds change the extension)."""
    image = Image.fromarray(array, mode="RGB")
    if kind == "L":
        image.convert("L").save(path, format="JPEG", quality=90)
    elif kind == "CMYK":
        image.convert("CMYK").save(path, format="JPEG", quality=90)
    elif kind == "P":
        path = path.with_suffix(".png")
        image.quantize(colors=32).save(path, format="PNG")
    elif kind == "RGBA":
        path = path.with_suffix(".png")
        rgba = image.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(path, format="PNG")
    elif kind == "jpg":
        path = path.with_suffix(".jpg")
        image.save(path, format="JPEG", quality=90)
    else:
        image.save(path, format="JPEG", quality=90)
    return path


def make_stanford(
    root: Path, n_classes: int = 4, n_train: int = 6, n_val: int = 3, size: int = 64, seed: int = 0
) -> Path:
    """Write ``root/tiny-imagenet-200`` in the Stanford layout and return that folder.

    wnids.txt lists the wnids NOT in sorted order; words.txt has 'name, alias' per wnid plus unrelated
    lines; train/<wnid>/images/ holds ``n_train`` images per class and a boxes file; val/images/ holds
    ``n_val`` per class, annotated in val/val_annotations.txt; test/images/ holds unlabelled images. Among
    the training images (when there are enough) are a greyscale JPEG, a CMYK JPEG, a palette PNG, an RGBA
    PNG, a lowercase .jpg and one image that is not size x size; the first val image is greyscale.

    >>> folder = make_stanford(tmp_path, n_classes=2, n_train=2, n_val=1)  # doctest: +SKIP
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / STANFORD_NAME
    folder.mkdir(parents=True, exist_ok=False)
    wnids = [f"n0{(1443537 + 7919 * i * (i + 3)) % 10**7:07d}" for i in range(n_classes)]
    wnids = sorted(set(wnids))
    assert len(wnids) == n_classes
    listed = wnids[1:][::-1] + wnids[:1]  # not sorted (for n_classes > 1): labels must not follow file order
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in listed))
    words = ["n09999999\tunrelated thing, other\n"]
    words += [f"{w}\t{_NAMES[i % len(_NAMES)]}, alias {i}\n" for i, w in enumerate(wnids)]
    (folder / "words.txt").write_text("".join(words[::-1]))

    flat = 0
    for label, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        boxes = []
        for i in range(n_train):
            kind = _TRAIN_SPECIALS.get(flat, "RGB")
            height, width = (size - 8, size + 8) if kind == "odd-size" else (size, size)
            written = _save(_pixels(rng, label, n_classes, height, width), images / f"{wnid}_{i}.JPEG", kind)
            boxes.append(f"{written.name}\t0\t0\t{size - 1}\t{size - 1}\n")
            flat += 1
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))

    val_images = folder / "val" / "images"
    val_images.mkdir(parents=True)
    lines = []
    for i in range(n_val * n_classes):
        label = (i * 3 + 1) % n_classes  # interleaved classes, as the real val set
        kind = "L" if i == 0 else "RGB"
        _save(_pixels(rng, label, n_classes, size, size), val_images / f"val_{i}.JPEG", kind)
        lines.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t{size - 1}\t{size - 1}\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))

    test_images = folder / "test" / "images"
    test_images.mkdir(parents=True)
    _save(_pixels(rng, 0, n_classes, size, size), test_images / "test_0.JPEG", "RGB")
    return folder


def stanford_records(folder: Path) -> dict[str, list[tuple[str, str, Path]]]:
    """Ground truth read straight from a Stanford folder: split -> [(wnid, file name, path)].

    Deliberately independent of ``tiny_transformers.data``: tests compare the loader against it.
    """
    records: dict[str, list[tuple[str, str, Path]]] = {"train": [], "val": []}
    for wnid in sorted(p.name for p in (folder / "train").iterdir()):
        for path in sorted((folder / "train" / wnid / "images").iterdir()):
            records["train"].append((wnid, path.name, path))
    for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
        name, wnid = line.split("\t")[:2]
        records["val"].append((wnid, name, folder / "val" / "images" / name))
    return records


def make_stanford_zip(folder: Path, zip_path: Path) -> Path:
    """Zip a Stanford folder as the official zip does: everything under ``tiny-imagenet-200/``."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, Path(STANFORD_NAME) / path.relative_to(folder))
    return zip_path


def make_imagefolder(folder: Path, out: Path) -> Path:
    """Copy a Stanford folder's images to ``out/train/<wnid>/`` and ``out/val/<wnid>/``."""
    for split, records in stanford_records(folder).items():
        for wnid, name, path in records:
            (out / split / wnid).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / split / wnid / name)
    return out


def make_hf_splits(folder: Path) -> datasets.DatasetDict:  # noqa: F821
    """A Stanford folder as an in-memory DatasetDict (train, valid) with image bytes embedded and
    ``ClassLabel(names=sorted wnids)``, the features of zh-plus/tiny-imagenet."""
    import datasets

    records = stanford_records(folder)
    class_ids = sorted({wnid for wnid, _, _ in records["train"]})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=class_ids)})
    return datasets.DatasetDict(
        {
            out_split: datasets.Dataset.from_dict(
                {
                    "image": [{"bytes": path.read_bytes(), "path": name} for _, name, path in records[split]],
                    "label": [class_ids.index(wnid) for wnid, _, _ in records[split]],
                },
                features=features,
            )
            for out_split, split in (("train", "train"), ("valid", "val"))
        }
    )


def make_saved(folder: Path, out: Path) -> Path:
    """``DatasetDict.save_to_disk`` of a Stanford folder: splits train/valid, image bytes embedded."""
    make_hf_splits(folder).save_to_disk(str(out))
    return out


def make_parquet(folder: Path, out: Path) -> Path:
    """The zh-plus/tiny-imagenet layout: ``out/data/{train,valid}-00000-of-00001.parquet``."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    for split, ds in make_hf_splits(folder).items():
        ds.to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
    return out


@pytest.fixture(scope="session")
def stanford_factory() -> Callable[..., Path]:
    """:func:`make_stanford` itself, for tests that need their own (mutable) copy under ``tmp_path``."""
    return make_stanford


@pytest.fixture(scope="session")
def data_tools() -> SimpleNamespace:
    """The layout builders of this file (tests cannot import conftest under --import-mode=importlib):
    ``make_stanford``, ``stanford_records``, ``make_stanford_zip``, ``make_imagefolder``, ``make_hf_splits``,
    ``make_saved``, ``make_parquet``."""
    return SimpleNamespace(
        make_stanford=make_stanford,
        stanford_records=stanford_records,
        make_stanford_zip=make_stanford_zip,
        make_imagefolder=make_imagefolder,
        make_hf_splits=make_hf_splits,
        make_saved=make_saved,
        make_parquet=make_parquet,
    )


@pytest.fixture(scope="session")
def stanford_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-class Stanford folder (6 train, 3 val images per class, 64x64); treat it as read-only."""
    return make_stanford(tmp_path_factory.mktemp("stanford"))


@pytest.fixture(scope="session")
def stanford_zip(stanford_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny-imagenet-200.zip`` of :func:`stanford_dir` (the folder nested one level inside)."""
    return make_stanford_zip(stanford_dir, tmp_path_factory.mktemp("zip") / "tiny-imagenet-200.zip")


@pytest.fixture(scope="session")
def imagefolder_dir(stanford_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images as an imagefolder tree: ``train/<wnid>/``, ``val/<wnid>/``."""
    return make_imagefolder(stanford_dir, tmp_path_factory.mktemp("imagefolder"))


@pytest.fixture(scope="session")
def saved_dir(stanford_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images as a ``save_to_disk`` DatasetDict (train, valid)."""
    return make_saved(stanford_dir, tmp_path_factory.mktemp("saved") / "dataset")


@pytest.fixture(scope="session")
def parquet_dir(stanford_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images as zh-plus-style parquet files under ``data/``."""
    return make_parquet(stanford_dir, tmp_path_factory.mktemp("parquet"))
