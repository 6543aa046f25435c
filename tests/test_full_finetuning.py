"""Full fine-tuning's model side and recipes: gradient checkpointing (same gradients, fewer saved activations), layer
decay as timm groups the four paper models, the distillation teacher, and the recipes in recipes/full/ and
recipes/deit_b_from_swin.py (their printed values, and one optimizer step each on a tiny stand-in model)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import saved_for_backward_bytes
from tiny_transformers import DataConfig, FinetuneConfig, ModelConfig, TrainConfig, finetune
from tiny_transformers.config import OptimConfig
from tiny_transformers.errors import ConfigError, ModelError
from tiny_transformers.models import (
    build_model,
    check_teacher,
    enable_grad_checkpointing,
    has_distillation_head,
    head_modules,
)
from tiny_transformers.optim import build_optimizer
from tiny_transformers.paper import PAPER_MODELS
from tiny_transformers.weights import TeacherInput, build_teacher

ROOT = Path(__file__).resolve().parents[1]
TINY_MODELS = [("test_vit", 32), ("swin_tiny_patch4_window7_224", 64)]  # timm's smallest ViT; a Swin at 64 px


def one_sentence(message: str) -> bool:
    """What the command line prints: one line, ending with a period, no second sentence starting inside it."""
    return "\n" not in message and message.endswith(".") and not re.search(r"[.;:]\s+[A-Z][a-z]", message)


# --- gradient checkpointing -------------------------------------------------------------------------------------


def _gradients(name: str, size: int, checkpointing: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # the same initial weights for both builds
    cfg = ModelConfig(
        name=name, pretrained=False, train_mode="full", drop_path_rate=0.1, grad_checkpointing=checkpointing
    )
    model = build_model(cfg, num_classes=4, image_size=size)
    x, y = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 3])
    torch.manual_seed(2)  # the same drop-path draws: the recomputation replays the RNG state it started with
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize(("name", "size"), TINY_MODELS)
def test_grad_checkpointing_changes_no_gradient(name, size):
    plain, checkpointed = _gradients(name, size, False), _gradients(name, size, True)
    assert plain.keys() == checkpointed.keys() and all(g is not None for g in plain.values())
    for key, grad in plain.items():
        # fp32 tolerance: the recomputed forward runs the same kernels on the same inputs; only the order in which
        # autograd accumulates may differ, a few ulps of the largest gradient (measured: bitwise equal on CPU)
        torch.testing.assert_close(checkpointed[key], grad, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize(("name", "size"), TINY_MODELS)
def test_grad_checkpointing_keeps_far_fewer_activations(name, size):
    saved = {}
    for checkpointing in (False, True):
        cfg = ModelConfig(name=name, pretrained=False, train_mode="full", grad_checkpointing=checkpointing)
        model = build_model(cfg, num_classes=4, image_size=size)
        saved[checkpointing] = saved_for_backward_bytes(model, torch.zeros(4, 3, size, size), contextlib.nullcontext)
    # Without checkpointing a transformer block keeps at least ten tensors of its input's size (both norms' inputs,
    # q, k and v, the attention output, the projection's input, the 4x-wide MLP hidden twice) plus attention
    # statistics; with it, only the block's input. The blocks' share thus shrinks more than tenfold; what lies
    # outside them (patch embedding, final norm, head) stays, and in these tiny models it is a larger part than in
    # the paper's (measured here: 0.18 for test_vit, 0.09 for the Swin; 0.02-0.08 for the paper models at 384,
    # docs/benchmarks.md). A quarter leaves room for timm's kernels changing, and would fail if checkpointing
    # silently did nothing.
    assert saved[True] < 0.25 * saved[False]


def test_a_model_without_grad_checkpointing_is_refused_in_one_sentence():
    cfg = ModelConfig(name="convit_tiny", pretrained=False, train_mode="full", grad_checkpointing=True)
    with pytest.raises(ConfigError) as error:
        build_model(cfg, num_classes=4, image_size=224)  # timm's ConViT asserts 'gradient checkpointing not supported'
    assert "convit_tiny" in str(error.value) and "--model.grad_checkpointing false" in str(error.value)
    assert one_sentence(str(error.value))
    with pytest.raises(ConfigError, match="not supported by plain_linear"):
        enable_grad_checkpointing(nn.Linear(2, 2), "plain_linear")  # no set_grad_checkpointing at all


# --- layer decay ----------------------------------------------------------------------------------------------------


def _meta_model(name: str) -> nn.Module:
    with torch.device("meta"):  # shapes only: ViT-L's 300M parameters cost nothing
        return timm.create_model(PAPER_MODELS[name].timm_name, pretrained=False, num_classes=200)


def _blocks(model: nn.Module) -> tuple[str, list[str], int]:
    """(first block's prefix, last blocks' prefixes, depth) read from the architecture, not from timm's grouping."""
    if hasattr(model, "layers"):  # Swin: stages of blocks, counted through the stages
        depth = sum(len(stage.blocks) for stage in model.layers)
        last = f"layers.{len(model.layers) - 1}.blocks.{len(model.layers[-1].blocks) - 1}."
        return "layers.0.blocks.0.", [last], depth
    depth = len(model.blocks)
    last = [f"blocks.{depth - 1}."]
    if hasattr(model, "blocks_token_only"):  # CaiT: timm puts the class-attention blocks on the last blocks' layers
        last.append(f"blocks_token_only.{len(model.blocks_token_only) - 1}.")
    return "blocks.0.", last, depth


