"""Probe, then fine-tune: a full fine-tuning run (recipes/full/*_from_probe.py, `model.head_from`) starts from a
head-mode run's trained head on the pretrained backbone, and its model before any update scores what the probe's
final evaluation scored."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from tiny_transformers import DataConfig, FinetuneConfig, ModelConfig, cli
from tiny_transformers.errors import ConfigError
from tiny_transformers.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from tiny_transformers.paper import PAPER_MODELS
from tiny_transformers.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_launch import launch  # noqa: E402


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and message.count(". ") == 0


def tiny(source: Path, pretrained: Path, output_dir: Path) -> list[str]:
    """test_vit at 32 px on the 24-image fixture, its 'pretrained' weights from a file (as the Hub's would be)."""
    return [
        *("--model.name", "test_vit", "--model.checkpoint", str(pretrained)),
        *("--data.source", str(source), "--data.image_size", "32", "--data.num_workers", "0"),
        *("--train.epochs", "1", "--train.batch_size", "8", "--train.micro_batch_size", "4"),
        *("--train.mixed_precision", "no", "--train.progress", "false", "--train.output_dir", str(output_dir)),
    ]


@pytest.fixture(scope="module")
def probe(stanford_dir, tmp_path_factory):
    """The paper's vit_l recipe (head only) trained for one epoch by `tiny-transformers train vit_l`."""
    root = tmp_path_factory.mktemp("probe")
    torch.manual_seed(0)
    pretrained = root / "pretrained.safetensors"
    save_file(timm.create_model("test_vit", img_size=32).state_dict(), str(pretrained))
    cli.main(["train", "vit_l", *tiny(stanford_dir, pretrained, root / "vit_l")])
    return root / "vit_l", pretrained


def recipe(path: str) -> FinetuneConfig:
    """The config of recipes/full/PATH, as its launch runs it: a script's own folder is on sys.path."""
    folder = str(ROOT / "recipes" / "full")
    sys.path.insert(0, folder)
    try:
        return runpy.run_path(str(ROOT / "recipes" / "full" / path), run_name="recipe")["config"]
    finally:
        sys.path.remove(folder)


@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_each_full_recipe_has_a_from_probe_variant_that_changes_only_the_head_source(name):
    """Every value of recipes/full/NAME.py, the head from the paper run's folder, the probe's preprocessing."""
    from tiny_transformers import paper_config

    config, full = recipe(f"{name}_from_probe.py"), recipe(f"{name}.py")
    assert config.model.head_from == paper_config(name).train.output_dir == f"outputs/{name}"
    assert config.data.preprocess == paper_config(name).data.preprocess
    assert config.data.normalization == paper_config(name).data.normalization
    assert config.train.output_dir == f"outputs/full/{name}_from_probe"
    same = replace(
        config,
        model=replace(config.model, head_from=None),
        data=replace(config.data, preprocess=full.data.preprocess, normalization=full.data.normalization),
        train=replace(config.train, output_dir=full.train.output_dir),
    )
    assert same == full


def test_the_full_model_from_the_probe_scores_what_the_probe_scored_before_any_update(probe, stanford_dir, tmp_path):
    """The run that recipes/full/vit_l_from_probe.py starts, built as training builds it (pretrained backbone, the
    probe's head) and evaluated before any update: the probe's final top-1, top-5 and loss."""
    from tiny_transformers.train import build_run

    folder, pretrained = probe
    config, _ = cli.parse_config(recipe("vit_l_from_probe.py"), [*tiny(stanford_dir, pretrained, tmp_path / "full"),
                                                     "--model.head_from", str(folder)])  # fmt: skip
    run = build_run(config, RunDir(tmp_path / "full"))
    assert run.config.model.train_mode == "full" and all(p.requires_grad for p in run.model.parameters())
    scores = run.evaluate(run.model)
    final = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    assert (scores["top1"], scores["top5"]) == (final["top1"], final["top5"])
    assert scores["loss"] == pytest.approx(final["eval_loss"], rel=1e-6)
    # the backbone is the pretrained file's, not the probe's export: the head alone came from the probe
    saved = timm.models.load_state_dict(str(pretrained))
    weights = run.model.state_dict()
    assert torch.equal(weights["blocks.0.attn.qkv.weight"], saved["blocks.0.attn.qkv.weight"])
    head = timm.models.load_state_dict(str(folder / "best" / "model.safetensors"))
    assert torch.equal(weights["head.weight"], head["head.weight"]) and torch.equal(
        weights["head.bias"], head["head.bias"]
    )


def test_a_probe_that_does_not_fit_is_refused_in_one_sentence(probe, tmp_path):
    from tiny_transformers.weights import load_probe_head

    folder, _ = probe
    class_ids = RunDir(folder).read_labels()[0]
    model = build_model(ModelConfig(name="test_vit", pretrained=False, train_mode="full"), len(class_ids), 32)
    probes = RunDir(folder).read_config().data  # the inputs the probe's head was fitted to
    assert load_probe_head(model, folder, "test_vit", class_ids, probes) == folder / "best"  # the run folder: best/
    full = tmp_path / "full_run"
    shutil.copytree(folder, full, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((full / "config.json").read_text())
    config["model"]["train_mode"] = "full"
    (full / "config.json").write_text(json.dumps(config))
    small = build_model(ModelConfig(name="test_vit", pretrained=False), 3, 32)
    cases = [
        ((model, tmp_path, "test_vit", class_ids, probes), "holds no trained head"),
        ((model, folder, "swin_l", class_ids, probes), "is a head of test_vit and this run trains swin_large_patch4"),
        ((model, folder, "test_vit", class_ids[::-1], probes), "classes that are not this data's"),
        ((small, folder, "test_vit", class_ids, probes), "has no head that fits this model (head.weight:"),
        ((model, full, "test_vit", class_ids, probes), "is a full fine-tuning run, whose head fits its own trained"),
        (  # the full recipe's own mean/std (ViT-L's 0.5) under a head fitted to ImageNet-normalised features
            (model, folder, "test_vit", class_ids, replace(probes, normalization="model", preprocess="default")),
            "was fitted to other inputs than this run's (data.preprocess official there, default here; "
            "data.normalization (mean, std) ((0.485",
        ),
        ((model, folder, "test_vit", class_ids, DataConfig(image_size=64)), "data.image_size 32 there, 64 here"),
    ]
    for args, says in cases:
        with pytest.raises(ConfigError) as error:
            load_probe_head(*args)
        assert str(error.value).startswith("model.head_from '") and says in str(error.value), str(error.value)
        assert one_sentence(str(error.value)), str(error.value)


@pytest.mark.slow
def test_probe_then_fine_tune_with_the_recipe_variant(probe, stanford_dir, tmp_path):
    """`accelerate launch recipes/full/vit_l_from_probe.py --model.head_from <probe>`: a finished full run whose
    config records the probe; a probe of another model is one sentence and nothing trains."""
    folder, pretrained = probe
    out = tmp_path / "full"
    recipe = str(ROOT / "recipes" / "full" / "vit_l_from_probe.py")
    overrides = [*tiny(stanford_dir, pretrained, out), "--model.head_from", str(folder), "--optim.warmup_epochs", "0.5"]
    done = launch([recipe, *overrides])
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["head_from"] == str(folder) and config["model"]["train_mode"] == "full"
    assert json.loads((out / "finished.json").read_text()) == {"epochs": 1}
    wrong = launch([recipe, *tiny(stanford_dir, pretrained, tmp_path / "wrong"), "--model.head_from", str(folder),
                    "--model.name", "vit_tiny_patch16_224", "--model.checkpoint", "None", "--model.pretrained", "false",
                    "--optim.warmup_epochs", "0.5"])  # fmt: skip
    assert wrong.returncode != 0
    assert "error: model.head_from" in wrong.stderr and "is a head of test_vit" in wrong.stderr
    assert not (tmp_path / "wrong" / "metrics.jsonl").exists()


def test_both_heads_of_a_distilled_deit_probe_are_taken(tmp_path):
    """Distilled DeiT's probe trained head and head_dist: both replace the new ones, and nothing else changes."""
    from tiny_transformers.weights import load_probe_head, save_for_timm

    ids = [f"n{i:08d}" for i in range(5)]
    config = ModelConfig(name="deit_tiny_distilled_patch16_224", pretrained=False, train_mode="head")
    trained = build_model(config, len(ids), 32)
    with torch.no_grad():
        for module in (trained.head, trained.head_dist):
            module.weight.normal_()
    save_for_timm(trained, tmp_path / "export", ids, ids, 32, IMAGENET_MEAN, IMAGENET_STD)
    torch.manual_seed(1)
    fresh = build_model(replace(config, train_mode="full"), len(ids), 32)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    load_probe_head(fresh, tmp_path / "export", "deit_tiny_distilled_patch16_224", ids, DataConfig(image_size=32))
    after, saved = fresh.state_dict(), trained.state_dict()
    heads = {k for k in after if k.startswith(("head.", "head_dist."))}
    assert heads == {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}
    assert all(torch.equal(after[k], saved[k]) for k in heads)
    assert all(torch.equal(after[k], before[k]) for k in after if k not in heads)
    assert not torch.equal(after["head_dist.weight"], before["head_dist.weight"])
