"""Tiny ImageNet from any of its usual homes, as two ``datasets.Dataset`` splits of undecoded images.

:func:`load_data` recognises the source named by ``data.source`` (a Hub id, the Stanford folder or its
zip, an imagefolder tree, a ``save_to_disk`` folder, parquet files) and normalises every one of them to
the same shape: an ``image`` column of ``Image(decode=False)`` dicts, a ``label`` column whose
``ClassLabel`` names are sorted (the wnids, as ``zh-plus/tiny-imagenet`` orders them), and a train and
an eval split. Images stay compressed until a loader worker calls :func:`decode_image`, so nothing is
copied or decoded up front.

>>> bundle = load_data(DataConfig(source="./tiny-imagenet-200"))  # doctest: +SKIP
>>> loader = DataLoader(bundle.train.with_transform(train_transform(64)), batch_size=64,
...                     collate_fn=collate)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import uuid
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from .config import DataConfig
from .errors import DataError

__all__ = [
    "DataBundle",
    "load_data",
    "decode_image",
    "train_transform",
    "eval_transform",
    "collate",
]

logger = logging.getLogger(__name__)

SOURCE_KINDS = ("hub", "stanford", "stanford-zip", "imagefolder", "saved", "parquet")
EVAL_SPLITS = ("valid", "validation", "val", "test")  # first present wins; zh-plus calls it "valid"
PARQUET_SPLITS = ("train",) + EVAL_SPLITS
IMAGEFOLDER_EVAL_DIRS = ("val", "valid", "validation", "test")
IMAGE_EXTENSIONS = frozenset(
    {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".jfif"}
)
SKIP_CORRUPT_HINT = "set --data.skip_corrupt true to skip and count unreadable images"
LOCAL_LAYOUTS_HINT = (
    "point data.source at a local copy instead, e.g. --data.source ./tiny-imagenet-200 (the Stanford folder "
    "with wnids.txt, or its .zip), a folder written by DatasetDict.save_to_disk, a folder of parquet files "
    "(train-*.parquet and valid-*.parquet), or an imagefolder tree (train/<class>/ and val/<class>/)"
)


@dataclass
class DataBundle:
    """The train and eval splits plus what the rest of the library needs to know about the classes."""

    train: datasets.Dataset  # "image": Image(decode=False), "label": ClassLabel(names=class_ids)
    eval: datasets.Dataset  # same features as train
    class_ids: list[str]  # sorted; == train.features["label"].names (wnids for Tiny ImageNet)
    class_names: list[str]  # human-readable, same order; == class_ids when the source has no words.txt
    source_kind: str  # one of SOURCE_KINDS
    skipped_corrupt: int = 0  # images dropped because data.skip_corrupt was on

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)


# --------------------------------------------------------------------------------------------------
# Decoding and transforms (run inside DataLoader workers)
# --------------------------------------------------------------------------------------------------


def _to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL mode to 8-bit RGB.

    PIL's own ``convert("RGB")`` clips 16/32-bit and float greyscale to 255 (a 16-bit PNG turns white), so
    those are rescaled first: ``I;16*`` always by 1/257, ``I`` only when its values exceed 8 bits, ``F`` by
    255 when it holds values in [0, 1]. Every other mode (L, LA, RGBA, P, CMYK, 1, YCbCr...) is PIL's
    conversion, alpha dropped without compositing.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        if img.mode.startswith("I;16") or (img.mode == "I" and peak > 255):
            arr = arr / 257.0
        elif img.mode == "F" and peak <= 1.0:
            arr = arr * 255.0
        img = PIL.Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    with warnings.catch_warnings():
        # Palette images with transparency warn that RGBA would keep it; we drop alpha on purpose.
        warnings.simplefilter("ignore", UserWarning)
        return img.convert("RGB")


def _describe(image: Any) -> str:
    path = image.get("path") if isinstance(image, Mapping) else getattr(image, "filename", None)
    return f"'{path}'" if path else "an image without a path"


def decode_image(image: Mapping[str, Any] | PIL.Image.Image, native_size: int) -> torch.Tensor:
    """Decode one image to a uint8 RGB tensor of shape (3, native_size, native_size).

    ``image`` is a ``datasets.Image(decode=False)`` dict (``bytes`` and/or ``path``) or a PIL image. Any
    mode becomes RGB; the image is resized with PIL bicubic only when it is not already
    native_size x native_size (a non-square image is stretched, not cropped). A corrupt or truncated file
    raises :class:`DataError` naming it, here rather than later, because the pixels are loaded eagerly.

    >>> decode_image({"bytes": None, "path": "train/n01443537/images/n01443537_0.JPEG"}, 64).shape  # doctest: +SKIP
    torch.Size([3, 64, 64])
    """
    where = _describe(image)
    try:
        if isinstance(image, PIL.Image.Image):
            image.load()
            rgb = _to_rgb(image)
        elif isinstance(image, Mapping):
            data, path = image.get("bytes"), image.get("path")
            if data is None and not path:
                raise DataError("An image entry holds neither bytes nor a path; the dataset's image column is broken.")
            with PIL.Image.open(io.BytesIO(data) if data is not None else path) as opened:
                opened.load()  # truncated JPEGs raise here (PIL is lazy), not in a later resize
                rgb = _to_rgb(opened)
                rgb.load()
        else:
            raise DataError(
                f"decode_image got a {type(image).__name__}; it takes a datasets Image(decode=False) dict or a PIL image."
            )
        if rgb.size != (native_size, native_size):
            rgb = rgb.resize((native_size, native_size), PIL.Image.Resampling.BICUBIC)
        array = np.array(rgb, dtype=np.uint8)  # a writable copy, so torch does not warn
    except DataError:
        raise
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise DataError(
            f"Cannot read image {where} ({type(error).__name__}: {error}); replace or delete the file, or "
            f"{SKIP_CORRUPT_HINT}."
        ) from error
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class _BatchTransform:
    """A picklable ``with_transform`` callable (closures would break DataLoader workers under spawn)."""

    def __init__(self, native_size: int, randaugment_ops: int = 0, randaugment_magnitude: int = 9) -> None:
        self.native_size = native_size
        self.randaugment: Callable[[torch.Tensor], torch.Tensor] | None = None
        if randaugment_ops > 0:
            from torchvision.transforms import v2

            self.randaugment = v2.RandAugment(num_ops=randaugment_ops, magnitude=randaugment_magnitude)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        pixels = [decode_image(image, self.native_size) for image in batch["image"]]
        if self.randaugment is not None:
            pixels = [self.randaugment(p) for p in pixels]
        return {"pixels": pixels, "label": [int(label) for label in batch["label"]]}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(native_size={self.native_size}, randaugment={self.randaugment!r})"


def train_transform(
    native_size: int, randaugment_ops: int = 0, randaugment_magnitude: int = 9
) -> Callable[[dict[str, list[Any]]], dict[str, list[Any]]]:
    """Batch transform for ``Dataset.with_transform``: decode to uint8, then RandAugment when ops > 0.

    Returns ``{"pixels": [uint8 (3, S, S) tensors], "label": [ints]}``; mixing, erasing, resizing to the model's
    size and normalising happen on the training device.

    >>> ds = bundle.train.with_transform(train_transform(64, randaugment_ops=2))  # doctest: +SKIP
    >>> ds[0]["pixels"].dtype  # doctest: +SKIP
    torch.uint8
    """
    return _BatchTransform(native_size, randaugment_ops, randaugment_magnitude)


def eval_transform(native_size: int) -> Callable[[dict[str, list[Any]]], dict[str, list[Any]]]:
    """Batch transform for ``Dataset.with_transform``: decode to uint8, nothing random.

    >>> bundle.eval.with_transform(eval_transform(64))[0]["pixels"].shape  # doctest: +SKIP
    torch.Size([3, 64, 64])
    """
    return _BatchTransform(native_size)


def collate(samples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack transformed samples into (uint8 images B x 3 x S x S, int64 labels B).

    >>> collate([{"pixels": torch.zeros(3, 2, 2, dtype=torch.uint8), "label": 5}])[1]
    tensor([5])
    """
    images = torch.stack([sample["pixels"] for sample in samples])
    labels = torch.tensor([int(sample["label"]) for sample in samples], dtype=torch.int64)
    return images, labels