def _only(values) -> float:
    """The one value all of ``values`` share (a layer's parameters share one lr multiplier)."""
    (value,) = set(values)
    return value


@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_layer_decay_multipliers_follow_the_depth(name):
    model, decay = _meta_model(name), 0.75
    optimizer = build_optimizer(OptimConfig(lr=1e-4, layer_decay=decay), model)
    scale = {id(p): group["lr_scale"] for group in optimizer.param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    first, lasts, depth = _blocks(model)
    head = {id(p) for module in head_modules(model) for p in module.parameters()}
    assert head and _only(scale[i] for i in head) == 1.0  # the new head(s) learn at the full lr
    for last in lasts:
        assert _only(scale[id(p)] for n, p in names.items() if n.startswith(last)) == pytest.approx(decay)
    # each block one layer below the next: the first of `depth` blocks sits depth layers below the head
    assert _only(scale[id(p)] for n, p in names.items() if n.startswith(first)) == pytest.approx(decay**depth)
    stem = _only(scale[id(p)] for n, p in names.items() if n.startswith("patch_embed."))
    assert stem == pytest.approx(decay ** (depth + 1))  # the stem below the first block
    assert len(scale) == len(names)  # every parameter has its group


def test_layer_decay_needs_timms_grouping():
    with pytest.raises(ConfigError, match="layer grouping") as error:
        build_optimizer(OptimConfig(layer_decay=0.75), nn.Sequential(nn.Linear(2, 2)))
    assert one_sentence(str(error.value))


# --- the teacher ----------------------------------------------------------------------------------------------------


def _tiny_run(source: Path, output_dir: Path, **model) -> FinetuneConfig:
    """test_vit at 32 px on the 24-image fixture, one epoch: a teacher in seconds."""
    return FinetuneConfig(
        model=ModelConfig(**{"name": "test_vit", "pretrained": False, "train_mode": "full", **model}),
        data=DataConfig(source=str(source), image_size=32, num_workers=0),
        train=TrainConfig(
            epochs=1, batch_size=8, micro_batch_size=4, mixed_precision="no", output_dir=str(output_dir), progress=False
        ),
    )


@pytest.fixture(scope="module")
def teacher_run(stanford_dir, tmp_path_factory) -> Path:
    """A library-trained run folder (best/, last/, checkpoints/) of test_vit on the 4-class fixture at 32 px."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    finetune(_tiny_run(stanford_dir, out))
    return out


@pytest.mark.parametrize("which", ["best", "last", "checkpoint", "the run folder"])
def test_the_teacher_is_the_trained_model_frozen_in_eval_mode(teacher_run, which):
    folders = {"checkpoint": next((teacher_run / "checkpoints").iterdir()), "the run folder": teacher_run}
    folder = folders.get(which, teacher_run / which)  # the run folder: its best/, as evaluate and predict read it
    teacher = build_teacher(str(folder), num_classes=4, image_size=32)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    reference = timm.create_model(f"local-dir:{teacher_run / 'last'}", pretrained=True).eval()  # plain timm
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(x), reference(x))  # one epoch: best/, last/ and the checkpoint hold one model


def test_a_teacher_must_fit_the_data(teacher_run, tmp_path):
    best = str(teacher_run / "best")
    shutil.copytree(teacher_run / "last", tmp_path / "only_last" / "last")  # a run's last/ but no best/: named
    class_ids = json.loads((teacher_run / "labels.json").read_text())["class_ids"]
    build_teacher(best, 4, 32, class_ids=list(class_ids))  # its own classes, in its own order: accepted
    refusals = {
        "predicts 4 classes and the data has 5": lambda: build_teacher(best, 5, 32),
        "trained at 32 px and the student sees 64 px": lambda: build_teacher(best, 4, 64),
        "another label order": lambda: build_teacher(best, 4, 32, class_ids=list(reversed(class_ids))),
        "ImageNet model with 1000 classes and the data has 4": lambda: build_teacher("vit_large_patch16_384", 4, 384),
        "trained at 160 px and the student sees 32 px": lambda: build_teacher("test_vit", 1000, 32),
        f"use {tmp_path / 'only_last' / 'last'}": lambda: build_teacher(str(tmp_path / "only_last"), 4, 32),
        "neither a trained folder": lambda: build_teacher("no/such/teacher", 4, 32),
    }
    for expected, build in refusals.items():
        with pytest.raises((ConfigError, ModelError)) as error:
            build()
        assert expected in str(error.value) and one_sentence(str(error.value)), str(error.value)


def test_a_timm_teacher_offline_gets_the_offline_sentence():
    with pytest.raises(ModelError, match="cannot be reached"):  # the Hub is offline in the tests (conftest)
        build_teacher("test_vit", 1000, 160)


def test_the_teacher_sees_the_students_images_normalised_as_it_was_trained(
    teacher_run, stanford_dir, tmp_path, monkeypatch
):
    """A teacher saved with mean/std 0.5 under a student normalised with ImageNet's: in the run, its logits are the
    plain timm model's on the same images normalised with 0.5 (converted on the device from the student's batch).
    A teacher recorded with a preprocessing the student's batch cannot be converted from is refused."""
    from tiny_transformers.config import DistillConfig
    from tiny_transformers.models import IMAGENET_MEAN, IMAGENET_STD, unwrap_logits
    from tiny_transformers.weights import build_trained_model, describe_trained_weights, save_for_timm

    recorded = describe_trained_weights(str(teacher_run / "last"))
    half, folder = (0.5,) * 3, tmp_path / "teacher"
    model, ids, names = build_trained_model(recorded), recorded.class_ids, recorded.class_names
    save_for_timm(model, folder, ids, names, 32, half, half, native_size=recorded.native_size)
    seen, real = [], TeacherInput.forward

    def teacher_forward(teacher, x):  # what the training loop feeds the teacher, and the logits it gets back
        output = real(teacher, x)
        seen.append((x.clone(), unwrap_logits(output).detach()))
        return output

    monkeypatch.setattr(TeacherInput, "forward", teacher_forward)
    config = _tiny_run(stanford_dir, tmp_path / "student", name="deit_tiny_distilled_patch16_224")
    config.distill = DistillConfig(teacher=str(folder))
    finetune(config)
    plain = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # timm alone, with its own config
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    assert seen
    for x, logits in seen:
        with torch.no_grad():
            expected = plain(((x * std + mean) - 0.5) / 0.5)  # the same images in [0, 1], normalised with 0.5
            unconverted = plain(x)
        assert torch.allclose(logits, expected, atol=1e-5)
        assert not torch.allclose(logits, unconverted, atol=1e-2)  # what the teacher was shown before: other logits
    student = (IMAGENET_MEAN, IMAGENET_STD)
    save_for_timm(model, folder, ids, names, 32, half, half, preprocess="official")
    with pytest.raises(ConfigError) as error:
        build_teacher(str(folder), 4, 32, student=student, preprocess="default")
    assert "data.preprocess official" in str(error.value) and one_sentence(str(error.value))
    save_for_timm(model, folder, ids, names, 32, half, half)
    saved = json.loads((folder / "config.json").read_text())
    saved["pretrained_cfg"]["interpolation"] = "bilinear"  # a timm folder fine-tuned elsewhere, resized bilinear
    (folder / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError) as error:
        build_teacher(str(folder), 4, 32, student=student)
    assert "records bilinear resizing" in str(error.value) and one_sentence(str(error.value))


