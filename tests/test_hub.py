"""Publishing: push after each epoch with huggingface_hub's HfApi replaced at its boundary, the exported folder
in plain timm, the model card's metadata, evaluate on exported and hf-hub models, and failed pushes."""

import dataclasses
import hashlib
import inspect
import json
import shutil
from pathlib import Path

import httpx2
import pytest
import timm
import torch
import yaml
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import load_file

import tiny_transformers.hub as hub
from tiny_transformers import DataConfig, FinetuneConfig, ModelConfig, TrainConfig, evaluate_checkpoint, finetune
from tiny_transformers.card import model_card
from tiny_transformers.cli import main
from tiny_transformers.config import HubConfig, trajectory_differences
from tiny_transformers.errors import ConfigError, PublishError
from tiny_transformers.publish import EXPORT_FILES, export_run
from tiny_transformers.rundir import read_run
from tiny_transformers.validation import validate

MODEL_ID = "tester/tiny-vit"


class FakeHfApi:
    """Stands in for ``huggingface_hub.HfApi`` (no network): records each call's keyword arguments and, for
    ``upload_folder``, what the real one would send (the folder's files filtered by its patterns, as huggingface_hub
    filters them) with the bytes' sha256 and the weights as they were at that moment."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.fail_with = fail_with

    def __call__(self, **kwargs) -> "FakeHfApi":  # HfApi(...) in hub.py
        self.calls.append(("HfApi", kwargs))
        return self

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        if self.fail_with is not None:
            raise self.fail_with
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        sent = sorted(
            filter_repo_objects(
                names, allow_patterns=kwargs.get("allow_patterns"), ignore_patterns=kwargs.get("ignore_patterns")
            )
        )
        self.calls.append(
            (
                "upload_folder",
                {
                    **kwargs,
                    "sent": sent,
                    "sha256": {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in sent},
                    "weights": load_file(folder / "model.safetensors"),
                    "card": (folder / "README.md").read_text(),
                },
            )
        )
        return type(
            "CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/{len(self.calls)}"}
        )()

    def named(self, name: str) -> list[dict]:
        return [kwargs for call, kwargs in self.calls if call == name]


def tiny_config(source, output_dir, **hub_fields) -> FinetuneConfig:
    """test_vit at 32 px on the 24-image fixture (3 optimizer steps per epoch), as in test_finetune.py."""
    return FinetuneConfig(
        model=ModelConfig(name="test_vit", pretrained=False, train_mode="full"),
        data=DataConfig(source=str(source), image_size=32, num_workers=0),
        train=TrainConfig(
            epochs=2, batch_size=8, micro_batch_size=4, mixed_precision="no", output_dir=str(output_dir), progress=False
        ),
        hub=HubConfig(**hub_fields),
    )


def front_matter(card_text: str) -> dict:
    assert card_text.startswith("---\n")
    return yaml.safe_load(card_text.split("---\n", 2)[1])


def files_of(folder: Path, skip: str = "") -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not (skip and p.relative_to(folder).parts[0] == skip)
    }


@pytest.fixture(scope="module")
def published(stanford_dir, tmp_path_factory):
    """Two epochs with hub.push, strategy epoch, a private repo: a push after epoch 1 and one at the end."""
    out = tmp_path_factory.mktemp("published") / "out"
    config = tiny_config(stanford_dir, out, push=True, model_id=MODEL_ID, private=True, strategy="epoch")
    fake = FakeHfApi()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub, "HfApi", fake)
        result = finetune(config)
    return config, result, fake


def test_push_after_each_epoch_sends_exactly_the_export(published):
    config, result, fake = published
    creates, uploads = fake.named("create_repo"), fake.named("upload_folder")
    assert len(creates) == len(uploads) == 2  # after epoch 1, then at the end (not twice after epoch 2)
    for create in creates:
        assert create == {"repo_id": MODEL_ID, "private": True, "repo_type": "model", "exist_ok": True}
    expected_files = sorted(["README.md", "config.json", "metrics.jsonl", "model.safetensors", "training_curves.png"])
    for upload in uploads:
        assert upload["repo_id"] == MODEL_ID and upload["repo_type"] == "model"
        assert upload["sent"] == expected_files  # never a checkpoint, optimizer state or anything else
        assert Path(upload["folder_path"]) == result.output_dir / "export"
    first, last = result.history
    assert [u["commit_message"] for u in uploads] == [
        f"tiny_transformers: test_vit after epoch 1/2, top-1 {first['top1']:.2f}%, top-5 {first['top5']:.2f}% "
        "(last weights)",
        f"tiny_transformers: test_vit after epoch 2/2, top-1 {last['top1']:.2f}%, top-5 {last['top5']:.2f}% "
        "(last weights)",
    ]
    # the pushed weights are each epoch's own: those of the checkpoint written at that epoch's end
    for upload, step in zip(uploads, ("step_00000003", "step_00000006")):
        checkpoint = load_file(result.output_dir / "checkpoints" / step / "model.safetensors")
        assert all(torch.equal(upload["weights"][k], v) for k, v in checkpoint.items())
    # every keyword the fake received is one the real HfApi accepts
    for name in ("create_repo", "upload_folder"):
        for kwargs in fake.named(name):
            real = {k: v for k, v in kwargs.items() if k not in ("sent", "sha256", "weights", "card")}
            inspect.signature(getattr(HfApi, name)).bind(object(), **real)


def test_model_card_metadata_parses_and_carries_the_runs_numbers(published, stanford_dir):
    _, result, fake = published
    card_text = fake.named("upload_folder")[-1]["card"]
    meta = front_matter(card_text)
    assert meta["library_name"] == "timm" and meta["license"] == "apache-2.0"
    assert meta["metrics"] == ["accuracy"]
    assert {"image-classification", "timm"} <= set(meta["tags"])
    assert "tiny-imagenet" not in meta["tags"]  # a 4-class fixture is not Tiny ImageNet (tests/test_card.py)
    # trained on a local folder: no Hub dataset and no model-index result claimed (tests/test_card.py)
    assert "datasets" not in meta and "model-index" not in meta
    card = ModelCard(card_text)
    body = card.text
    assert 'timm.create_model("hf-hub:tester/tiny-vit", pretrained=True)' in body
    assert "tiny-transformers evaluate --model.checkpoint hf-hub:tester/tiny-vit" in body
    assert "| `train.epochs` | 2 |" in body and "| `optim.lr` | 0.001 |" in body  # the training config table
    assert f"| this run, final (epoch 2) | {result.top1:.2f} | {result.top5:.2f} |" in body
    assert "@article{huynh2022vision" in body
    assert str(stanford_dir) not in card_text and str(result.output_dir) not in card_text  # no private paths


def test_card_of_a_paper_model_shows_the_papers_number(published):
    _, result, _ = published
    run = dataclasses.replace(read_run(result.output_dir), source_kind="hub")  # recorded by a run on a Hub dataset
    run.config.model.name = "vit_l"  # the same files, described as the paper's ViT-L/16 from ImageNet weights
    run.config.model.pretrained = True
    run.config.data.source = "zh-plus/tiny-imagenet"  # and as trained on the Hub's copy: a model-index result
    card = model_card(run, HubConfig(model_id=MODEL_ID, weights="best", license="mit"))
    assert "| paper: ViT-L/16 (Huynh 2022) | 86.43 | – | – | 30 |" in card.text
    best = max(result.history, key=lambda h: h["top1"])  # the first best epoch, as best/ holds
    assert f"the epoch with the best eval top-1 (epoch {best['epoch']} of 2;" in card.text
    meta = front_matter(str(card))
    assert meta["license"] == "mit"
    assert meta["base_model"] == "timm/vit_large_patch16_384.augreg_in21k_ft_in1k"  # timm's default weights for it
    (entry,) = meta["model-index"]
    assert entry["name"] == MODEL_ID and meta["datasets"] == ["zh-plus/tiny-imagenet"]
    (model_result,) = entry["results"]
    assert model_result["task"]["type"] == "image-classification"
    assert model_result["dataset"]["name"] == "Tiny ImageNet"
    values = {m["type"]: m["value"] for m in model_result["metrics"]}
    assert values == {"accuracy": round(best["top1"], 2), "top_5_accuracy": round(best["top5"], 2)}
    # huggingface_hub reads the same numbers back
    assert [r.metric_value for r in ModelCard(str(card)).data.eval_results] == list(values.values())


def test_exported_folder_loads_in_plain_timm_with_the_trained_logits(published):
    _, result, _ = published
    folder = result.output_dir / "export"
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    labels = json.loads((result.output_dir / "labels.json").read_text())
    cfg = model.pretrained_cfg
    assert cfg["label_names"] == labels["class_ids"]
    assert cfg["label_descriptions"] == dict(zip(labels["class_ids"], labels["class_names"]))
    assert tuple(cfg["input_size"]) == (3, 32, 32) and cfg["interpolation"] == "bicubic"
    assert tuple(cfg["mean"]) == (0.485, 0.456, 0.406) and tuple(cfg["std"]) == (0.229, 0.224, 0.225)
    assert timm.data.resolve_data_config(model=model)["input_size"] == (3, 32, 32)
    trained = timm.create_model("test_vit", num_classes=4, img_size=32).eval()
    trained.load_state_dict(load_file(result.output_dir / "checkpoints" / "step_00000006" / "model.safetensors"))
    x = torch.randn(5, 3, 32, 32)
    assert torch.equal(model(x), trained(x))


def test_evaluate_an_exported_folder_reproduces_the_final_metrics(published, stanford_dir, tmp_path, capsys):
    _, result, _ = published
    csv_path = tmp_path / "classes.csv"
    # no --train.mixed_precision: evaluate takes the precision the export records (fp32 here), not bf16
    assert json.loads((result.output_dir / "export" / "config.json").read_text())["tiny_transformers"] == {
        "native_size": 64,
        "mixed_precision": "no",
    }
    main(
        [
            "evaluate",
            "--model.checkpoint",
            str(result.output_dir / "export"),
            "--data.source",
            str(stanford_dir),
            "--data.num_workers",
            "0",
            "--train.progress",
            "false",
            "--output",
            str(csv_path),
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["count"] == 12
    assert printed["top1"] == result.top1 and printed["top5"] == result.top5
    assert printed["loss"] == pytest.approx(result.loss, rel=1e-6)
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "class_id,class_name,images,correct,top1"
    rows = [line.split(",") for line in lines[1:]]
    labels = json.loads((result.output_dir / "labels.json").read_text())
    assert [r[0] for r in rows] == labels["class_ids"] and [r[1] for r in rows] == labels["class_names"]
    assert [int(r[2]) for r in rows] == [3, 3, 3, 3]  # 3 val images per class in the fixture
    assert sum(int(r[3]) for r in rows) / 12 * 100 == pytest.approx(result.top1)
    assert all(float(r[4]) == pytest.approx(int(r[3]) / int(r[2]) * 100) for r in rows)


def test_evaluate_an_hf_hub_model_from_the_local_cache(published, stanford_dir):
    _, result, _ = published
    # what huggingface_hub's cache holds after a download of tester/cached-vit: refs/main -> snapshots/<commit>/
    repo = Path(constants.HF_HUB_CACHE) / "models--tester--cached-vit"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(result.output_dir / "export", repo / "snapshots" / commit, dirs_exist_ok=True)
    config = tiny_config(stanford_dir, result.output_dir)
    config.model.checkpoint = "hf-hub:tester/cached-vit"
    metrics = evaluate_checkpoint(config)
    assert metrics["top1"] == result.top1 and metrics["top5"] == result.top5
    assert metrics["loss"] == pytest.approx(result.loss, rel=1e-6)


def test_evaluate_an_hf_hub_model_offline_names_the_fix(stanford_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "evaluate",
                "--model.checkpoint",
                "hf-hub:tester/not-downloaded",
                "--data.source",
                str(stanford_dir),
                "--train.mixed_precision",
                "no",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: model.checkpoint 'hf-hub:tester/not-downloaded' is not in the local Hugging Face cache and "
        "HF_HUB_OFFLINE is set; connect (and unset HF_HUB_OFFLINE) to download it, or pass a local folder written "
        "by `tiny-transformers export`."
    ]


def test_a_failed_push_keeps_every_local_file_and_prints_the_retry_command(stanford_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    config = tiny_config(stanford_dir, out, push=True, model_id=MODEL_ID)
    config.train.epochs = 1
    monkeypatch.setattr(hub, "HfApi", FakeHfApi(fail_with=hf_errors.LocalTokenNotFoundError("Token is required.")))
    result = finetune(config)  # returns its result: a failed push is reported, not raised
    assert result.epochs_completed == 1 and result.top1 == result.history[0]["top1"]
    local = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {
        "config.json",
        "labels.json",
        "metrics.jsonl",
        "results.md",
        "training_curves.png",
        "predictions.png",
        "best/model.safetensors",
        "last/model.safetensors",
        "checkpoints/step_00000003/model.safetensors",
        *(f"export/{name}" for name in EXPORT_FILES),
    } <= local
    err = capsys.readouterr().err
    assert "warning: hub.push is on but HF_HUB_OFFLINE is set" in err  # told before training, not only after
    assert (
        f"warning: Pushing '{out}' to the Hub as '{MODEL_ID}' failed: no Hugging Face token was found; set HF_TOKEN "
        "or run `hf auth login`" in err
    )
    assert f"retry with: tiny-transformers push {out} --hub.model_id {MODEL_ID}\n" in err


def test_push_command_retries_with_the_runs_settings_and_fails_cleanly(published, capsys, monkeypatch):
    _, result, _ = published
    out = result.output_dir
    before = files_of(out, skip="export")
    forbidden = hf_errors.HfHubHTTPError(
        "403 Forbidden",
        response=httpx2.Response(403, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create")),
    )
    failing = FakeHfApi(fail_with=forbidden)
    monkeypatch.setattr(hub, "HfApi", failing)
    with pytest.raises(SystemExit) as exit_info:
        main(["push", str(out)])  # model id and privacy come from the run's config.json
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        f"error: Pushing '{out}' to the Hub as '{MODEL_ID}' failed: the token may not write to 'tester'"
    )
    assert line.endswith(f"retry with: tiny-transformers push {out} --hub.model_id {MODEL_ID} --hub.private true")
    assert failing.named("create_repo")[0]["private"] is True
    assert files_of(out, skip="export") == before  # nothing local changed
    assert sorted(p.name for p in (out / "export").iterdir()) == sorted(EXPORT_FILES)

    succeeding = FakeHfApi()
    monkeypatch.setattr(hub, "HfApi", succeeding)
    main(["push", str(out), "--hub.model_id", "tester/other-name", "--hub.private", "false"])
    assert "pushed to https://huggingface.co/tester/other-name" in capsys.readouterr().out
    assert succeeding.named("create_repo")[0] == {
        "repo_id": "tester/other-name",
        "private": False,
        "repo_type": "model",
        "exist_ok": True,
    }


def test_export_command_writes_the_folder_and_protects_other_files(published, tmp_path, capsys):
    _, result, _ = published
    target = tmp_path / "shared"
    main(["export", str(result.output_dir), "--to", str(target), "--hub.weights", "best"])
    assert sorted(p.name for p in target.iterdir()) == sorted([*EXPORT_FILES, ".tiny_transformers_export"])
    assert (target / "model.safetensors").read_bytes() == (
        result.output_dir / "best" / "model.safetensors"
    ).read_bytes()
    assert (target / "metrics.jsonl").read_text() == (result.output_dir / "metrics.jsonl").read_text()
    capsys.readouterr()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["export", str(result.output_dir), "--to", str(target)])
    assert capsys.readouterr().err.strip() == (
        f"error: '{target}' already holds files that export did not write (notes.txt); export into a new or empty "
        "folder, or move them away first."
    )
    assert (target / "notes.txt").read_text() == "mine"
    best = (result.output_dir / "best" / "model.safetensors").read_bytes()
    for own in ("best", "last", "checkpoints/step_00000006"):
        with pytest.raises(PublishError, match="which holds the run itself; choose another folder"):
            export_run(result.output_dir, folder=result.output_dir / own)
    assert (result.output_dir / "best" / "model.safetensors").read_bytes() == best
    with pytest.raises(PublishError, match="is not the output directory of a finished run .no config.json"):
        export_run(tmp_path / "nothing-here")


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"push": True}, "hub.push is on but hub.model_id is not set; add --hub.model_id your-user/model-name"),
        ({"model_id": "just-a-name"}, "hub.model_id 'just-a-name' is not a Hub model id; write it as owner/name"),
        ({"model_id": "me/a/b"}, "hub.model_id 'me/a/b' is not a Hub model id"),
        ({"model_id": "me/bad name"}, "hub.model_id 'me/bad name' is not a Hub model id"),
        ({"license": " "}, "hub.license is empty"),
    ],
)
def test_bad_hub_settings_get_one_sentence(fields, message):
    config = FinetuneConfig(train=TrainConfig(mixed_precision="no"), hub=HubConfig(**fields))
    with pytest.raises(ConfigError, match=message):
        validate(config, num_processes=1)


def test_hub_settings_round_trip_and_never_block_a_resume():
    config = FinetuneConfig(hub=HubConfig(push=True, model_id="me/vit-l.tiny_imagenet", private=True, strategy="epoch"))
    assert FinetuneConfig.from_dict(json.loads(config.to_json())) == config
    saved = FinetuneConfig().to_dict()
    del saved["hub"]  # a config.json written before the hub section existed
    assert FinetuneConfig.from_dict(saved).hub == HubConfig()
    assert trajectory_differences(saved, config) == []