# --------------------------------------------------------------------------------------------------
# Source recognition
# --------------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """What a source loader hands to the normaliser."""

    splits: Mapping[str, datasets.Dataset]
    kind: str
    names_by_id: dict[str, str] | None = None  # from words.txt


def _looks_like_path(source: str) -> bool:
    """A string that cannot be a Hub id (``owner/name``) and so must have meant a local path."""
    if source.startswith((".", "/", "~")) or source.lower().endswith((".zip", ".parquet")):
        return True
    if "/" in source or os.sep in source:
        return bool(Path(source).suffix) or source.replace(os.sep, "/").count("/") > 1
    return False


def load_data(cfg: DataConfig) -> DataBundle:
    """Load train and eval splits from ``cfg.source``, whatever kind of source it is.

    Local paths are recognised first (a Stanford ``.zip``, a folder with ``wnids.txt``, a ``save_to_disk``
    folder, parquet files, an imagefolder tree); anything else that does not look like a path is a Hub id.
    Labels always end sorted by class id; ``cfg.max_*_samples`` keep a fixed random subset; ``cfg.skip_corrupt``
    scans every image once and drops the unreadable ones.

    >>> bundle = load_data(DataConfig(source="./tiny-imagenet-200"))  # doctest: +SKIP
    >>> bundle.source_kind, bundle.num_classes, len(bundle.train), len(bundle.eval)  # doctest: +SKIP
    ('stanford', 200, 100000, 10000)
    """
    source = cfg.source
    path = Path(source).expanduser()
    if path.exists():
        raw = _load_local(path)
    elif _looks_like_path(source):
        raise DataError(
            f"data.source '{source}' does not exist; check the path, or give a Hub dataset id such as "
            "zh-plus/tiny-imagenet."
        )
    else:
        raw = _load_hub(source)

    train, eval_ = _pick_splits(raw.splits, source)
    train, eval_ = _standard_columns(train, "train", source), _standard_columns(eval_, "eval", source)
    train, eval_, class_ids = _normalise_labels(train, eval_, source)
    for split_name, split in (("train", train), ("eval", eval_)):
        if len(split) == 0:
            raise DataError(f"The {split_name} split of data.source '{source}' is empty; it needs at least one image.")
    _check_eval_classes(train, eval_, class_ids, source)

    # A fixed random subset, not the first rows: Stanford rows are grouped by class, so the first
    # 1,000 of 100,000 would hold only 2 of the 200 classes.
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train):
        train = train.shuffle(seed=0).select(range(cfg.max_train_samples))
    if cfg.max_eval_samples is not None and cfg.max_eval_samples < len(eval_):
        eval_ = eval_.shuffle(seed=0).select(range(cfg.max_eval_samples))

    skipped = 0
    if cfg.skip_corrupt:
        train, skipped_train = _drop_corrupt(train, "train", cfg.native_size)
        eval_, skipped_eval = _drop_corrupt(eval_, "eval", cfg.native_size)
        skipped = len(skipped_train) + len(skipped_eval)
        if skipped:
            first = ", ".join(skipped_train[:3] + skipped_eval[:3])
            logger.warning(
                "Skipped %d unreadable image(s) (%d train, %d eval), e.g. %s.",
                skipped,
                len(skipped_train),
                len(skipped_eval),
                first,
            )
        for split_name, split in (("train", train), ("eval", eval_)):
            if len(split) == 0:
                raise DataError(f"Every image of the {split_name} split of data.source '{source}' is unreadable.")

    names_by_id = raw.names_by_id or {}
    class_names = [names_by_id.get(class_id, class_id) for class_id in class_ids]
    return DataBundle(
        train=train,
        eval=eval_,
        class_ids=class_ids,
        class_names=class_names,
        source_kind=raw.kind,
        skipped_corrupt=skipped,
    )