def test_only_a_student_with_a_distillation_head_takes_a_teacher(teacher_run):
    best = str(teacher_run / "best")
    with pytest.raises(ConfigError) as error:
        check_teacher(ModelConfig(name="test_vit"), best)
    assert "test_vit has none" in str(error.value) and one_sentence(str(error.value))
    with pytest.raises(ConfigError, match="distillation head"):  # also when the model is built
        build_model(ModelConfig(name="test_vit", pretrained=False, train_mode="full"), 4, 32, teacher=best)
    check_teacher(ModelConfig(name="deit_tiny_distilled_patch16_224"), best)  # accepted
    student = ModelConfig(name="deit_tiny_distilled_patch16_224", pretrained=False, train_mode="full")
    assert has_distillation_head(build_model(student, 4, 32, teacher=best))


# --- the recipes ----------------------------------------------------------------------------------------------------

# The full recipes and the model each trains; their values are docs/recipes.md's source table (SOURCE_TABLE).
RECIPES = {
    "full/vit_l.py": "vit_l",
    "full/cait_s36.py": "cait_s36",
    "full/deit_b_distilled.py": "deit_b_distilled",
    "full/swin_l.py": "swin_l",
    "deit_b_from_swin.py": "deit_b_distilled",
}
RECIPE_GROUPS = {"all": list(RECIPES), "DeiT recipes": ["full/deit_b_distilled.py", "full/cait_s36.py",
                                                       "deit_b_from_swin.py"]}  # fmt: skip
