"""Use the result anywhere: plain timm, transformers' Auto class and pipeline, and `tiny-transformers predict`."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from tiny_transformers import DataConfig, FinetuneConfig, ModelConfig, TrainConfig, finetune
from tiny_transformers.augment import BatchAugment
from tiny_transformers.cli import main
from tiny_transformers.config import AugmentConfig
from tiny_transformers.data import decode_image
from tiny_transformers.engine import loader_workers, usable_cores
from tiny_transformers.models import IMAGENET_MEAN, IMAGENET_STD

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def exported(stanford_dir, tmp_path_factory):
    """A tiny trained run and its `tiny-transformers export` folder."""
    out = tmp_path_factory.mktemp("predict") / "out"
    finetune(
        FinetuneConfig(
            model=ModelConfig(name="test_vit", pretrained=False, train_mode="full"),
            data=DataConfig(source=str(stanford_dir), image_size=32, num_workers=0),
            train=TrainConfig(
                epochs=1, batch_size=8, micro_batch_size=4, mixed_precision="no", output_dir=str(out), progress=False
            ),
        )
    )
    main(["export", str(out)])  # the export command, in this process
    return out, out / "export"


def test_transformers_and_timm_load_the_export_with_the_same_logits(exported):
    _, folder = exported
    timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    auto = transformers.AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = timm_model(x)
        logits = auto(pixel_values=x).logits
    assert (logits - reference).abs().max().item() < 1e-5
    assert torch.equal(logits.argmax(-1), reference.argmax(-1))
    config = json.loads((folder / "config.json").read_text())
    assert [auto.config.id2label[i] for i in range(4)] == config["label_names"]


def test_pipeline_labels_are_the_models_classes(exported):
    _, folder = exported
    pipe = transformers.pipeline("image-classification", model=str(folder))
    image = Image.fromarray(np.full((64, 64, 3), (200, 40, 40), dtype=np.uint8))
    results = pipe(image, top_k=4)
    config = json.loads((folder / "config.json").read_text())
    assert sorted(r["label"] for r in results) == sorted(config["label_names"])
    assert sum(r["score"] for r in results) == pytest.approx(1.0, abs=1e-5)
    # the readable name of each label is one lookup away, in the same config
    assert set(pipe.model.config.label_descriptions) == set(config["label_names"])


def make_images(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)).save(folder / "photo.png")
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), mode="L").save(folder / "grey.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), mode="RGBA").save(folder / "alpha.png")
    (folder / "notes.jpg").write_text("not an image")
    return folder


@pytest.mark.slow
def test_predict_matches_the_evaluation_path_and_reports_bad_files(exported, tmp_path):
    run_dir, folder = exported
    images = make_images(tmp_path / "images")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tiny_transformers.cli",
            "predict",
            "--model.checkpoint",
            str(run_dir),
            str(images),
            "--json",
            "true",
            "--top_k",
            "3",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stderr and "notes.jpg: not a readable image" in done.stderr
    predictions = {p["file"]: p["predictions"] for p in json.loads(done.stdout)}
    assert sorted(predictions) == sorted(str(images / n) for n in ("photo.png", "grey.jpg", "alpha.png"))

    # the model's own evaluation path: decode to 64x64 uint8, upscale + normalize on the batch, best/ weights
    model = timm.create_model(f"local-dir:{run_dir / 'best'}", pretrained=True).eval()
    labels = json.loads((run_dir / "labels.json").read_text())
    augment = BatchAugment(32, IMAGENET_MEAN, IMAGENET_STD, 4, AugmentConfig())
    for file, top in predictions.items():
        x = augment.resize_normalize(decode_image({"bytes": None, "path": file}, 64)[None])
        with torch.no_grad():
            probabilities = model(x).softmax(-1)[0]
        best = int(probabilities.argmax())
        assert top[0]["class_id"] == labels["class_ids"][best]
        assert top[0]["name"] == labels["class_names"][best]
        assert top[0]["probability"] == pytest.approx(probabilities[best].item(), abs=1e-6)
        assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]


@pytest.mark.slow
def test_predict_names_a_missing_input(exported, tmp_path):
    run_dir, _ = exported
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tiny_transformers.cli",
            "predict",
            "--model.checkpoint",
            str(run_dir),
            str(tmp_path / "nope.jpg"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"error: '{tmp_path / 'nope.jpg'}' does not exist; give image files or folders of images."
    )


def test_predict_without_images_says_so_and_evaluate_takes_a_run_folder_with_workers_that_fit_the_cores(
    exported, stanford_dir, tmp_path, capsys
):
    run_dir, _ = exported
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--model.checkpoint", str(run_dir)])
    assert exit_.value.code == 2 and capsys.readouterr().err.strip() == (
        "error: No image was given; name image files or folders after the options, e.g. tiny-transformers predict "
        "--model.checkpoint outputs/run photo.jpg my_photos/."
    )
    scores = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for weights in (run_dir, run_dir / "best"):  # the run folder is its best/
            main(["evaluate", "--model.checkpoint", str(weights), "--data.source", str(stanford_dir),
                  "--train.progress", "false", "--output", str(tmp_path / f"{weights.name}.csv")])  # fmt: skip
            scores.append(json.loads(capsys.readouterr().out))
    assert scores[0] == scores[1] and scores[0]["count"] > 0
    # the default data.num_workers (None: auto) fits this process's cores: torch has no more workers to warn about
    assert not [w for w in caught if "suggested max number of worker" in str(w.message)]
    assert loader_workers(None) <= usable_cores()
    assert (tmp_path / f"{run_dir.name}.csv").read_text() == (tmp_path / "best.csv").read_text()


def test_model_card_pipeline_example_runs_as_written(exported, tmp_path, monkeypatch):
    _, folder = exported
    card = (folder / "README.md").read_text()
    assert "AutoModelForImageClassification.from_pretrained" in card and "tiny-transformers predict" in card
    snippet = card.split("```python\nfrom transformers import pipeline", 1)[1].split("```", 1)[0]
    assert len([line for line in snippet.splitlines() if line.strip()]) == 3  # three lines after the import
    Image.fromarray(np.full((64, 64, 3), 90, dtype=np.uint8)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    code = "from transformers import pipeline" + snippet.replace("path/to/this/folder", str(folder))
    namespace: dict = {}
    exec(compile(code.replace("print(", "result = ("), "card", "exec"), namespace)
    labels = json.loads((folder / "config.json").read_text())["label_descriptions"]
    assert {name for name, _ in namespace["result"]} <= set(labels.values())
