"""Every data-source failure a user meets is one sentence naming the thing and the fix; nothing silently wrong.

Each case builds its broken copy under ``tmp_path`` from the synthetic makers (offline, CPU, a few images).
"""

from __future__ import annotations

import codecs
import re
import shutil
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tiny_transformers.config import DataConfig
from tiny_transformers.data import DecodeTransform, load_data, verify_images
from tiny_transformers.errors import DataError
from tiny_transformers.synthetic import damage_zip_member


@pytest.fixture()
def small_stanford(stanford_factory, tmp_path: Path) -> Path:
    return stanford_factory(tmp_path, n_classes=3, n_train=3, n_val=2)


def _path_labels(split: datasets.Dataset) -> dict[str, int]:
    return {Path(row["image"]["path"]).name: row["label"] for row in split}


def _train_refused(source: Path, out: Path, capsys) -> str:
    """`tiny-transformers train test_vit` on ``source``: exit status 2, nothing trained; returns the sentence."""
    from tiny_transformers.cli import main

    args = ["train", "test_vit", "--model.pretrained", "false", "--data.source", str(source), "--data.image_size"]
    args += ["32", "--data.num_workers", "0", "--train.mixed_precision", "no", "--train.output_dir", str(out)]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                *args,
                "--train.epochs",
                "1",
                "--train.batch_size",
                "4",
                "--train.micro_batch_size",
                "4",
                "--train.progress",
                "false",
            ]
        )
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()  # refused before training
    return lines[0][len("error: ") :]


def _empty_sentence(split: str, source: object) -> str:
    return re.escape(f"The {split} split of data.source '{source}' is empty; it needs at least one image.")


# ------------------------------------------------------------------------------ text files: encoding


@pytest.mark.parametrize("name", ["wnids.txt", "val/val_annotations.txt"])
def test_a_byte_that_is_not_utf8_names_the_file_and_line(small_stanford: Path, name: str) -> None:
    path = small_stanford / name
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"n0", b"n\xe90", 1) if name == "wnids.txt" else b"val_\xff.JPEG" + lines[1][10:]
    path.write_bytes(b"".join(lines))
    byte = "e9" if name == "wnids.txt" else "ff"
    with pytest.raises(
        DataError, match=rf"^Line 2 of {re.escape(str(path))} is not UTF-8 text \(byte 0x{byte}\); save"
    ):
        load_data(DataConfig(source=str(small_stanford)))
    with pytest.raises(DataError) as info:
        load_data(DataConfig(source=str(small_stanford)))
    assert str(info.value).endswith("; save the file as UTF-8.")


def test_a_byte_order_mark_is_read_as_one(small_stanford: Path) -> None:
    baseline = load_data(DataConfig(source=str(small_stanford)))
    for name in ("wnids.txt", "val/val_annotations.txt", "words.txt"):
        path = small_stanford / name
        path.write_bytes(codecs.BOM_UTF8 + path.read_bytes())
    with_bom = load_data(DataConfig(source=str(small_stanford)))
    assert with_bom.class_ids == baseline.class_ids  # the first wnid is not '\ufeffn0...'
    assert with_bom.class_names == baseline.class_names
    assert _path_labels(with_bom.train) == _path_labels(baseline.train)
    assert _path_labels(with_bom.eval) == _path_labels(baseline.eval)


def test_an_image_named_twice_in_val_annotations_is_refused_with_both_lines(small_stanford: Path, tmp_path, capsys):
    annotations = small_stanford / "val" / "val_annotations.txt"
    lines = annotations.read_text().splitlines()
    first = lines[1].split("\t")
    other = next(w for w in (small_stanford / "wnids.txt").read_text().split() if w != first[1])
    lines.append("\t".join([first[0], other, *first[2:]]))  # val_1.JPEG again, as another class
    annotations.write_text("\n".join(lines) + "\n")
    sentence = _train_refused(small_stanford, tmp_path / "out", capsys)
    assert sentence == (
        f"Lines 2 and {len(lines)} of {annotations} both name {first[0]} (as {first[1]} and {other}); keep one "
        "line per image, with its right class."
    )