def _load_local(path: Path) -> _Raw:
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".zip":
            return _load_stanford(_extract_stanford_zip(path), kind="stanford-zip")
        if suffix == ".parquet":
            # One shard names its split; its siblings hold the others (data/train-*.parquet + data/valid-*).
            return _load_parquet(path.parent, _find_parquet(path.parent, max_depth=0))
        raise DataError(
            f"data.source '{path}' is a file but neither a .zip of the Stanford tiny-imagenet-200 folder nor a "
            ".parquet file; give one of those or a folder."
        )

    stanford = _find_stanford_root(path)
    if stanford is not None:
        return _load_stanford(stanford, kind="stanford")
    if (path / "dataset_dict.json").is_file():
        return _Raw(splits=_load_saved(path), kind="saved")
    parquet_files = _find_parquet(path, max_depth=3)
    if parquet_files:
        return _load_parquet(path, parquet_files)
    if _is_imagefolder(path):
        return _load_imagefolder(path)
    raise DataError(
        f"data.source '{path}' is a folder in no known layout; expected one of: the Stanford tiny-imagenet-200 "
        "folder (wnids.txt, train/<wnid>/images/, val/val_annotations.txt), a DatasetDict.save_to_disk folder "
        "(dataset_dict.json), parquet files named by split (train-*.parquet, valid-*.parquet), or an "
        "imagefolder tree (train/<class>/ plus val/, valid/, validation/ or test/ with <class>/ subfolders)."
    )


