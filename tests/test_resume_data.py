"""Changed data under a checkpoint: a run records its split sizes in each checkpoint, and a resume on data of other
sizes (training images deleted, added) is refused in one sentence, the checkpoints untouched."""

import json

import pytest

from tiny_transformers.cli import main


def train(source, out, epochs: int) -> list[str]:
    return [
        *("train", "test_vit", "--model.pretrained", "false", "--model.train_mode", "full"),
        *("--data.source", str(source), "--data.image_size", "32", "--data.num_workers", "0"),
        *("--train.batch_size", "8", "--train.micro_batch_size", "4", "--train.mixed_precision", "no"),
        *("--train.output_dir", str(out), "--train.progress", "false", "--train.epochs", str(epochs)),
    ]


def test_resuming_on_data_with_fewer_training_images_is_refused_naming_both_sizes(stanford_factory, tmp_path, capsys):
    source = stanford_factory(tmp_path / "data")  # 4 classes x 6 train images, 12 eval
    out = tmp_path / "out"
    main(train(source, out, epochs=1))
    (checkpoint,) = (out / "checkpoints").glob("step_*")
    assert json.loads((checkpoint / "trainer_state.json").read_text())["state"]["data_sizes"] == [24, 12]
    for wnid in (source / "train").iterdir():  # most training images deleted, every class kept
        for image in sorted((wnid / "images").iterdir())[1:]:
            image.unlink()
    before = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(train(source, out, epochs=2))  # a longer run, resumed from the epoch's checkpoint
    assert exit_.value.code == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert error == [
        f"error: data.source '{source}' holds 4 train / 12 eval images and this run's checkpoint was written on 24 / "
        "12, so resuming would run another schedule on other images; the checkpoints are fine: resume with the data "
        "the run was trained on, or train on this data in a new train.output_dir."
    ]
    after = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before  # no checkpoint, metrics line, export or config written
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == [checkpoint.name]
