"""The Stanford ``tiny-imagenet-200`` layout, as a folder or its zip: the one layout no ``datasets`` builder reads
(``val/val_annotations.txt`` labels the val images). Every inconsistency of its files is a :class:`DataError`
naming the file (and line) to fix. ``load_stanford(find_stanford_root(folder), kind="stanford")`` reads the real
folder as 100,000 train and 10,000 val images."""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
import shutil
import uuid
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from ..errors import DataError
from .builders import Raw
from .images import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)


def find_stanford_root(folder: Path) -> Path | None:
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


def cache_root() -> Path:
    """Where zips are extracted: TINY_TRANSFORMERS_CACHE, else ~/.cache/tiny_transformers."""
    configured = os.environ.get("TINY_TRANSFORMERS_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "tiny_transformers"


def extract_stanford_zip(zip_path: Path) -> Path:
    """Extract the zip once into the cache (keyed by its path, size and mtime) and return the Stanford folder in it;
    written to a temporary folder renamed when complete, so the cache is never half-filled."""
    zip_path = zip_path.resolve()
    stat = zip_path.stat()
    key = hashlib.sha256(f"{zip_path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root() / "extracted" / f"{zip_path.stem}-{key}"

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
                    try:
                        archive.extract(member, partial)  # zipfile strips absolute paths and '..' components
                    except (zipfile.BadZipFile, zlib.error, EOFError) as error:  # bad CRC, cut or garbled data
                        raise DataError(
                            f"Member '{member.filename}' of the zip '{zip_path}' is damaged ({error}); download "
                            "the zip again."
                        ) from error
                try:
                    partial.rename(target)
                except OSError:
                    # Another process (another rank) finished first; its copy is as good as ours.
                    if not target.is_dir():
                        raise
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        logger.info("Extracted %s to %s", zip_path, target)

    root = find_stanford_root(target)
    if root is None:
        raise DataError(
            f"The extracted copy of '{zip_path}' at {target} has no wnids.txt; delete that folder and run again."
        )
    return root


def read_text(path: Path) -> str:
    """A UTF-8 file's text without a leading byte-order mark, or a DataError naming the line of a non-UTF-8 byte."""
    body = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        line = body[: error.start].count(b"\n") + 1
        raise DataError(
            f"Line {line} of {path} is not UTF-8 text (byte 0x{body[error.start]:02x}); save the file as UTF-8."
        ) from error


def _read_words(path: Path) -> dict[str, str]:
    """wnid -> the first name in words.txt ('goldfish, Carassius auratus' -> 'goldfish'), short for reports; read
    leniently (names only: undecodable bytes replaced, lines without a tab skipped)."""
    if not path.is_file():
        return {}
    lines = (line.partition("\t") for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines())
    return {wnid.strip(): text.split(",")[0].strip() for wnid, _, text in lines if wnid.strip() and text.strip()}


def load_stanford(root: Path, kind: str) -> Raw:
    """The Stanford tree as train and val Datasets of file paths labelled by the SORTED wnids, and words.txt's names."""
    class_ids = _class_ids(root)
    index = {wnid: i for i, wnid in enumerate(class_ids)}
    train_paths, train_labels = _train_images(root, class_ids, index)
    val_paths, val_labels = _val_images(root, index)
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=class_ids)})
    splits = {
        "train": datasets.Dataset.from_dict({"image": train_paths, "label": train_labels}, features=features),
        "val": datasets.Dataset.from_dict({"image": val_paths, "label": val_labels}, features=features),
    }
    return Raw(splits=splits, kind=kind, names_by_id=_read_words(root / "words.txt"))


def _class_ids(root: Path) -> list[str]:
    """wnids.txt's classes, sorted: labels index the SORTED wnids (as zh-plus/tiny-imagenet does), not the file's
    order; each must have its training folder and every training folder its wnid."""
    wnids_file = root / "wnids.txt"
    wnids = [line.strip() for line in read_text(wnids_file).splitlines() if line.strip()]
    if not wnids:
        raise DataError(f"{wnids_file} lists no wnids; it needs one wnid per line.")
    duplicates = sorted(w for w, n in Counter(wnids).items() if n > 1)
    if duplicates:
        raise DataError(f"{wnids_file} lists {', '.join(duplicates)} more than once; keep one line per wnid.")
    class_ids = sorted(wnids)
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
    return class_ids


def _train_images(root: Path, class_ids: list[str], index: dict[str, int]) -> tuple[list[str], list[int]]:
    """Each class's training images (train/<wnid>/images/, or train/<wnid>/) with its label."""
    train_dir = root / "train"
    train_paths: list[str] = []
    train_labels: list[int] = []
    for wnid in class_ids:
        class_dir = train_dir / wnid
        image_dir = class_dir / "images" if (class_dir / "images").is_dir() else class_dir
        images = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise DataError(f"Training folder {image_dir} holds no images; every wnid needs at least one.")
        train_paths += [str(p) for p in images]
        train_labels += [index[wnid]] * len(images)
    return train_paths, train_labels


def _val_images(root: Path, index: dict[str, int]) -> tuple[list[str], list[int]]:
    """val_annotations.txt's images with their labels, each line checked (its class, its file, listed once)."""
    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DataError(
            f"{annotations} does not exist; the Stanford layout needs val/val_annotations.txt "
            "(file<TAB>wnid per line) next to val/images/."
        )
    val_paths: list[str] = []
    val_labels: list[int] = []
    seen: dict[str, tuple[int, str]] = {}  # file name -> (line, wnid): an image listed twice would be scored twice
    for number, line in enumerate(read_text(annotations).splitlines(), start=1):
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
        if file_name in seen:
            first, first_wnid = seen[file_name]
            raise DataError(
                f"Lines {first} and {number} of {annotations} both name {file_name} (as {first_wnid} and {wnid}); "
                "keep one line per image, with its right class."
            )
        seen[file_name] = (number, wnid)
        image_path = root / "val" / "images" / file_name
        if not image_path.is_file():
            raise DataError(
                f"Line {number} of {annotations} names {image_path}, which does not exist; restore the image or "
                "remove the line."
            )
        val_paths.append(str(image_path))
        val_labels.append(index[wnid])
    return val_paths, val_labels