# ------------------------------------------------------------------------------------- the zip


def test_a_zip_member_with_a_bad_crc_is_named_and_nothing_is_cached(
    small_stanford: Path, tmp_path: Path, monkeypatch, data_tools
) -> None:
    monkeypatch.setenv("TINY_TRANSFORMERS_CACHE", str(tmp_path / "cache"))
    zip_path = data_tools.make_stanford_zip(small_stanford, tmp_path / "tiny-imagenet-200.zip")
    member = "tiny-imagenet-200/val/images/val_1.JPEG"
    damage_zip_member(zip_path, member)
    zip_name = re.escape(str(zip_path))
    sentence = rf"^Member '{member}' of the zip '{zip_name}' is damaged \(Bad CRC-32.*\); download the zip again\.$"
    for _ in range(2):  # the second run finds no cached copy to trust, and fails the same way
        with pytest.raises(DataError, match=sentence):
            load_data(DataConfig(source=str(zip_path)))
        assert list((tmp_path / "cache" / "extracted").iterdir()) == []  # nothing half-extracted is left


# ----------------------------------------------------------------------------------- imagefolder


def test_a_folder_inside_a_class_folder_is_refused(stanford_dir: Path, tmp_path: Path, data_tools) -> None:
    tree = data_tools.make_imagefolder(stanford_dir, tmp_path / "tree")
    class_dir = sorted((tree / "train").iterdir())[1]
    (class_dir / "folder.jpg").mkdir()
    shutil.copyfile(next(class_dir.glob("*.JPEG")), class_dir / "folder.jpg" / "inner.jpg")
    with pytest.raises(DataError) as info:
        load_data(DataConfig(source=str(tree)))
    assert str(info.value) == (
        f"The train split of the imagefolder tree '{tree}' has a folder inside a class folder "
        f"('train/{class_dir.name}/folder.jpg'); class folders must hold image files only, so move its images up "
        "into the class folder or remove it."
    )


def test_class_folders_holding_only_folders_are_refused(stanford_dir: Path, tmp_path: Path, data_tools) -> None:
    tree = data_tools.make_imagefolder(stanford_dir, tmp_path / "tree")
    for class_dir in (tree / "val").iterdir():  # val/<wnid>/images/*.JPEG: every class would be 'images'
        (class_dir / "images").mkdir()
        for image in class_dir.glob("*.JPEG"):
            image.rename(class_dir / "images" / image.name)
    first = sorted((tree / "val").iterdir())[0].name
    with pytest.raises(DataError, match=rf"^The eval split of the imagefolder tree .*\('val/{first}/images'\); class"):
        load_data(DataConfig(source=str(tree)))


def test_an_unused_split_folder_adds_no_class(stanford_dir: Path, tmp_path: Path, data_tools) -> None:
    tree = data_tools.make_imagefolder(stanford_dir, tmp_path / "tree")
    (tree / "test" / "images").mkdir(parents=True)  # Stanford's unlabelled test images
    shutil.copyfile(stanford_dir / "test" / "images" / "test_0.JPEG", tree / "test" / "images" / "test_0.JPEG")
    bundle = load_data(DataConfig(source=str(tree)))
    assert bundle.class_ids == sorted((stanford_dir / "wnids.txt").read_text().split())  # no class 'images'


# ------------------------------------------------------------------------- paths that do not exist


def test_a_missing_relative_path_under_a_local_folder_is_a_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError) as info:
        load_data(DataConfig(source="data/nope"))
    assert str(info.value) == (
        "data.source 'data/nope' does not exist; check the path, or give a Hub dataset id such as "
        "zh-plus/tiny-imagenet."
    )