def _find_stanford_root(folder: Path) -> Path | None:
    """The folder holding ``wnids.txt``: ``folder`` itself or its only subfolder that has one."""
    if (folder / "wnids.txt").is_file():
        return folder
    candidates = sorted(child for child in folder.iterdir() if child.is_dir() and (child / "wnids.txt").is_file())
    if len(candidates) > 1:
        raise DataError(
            f"data.source '{folder}' holds several Stanford folders ({', '.join(c.name for c in candidates)}); "
            "point data.source at one of them."
        )
    return candidates[0] if candidates else None


# --------------------------------------------------------------------------------------------------
# Stanford layout and its zip
# --------------------------------------------------------------------------------------------------


def _cache_root() -> Path:
    configured = os.environ.get("TINY_TRANSFORMERS_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "tiny_transformers"


def _extract_stanford_zip(zip_path: Path) -> Path:
    """Extract the zip once into the cache and return the Stanford folder inside it.

    The cache key hashes the absolute path, size and mtime, so a replaced zip is extracted again. Members
    go to a temporary sibling folder that is renamed into place only when complete: an interrupted run
    leaves a stray temporary folder, never a half-filled cache that a later run would trust.
    """
    zip_path = zip_path.resolve()
    stat = zip_path.stat()
    key = hashlib.sha256(f"{zip_path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = _cache_root() / "extracted" / f"{zip_path.stem}-{key}"

    if not target.is_dir():
        try:
            archive = zipfile.ZipFile(zip_path)
        except zipfile.BadZipFile as error:
            raise DataError(
                f"data.source '{zip_path}' is not a readable zip file ({error}); download it again."
            ) from error
        with archive:
            names = archive.namelist()
            # Fail before extracting 100k files when the zip holds something else.
            if not any(name.rstrip("/").split("/")[-1] == "wnids.txt" and name.count("/") <= 1 for name in names):
                raise DataError(
                    f"data.source '{zip_path}' holds no wnids.txt at its top or one folder down; it must be the "
                    "Stanford tiny-imagenet-200.zip (or unzip it and point data.source at the folder)."
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.parent / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            try:
                for member in tqdm(archive.infolist(), desc=f"Extracting {zip_path.name}", unit="file"):
                    archive.extract(member, partial)  # zipfile strips absolute paths and '..' components
                try:
                    partial.rename(target)
                except OSError:
                    # Another process (another rank) finished first; its copy is as good as ours.
                    if not target.is_dir():
                        raise
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        logger.info("Extracted %s to %s", zip_path, target)

    root = _find_stanford_root(target)
    if root is None:
        raise DataError(
            f"The extracted copy of '{zip_path}' at {target} has no wnids.txt; delete that folder and run again."
        )
    return root


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _read_words(path: Path) -> dict[str, str]:
    """wnid -> first comma-separated name from words.txt ('goldfish, Carassius auratus' -> 'goldfish').

    The first synonym keeps report tables and confusion-matrix labels short; the full text is in words.txt.
    """
    names: dict[str, str] = {}
    if not path.is_file():
        return names
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        wnid, _, text = line.partition("\t")
        if wnid.strip() and text.strip():
            names[wnid.strip()] = text.split(",")[0].strip()
    return names


def _load_stanford(root: Path, kind: str) -> _Raw:
    """The Stanford tree as two Datasets of file paths (no image bytes are copied)."""
    wnids_file = root / "wnids.txt"
    wnids = [line.strip() for line in wnids_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not wnids:
        raise DataError(f"{wnids_file} lists no wnids; it needs one wnid per line.")
    duplicates = sorted(w for w, n in Counter(wnids).items() if n > 1)
    if duplicates:
        raise DataError(f"{wnids_file} lists {', '.join(duplicates)} more than once; keep one line per wnid.")
    # Labels index the SORTED wnids (as zh-plus/tiny-imagenet does), not wnids.txt's own order.
    class_ids = sorted(wnids)
    index = {wnid: i for i, wnid in enumerate(class_ids)}

    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"The Stanford folder {root} has no train/ folder; it needs train/<wnid>/images/*.JPEG.")
    folders = {p.name for p in train_dir.iterdir() if p.is_dir()}
    missing = [w for w in class_ids if w not in folders]
    if missing:
        raise DataError(
            f"wnid {missing[0]} is listed in {wnids_file} but {train_dir / missing[0]} does not exist"
            f"{f' ({len(missing)} such wnids)' if len(missing) > 1 else ''}; restore the folder or remove the wnid."
        )
    extra = sorted(folders - set(wnids))
    if extra:
        raise DataError(
            f"Training folder {train_dir / extra[0]} is not listed in {wnids_file}"
            f"{f' ({len(extra)} such folders)' if len(extra) > 1 else ''}; add its wnid to wnids.txt or remove it."
        )

    train_paths: list[str] = []
    train_labels: list[int] = []
    for wnid in class_ids:
        class_dir = train_dir / wnid
        image_dir = class_dir / "images" if (class_dir / "images").is_dir() else class_dir
        images = _list_images(image_dir)
        if not images:
            raise DataError(f"Training folder {image_dir} holds no images; every wnid needs at least one.")
        train_paths += [str(p) for p in images]
        train_labels += [index[wnid]] * len(images)

    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DataError(
            f"{annotations} does not exist; the Stanford layout needs val/val_annotations.txt "
            "(file<TAB>wnid per line) next to val/images/."
        )
    val_paths: list[str] = []
    val_labels: list[int] = []
    for number, line in enumerate(annotations.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2:
            raise DataError(f"Line {number} of {annotations} is not 'file<TAB>wnid...'; fix or delete that line.")
        file_name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise DataError(
                f"Line {number} of {annotations} labels {file_name} as {wnid}, a class with no training folder; "
                f"add {wnid} to wnids.txt and train/, or remove the line."
            )
        image_path = root / "val" / "images" / file_name
        if not image_path.is_file():
            raise DataError(
                f"Line {number} of {annotations} names {image_path}, which does not exist; restore the image or "
                "remove the line."
            )
        val_paths.append(str(image_path))
        val_labels.append(index[wnid])

    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=class_ids)})
    splits = {
        "train": datasets.Dataset.from_dict({"image": train_paths, "label": train_labels}, features=features),
        "val": datasets.Dataset.from_dict({"image": val_paths, "label": val_labels}, features=features),
    }
    return _Raw(splits=splits, kind=kind, names_by_id=_read_words(root / "words.txt"))


# --------------------------------------------------------------------------------------------------
# save_to_disk, parquet, imagefolder, Hub
# --------------------------------------------------------------------------------------------------


def _load_saved(path: Path) -> Mapping[str, datasets.Dataset]:
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # a damaged arrow file or json; the message says which
        raise DataError(
            f"data.source '{path}' looks like a save_to_disk folder but cannot be loaded: {error}."
        ) from error
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"data.source '{path}' holds a single Dataset; save a DatasetDict with train and valid splits.")
    return loaded


