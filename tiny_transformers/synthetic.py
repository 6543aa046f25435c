"""Small Tiny-ImageNet look-alikes written to disk, deterministically: for the tests, the benchmark and the demo.

One writer, :func:`write_stanford_layout`; :func:`make_stanford` is the test fixtures' ground truth, which the
``make_*`` functions copy byte for byte into the other layouts the loader accepts.

>>> import tempfile
>>> folder = make_stanford(Path(tempfile.mkdtemp()), n_classes=2, n_train=2, n_val=1, size=16)
>>> sorted(p.name for p in folder.iterdir())
['test', 'train', 'val', 'wnids.txt', 'words.txt']
>>> (folder / "wnids.txt").read_text().split()  # not sorted, as Stanford's
['n01475213', 'n01443537']
>>> [name for _, name, _ in stanford_records(folder)["train"]]  # the second is greyscale
['n01443537_0.JPEG', 'n01443537_1.JPEG', 'n01475213_0.JPEG', 'n01475213_1.JPEG']
"""

from __future__ import annotations

import colorsys
import io
import os
import shutil
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import datasets

STANFORD_NAME = "tiny-imagenet-200"


@dataclass(frozen=True)
class StanfordImage:
    """One image file of a Stanford-layout folder: its class, file name, encoded bytes and bounding box."""

    wnid: str
    name: str  # file name, e.g. n01443537_0.JPEG (train) or val_0.JPEG (val)
    data: bytes  # the file's bytes, already encoded (see encode())
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, as val_annotations.txt and *_boxes.txt give it


def encode(image: Image.Image | np.ndarray, format: str = "JPEG", **params: object) -> bytes:
    """The bytes of ``image`` saved as ``format`` with PIL's ``params`` (e.g. ``quality=90``).

    >>> encode(np.zeros((8, 8, 3), np.uint8))[:3]
    b'\\xff\\xd8\\xff'
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def write_stanford_layout(
    folder: Path,
    wnids: Sequence[str],
    train: Iterable[StanfordImage],
    val: Iterable[StanfordImage],
    words: Sequence[tuple[str, str]] = (),
    test: Iterable[tuple[str, bytes]] = (),
    train_boxes: bool = False,
    exist_ok: bool = False,
) -> Path:
    """Write a Stanford ``tiny-imagenet-200``-style folder at ``folder`` and return it; files in the order given,
    ``words`` the (wnid, names) lines of words.txt (none: no file), ``test`` (file name, bytes) pairs. Renamed into
    place when whole, so several processes may write it at once (the first to finish wins); a folder already there
    is an error unless ``exist_ok`` (then it is kept as it is)."""
    folder = Path(folder)
    if folder.exists():
        if exist_ok:
            return folder
        raise FileExistsError(f"{folder} already exists")
    staging = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    staging.mkdir(parents=True)
    (staging / "wnids.txt").write_text("".join(f"{wnid}\n" for wnid in wnids))
    if words:
        (staging / "words.txt").write_text("".join(f"{wnid}\t{names}\n" for wnid, names in words))
    boxes: dict[str, list[str]] = {wnid: [] for wnid in wnids}
    for wnid in wnids:
        (staging / "train" / wnid / "images").mkdir(parents=True)
    for image in train:
        (staging / "train" / image.wnid / "images" / image.name).write_bytes(image.data)
        boxes[image.wnid].append("\t".join(map(str, (image.name, *image.box))) + "\n")
    if train_boxes:
        for wnid, lines in boxes.items():
            (staging / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(lines))
    (staging / "val" / "images").mkdir(parents=True)
    annotations = []
    for image in val:
        (staging / "val" / "images" / image.name).write_bytes(image.data)
        annotations.append("\t".join(map(str, (image.name, image.wnid, *image.box))) + "\n")
    (staging / "val" / "val_annotations.txt").write_text("".join(annotations))
    for name, data in test:
        (staging / "test" / "images").mkdir(parents=True, exist_ok=True)
        (staging / "test" / "images" / name).write_bytes(data)
    try:
        staging.rename(folder)
    except OSError:  # another process finished first, with the same files
        shutil.rmtree(staging)
        if not folder.is_dir():
            raise
    return folder


_NAMES = ["goldfish", "school bus", "teapot", "lemon", "volcano", "umbrella", "barn owl", "pretzel"]
# Special files among the training images, by position in (sorted wnid, index) order: every decoding
# path the real data can take (Tiny ImageNet has ~100 greyscale JPEGs) plus other extensions and sizes.
_TRAIN_SPECIALS = {1: "L", 3: "CMYK", 5: "P", 7: "RGBA", 9: "jpg", 11: "odd-size"}


def _pixels(rng: np.random.Generator, label: int, n_classes: int, height: int, width: int) -> np.ndarray:
    """Noise around well separated class colours, so a tiny model learns the classes in a few steps."""
    colour = np.array(colorsys.hsv_to_rgb(label / max(n_classes, 1), 0.8, 0.85)) * 255.0
    return np.clip(colour + rng.normal(0.0, 18.0, size=(height, width, 3)), 0, 255).astype(np.uint8)


def _encode_kind(array: np.ndarray, kind: str) -> tuple[str, bytes]:
    """(file suffix, bytes) of the RGB ``array`` written as ``kind`` (the PNG kinds change the extension)."""
    image = Image.fromarray(array)
    if kind in ("L", "CMYK"):
        return ".JPEG", encode(image.convert(kind), quality=90)
    if kind == "P":
        return ".png", encode(image.quantize(colors=32), "PNG")
    if kind == "RGBA":
        rgba = image.convert("RGBA")
        rgba.putalpha(200)
        return ".png", encode(rgba, "PNG")
    return (".jpg" if kind == "jpg" else ".JPEG"), encode(image, quality=90)


def make_stanford(
    root: Path, n_classes: int = 4, n_train: int = 6, n_val: int = 3, size: int = 64, seed: int = 0
) -> Path:
    """Write ``root/tiny-imagenet-200`` in the Stanford layout and return that folder: wnids.txt not sorted,
    words.txt with an unrelated line; among the training images (when there are enough) greyscale and CMYK JPEGs,
    palette and RGBA PNGs, a .jpg and one not size x size; the first val image grey."""
    rng = np.random.default_rng(seed)
    wnids = sorted({f"n0{(1443537 + 7919 * i * (i + 3)) % 10**7:07d}" for i in range(n_classes)})
    assert len(wnids) == n_classes
    listed = wnids[1:][::-1] + wnids[:1]  # not sorted (for n_classes > 1): labels must not follow file order
    words = [("n09999999", "unrelated thing, other")]
    words += [(w, f"{_NAMES[i % len(_NAMES)]}, alias {i}") for i, w in enumerate(wnids)]
    box = (0, 0, size - 1, size - 1)

    train = []
    for label, wnid in enumerate(wnids):
        for i in range(n_train):
            kind = _TRAIN_SPECIALS.get(label * n_train + i, "RGB")  # by position among all training images
            height, width = (size - 8, size + 8) if kind == "odd-size" else (size, size)
            suffix, data = _encode_kind(_pixels(rng, label, n_classes, height, width), kind)
            train.append(StanfordImage(wnid, f"{wnid}_{i}{suffix}", data, box))
    val = []
    for i in range(n_val * n_classes):
        label = (i * 3 + 1) % n_classes  # interleaved classes, as the real val set
        _, data = _encode_kind(_pixels(rng, label, n_classes, size, size), "L" if i == 0 else "RGB")
        val.append(StanfordImage(wnids[label], f"val_{i}.JPEG", data, box))
    test = [("test_0.JPEG", _encode_kind(_pixels(rng, 0, n_classes, size, size), "RGB")[1])]
    return write_stanford_layout(
        Path(root) / STANFORD_NAME, listed, train, val, words=words[::-1], test=test, train_boxes=True
    )


def stanford_records(folder: Path) -> dict[str, list[tuple[str, str, Path]]]:
    """Ground truth read straight from a Stanford folder, split -> [(wnid, file name, path)]: independent of
    ``tiny_transformers.data``, as tests compare the loader against it."""
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


def damage_zip_member(zip_path: Path, member: str) -> Path:
    """Flip one byte of a stored, non-empty ``member`` in place: reading it fails its CRC-32 check while the zip's
    directory stays readable, as after a download cut and resumed wrongly."""
    with zipfile.ZipFile(zip_path) as archive:
        info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED or info.file_size == 0:
        raise ValueError(f"{member} of {zip_path} is compressed or empty; damage a stored, non-empty member")
    with open(zip_path, "r+b") as file:
        file.seek(info.header_offset + 26)  # the local header's file name and extra field lengths
        name_length, extra_length = (int.from_bytes(file.read(2), "little") for _ in range(2))
        offset = info.header_offset + 30 + name_length + extra_length + info.file_size // 2
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([byte ^ 0xFF]))
    return zip_path


def make_imagefolder(folder: Path, out: Path) -> Path:
    """Copy a Stanford folder's images to ``out/train/<wnid>/`` and ``out/val/<wnid>/``."""
    for split, records in stanford_records(folder).items():
        for wnid, name, path in records:
            (out / split / wnid).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / split / wnid / name)
    return out