# set by every recipe for reasons of the library, not of a source (the table's closing paragraph says so)
NOT_FROM_SOURCES = {"model.name", "model.train_mode", "model.grad_checkpointing", "train.micro_batch_size",
                    "train.output_dir"}  # fmt: skip


def _cell_value(cell: str):
    text = cell.strip().strip("`")
    if text in ("true", "false"):
        return text == "true"
    if text == "None":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def source_table() -> dict[str, dict[str, object]]:
    """docs/recipes.md's table of the full recipes' values: recipe -> {dotted field: value}."""
    text = (ROOT / "docs" / "recipes.md").read_text()
    section = text[text.index("### The recipes and where each value comes from") :]
    lines = section.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| recipes |"))) + 2  # after header and rule
    table: dict[str, dict[str, object]] = {path: {} for path in RECIPES}
    for row in lines[start:]:
        if not row.startswith("| "):  # the table's end
            break
        recipes, field, value = (cell.strip() for cell in row.strip("|").split("|")[:3])
        if field == "-":  # a source setting with no field here (stated with its reason)
            continue
        for path in RECIPE_GROUPS.get(recipes, [recipes.strip("`")]):
            assert field.strip("`") not in table[path], f"{path}: {field} twice in the table"
            table[path][field.strip("`")] = _cell_value(value)
    return table


def _flat(config: FinetuneConfig) -> dict[str, object]:
    return {f"{k}.{f}": v for k, section in config.to_dict().items() for f, v in section.items()}


def test_every_full_recipe_is_listed():
    full = {f"full/{p.name}" for p in (ROOT / "recipes" / "full").glob("*.py") if "_from_probe" not in p.name}
    assert full | {"deit_b_from_swin.py"} == set(RECIPES)  # the *_from_probe variants: test_probe_then_finetune.py