def _find_parquet(folder: Path, max_depth: int) -> list[Path]:
    """*.parquet files under ``folder``, at most ``max_depth`` levels down (no walk through 100k images)."""
    found: list[Path] = []
    base_depth = len(folder.parts)
    for directory, subdirs, files in os.walk(folder):
        depth = len(Path(directory).parts) - base_depth
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")) if depth < max_depth else []
        found += [Path(directory) / f for f in sorted(files) if f.lower().endswith(".parquet")]
    return found


def _parquet_split(file: Path) -> str:
    """``train-00000-of-00001.parquet`` -> ``train``; ``valid.parquet`` -> ``valid``."""
    return file.name.split("-", 1)[0].split(".", 1)[0].lower()


def _load_parquet(folder: Path, files: list[Path]) -> _Raw:
    data_files: dict[str, list[str]] = {}
    for file in files:
        split = _parquet_split(file)
        if split in PARQUET_SPLITS:
            data_files.setdefault(split, []).append(str(file))
        else:
            logger.info("Ignoring %s: its name does not start with a split name (%s).", file, ", ".join(PARQUET_SPLITS))
    if not data_files:
        raise DataError(
            f"The parquet files under '{folder}' ({', '.join(f.name for f in files[:3])}...) are not named by split; "
            "name them train-*.parquet and valid-*.parquet (or validation/val/test)."
        )
    try:
        loaded = datasets.load_dataset("parquet", data_files=data_files)
    except Exception as error:
        raise DataError(f"The parquet files under '{folder}' cannot be read: {error}.") from error
    return _Raw(splits=loaded, kind="parquet")