def test_a_hub_id_that_fails_says_which_local_path_does_not_exist(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    from tiny_transformers.data import builders

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as info:
        load_data(DataConfig(source="owner/name"))
    message = str(info.value)
    assert message.startswith("The Hugging Face Hub cannot be reached to load data.source 'owner/name' (offline mode")
    assert "no cached copy exists (if you meant a local path, './owner/name' does not exist); point data" in message

    def not_found(*args, **kwargs):
        raise datasets.exceptions.DatasetNotFoundError("Dataset 'owner/name' doesn't exist on the Hub")

    monkeypatch.setattr(builders, "offline", lambda: False)
    monkeypatch.setattr(datasets, "load_dataset", not_found)
    with pytest.raises(DataError) as info:
        load_data(DataConfig(source="owner/name"))
    assert str(info.value).startswith(
        "data.source 'owner/name' is not a dataset on the Hub (or it is private) (if you meant a local path, "
        "'./owner/name' does not exist); check the id, or point data.source at a local copy instead"
    )


# ------------------------------------------------------------------------------- empty splits


def test_an_empty_split_is_one_sentence_in_the_stanford_layout(small_stanford: Path) -> None:
    (small_stanford / "val" / "val_annotations.txt").write_text("")
    with pytest.raises(DataError, match=_empty_sentence("eval", small_stanford)):
        load_data(DataConfig(source=str(small_stanford)))


def test_an_empty_split_is_one_sentence_in_an_imagefolder_tree(stanford_dir: Path, tmp_path: Path, data_tools) -> None:
    tree = data_tools.make_imagefolder(stanford_dir, tmp_path / "tree")
    for image in (tree / "val").rglob("*.JPEG"):  # val/<wnid>/ folders stay, with no image in them
        image.unlink()
    with pytest.raises(DataError, match=_empty_sentence("eval", tree)):
        load_data(DataConfig(source=str(tree)))
    shutil.rmtree(tree / "val")
    shutil.rmtree(tree / "train")
    (tree / "train" / "n01443537").mkdir(parents=True)
    (tree / "valid" / "n01443537").mkdir(parents=True)
    with pytest.raises(DataError, match=_empty_sentence("train", tree)):
        load_data(DataConfig(source=str(tree)))


@pytest.mark.parametrize("zero_bytes", [False, True])
def test_an_empty_split_is_one_sentence_in_parquet(
    stanford_dir: Path, tmp_path: Path, data_tools, zero_bytes: bool
) -> None:
    folder = data_tools.make_parquet(stanford_dir, tmp_path / "parquet")
    valid = folder / "data" / "valid-00000-of-00001.parquet"
    if zero_bytes:
        valid.write_bytes(b"")
    else:
        pq.write_table(pq.read_table(valid).slice(0, 0), valid)  # the schema, no rows
    for source in (folder, valid):
        with pytest.raises(DataError, match=_empty_sentence("eval", source)):
            load_data(DataConfig(source=str(source)))


def _rewrite_labels(file: Path, labels: list, kind: pa.DataType) -> None:
    """The parquet file with other labels, written as plain parquet (no datasets metadata), as pandas would."""
    table = pq.read_table(file).replace_schema_metadata(None)
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, kind)), file)


def test_parquet_with_a_null_label_is_refused_before_training(stanford_dir: Path, tmp_path: Path, data_tools, capsys):
    folder = data_tools.make_parquet(stanford_dir, tmp_path / "parquet")
    train = folder / "data" / "train-00000-of-00001.parquet"
    labels = pq.read_table(train).column("label").to_pylist()
    labels[5] = labels[9] = None
    _rewrite_labels(train, labels, pa.int64())
    for file in folder.glob("data/valid-*"):
        _rewrite_labels(file, pq.read_table(file).column("label").to_pylist(), pa.int64())
    assert _train_refused(folder, tmp_path / "out", capsys) == (
        f"2 image(s) of the train split of data.source '{folder}' have no label (the first is row 5, "
        f"'{pq.read_table(train).column('image')[5]['path']}'); give every image its class, or remove those rows."
    )


def test_parquet_with_integer_train_labels_and_string_eval_labels_names_the_mismatch(
    stanford_dir: Path, tmp_path: Path, data_tools, capsys
):
    folder = data_tools.make_parquet(stanford_dir, tmp_path / "parquet")
    train, valid = folder / "data" / "train-00000-of-00001.parquet", folder / "data" / "valid-00000-of-00001.parquet"
    _rewrite_labels(train, pq.read_table(train).column("label").to_pylist(), pa.int64())
    names = sorted((stanford_dir / "wnids.txt").read_text().split())
    _rewrite_labels(valid, [names[i] for i in pq.read_table(valid).column("label").to_pylist()], pa.string())
    assert _train_refused(folder, tmp_path / "out", capsys) == (
        f"The label column holds class indices (integers) in the parquet file '{train.resolve()}' and class names "
        f"(strings) in '{valid.resolve()}'; every split needs the same kind of label, so write them again with one "
        "(the class names, or the same indices)."
    )


