"""The layouts ``datasets`` itself reads: ``save_to_disk`` folders, parquet files, imagefolder trees, the Hub.

Only the train and eval splits are loaded, split by ``datasets``' own inference (:func:`infer_builder`); what
that inference would get silently wrong (folders in a class folder, an empty split folder, a parquet file of no
rows) is refused. Failures are a :class:`DataError` naming the file, or :class:`EmptySplit`.

>>> split_names(["train", "valid", "test"], "./tiny-imagenet")
('train', 'valid')
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow as pa  # datasets' own dependency, already imported by it
import pyarrow.parquet as pq
from datasets.data_files import DataFilesDict, DataFilesList, get_data_patterns
from datasets.load import infer_module_for_data_files
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

from ..errors import DataError
from ..hub import offline

EVAL_SPLITS = ("valid", "validation", "val", "dev", "test")  # first present wins; zh-plus calls it "valid"
BUILDER_KINDS = ("parquet", "imagefolder")  # the datasets builders whose layouts load_data accepts
LOCAL_LAYOUTS_HINT = (
    "point data.source at a local copy instead, e.g. --data.source ./tiny-imagenet-200 (the Stanford folder "
    "with wnids.txt, or its .zip), a folder written by DatasetDict.save_to_disk, a folder of parquet files "
    "named by split (train-*.parquet and valid-*.parquet), or an imagefolder tree (train/<class>/ and val/<class>/)"
)


@dataclass
class Raw:
    """What a source loader hands to the normaliser."""

    splits: Mapping[str, datasets.Dataset]
    kind: str
    names_by_id: dict[str, str] | None = None  # from words.txt


class EmptySplit(Exception):
    """The train or eval split (``split``) of a source holds no image; see :func:`empty_split_error`."""

    def __init__(self, split: str) -> None:
        super().__init__(split)
        self.split = split


def empty_split_error(split: str, source: str) -> DataError:
    """The one sentence for an empty split, whatever the layout."""
    return DataError(f"The {split} split of data.source '{source}' is empty; it needs at least one image.")


def split_names(names: list[str], source: str) -> tuple[str, str]:
    """The train split's name and the eval split's (the first of :data:`EVAL_SPLITS` present), or a DataError."""
    found = ", ".join(sorted(names)) or "none"
    if "train" not in names:
        raise DataError(f"data.source '{source}' has no 'train' split (splits found: {found}).")
    for name in EVAL_SPLITS:
        if name in names:
            return "train", name
    raise DataError(
        f"data.source '{source}' has no evaluation split (splits found: {found}); it needs one named "
        f"{', '.join(EVAL_SPLITS[:-1])} or {EVAL_SPLITS[-1]}."
    )


def load_saved(path: Path) -> Mapping[str, datasets.Dataset]:
    """The train and eval splits of a ``DatasetDict.save_to_disk`` folder (the other splits are not read)."""
    try:
        names = [str(name) for name in json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]]
    except Exception as error:  # not json, or no "splits": a damaged folder
        raise DataError(
            f"data.source '{path}' looks like a save_to_disk folder but its dataset_dict.json cannot be read "
            f"({type(error).__name__}: {error}); write it again with DatasetDict.save_to_disk."
        ) from error
    train, eval_ = split_names(names, str(path))
    splits = {}
    for name, role in ((train, "train"), (eval_, "eval")):
        state = path / name / "state.json"
        # save_to_disk writes no arrow file for a split of no rows, and load_from_disk then fails (IndexError).
        if state.is_file() and json.loads(state.read_text(encoding="utf-8")).get("_data_files") == []:
            raise EmptySplit(role)
        try:
            loaded = datasets.load_from_disk(str(path / name))
        except Exception as error:  # a damaged arrow file or json; the message says which
            raise DataError(
                f"data.source '{path}' looks like a save_to_disk folder but its split '{name}' cannot be loaded: "
                f"{error}."
            ) from error
        if not isinstance(loaded, datasets.Dataset):
            raise DataError(f"The split folder '{path / name}' is not a Dataset; write it again with save_to_disk.")
        splits[name] = loaded
    return splits


def infer_builder(folder: Path) -> tuple[str, DataFilesDict] | None:
    """The builder and the data files by split that ``datasets.load_dataset(str(folder))`` would use (splits named
    by ``data/<split>-*`` shards, ``<split>/`` folders or keywords in file names; the builder by the most common
    extension), or None when the folder holds no data files."""
    base = folder.resolve().as_posix()
    try:
        data_files = DataFilesDict.from_patterns(get_data_patterns(base), base_path=base)
        builder, _ = infer_module_for_data_files(data_files, path=base)
    except FileNotFoundError:  # EmptyDatasetError, DataFilesNotFoundError: no file any builder reads
        return None
    except ValueError as error:  # splits in different formats, or a shard named by no valid split
        raise DataError(f"datasets cannot split the files under '{folder}' by name: {error}.") from error
    return builder, data_files


def _holds_files(folder: Path) -> bool:
    return any(p.is_file() and not p.name.startswith(".") for p in folder.rglob("*"))


def check_split_folders(folder: Path, found: set[str]) -> None:
    """Raise :class:`EmptySplit` for a ``train/`` (or eval) folder with no file in it, which datasets' inference
    would silently leave out of the splits (then "no train split", or "no known layout", would be the wrong news)."""
    if "train" not in found and (folder / "train").is_dir() and not _holds_files(folder / "train"):
        raise EmptySplit("train")
    if not found & set(EVAL_SPLITS):
        for name in EVAL_SPLITS:
            if (folder / name).is_dir() and not _holds_files(folder / name):
                raise EmptySplit("eval")


def load_parquet_file(file: Path) -> Raw:
    """One parquet file: it and its siblings, split as ``datasets.load_dataset(<its folder>)`` splits them."""
    inferred = infer_builder(file.parent)
    files = inferred[1] if inferred is not None else DataFilesDict()
    if file.resolve().as_posix() not in {name for names in files.values() for name in names}:
        raise DataError(
            f"datasets assigns the parquet file '{file}' to no split; name it by split (train-*.parquet and "
            "valid-*.parquet, or *_train.parquet and *_val.parquet) or give data.source its folder."
        )
    return load_with_builder(file.parent, "parquet", files)


def _parquet_rows(file: str) -> int:
    if Path(file).stat().st_size == 0:
        return 0
    try:
        return pq.read_metadata(file).num_rows
    except Exception as error:  # pyarrow.ArrowInvalid: not parquet, or truncated
        raise DataError(
            f"The parquet file '{file}' cannot be read ({type(error).__name__}: {error}); download or write it again."
        ) from error


def _label_kind(file: str) -> tuple[str, str] | None:
    """(column, 'class indices' or 'class names') of a parquet file's label column, from its schema alone."""
    schema = pq.read_schema(file)
    for column in ("label", "labels"):
        if column in schema.names:
            kind = schema.field(column).type
            if pa.types.is_integer(kind):
                return column, "class indices (integers)"
            if pa.types.is_string(kind) or pa.types.is_large_string(kind):
                return column, "class names (strings)"
            return column, str(kind)
    return None