def _has_class_folders(folder: Path) -> bool:
    return folder.is_dir() and any(child.is_dir() for child in folder.iterdir())


def _is_imagefolder(path: Path) -> bool:
    return _has_class_folders(path / "train") and any(_has_class_folders(path / d) for d in IMAGEFOLDER_EVAL_DIRS)


def _load_imagefolder(path: Path) -> _Raw:
    # datasets names the split folders itself: val/ and valid/ become "validation", test/ stays "test".
    # drop_labels=False forces the label column even with a single class (datasets drops it otherwise);
    # its ClassLabel names are the sorted folder names of all splits together.
    try:
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path), drop_labels=False)
    except Exception as error:
        raise DataError(f"The imagefolder tree '{path}' cannot be read: {error}.") from error
    return _Raw(splits=loaded, kind="imagefolder")


def _offline() -> bool:
    flags = (os.environ.get(v, "").strip().lower() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(flag in ("1", "true", "yes", "on") for flag in flags) or bool(
        getattr(datasets.config, "HF_HUB_OFFLINE", False)
    )


def _load_hub(source: str) -> _Raw:
    """``datasets.load_dataset(source)``; every failure becomes one DataError sentence (the cause is chained)."""
    try:
        loaded = datasets.load_dataset(source)
    except Exception as error:
        not_found = type(error).__name__ in ("DatasetNotFoundError", "RepositoryNotFoundError")
        unreachable = isinstance(error, (ConnectionError, TimeoutError)) or "connect" in type(error).__name__.lower()
        if not_found and not _offline():
            raise DataError(
                f"data.source '{source}' is not a local path and not a dataset on the Hub (or it is private); "
                f"check the id, or {LOCAL_LAYOUTS_HINT}."
            ) from error
        if unreachable or _offline():
            raise DataError(
                f"The Hugging Face Hub cannot be reached to load data.source '{source}' "
                f"({'offline mode is on' if _offline() else type(error).__name__}) and no cached copy exists; "
                f"{LOCAL_LAYOUTS_HINT}."
            ) from error
        raise DataError(
            f"Loading data.source '{source}' from the Hub failed ({type(error).__name__}: {error})."
        ) from error
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"data.source '{source}' loaded as a single split; it needs train and valid splits.")
    return _Raw(splits=loaded, kind="hub")


# --------------------------------------------------------------------------------------------------
# Normalisation shared by every source
# --------------------------------------------------------------------------------------------------


def _pick_splits(splits: Mapping[str, datasets.Dataset], source: str) -> tuple[datasets.Dataset, datasets.Dataset]:
    found = ", ".join(sorted(str(name) for name in splits)) or "none"
    if "train" not in splits:
        raise DataError(f"data.source '{source}' has no 'train' split (splits found: {found}).")
    for name in EVAL_SPLITS:
        if name in splits:
            return splits["train"], splits[name]
    raise DataError(
        f"data.source '{source}' has no evaluation split (splits found: {found}); it needs one named "
        f"{', '.join(EVAL_SPLITS[:-1])} or {EVAL_SPLITS[-1]}."
    )


def _standard_columns(ds: datasets.Dataset, split: str, source: str) -> datasets.Dataset:
    """Rename img/labels to image/label, keep only those two, and make images undecoded dicts."""
    columns = ds.column_names
    renames = {}
    if "image" not in columns and "img" in columns:
        renames["img"] = "image"
    if "label" not in columns and "labels" in columns:
        renames["labels"] = "label"
    if renames:
        ds = ds.rename_columns(renames)
    missing = [c for c in ("image", "label") if c not in ds.column_names]
    if missing:
        raise DataError(
            f"The {split} split of data.source '{source}' has no {' or '.join(missing)} column (columns found: "
            f"{', '.join(columns)}); it needs 'image' (or 'img') and 'label' (or 'labels')."
        )
    if len(ds.column_names) > 2:
        ds = ds.select_columns(["image", "label"])
    feature = ds.features["image"]
    if not (isinstance(feature, datasets.Image) and not feature.decode):
        try:
            ds = ds.cast_column("image", datasets.Image(decode=False))
        except Exception as error:
            raise DataError(
                f"The image column of the {split} split of data.source '{source}' ({feature}) is not images "
                "(it must hold encoded image bytes or file paths)."
            ) from error
    return ds