def test_a_parquet_file_of_no_rows_beside_others_is_left_out(stanford_dir: Path, tmp_path: Path, data_tools) -> None:
    folder = data_tools.make_parquet(stanford_dir, tmp_path / "parquet")
    full = pq.read_table(folder / "data" / "valid-00000-of-00001.parquet")
    pq.write_table(full.slice(0, 0), folder / "data" / "valid-00001-of-00002.parquet")
    (folder / "data" / "valid-00000-of-00001.parquet").rename(folder / "data" / "valid-00000-of-00002.parquet")
    bundle = load_data(DataConfig(source=str(folder)))
    assert (len(bundle.train), len(bundle.eval)) == (24, 12)


@pytest.mark.parametrize("split", ["train", "valid"])
def test_an_empty_split_is_one_sentence_in_a_saved_folder(
    small_stanford: Path, tmp_path: Path, data_tools, split: str
) -> None:
    splits = data_tools.make_hf_splits(small_stanford)
    splits[split] = splits[split].select([])
    splits.save_to_disk(str(tmp_path / "saved"))
    role = "train" if split == "train" else "eval"
    with pytest.raises(DataError, match=_empty_sentence(role, tmp_path / "saved")):
        load_data(DataConfig(source=str(tmp_path / "saved")))


# ------------------------------------------------------------------------------ verify_images


def test_verify_images_names_the_first_unreadable_image(small_stanford: Path) -> None:
    bundle = load_data(DataConfig(source=str(small_stanford)))
    verify_images(bundle.eval, "eval", 64, progress=False)  # all readable: returns None, raises nothing
    for name in ("val_3.JPEG", "val_1.JPEG"):
        (small_stanford / "val" / "images" / name).write_bytes(b"garbage")
    first = re.escape(str(small_stanford / "val" / "images" / "val_1.JPEG"))
    for split in (bundle.eval, bundle.eval.with_transform(DecodeTransform(64))):  # a transform set or not
        with pytest.raises(
            DataError, match=rf"^Cannot read image '{first}' \(.*\); replace or delete the file, or set"
        ):
            verify_images(split, "eval", 64, progress=False)


@pytest.mark.slow
def test_a_corrupt_training_image_in_a_loader_worker_is_one_sentence_for_python_callers(
    stanford_factory, tmp_path: Path
) -> None:
    """finetune() with 2 loader workers: the DataError a worker raised reaches the caller as the one sentence (the
    worker's traceback kept aside), not PyTorch's 'Caught DataError in DataLoader worker process' text."""
    from tiny_transformers import DataConfig as Data
    from tiny_transformers import FinetuneConfig, ModelConfig, TrainConfig, finetune

    source = stanford_factory(tmp_path / "data")
    broken = sorted((source / "train").glob("*/images/*"))[7]
    broken.write_bytes(b"not a JPEG at all")
    out = tmp_path / "out"
    config = FinetuneConfig(
        model=ModelConfig(name="test_vit", pretrained=False, train_mode="full"),
        data=Data(source=str(source), image_size=32, num_workers=2),
        train=TrainConfig(
            epochs=1, batch_size=8, micro_batch_size=4, mixed_precision="no", output_dir=str(out), progress=False
        ),
    )
    with pytest.raises(DataError) as info:
        finetune(config)
    message = str(info.value)
    assert message.startswith(f"Cannot read image '{broken}' (UnidentifiedImageError: ")
    assert message.endswith(
        "; replace or delete the file, or set --data.skip_corrupt true to skip and count unreadable images."
    )
    assert "\n" not in message and "Traceback" not in message
    assert "in DataLoader worker process" in info.value.worker_traceback  # kept for whoever wants it
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