def make_hf_splits(folder: Path) -> datasets.DatasetDict:
    """A Stanford folder as an in-memory DatasetDict (train, valid) with the features of zh-plus/tiny-imagenet."""
    import datasets

    records = stanford_records(folder)
    class_ids = sorted({wnid for wnid, _, _ in records["train"]})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=class_ids)})
    splits = {}
    for out_split, split in (("train", "train"), ("valid", "val")):
        images = [{"bytes": path.read_bytes(), "path": name} for _, name, path in records[split]]
        labels = [class_ids.index(wnid) for wnid, _, _ in records[split]]
        splits[out_split] = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    return datasets.DatasetDict(splits)


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


def synthetic_jpegs(count: int, size: int = 64, seed: int = 0, quality: int = 90) -> list[bytes]:
    """``count`` distinct size x size RGB JPEGs that decode like Tiny ImageNet's photos: smooth colours plus noise.

    >>> len(synthetic_jpegs(2, size=16))
    2
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 12, size=smooth.shape), 0, 255).astype(np.uint8)
        out.append(encode(pixels, quality=quality))
    return out


def write_stanford_folder(
    root: Path, classes: int, train_per_class: int, val_per_class: int = 1, size: int = 64
) -> Path:
    """The benchmark's minimal Stanford folder of :func:`synthetic_jpegs` under ``root`` (sorted wnids, no words.txt).

    >>> import tempfile
    >>> folder = write_stanford_folder(Path(tempfile.mkdtemp()), classes=2, train_per_class=2)
    >>> sorted(p.name for p in folder.iterdir())
    ['train', 'val', 'wnids.txt']
    """
    wnids = [f"n{i:08d}" for i in range(classes)]
    jpegs = iter(synthetic_jpegs(classes * (train_per_class + val_per_class), size))
    box = (0, 0, size - 1, size - 1)
    train = [StanfordImage(w, f"{w}_{i}.JPEG", next(jpegs), box) for w in wnids for i in range(train_per_class)]
    val = [StanfordImage(wnids[i % classes], f"val_{i}.JPEG", next(jpegs), box) for i in range(classes * val_per_class)]
    return write_stanford_layout(Path(root) / STANFORD_NAME, wnids, train, val)
