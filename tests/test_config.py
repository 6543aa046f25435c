"""Config: dotted overrides, validation messages, derived numbers, the recipes' paper values."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_transformers import FinetuneConfig, TrainConfig, paper_config
from tiny_transformers.cli import parse_config
from tiny_transformers.errors import ConfigError
from tiny_transformers.paper import PAPER_MODELS
from tiny_transformers.plan import Plan
from tiny_transformers.validation import validate

ROOT = Path(__file__).resolve().parents[1]


def test_dotted_overrides_reach_nested_fields():
    config, show = parse_config(
        FinetuneConfig(),
        [
            "--train.epochs",
            "1",
            "--data.source",
            "./tiny-imagenet-200",
            "--optim.lr",
            "5e-4",
            "--model.pretrained",
            "False",
            "--model.train_mode",
            "full",
            "--train.log_with",
            "tensorboard",
        ],
    )
    assert (config.train.epochs, config.data.source, config.optim.lr) == (1, "./tiny-imagenet-200", 5e-4)
    assert config.model.pretrained is False and config.model.train_mode == "full"
    assert config.train.log_with == ("tensorboard",)
    assert show is False
    assert config.augment.mixup_alpha == 0.8  # untouched fields keep the default


@pytest.mark.parametrize("value,expected", [("false", False), ("TRUE", True), ("0", False), ("yes", True)])
def test_booleans_accept_common_spellings(value, expected):
    config, _ = parse_config(FinetuneConfig(), ["--model.pretrained", value])
    assert config.model.pretrained is expected


def test_mistyped_field_names_the_closest(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(FinetuneConfig(), ["--train.epoch", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr()
    assert "--train.epochs" in err.out + err.err


def test_invalid_choice_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_config(FinetuneConfig(), ["--model.train_mode", "hed"])
    assert "head" in "".join(capsys.readouterr())


def test_batch_size_that_does_not_divide_suggests_valid_values():
    config = FinetuneConfig(train=TrainConfig(batch_size=100, micro_batch_size=32, mixed_precision="no"))
    with pytest.raises(ConfigError, match=r"train.batch_size 100 is not a multiple of .* = 64; use 64 or 128"):
        validate(config, num_processes=2)
    validate(FinetuneConfig(train=TrainConfig(batch_size=128, micro_batch_size=32, mixed_precision="no")), 2)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("augment.random_erasing", 1.5, "augment.random_erasing is a probability"),
        ("train.epochs", 0, "train.epochs must be positive"),
        ("data.num_workers", -1, "data.num_workers must be zero or positive"),
        ("train.seed", 2**32, "train.seed 4294967296 is above 4294967295 .2..32 - 1., the largest seed numpy accepts"),
        ("train.resume", "/no/such/checkpoint", "train.resume '/no/such/checkpoint' does not exist"),
        (
            "model.checkpoint",
            "/no/such/weights.safetensors",
            "model.checkpoint '/no/such/weights.safetensors' does not exist",
        ),
        ("data.source", " ", "data.source is empty; give a Hub dataset id"),
    ],
)
def test_bad_values_get_one_sentence(field, value, message):
    config = FinetuneConfig(train=TrainConfig(mixed_precision="no"))
    section, name = field.split(".")
    setattr(getattr(config, section), name, value)
    with pytest.raises(ConfigError, match=message):
        validate(config, num_processes=1)


def test_fp16_without_gpu_names_the_fix():
    with pytest.raises(ConfigError, match="--train.mixed_precision bf16"):
        validate(FinetuneConfig(train=TrainConfig(mixed_precision="fp16")), num_processes=1, cuda_available=False)
    for name in PAPER_MODELS:  # the override the sentence names makes every paper recipe run on a CPU
        config = paper_config(name)
        config.train.mixed_precision = "bf16"
        validate(config, num_processes=1, cuda_available=False)


def test_plan_for_the_paper_setting():
    plan = Plan.build(paper_config("swin_l"), num_processes=1, train_samples=100_000)
    assert plan.accumulation_steps == 4  # 128 / (32 x 1)
    assert plan.micro_batches_per_epoch == 3125
    assert plan.steps_per_epoch == 782  # ceil(3125 / 4)
    assert plan.total_steps == 782 * 30
    two = Plan.build(paper_config("swin_l"), num_processes=2, train_samples=100_000)
    assert (two.accumulation_steps, two.steps_per_epoch, two.total_steps) == (2, 782, 782 * 30)


def test_config_round_trips_through_json():
    config = paper_config("deit_b_distilled")
    config.train.log_with = ("tensorboard",)
    assert FinetuneConfig.from_dict(json.loads(config.to_json())) == config
    with pytest.raises(ConfigError, match="train.epoch"):
        FinetuneConfig.from_dict({"train": {"epoch": 3}})


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_recipe_prints_the_paper_values(name):
    out = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / f"{name}.py"), "--print-config"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    printed = json.loads(out)
    paper = PAPER_MODELS[name]
    assert printed["model"] == {
        "name": name,
        "pretrained": True,
        "checkpoint": None,
        "train_mode": "head",
        "lora_rank": 16,  # lora mode's settings, unused in head mode
        "lora_alpha": 16.0,
        "lora_dropout": 0.0,
        "lora_targets": ["qkv", "q", "k", "v", "proj", "fc1", "fc2"],
        "drop_path_rate": paper.drop_path_rate,
        "head_init": "linear",  # exact mode: the official code's reset_classifier head
        "grad_checkpointing": False,  # full fine-tuning's tools stay off in the paper's head-only recipes
        "fast_attention": False,  # not default-on until a GPU measures it faster
        "backbone_dtype": "fp32",  # likewise (and the recipes' fp16 autocast and fp32 evaluation need fp32 weights)
        "head_from": None,  # a new head, as the official code's
    }
    assert printed["distill"] == {"teacher": None, "type": "hard", "temperature": 1.0, "alpha": 0.5}
    assert printed["optim"]["name"] == "adamw" and printed["optim"]["lr"] == 1e-3
    assert printed["optim"]["weight_decay"] == 0.05
    assert printed["train"]["epochs"] == 30 and printed["train"]["batch_size"] == 128
    assert printed["train"]["micro_batch_size"] == paper.micro_batch_size
    assert printed["data"]["image_size"] == 384 and printed["data"]["normalization"] == "imagenet"
    assert printed["data"]["preprocess"] == "official" and printed["data"]["drop_last"] is True
    assert printed["optim"]["decay_all"] is True and printed["train"]["eval_precision"] == "fp32"
    assert printed["augment"] == {
        "mixup_alpha": 0.8,
        "cutmix_alpha": 1.0,
        "mixup_prob": 1.0,
        "switch_prob": 0.5,
        "label_smoothing": 0.1,
        "random_erasing": 0.25,
        "randaugment_ops": 2,  # exact mode: the official code's RandAugment(2, magnitude 0), never off
        "randaugment_magnitude": 0,
        "timm_randaugment": None,  # timm's RandAugment (the full recipes' sources') is not the official code's
    }
    assert {k: printed["optim"][k] for k in ("layer_decay", "warmup_epochs", "clip_grad")} == dict.fromkeys(
        ("layer_decay", "warmup_epochs", "clip_grad"), 0.0
    )
    assert printed["train"]["ema_decay"] == 0.0
    # the recipe file and `tiny-transformers train NAME` describe the same run
    assert FinetuneConfig.from_dict(printed) == paper_config(name)


@pytest.mark.parametrize(
    "variable,plugin", [("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")]
)
def test_unsupported_accelerate_plugins_are_refused_before_training(monkeypatch, variable, plugin):
    monkeypatch.setenv(variable, "true")
    with pytest.raises(ConfigError, match=f"configured for {plugin}, which tiny_transformers does not support"):
        validate(FinetuneConfig(train=TrainConfig(mixed_precision="no")), num_processes=1)


def test_unknown_command_suggests_the_closest(capsys):
    from tiny_transformers.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["trian", "swin_l"])
    assert exit_info.value.code == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first == (
        "error: unknown command 'trian'; choose one of train, evaluate, export, push, predict, ablate, "
        "benchmark. Did you mean 'train'?"
    )


def numeric_fields() -> list[tuple[str, str, type]]:
    """(section, field, int or float) for every numeric config field, found from the dataclasses themselves."""
    import typing

    found = []
    for section in dataclasses.fields(FinetuneConfig):
        hints = typing.get_type_hints(section.default_factory)
        for field in dataclasses.fields(section.default_factory):
            kinds = {hints[field.name]} | set(typing.get_args(hints[field.name]))
            for kind in (float, int):
                if kind in kinds and bool not in kinds:
                    found.append((section.name, field.name, kind))
                    break
    return found


@pytest.mark.parametrize(("section", "name", "kind"), numeric_fields())
def test_every_numeric_field_has_its_range_checked(section, name, kind):
    """nan for floats (it passes every comparison) and -1 for ints: each is refused with the field's name."""
    config = FinetuneConfig(train=TrainConfig(mixed_precision="no"))
    setattr(getattr(config, section), name, float("nan") if kind is float else -1)
    with pytest.raises(ConfigError, match=rf"^{section}\.{name} (must|is a probability)"):
        validate(config, num_processes=1)


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_non_finite_learning_rate_from_the_command_line_is_one_sentence(value):
    config, _ = parse_config(FinetuneConfig(train=TrainConfig(mixed_precision="no")), ["--optim.lr", value])
    with pytest.raises(ConfigError, match=f"^optim.lr must be a finite number, got {value}"):
        validate(config, num_processes=1)


