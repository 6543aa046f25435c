"""Where the data comes from: :func:`load_data` recognises ``data.source`` (the layouts are read by :mod:`.stanford`
and :mod:`.builders`) and normalises every source to the same :class:`DataBundle`; :func:`verify_images` decodes a
split once up front, so a training run finds a corrupt eval image before it trains.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

from ..config import DataConfig
from ..errors import DataError
from ..hub import is_hub_id
from .builders import (
    BUILDER_KINDS,
    EmptySplit,
    Raw,
    check_split_folders,
    empty_split_error,
    infer_builder,
    load_hub,
    load_parquet_file,
    load_saved,
    load_with_builder,
    split_names,
)
from .images import _describe, decode_image
from .stanford import cache_root, extract_stanford_zip, find_stanford_root, load_stanford

logger = logging.getLogger(__name__)

SOURCE_KINDS = ("hub", "stanford", "stanford-zip", "imagefolder", "saved", "parquet")


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


def load_data(cfg: DataConfig) -> DataBundle:
    """Train and eval splits from ``cfg.source``: a local path first (a Stanford ``.zip`` or folder, a
    ``save_to_disk`` folder, then what ``datasets.load_dataset`` would split), else a Hub id. Images stay undecoded;
    labels are a ``ClassLabel`` of sorted class ids in both splits; ``cfg.max_*_samples`` keep a fixed random
    subset; ``cfg.skip_corrupt`` scans every image once and drops the unreadable ones.

    >>> bundle = load_data(DataConfig(source="./tiny-imagenet-200"))  # doctest: +SKIP
    >>> bundle.source_kind, bundle.num_classes, len(bundle.train), len(bundle.eval)  # doctest: +SKIP
    ('stanford', 200, 100000, 10000)
    """
    try:
        return _load_data(cfg)
    except (DataError, OSError) as error:
        unwritable = _unwritable_cache(error, cfg.source)
        if unwritable is None:
            raise
        raise unwritable from error


def _load_data(cfg: DataConfig) -> DataBundle:
    source = cfg.source
    path = Path(source).expanduser()
    if path.exists():
        try:
            raw = _load_local(path)
        except EmptySplit as empty:
            raise empty_split_error(empty.split, source) from None
    elif not is_hub_id(source):
        raise DataError(
            f"data.source '{source}' does not exist; check the path, or give a Hub dataset id such as "
            "zh-plus/tiny-imagenet."
        )
    else:
        raw = load_hub(source)

    train_name, eval_name = split_names([str(name) for name in raw.splits], source)
    train, eval_ = raw.splits[train_name], raw.splits[eval_name]
    train, eval_ = _standard_columns(train, "train", source), _standard_columns(eval_, "eval", source)
    _refuse_missing_labels(train, "train", source), _refuse_missing_labels(eval_, "eval", source)
    train, eval_, class_ids = _normalise_labels(train, eval_, source)
    for split_name, split in (("train", train), ("eval", eval_)):
        if len(split) == 0:
            raise empty_split_error(split_name, source)
    _check_eval_classes(train, eval_, class_ids, source)

    # A fixed random subset, not the first rows: Stanford rows are grouped by class, so the first
    # 1,000 of 100,000 would hold only 2 of the 200 classes.
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train):
        train = train.shuffle(seed=0).select(range(cfg.max_train_samples))
    if cfg.max_eval_samples is not None and cfg.max_eval_samples < len(eval_):
        eval_ = eval_.shuffle(seed=0).select(range(cfg.max_eval_samples))

    skipped = 0
    if cfg.skip_corrupt:
        train, bad_train = _drop_corrupt(train, "train", cfg.native_size)
        eval_, bad_eval = _drop_corrupt(eval_, "eval", cfg.native_size)
        skipped = len(bad_train) + len(bad_eval)
        if skipped:
            counts = (skipped, len(bad_train), len(bad_eval), ", ".join(bad_train[:3] + bad_eval[:3]))
            logger.warning("Skipped %d unreadable image(s) (%d train, %d eval), e.g. %s.", *counts)
        for split_name, split in (("train", train), ("eval", eval_)):
            if len(split) == 0:
                raise DataError(f"Every image of the {split_name} split of data.source '{source}' is unreadable.")

    class_names = [(raw.names_by_id or {}).get(class_id, class_id) for class_id in class_ids]
    return DataBundle(
        train=train,
        eval=eval_,
        class_ids=class_ids,
        class_names=class_names,
        source_kind=raw.kind,
        skipped_corrupt=skipped,
    )


def _unwritable_cache(error: BaseException, source: str) -> DataError | None:
    """A cache folder that cannot be written (read-only HOME, HF_HOME, HF_DATASETS_CACHE or
    TINY_TRANSFORMERS_CACHE), named with the variable that moves it; None when ``error`` is about something else."""
    denied = error
    while denied is not None and not (
        isinstance(denied, OSError) and denied.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and denied.filename
    ):
        denied = denied.__cause__ or denied.__context__
    if denied is None:
        return None
    where = Path(os.fsdecode(denied.filename)).expanduser().resolve()
    hf_cache = Path(datasets.config.HF_DATASETS_CACHE)
    caches = (
        (cache_root(), "TINY_TRANSFORMERS_CACHE", "the zip is extracted once"),
        (hf_cache, "HF_DATASETS_CACHE (or HF_HOME, which holds it by default)", "datasets prepares the data once"),
    )
    for root, variable, why in caches:
        root = root.expanduser().resolve()
        if where == root or root in where.parents or where in root.parents:
            home = Path.home().resolve()
            default = f" (it lies under HOME, '{home}', by default)" if home in root.parents else ""
            return DataError(
                f"The cache folder '{root}' cannot be written ({denied.strerror}: '{where}'), and it is where {why} "
                f"for data.source '{source}'; set {variable} to a writable folder{default}."
            )
    return None


def _load_local(path: Path) -> Raw:
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".zip":
            return load_stanford(extract_stanford_zip(path), kind="stanford-zip")
        if suffix == ".parquet":
            return load_parquet_file(path)
        raise DataError(
            f"data.source '{path}' is a file but neither a .zip of the Stanford tiny-imagenet-200 folder nor a "
            ".parquet file; give one of those or a folder."
        )

    if (stanford := find_stanford_root(path)) is not None:
        return load_stanford(stanford, kind="stanford")
    if (path / "dataset_dict.json").is_file():
        return Raw(splits=load_saved(path), kind="saved")
    inferred = infer_builder(path)
    check_split_folders(path, set(inferred[1]) if inferred is not None else set())
    if inferred is not None and inferred[0] in BUILDER_KINDS:
        return load_with_builder(path, *inferred)
    raise DataError(
        f"data.source '{path}' is a folder in no known layout; expected one of: the Stanford tiny-imagenet-200 "
        "folder (wnids.txt, train/<wnid>/images/, val/val_annotations.txt), a DatasetDict.save_to_disk folder "
        "(dataset_dict.json), parquet files named by split (train-*.parquet and valid-*.parquet, or "
        "*_train.parquet and *_val.parquet), or an imagefolder tree (train/<class>/ plus val/, valid/, "
        "validation/, dev/ or test/ with <class>/ subfolders)."
    )


def _standard_columns(ds: datasets.Dataset, split: str, source: str) -> datasets.Dataset:
    """Rename img/labels to image/label, keep only those two, and make images undecoded dicts."""
    columns = ds.column_names
    renames = {
        old: new for old, new in (("img", "image"), ("labels", "label")) if old in columns and new not in columns
    }
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


def _refuse_missing_labels(ds: datasets.Dataset, split: str, source: str) -> None:
    """A row with no label (a null in parquet) would stop training at its batch with a TypeError: refuse it now."""
    labels = ds.with_format("arrow").select_columns(["label"])[:]["label"]  # arrow: no row decoded
    if labels.null_count:
        row = labels.is_null().to_pylist().index(True)
        raise DataError(
            f"{labels.null_count} image(s) of the {split} split of data.source '{source}' have no label (the first "
            f"is row {row}, {_describe(ds[row]['image'])}); give every image its class, or remove those rows."
        )


def _relabel(ds: datasets.Dataset, mapping: Mapping[Any, int], class_ids: list[str]) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=class_ids)})
    return ds.map(
        _map_labels,
        batched=True,
        input_columns="label",
        fn_kwargs={"mapping": dict(mapping)},  # hashed into the cache's fingerprint with the function
        features=features,
        desc="Ordering labels by sorted class id",
    )


def _map_labels(labels: list[Any], mapping: dict[Any, int]) -> dict[str, list[int]]:
    return {"label": [mapping[label] for label in labels]}


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


def _scan(
    ds: datasets.Dataset, split: str, native_size: int, progress: bool = True
) -> Iterator[tuple[int, Any, DataError | None]]:
    """Decode every image of ``ds`` once, with a progress bar: (row, image, the DataError or None) per image."""
    images = ds.with_format(None).select_columns(["image"])  # raw rows, whatever transform the caller set
    row = 0
    with tqdm(total=len(ds), desc=f"Checking {split} images", unit="img", disable=not progress) as bar:
        for batch in images.iter(batch_size=512):
            for image in batch["image"]:
                try:
                    decode_image(image, native_size)
                    yield row, image, None
                except DataError as error:
                    yield row, image, error
                row += 1
            bar.update(len(batch["image"]))


def _drop_corrupt(ds: datasets.Dataset, split: str, native_size: int) -> tuple[datasets.Dataset, list[str]]:
    """Decode every image once; return the dataset without the unreadable ones and their names."""
    keep: list[int] = []
    bad: list[str] = []
    for row, image, error in _scan(ds, split, native_size):
        if error is None:
            keep.append(row)
        else:
            bad.append(_describe(image))
    return (ds.select(keep) if bad else ds), bad


def verify_images(dataset: datasets.Dataset, split_name: str, native_size: int, progress: bool = True) -> None:
    """Decode every image of ``dataset`` once (a progress bar unless ``progress`` is False) and raise the
    "Cannot read image '…'" :class:`DataError` of the first unreadable one.

    >>> verify_images(bundle.eval, "eval", native_size=64)  # doctest: +SKIP
    """
    for _, _, error in _scan(dataset, split_name, native_size, progress):
        if error is not None:
            raise error