def _refuse_mixed_label_kinds(files: list[str]) -> None:
    """datasets casts every split to the first file's label type and fails on another ("An error occurred while
    generating the dataset"): name the two files and the two kinds instead."""
    known = [(file, kind) for file in files if (kind := _label_kind(file)) is not None]
    for file, kind in known[1:]:
        first, first_kind = known[0]
        if kind[1] != first_kind[1]:
            raise DataError(
                f"The {first_kind[0]} column holds {first_kind[1]} in the parquet file '{first}' and {kind[1]} in "
                f"'{file}'; every split needs the same kind of label, so write them again with one (the class "
                "names, or the same indices)."
            )


def _refuse_nested_class_folders(folder: Path, split: str, files: list[str]) -> None:
    """imagefolder labels an image by its parent folder's name, so ``train/<class>/sub/x.jpg`` would make a class
    named ``sub``: every image of a split must sit directly in a class folder of one split folder."""
    extensions = {ext.lower() for ext in ImageFolder.EXTENSIONS}
    class_dirs = {Path(f).parent for f in files if Path(f).suffix.lower() in extensions}
    if len({d.parent for d in class_dirs}) <= 1:
        return
    nested = sorted(d for d in class_dirs if d.parent in class_dirs)
    if nested:  # a class folder holding both images and a folder of images
        inner = nested[0]
    else:  # class folders holding only folders: name the one below the split folders' common parent
        common = Path(*[parts[0] for parts in zip(*(d.parts for d in class_dirs)) if len(set(parts)) == 1])
        inner = Path(*sorted(class_dirs)[0].parts[: len(common.parts) + 2])
    shown = inner.relative_to(folder.resolve()) if inner.is_relative_to(folder.resolve()) else inner
    raise DataError(
        f"The {split} split of the imagefolder tree '{folder}' has a folder inside a class folder ('{shown}'); "
        "class folders must hold image files only, so move its images up into the class folder or remove it."
    )