def test_an_empty_output_dir_is_refused():
    with pytest.raises(ConfigError, match="train.output_dir is empty"):
        validate(FinetuneConfig(train=TrainConfig(mixed_precision="no", output_dir=" ")), num_processes=1)


def literal_fields() -> list[tuple[str, str, tuple]]:
    """(section, field, choices) for every config field typed ``Literal[...]``, found from the dataclasses."""
    import typing

    found = []
    for section in dataclasses.fields(FinetuneConfig):
        for name, hint in typing.get_type_hints(section.default_factory).items():
            if typing.get_origin(hint) is typing.Literal:
                found.append((section.name, name, typing.get_args(hint)))
    return found


@pytest.mark.parametrize(("section", "name", "choices"), literal_fields())
def test_every_choice_field_is_checked_for_python_callers(section, name, choices):
    config = FinetuneConfig(train=TrainConfig(mixed_precision="no"))
    setattr(getattr(config, section), name, "nonsense")
    listed = ", ".join(repr(choice) for choice in choices)
    with pytest.raises(ConfigError, match=rf"^{section}\.{name} 'nonsense' is not one of {listed}; set one of those"):
        validate(config, num_processes=1)


def test_finetune_from_python_refuses_a_bad_precision_or_tracker_before_anything(tmp_path):
    from tiny_transformers import finetune

    config = FinetuneConfig(train=TrainConfig(output_dir=str(tmp_path / "out"), mixed_precision="fp32"))
    with pytest.raises(ConfigError) as refused:
        finetune(config)
    assert str(refused.value) == (
        "train.mixed_precision 'fp32' is not one of 'bf16', 'fp16', 'no'; set one of those ('no' is full fp32)."
    )
    config.train.mixed_precision, config.train.log_with = "no", ("nonsense",)
    with pytest.raises(ConfigError, match="^train.log_with 'nonsense' is not a tracker Accelerate knows; choose among"):
        finetune(config)
    config.train.log_with = "tensorboard"  # a string, not a tuple
    with pytest.raises(ConfigError, match=r"^train.log_with is a tuple of tracker names.*use \('tensorboard',\)\.$"):
        finetune(config)
    assert not (tmp_path / "out").exists()