def _relabel(ds: datasets.Dataset, mapping: Mapping[Any, int], class_ids: list[str]) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=class_ids)})
    return ds.map(
        _MapLabels(dict(mapping)),
        batched=True,
        input_columns="label",
        features=features,
        desc="Ordering labels by sorted class id",
    )


class _MapLabels:
    """old label -> new index, as a class so datasets can hash it for its cache."""

    def __init__(self, mapping: dict[Any, int]) -> None:
        self.mapping = mapping

    def __call__(self, labels: list[Any]) -> dict[str, list[int]]:
        return {"label": [self.mapping[label] for label in labels]}


def _normalise_labels(
    train: datasets.Dataset, eval_: datasets.Dataset, source: str
) -> tuple[datasets.Dataset, datasets.Dataset, list[str]]:
    """Make ``label`` a ClassLabel with sorted names, the same in both splits, remapping through names."""
    f_train, f_eval = train.features["label"], eval_.features["label"]

    if isinstance(f_train, datasets.ClassLabel) and isinstance(f_eval, datasets.ClassLabel):
        class_ids = sorted(set(f_train.names) | set(f_eval.names))
        out = []
        for ds, feature in ((train, f_train), (eval_, f_eval)):
            if list(feature.names) == class_ids:
                out.append(ds)
            else:
                # Unsorted (or differing) names: move each integer to its name's sorted position.
                out.append(_relabel(ds, {i: class_ids.index(name) for i, name in enumerate(feature.names)}, class_ids))
        return out[0], out[1], class_ids

    def kind(feature: Any) -> str:
        if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
            return "int"
        if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            return "str"
        return f"{feature}"

    kinds = {kind(f_train), kind(f_eval)}
    if kinds == {"int"}:
        values = [v for ds in (train, eval_) for v in ds.unique("label") if v is not None]
        if not values or min(values) < 0:
            raise DataError(
                f"The label column of data.source '{source}' holds {'negative' if values else 'no'} class indices; "
                "every image needs a class index >= 0 (an unlabelled test split cannot be the eval split)."
            )
        # Plain integers: name class i as str(i), in numeric order, so the integers keep their meaning.
        class_ids = [str(i) for i in range(max(values) + 1)]
        label = datasets.ClassLabel(names=class_ids)
        return train.cast_column("label", label), eval_.cast_column("label", label), class_ids
    if kinds == {"str"}:
        class_ids = sorted({v for ds in (train, eval_) for v in ds.unique("label") if v is not None})
        mapping = {name: i for i, name in enumerate(class_ids)}
        return _relabel(train, mapping, class_ids), _relabel(eval_, mapping, class_ids), class_ids
    raise DataError(
        f"The label column of data.source '{source}' is {f_train} in train and {f_eval} in eval; it must be a "
        "ClassLabel, integer or string column, the same kind in both splits."
    )


def _check_eval_classes(train: datasets.Dataset, eval_: datasets.Dataset, class_ids: list[str], source: str) -> None:
    """An eval class the model never sees in training is a data mistake (often a misspelt folder)."""
    unseen = sorted(set(eval_.unique("label")) - set(train.unique("label")))
    if unseen:
        names = ", ".join(class_ids[i] for i in unseen[:5])
        raise DataError(
            f"The eval split of data.source '{source}' has images of {len(unseen)} class(es) with no training "
            f"image ({names}{', ...' if len(unseen) > 5 else ''}); add training images or fix the class names."
        )


def _drop_corrupt(ds: datasets.Dataset, split: str, native_size: int) -> tuple[datasets.Dataset, list[str]]:
    """Decode every image once; return the dataset without the unreadable ones and their names."""
    keep: list[int] = []
    bad: list[str] = []
    row = 0
    with tqdm(total=len(ds), desc=f"Checking {split} images", unit="img") as bar:
        for batch in ds.select_columns(["image"]).iter(batch_size=512):
            for image in batch["image"]:
                try:
                    decode_image(image, native_size)
                    keep.append(row)
                except DataError:
                    bad.append(_describe(image))
                row += 1
            bar.update(len(batch["image"]))
    return (ds.select(keep) if bad else ds), bad