def load_with_builder(folder: Path, builder: str, data_files: DataFilesDict) -> Raw:
    """``datasets.load_dataset(builder, data_files=...)`` on files already resolved (no second walk of the tree),
    reading only the train and eval splits (an imagefolder's other splits would add their folders as classes)."""
    if builder == "parquet":
        data_files = DataFilesDict(
            {split: files for split, files in data_files.filter(extensions=[".parquet"]).items() if files}
        )
    train, eval_ = split_names([str(split) for split in data_files], str(folder))  # before converting 100k images
    data_files = DataFilesDict({split: data_files[split] for split in (train, eval_)})
    for split, role in ((train, "train"), (eval_, "eval")):
        if builder == "parquet":
            # datasets fails on a parquet file of no rows (ArrowInvalid: BatchSize must be greater than 0).
            kept = [file for file in data_files[split] if _parquet_rows(file) > 0]
            if not kept:
                raise EmptySplit(role)
            data_files[split] = DataFilesList(kept, origin_metadata=data_files[split].origin_metadata)
        else:
            _refuse_nested_class_folders(folder, role, list(data_files[split]))
    if builder == "parquet":
        _refuse_mixed_label_kinds([file for split in (train, eval_) for file in data_files[split]])
    what = f"The parquet files under '{folder}'" if builder == "parquet" else f"The imagefolder tree '{folder}'"
    # drop_labels=False keeps the label column (sorted folder names) even with a single class folder
    options = {"drop_labels": False} if builder == "imagefolder" else {}
    try:
        loaded = datasets.load_dataset(builder, data_files=data_files, **options)
    except Exception as error:
        raise DataError(f"{what} cannot be read: {error}.") from error
    return Raw(splits=loaded, kind=builder)


def load_hub(source: str) -> Raw:
    """``datasets.load_dataset(source)``; every failure becomes one DataError sentence (the cause is chained)."""
    try:
        loaded = datasets.load_dataset(source)
    except Exception as error:
        not_found = type(error).__name__ in ("DatasetNotFoundError", "RepositoryNotFoundError")
        unreachable = isinstance(error, (ConnectionError, TimeoutError)) or "connect" in type(error).__name__.lower()
        not_local = f"(if you meant a local path, './{source}' does not exist)"
        if not_found and not offline():
            raise DataError(
                f"data.source '{source}' is not a dataset on the Hub (or it is private) {not_local}; check the id, "
                f"or {LOCAL_LAYOUTS_HINT}."
            ) from error
        if unreachable or offline():
            raise DataError(
                f"The Hugging Face Hub cannot be reached to load data.source '{source}' "
                f"({'offline mode is on' if offline() else type(error).__name__}) and no cached copy exists "
                f"{not_local}; {LOCAL_LAYOUTS_HINT}."
            ) from error
        raise DataError(
            f"Loading data.source '{source}' from the Hub failed ({type(error).__name__}: {error})."
        ) from error
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"data.source '{source}' loaded as a single split; it needs train and valid splits.")
    return Raw(splits=loaded, kind="hub")