def test_an_unknown_tracker_on_the_command_line_is_one_sentence(tmp_path, capsys):
    from tiny_transformers import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "test_vit", "--train.log_with", "nonsense", "--train.output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith("error: train.log_with 'nonsense' is not a tracker Accelerate knows; choose among all, ")
    )
    assert not (tmp_path / "out").exists()


def test_every_error_class_is_importable_from_the_package():
    import tiny_transformers
    from tiny_transformers import errors, train

    assert tiny_transformers.TrainingDiverged is train.TrainingDiverged is errors.TrainingDiverged
    for name in ("ConfigError", "DataError", "ModelError", "CheckpointError", "PublishError", "TrainingInterrupted"):
        error = getattr(tiny_transformers, name)
        assert issubclass(error, tiny_transformers.TinyTransformersError) and name in tiny_transformers.__all__


def test_path_fields_are_compared_as_the_folders_they_name(tmp_path, monkeypatch):
    """data.source, model.checkpoint and model.head_from written as `probe/` or `./probe` are one run's config."""
    from tiny_transformers.config import trajectory_differences

    (tmp_path / "probe").mkdir()
    monkeypatch.chdir(tmp_path)
    saved = FinetuneConfig()
    saved.data.source, saved.model.checkpoint, saved.model.head_from = "probe/", "probe/", "probe/"
    current = FinetuneConfig.from_dict(saved.to_dict())
    current.data.source, current.model.checkpoint, current.model.head_from = "./probe", "./probe", "./probe"
    assert trajectory_differences(saved.to_dict(), current) == []
    current.model.head_from = "elsewhere"
    assert trajectory_differences(saved.to_dict(), current) == ["model.head_from"]


def test_a_config_json_with_the_old_distillation_names_loads_and_resumes(tmp_path):
    """model.teacher, augment.distill_type and augment.distill_temperature moved to the distill section: a run
    folder written before the move reads back as the same run, and resuming it with the new names changes nothing."""
    from tiny_transformers.config import DistillConfig
    from tiny_transformers.rundir import RunDir

    current = paper_config("deit_b_distilled")
    current.distill = DistillConfig(teacher="outputs/swin_l/best", type="soft", temperature=3.0)
    old = current.to_dict()
    distill = old.pop("distill")
    old["model"]["teacher"] = distill["teacher"]
    old["augment"].update(distill_type=distill["type"], distill_temperature=distill["temperature"])
    (tmp_path / "config.json").write_text(json.dumps(old))
    folder = RunDir(tmp_path)
    assert folder.read_config() == current
    assert folder.trajectory_changes(current) == []
    changed = dataclasses.replace(current, distill=dataclasses.replace(current.distill, type="hard"))
    assert folder.trajectory_changes(changed) == ["distill.type"]  # a real change is still one