@pytest.mark.parametrize("path", list(RECIPES))
def test_each_full_recipe_equals_the_source_table_of_docs_recipes(path):
    """Every value in docs/recipes.md's table is the recipe's, and every field the recipe sets away from the library's
    default has a row there (with its source and the reason for any difference)."""
    import runpy

    config = runpy.run_path(str(ROOT / "recipes" / path))["config"]  # not __main__: nothing runs
    resolved, defaults, table = _flat(config), _flat(FinetuneConfig()), source_table()[path]
    assert table, f"{path} has no rows in docs/recipes.md"
    for field, value in table.items():
        assert resolved[field] == value, f"{path}: {field} is {resolved[field]!r}, the table says {value!r}"
    unlisted = {f for f in resolved if resolved[f] != defaults[f] and f not in table} - NOT_FROM_SOURCES
    assert not unlisted, f"{path} sets {sorted(unlisted)} without a row in docs/recipes.md's source table"
    assert resolved["model.name"] == RECIPES[path] and resolved["model.train_mode"] == "full"


def _recipe(path: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "recipes" / path), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", list(RECIPES))
def test_full_recipe_prints_its_values(path):
    """What --print-config shows (the command line's resolved config) is the table's too."""
    done = _recipe(path, "--print-config")
    assert done.returncode == 0, done.stderr
    printed = _flat(FinetuneConfig.from_dict(json.loads(done.stdout)))
    for field, value in source_table()[path].items():
        assert printed[field] == value, field
    assert printed["model.pretrained"] is True and printed["train.output_dir"] == f"outputs/full/{Path(path).stem}"


@pytest.mark.slow
def test_the_distillation_recipe_refuses_to_start_without_a_teacher():
    done = _recipe("deit_b_from_swin.py", "--train.epochs", "1")
    assert done.returncode == 2 and done.stdout == ""
    message = done.stderr.strip().removeprefix("error: ")
    assert "--distill.teacher outputs/swin_l/best" in message and one_sentence(message)


@pytest.mark.slow
@pytest.mark.parametrize("path", list(RECIPES))
def test_full_recipe_runs_one_optimizer_step_on_a_tiny_stand_in(
    path, stanford_dir, teacher_run, tmp_path, monkeypatch, capsys
):
    """`python recipes/<path> ...` as Python runs a file (runpy, as __main__, with that command line in sys.argv), in
    this process whose imports are paid; test_full_recipe_prints_its_values runs each file in a process of its own.
    It exits with no error and trains one optimizer step, writing last/."""
    import runpy

    distilled = RECIPES[path] == "deit_b_distilled"
    out = tmp_path / "out"
    args = [
        "--model.name", "deit_tiny_distilled_patch16_224" if distilled else "test_vit",
        "--model.pretrained", "false",
        *(("--distill.teacher", str(teacher_run / "best")) if path == "deit_b_from_swin.py" else ()),
        "--data.source", str(stanford_dir), "--data.image_size", "32", "--data.num_workers", "0",
        "--data.max_train_samples", "8", "--data.max_eval_samples", "4",
        "--train.epochs", "1", "--train.batch_size", "8", "--train.micro_batch_size", "4",
        "--train.mixed_precision", "no", "--train.progress", "false", "--train.output_dir", str(out),
        "--optim.warmup_epochs", "0.5",  # the recipes warm up for 5 of 30 epochs; one epoch needs a shorter warmup
    ]  # fmt: skip
    recipe = str(ROOT / "recipes" / path)
    monkeypatch.setattr(sys, "argv", [recipe, *args])
    returncode = 0
    try:
        runpy.run_path(recipe, run_name="__main__")
    except SystemExit as exit_:  # what ends the process with a status: a refusal or a stop
        returncode = exit_.code
    assert returncode == 0, capsys.readouterr().err[-3000:]
    assert (out / "last" / "model.safetensors").is_file()
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 1  # 8 images, batch 8: one optimizer step
