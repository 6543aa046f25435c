"""tiny_transformers.data: every source layout, label order, decoding, errors and the loader path."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tiny_transformers.config import DataConfig
from tiny_transformers.data import (
    DataBundle,
    DecodeTransform,
    collate,
    decode_image,
    load_data,
)
from tiny_transformers.errors import DataError

LAYOUTS = {
    "stanford_dir": "stanford",
    "stanford_zip": "stanford-zip",
    "imagefolder_dir": "imagefolder",
    "saved_dir": "saved",
    "parquet_dir": "parquet",
}


def _raw_bytes(image: dict) -> bytes:
    return image["bytes"] if image["bytes"] is not None else Path(image["path"]).read_bytes()


def _file_pairs(split: datasets.Dataset) -> Counter:
    """Multiset of (class id, sha256 of the image file): equal iff every image carries the same label."""
    names = split.features["label"].names
    return Counter((names[row["label"]], hashlib.sha256(_raw_bytes(row["image"])).hexdigest()) for row in split)


@pytest.fixture(scope="module")
def expected(stanford_dir: Path, data_tools) -> dict[str, Counter]:
    """Ground truth of the shared fixture, read without the loader: split -> multiset of (wnid, file hash)."""
    return {
        split: Counter((wnid, hashlib.sha256(path.read_bytes()).hexdigest()) for wnid, _, path in records)
        for split, records in data_tools.stanford_records(stanford_dir).items()
    }


def _pixel_pairs(bundle_split: datasets.Dataset) -> list[tuple[int, str]]:
    ds = bundle_split.with_transform(DecodeTransform(64))
    return sorted((row["label"], hashlib.sha256(row["pixels"].numpy().tobytes()).hexdigest()) for row in ds)


def _path_labels(split: datasets.Dataset) -> dict[str, int]:
    return {Path(row["image"]["path"]).name: row["label"] for row in split}


# ------------------------------------------------------------------------------------------ layouts


@pytest.mark.parametrize("fixture", list(LAYOUTS))
def test_every_layout_loads_the_same_labelled_images(fixture: str, stanford_dir: Path, expected, request) -> None:
    bundle = load_data(DataConfig(source=str(request.getfixturevalue(fixture))))
    wnids = sorted((stanford_dir / "wnids.txt").read_text().split())

    assert isinstance(bundle, DataBundle)
    assert bundle.source_kind == LAYOUTS[fixture]
    assert bundle.class_ids == wnids
    assert bundle.num_classes == 4
    for split in (bundle.train, bundle.eval):
        assert split.column_names == ["image", "label"]
        assert split.features["image"] == datasets.Image(decode=False)
        assert split.features["label"] == datasets.ClassLabel(names=wnids)
    assert (len(bundle.train), len(bundle.eval)) == (24, 12)
    assert _file_pairs(bundle.train) == expected["train"]
    assert _file_pairs(bundle.eval) == expected["val"]
    if LAYOUTS[fixture].startswith("stanford"):
        assert bundle.class_names == ["goldfish", "school bus", "teapot", "lemon"]
    else:
        assert bundle.class_names == bundle.class_ids


def test_layouts_decode_to_identical_pixels(stanford_dir: Path, parquet_dir: Path, imagefolder_dir: Path) -> None:
    reference = load_data(DataConfig(source=str(stanford_dir)))
    expected = (_pixel_pairs(reference.train), _pixel_pairs(reference.eval))
    for other in (parquet_dir, imagefolder_dir):
        bundle = load_data(DataConfig(source=str(other)))
        assert (_pixel_pairs(bundle.train), _pixel_pairs(bundle.eval)) == expected


def test_unsorted_wnids_map_through_the_wnid_strings(stanford_dir: Path) -> None:
    listed = (stanford_dir / "wnids.txt").read_text().split()
    assert listed != sorted(listed)  # the fixture must exercise the remapping
    bundle = load_data(DataConfig(source=str(stanford_dir)))
    train, val = _path_labels(bundle.train), _path_labels(bundle.eval)

    first = listed[0]  # first line of wnids.txt, yet not the first class
    assert sorted(listed).index(first) != 0
    assert train[f"{first}_0.JPEG"] == sorted(listed).index(first)
    for line in (stanford_dir / "val" / "val_annotations.txt").read_text().splitlines():
        name, wnid = line.split("\t")[:2]
        assert val[name] == sorted(listed).index(wnid)


def test_stanford_folder_one_level_down(stanford_dir: Path, expected) -> None:
    bundle = load_data(DataConfig(source=str(stanford_dir.parent)))
    assert bundle.source_kind == "stanford" and _file_pairs(bundle.eval) == expected["val"]


def test_parquet_file_finds_its_sibling_split(parquet_dir: Path) -> None:
    bundle = load_data(DataConfig(source=str(parquet_dir / "data" / "train-00000-of-00001.parquet")))
    assert (bundle.source_kind, len(bundle.train), len(bundle.eval)) == ("parquet", 24, 12)


def test_parquet_files_split_by_keyword_as_datasets_does(
    stanford_dir: Path, tmp_path: Path, expected, data_tools
) -> None:
    folder = tmp_path / "keyword_parquet"
    folder.mkdir()
    hf_splits = data_tools.make_hf_splits(stanford_dir)
    hf_splits["train"].to_parquet(str(folder / "tiny_imagenet_train.parquet"))
    hf_splits["valid"].to_parquet(str(folder / "tiny_imagenet_val.parquet"))
    assert set(datasets.load_dataset(str(folder))) == {"train", "validation"}  # datasets' own reading

    wnids = sorted((stanford_dir / "wnids.txt").read_text().split())
    for source in (folder, folder / "tiny_imagenet_val.parquet"):  # the folder, or one file and its sibling
        bundle = load_data(DataConfig(source=str(source)))
        assert (bundle.source_kind, bundle.class_ids) == ("parquet", wnids)
        assert _file_pairs(bundle.train) == expected["train"]
        assert _file_pairs(bundle.eval) == expected["val"]


def test_zip_is_extracted_once_and_never_half(stanford_dir: Path, tmp_path: Path, monkeypatch, data_tools) -> None:
    monkeypatch.setenv("TINY_TRANSFORMERS_CACHE", str(tmp_path / "cache"))
    zip_path = tmp_path / "tiny-imagenet-200.zip"
    data_tools.make_stanford_zip(stanford_dir, zip_path)
    real_extract = zipfile.ZipFile.extract
    calls = {"n": 0}

    def interrupted(self, member, path=None, pwd=None):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_extract(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_data(DataConfig(source=str(zip_path)))
    extracted = tmp_path / "cache" / "extracted"
    assert list(extracted.iterdir()) == []  # nothing half-extracted is left to be trusted

    monkeypatch.setattr(zipfile.ZipFile, "extract", real_extract)
    first = load_data(DataConfig(source=str(zip_path)))
    (target,) = extracted.iterdir()
    assert target.name.startswith("tiny-imagenet-200-")

    def forbidden(*args, **kwargs):
        raise AssertionError("extracted twice")

    monkeypatch.setattr(zipfile.ZipFile, "extract", forbidden)
    second = load_data(DataConfig(source=str(zip_path)))
    assert second.source_kind == first.source_kind == "stanford-zip"
    assert _file_pairs(second.train) == _file_pairs(first.train)


def test_max_samples_keep_a_fixed_random_subset(stanford_dir: Path) -> None:
    full = load_data(DataConfig(source=str(stanford_dir)))
    cut = load_data(DataConfig(source=str(stanford_dir), max_train_samples=8, max_eval_samples=100))
    again = load_data(DataConfig(source=str(stanford_dir), max_train_samples=8))
    assert len(cut.train) == 8 and len(cut.eval) == len(full.eval)
    assert cut.train[:]["image"] == again.train[:]["image"]  # the same subset every time
    rows = {row["image"]["path"]: row["label"] for row in full.train}
    assert all(rows[row["image"]["path"]] == row["label"] for row in cut.train)  # labels travel with images
    assert len(set(cut.train["label"])) > 2  # not the first rows, which hold the first classes only


# ------------------------------------------------------------------------------ label normalisation


def _saved_variant(tmp_path: Path, dd: datasets.DatasetDict, change) -> Path:
    """A save_to_disk copy of the fixture images with ``change(DatasetDict) -> DatasetDict`` applied."""
    dd = change(dd)
    out = tmp_path / "variant"
    dd.save_to_disk(str(out))
    return out


def test_unsorted_classlabel_names_are_remapped_by_name(
    stanford_dir: Path, tmp_path: Path, expected, data_tools
) -> None:
    def reverse_names(dd: datasets.DatasetDict) -> datasets.DatasetDict:
        names = dd["train"].features["label"].names
        reversed_names = names[::-1]
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=reversed_names)})
        n = len(names)
        return datasets.DatasetDict(
            {
                k: ds.cast(features.copy()).map(lambda r: {"label": n - 1 - r["label"]}, features=features)
                for k, ds in dd.items()
            }
        )

    variant = _saved_variant(tmp_path, data_tools.make_hf_splits(stanford_dir), reverse_names)
    stored = datasets.load_from_disk(str(variant))["train"].features["label"].names
    assert stored == sorted(stored, reverse=True)  # the source really is unsorted
    bundle = load_data(DataConfig(source=str(variant)))
    assert bundle.class_ids == sorted(bundle.class_ids)
    assert _file_pairs(bundle.train) == expected["train"]
    assert _file_pairs(bundle.eval) == expected["val"]


def test_plain_int_and_string_labels_and_alternative_column_names(
    stanford_dir: Path, tmp_path: Path, expected, data_tools
) -> None:
    def as_ints(dd: datasets.DatasetDict) -> datasets.DatasetDict:
        return datasets.DatasetDict(
            {
                k: ds.cast_column("label", datasets.Value("int64")).rename_columns({"image": "img", "label": "labels"})
                for k, ds in dd.items()
            }
        )

    bundle = load_data(
        DataConfig(source=str(_saved_variant(tmp_path / "ints", data_tools.make_hf_splits(stanford_dir), as_ints)))
    )
    assert bundle.class_ids == ["0", "1", "2", "3"]
    wnids = sorted((stanford_dir / "wnids.txt").read_text().split())
    relabelled = Counter((wnids[int(c)], h) for c, h in _file_pairs(bundle.train).elements())
    assert relabelled == expected["train"]

    def as_strings(dd: datasets.DatasetDict) -> datasets.DatasetDict:
        out = {}
        for k, ds in dd.items():
            names = ds.features["label"].names
            ds = ds.cast_column("label", datasets.Value("int64"))
            out[k] = ds.map(
                lambda r, names=names: {"label": names[r["label"]]},
                features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")}),
            )
        return datasets.DatasetDict(out)

    bundle = load_data(
        DataConfig(
            source=str(_saved_variant(tmp_path / "strings", data_tools.make_hf_splits(stanford_dir), as_strings))
        )
    )
    assert bundle.class_ids == wnids
    assert _file_pairs(bundle.eval) == expected["val"]


# ----------------------------------------------------------------------------------------- decoding


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "mode, fmt",
    [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("LA", "PNG"), ("1", "PNG"), ("RGB", "JPEG")],
)
def test_decode_image_any_mode_equals_pil_rgb(mode: str, fmt: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    image = rgb.quantize(16) if mode == "P" else rgb.convert(mode)
    data = _encode(image, fmt)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)

    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    for given in ({"bytes": data, "path": None}, {"bytes": None, "path": str(path)}, Image.open(io.BytesIO(data))):
        pixels = decode_image(given, 64)
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, 64, 64)
        assert np.array_equal(pixels.numpy(), expected)


def test_decode_image_resizes_bicubic_only_when_needed() -> None:
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    pixels = decode_image({"bytes": _encode(image, "PNG"), "path": None}, 64)
    expected = np.asarray(image.resize((64, 64), Image.Resampling.BICUBIC)).transpose(2, 0, 1)
    assert pixels.shape == (3, 64, 64) and np.array_equal(pixels.numpy(), expected)


def test_decode_image_scales_16_bit_greyscale() -> None:
    image = Image.fromarray(np.full((64, 64), 257 * 200, dtype=np.uint16))
    assert image.mode.startswith("I;16")
    pixels = decode_image({"bytes": _encode(image, "PNG"), "path": None}, 64)
    assert pixels.shape == (3, 64, 64) and int(pixels.min()) == int(pixels.max()) == 200


def test_decode_image_names_a_corrupt_file(tmp_path: Path) -> None:
    good = _encode(Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    truncated = tmp_path / "cut.JPEG"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cut\.JPEG.*data\.skip_corrupt true"):
        decode_image({"bytes": None, "path": str(truncated)}, 64)
    with pytest.raises(DataError, match="an image without a path"):
        decode_image({"bytes": b"not an image", "path": None}, 64)


# ------------------------------------------------------------------------------------------- errors


def test_missing_path_is_named(tmp_path: Path) -> None:
    for source in ("./no/such/tiny-imagenet-200", str(tmp_path / "missing"), "data/tiny-imagenet-200.zip", "x.zip"):
        with pytest.raises(DataError, match=rf"data\.source '{source}' does not exist"):
            load_data(DataConfig(source=source))


def test_folder_in_no_known_layout(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "pictures").mkdir()
    with pytest.raises(DataError, match=r"no known layout.*wnids\.txt.*dataset_dict\.json.*parquet.*imagefolder"):
        load_data(DataConfig(source=str(tmp_path)))


def test_hub_id_offline_points_at_local_copies(monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"Hub cannot be reached.*data\.source.*tiny-imagenet-200") as info:
        load_data(DataConfig(source="zh-plus/tiny-imagenet"))
    assert "Traceback" not in str(info.value)


@pytest.fixture()
def small_stanford(stanford_factory, tmp_path: Path) -> Path:
    return stanford_factory(tmp_path, n_classes=3, n_train=3, n_val=2)


def test_val_annotation_with_unknown_class(small_stanford: Path) -> None:
    annotations = small_stanford / "val" / "val_annotations.txt"
    lines = annotations.read_text().splitlines()
    lines.insert(2, "val_0.JPEG\tn99999999\t0\t0\t63\t63")
    annotations.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"Line 3 of .*val_annotations\.txt .*n99999999"):
        load_data(DataConfig(source=str(small_stanford)))


def test_val_annotation_naming_a_missing_image(small_stanford: Path) -> None:
    (small_stanford / "val" / "images" / "val_1.JPEG").unlink()
    with pytest.raises(DataError, match=r"Line 2 of .*val_annotations\.txt names .*val_1\.JPEG, which does not exist"):
        load_data(DataConfig(source=str(small_stanford)))


def test_missing_val_annotations(small_stanford: Path) -> None:
    (small_stanford / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match=r"val_annotations\.txt does not exist"):
        load_data(DataConfig(source=str(small_stanford)))


def test_wnids_and_train_folders_must_agree(small_stanford: Path) -> None:
    wnids = (small_stanford / "wnids.txt").read_text()
    (small_stanford / "wnids.txt").write_text(wnids + "n00000042\n")
    with pytest.raises(DataError, match=r"wnid n00000042 is listed in .*wnids\.txt but .*n00000042 does not exist"):
        load_data(DataConfig(source=str(small_stanford)))
    (small_stanford / "wnids.txt").write_text("\n".join(wnids.split()[1:]) + "\n")
    with pytest.raises(DataError, match=rf"Training folder .*{wnids.split()[0]} is not listed in .*wnids\.txt"):
        load_data(DataConfig(source=str(small_stanford)))


def test_empty_eval_split(small_stanford: Path) -> None:
    (small_stanford / "val" / "val_annotations.txt").write_text("")
    with pytest.raises(DataError, match=rf"eval split of data\.source '{small_stanford}' is empty"):
        load_data(DataConfig(source=str(small_stanford)))


def test_missing_eval_split_and_columns(small_stanford: Path, tmp_path: Path, data_tools) -> None:
    saved = data_tools.make_saved(small_stanford, tmp_path / "saved")
    dd = datasets.load_from_disk(str(saved))
    datasets.DatasetDict({"train": dd["train"], "extra": dd["valid"]}).save_to_disk(str(tmp_path / "no_eval"))
    with pytest.raises(DataError, match=r"no evaluation split \(splits found: extra, train\)"):
        load_data(DataConfig(source=str(tmp_path / "no_eval")))
    renamed = datasets.DatasetDict({k: ds.rename_column("image", "picture") for k, ds in dd.items()})
    renamed.save_to_disk(str(tmp_path / "no_image"))
    with pytest.raises(DataError, match=r"no image column \(columns found: picture, label\)"):
        load_data(DataConfig(source=str(tmp_path / "no_image")))


def test_corrupt_images_fail_by_default_and_are_skipped_on_request(small_stanford: Path) -> None:
    baseline = load_data(DataConfig(source=str(small_stanford)))
    wnid = baseline.class_ids[1]
    truncated = small_stanford / "train" / wnid / "images" / f"{wnid}_1.JPEG"
    truncated.write_bytes(truncated.read_bytes()[:400])
    (small_stanford / "val" / "images" / "val_3.JPEG").write_bytes(b"garbage")

    bundle = load_data(DataConfig(source=str(small_stanford)))  # no scan by default
    assert bundle.skipped_corrupt == 0 and len(bundle.train) == len(baseline.train)
    loader = DataLoader(bundle.train.with_transform(DecodeTransform(64)), batch_size=4, collate_fn=collate)
    with pytest.raises(DataError, match=rf"{wnid}_1\.JPEG.*set --data\.skip_corrupt true"):
        list(loader)

    skipped = load_data(DataConfig(source=str(small_stanford), skip_corrupt=True))
    assert skipped.skipped_corrupt == 2
    assert (len(skipped.train), len(skipped.eval)) == (len(baseline.train) - 1, len(baseline.eval) - 1)
    expected_train = {k: v for k, v in _path_labels(baseline.train).items() if k != truncated.name}
    expected_eval = {k: v for k, v in _path_labels(baseline.eval).items() if k != "val_3.JPEG"}
    assert _path_labels(skipped.train) == expected_train
    assert _path_labels(skipped.eval) == expected_eval
    assert sum(1 for _ in DataLoader(skipped.train.with_transform(DecodeTransform(64)), collate_fn=collate)) == 8


# ------------------------------------------------------------------------------------- data loading


def test_dataloader_batches(stanford_dir: Path) -> None:
    bundle = load_data(DataConfig(source=str(stanford_dir)))
    train = bundle.train.with_transform(DecodeTransform(64))
    images, labels = next(iter(DataLoader(train, batch_size=8, shuffle=True, num_workers=0, collate_fn=collate)))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 64, 64)
    assert labels.dtype == torch.int64 and labels.shape == (8,)

    evaluation = bundle.eval.with_transform(DecodeTransform(64))
    batches = list(DataLoader(evaluation, batch_size=5, num_workers=0, collate_fn=collate))
    assert [b[0].shape[0] for b in batches] == [5, 5, 2]
    assert torch.cat([b[1] for b in batches]).tolist() == list(bundle.eval["label"])
    first = decode_image(bundle.eval[0]["image"], 64)
    assert torch.equal(batches[0][0][0], first)


def test_transforms_are_picklable() -> None:
    import pickle

    for transform in (DecodeTransform(64), DecodeTransform(32)):
        clone = pickle.loads(pickle.dumps(transform))
        batch = {"image": [Image.new("L", (10, 10), 7)], "label": [3]}
        out = clone(batch)
        assert out["label"] == [3] and out["pixels"][0].shape == (3, clone.native_size, clone.native_size)
