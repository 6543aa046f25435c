"""model.train_mode lora, through peft: which layers get adapters on the four paper models, what trains, the checks
before anything starts, and a run's outputs: best/ and last/ plain timm folders (adapters merged) with the trained
LoRA model's logits, the adapter alone loadable with peft, and a LoRA training checkpoint read back for inference.
Resume after SIGKILL and 1 vs 2 processes in lora mode: tests/test_resilience.py."""

from __future__ import annotations

import json
import re
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file

from tiny_transformers import cli, finetune
from tiny_transformers.config import DataConfig, FinetuneConfig, ModelConfig, OptimConfig, TrainConfig
from tiny_transformers.errors import ConfigError
from tiny_transformers.lora import check_targets, target_names
from tiny_transformers.models import build_model
from tiny_transformers.optim import build_optimizer
from tiny_transformers.paper import PAPER_MODELS
from tiny_transformers.validation import validate
from tiny_transformers.weights import build_trained_model, describe_trained_weights

peft = pytest.importorskip("peft")


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and not re.search(r"[.;:]\s+[A-Z][a-z]", message)


def lora(name: str = "test_vit", **fields) -> ModelConfig:
    return ModelConfig(name=name, pretrained=False, train_mode="lora", **fields)


# --- which layers, what trains --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_the_default_targets_are_every_blocks_attention_and_mlp_layers(name):
    with torch.device("meta"):  # shapes only
        model = timm.create_model(PAPER_MODELS[name].timm_name, pretrained=False, num_classes=200)
    names = target_names(model, ModelConfig().lora_targets)
    blocks = [m for m in model.modules() if hasattr(m, "attn") and hasattr(m, "mlp")]  # every transformer block
    # qkv (or CaiT's class attention's q, k and v), proj, fc1 and fc2 in each block; nothing else
    assert len(names) == sum(6 if hasattr(block.attn, "q") else 4 for block in blocks)
    assert all(isinstance(model.get_submodule(n), torch.nn.Linear) for n in names)
    assert not any(n.startswith(("head", "patch_embed")) or "downsample" in n for n in names)


def test_only_the_adapters_and_the_heads_train_and_the_model_starts_as_it_was():
    torch.manual_seed(0)
    plain = build_model(ModelConfig(name="deit_tiny_distilled_patch16_224", pretrained=False), 4, 32).eval()
    torch.manual_seed(0)
    model = build_model(lora("deit_tiny_distilled_patch16_224", lora_rank=4), 4, 32).eval()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    adapters = {n for n in trainable if ".lora_A." in n or ".lora_B." in n}
    heads = set(trainable) - adapters
    assert {n.split(".")[2] for n in heads} == {"head", "head_dist"}  # both heads, whole (weight and bias)
    assert {n.rsplit(".", 1)[-1] for n in heads} == {"weight", "bias"}
    # rank 4: A (4 x in) and B (out x 4) on each qkv, proj, fc1, fc2 of the 12 blocks (width 192, MLP 768)
    per_block = 4 * ((192 + 576) + (192 + 192) + (192 + 768) + (768 + 192))
    assert sum(trainable[n].numel() for n in adapters) == 12 * per_block
    assert sum(trainable[n].numel() for n in heads) == 2 * (192 * 4 + 4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))  # B starts at zero: the same function, bitwise


def test_gradient_checkpointing_gives_the_adapters_the_same_gradients():
    grads = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(lora(lora_dropout=0.0, grad_checkpointing=checkpointing, drop_path_rate=0.0), 4, 32)
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                torch.nn.init.normal_(p)  # B = 0 would give A no gradient
        F.cross_entropy(
            model(torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))), torch.arange(3)
        ).backward()
        grads[checkpointing] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads[True].values())  # timm's non-reentrant checkpoint reaches the adapters
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_layer_decay_groups_the_adapters_by_their_block():
    model = build_model(lora(), 4, 32)
    optimizer = build_optimizer(OptimConfig(layer_decay=0.5), model)
    scale = {id(p): group["lr_scale"] for group in optimizer.param_groups for p in group["params"]}
    named = {n.removeprefix("base_model.model."): p for n, p in model.named_parameters() if p.requires_grad}
    depth = len(model.blocks)
    assert len(scale) == len(named)  # every trainable parameter, nothing frozen
    assert scale[id(named["blocks.0.attn.qkv.lora_A.default.weight"])] == pytest.approx(0.5**depth)
    assert scale[id(named[f"blocks.{depth - 1}.mlp.fc2.lora_B.default.weight"])] == pytest.approx(0.5)
    assert scale[id(named["head.modules_to_save.default.weight"])] == 1.0


# --- refused before anything starts ---------------------------------------------------------------------------------


def test_lora_without_peft_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # what importlib sees where peft is not installed
    with pytest.raises(ConfigError) as error:
        validate(FinetuneConfig(model=lora()), num_processes=1)
    assert "pip install 'tiny_transformers[lora]'" in str(error.value) and one_sentence(str(error.value))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"lora_rank": 0}, "model.lora_rank must be positive, got 0."),
        ({"lora_alpha": -1.0}, "model.lora_alpha must be positive, got -1.0."),
        ({"lora_dropout": 1.5}, "model.lora_dropout is a probability and must lie in [0, 1], got 1.5."),
        ({"lora_targets": ()}, "model.lora_targets is empty;"),
        ({"head_from": "outputs/vit_l"}, "model.head_from starts full fine-tuning from a probe's head"),
    ],
)
def test_bad_lora_settings_are_one_sentence(fields, expected):
    with pytest.raises(ConfigError) as error:
        validate(FinetuneConfig(model=lora(**fields)), num_processes=1)
    assert str(error.value).startswith(expected) and one_sentence(str(error.value))


def test_targets_that_name_no_layer_are_refused_naming_the_layers_there_are():
    with pytest.raises(ConfigError) as error:
        check_targets(lora(lora_targets=("query", "value")))  # transformers' ViT names, not timm's
    message = str(error.value)
    assert "model.lora_targets (query value) names none of test_vit's linear layers" in message
    assert message.endswith(
        "(their last names: fc1, fc2, proj, qkv); use some of them, e.g. --model.lora_targets fc1 fc2 proj qkv."
    )
    assert one_sentence(message)  # the head is trained whole, never suggested
    check_targets(lora(lora_targets=("query", "qkv")))  # one that fits is enough


# --- a run and what it leaves ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(stanford_dir, tmp_path_factory):
    """The documented command on test_vit from a saved 'pretrained' file (1000 classes: the head is new), 2 epochs."""
    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(1)
    base = root / "base.safetensors"
    save_file(timm.create_model("test_vit", pretrained=False, img_size=32).state_dict(), base)
    out = root / "run"
    cli.main(
        ["train", "vit_l", "--model.train_mode", "lora", "--model.name", "test_vit", "--model.checkpoint", str(base)]
        + ["--model.lora_rank", "4", "--data.source", str(stanford_dir), "--data.image_size", "32"]
        + ["--data.num_workers", "0", "--data.preprocess", "default", "--train.epochs", "2", "--train.batch_size", "8"]
        + ["--train.micro_batch_size", "4", "--train.mixed_precision", "no", "--train.progress", "false"]
        + ["--train.output_dir", str(out)]
    )
    return base, out


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _trained_lora_model(out):
    """The LoRA model as training left it: built as the run built it, the last checkpoint's weights loaded."""
    config = FinetuneConfig.from_dict(json.loads((out / "config.json").read_text()))
    model = build_model(config.model, 4, 32)
    last = sorted((out / "checkpoints").iterdir())[-1]
    model.load_state_dict(load_file(last / "model.safetensors"))
    return model


def test_last_is_a_plain_timm_folder_with_the_trained_lora_models_logits(lora_run):
    base, out = lora_run
    exported = load_file(out / "last" / "model.safetensors")
    reference = timm.create_model("test_vit", pretrained=False, num_classes=4).state_dict()
    assert exported.keys() == reference.keys()  # no adapter, no wrapper in the names
    timm_model = timm.create_model(f"local-dir:{out / 'last'}", pretrained=True)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    lora_model = _trained_lora_model(out)
    assert ".lora_B." in " ".join(n for n, _ in lora_model.named_parameters())
    torch.testing.assert_close(_logits(timm_model, x), _logits(lora_model, x), rtol=0, atol=1e-5)
    # what LoRA froze is the base's, bitwise; what it adapted moved (the adapters learned); the head is new
    start = load_file(base)
    for key in ("patch_embed.proj.weight", "blocks.0.norm1.weight", "pos_embed", "cls_token"):
        assert torch.equal(exported[key], start[key]), key
    for key in ("blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight"):
        assert not torch.equal(exported[key], start[key]), key
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and (out / "best" / "model.safetensors").is_file()


def test_transformers_loads_last_with_timms_logits(lora_run):
    transformers = pytest.importorskip("transformers")
    _, out = lora_run
    auto = transformers.AutoModelForImageClassification.from_pretrained(str(out / "last")).eval()
    timm_model = timm.create_model(f"local-dir:{out / 'last'}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(auto(pixel_values=x).logits, timm_model(x), rtol=0, atol=1e-5)


def test_the_adapter_alone_loads_onto_the_base_model_with_peft(lora_run):
    base, out = lora_run
    for which in ("best", "last"):
        assert (out / which / "adapter" / "adapter_config.json").is_file()
    model = timm.create_model("test_vit", pretrained=False, num_classes=4, img_size=32)
    model.load_state_dict({k: v for k, v in load_file(base).items() if not k.startswith("head.")}, strict=False)
    adapted = peft.PeftModel.from_pretrained(model, str(out / "last" / "adapter"))
    plain = timm.create_model(f"local-dir:{out / 'last'}", pretrained=True)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(_logits(adapted, x), _logits(plain, x), rtol=0, atol=1e-5)


def test_a_lora_checkpoint_is_read_back_merged_for_inference(lora_run):
    _, out = lora_run
    last = sorted((out / "checkpoints").iterdir())[-1]
    model = build_trained_model(describe_trained_weights(last))
    assert type(model).__name__ == "VisionTransformer"  # plain timm, adapters merged
    plain = timm.create_model(f"local-dir:{out / 'last'}", pretrained=True)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(_logits(model, x), _logits(plain, x), rtol=0, atol=1e-5)


def test_with_an_ema_last_holds_the_ema_merged(stanford_dir, tmp_path):
    config = FinetuneConfig(
        model=lora(lora_rank=2),
        data=DataConfig(source=str(stanford_dir), image_size=32, num_workers=0),
        train=TrainConfig(
            epochs=1, batch_size=8, micro_batch_size=4, mixed_precision="no", output_dir=str(tmp_path), progress=False,
            ema_decay=0.5,
        ),
    )  # fmt: skip
    finetune(config)
    saved = json.loads((tmp_path / "last" / "config.json").read_text())
    assert saved["tiny_transformers"]["weights"] == "ema"
    reference = timm.create_model("test_vit", pretrained=False, num_classes=4).state_dict()
    assert load_file(tmp_path / "last" / "model.safetensors").keys() == reference.keys()
    assert (tmp_path / "last" / "adapter" / "adapter_model.safetensors").is_file()
    # adapter/ and last/ are the same model, the EMA's: the adapter on the run's random start (the same seed) ...
    set_seed(0)
    start = build_model(ModelConfig(name="test_vit", pretrained=False), 4, 32)
    adapted = peft.PeftModel.from_pretrained(start, str(tmp_path / "last" / "adapter"))
    x = torch.randn(3, 3, 32, 32)
    plain = timm.create_model(f"local-dir:{tmp_path / 'last'}", pretrained=True)
    torch.testing.assert_close(_logits(adapted, x), _logits(plain, x), rtol=0, atol=1e-5)
    # ... and not the raw weights of the run's checkpoint
    raw = load_file(next((tmp_path / "checkpoints").iterdir()) / "model.safetensors")
    ema = load_file(tmp_path / "last" / "adapter" / "adapter_model.safetensors")
    key = "blocks.0.attn.qkv.lora_B.weight"
    assert not torch.equal(
        ema[f"base_model.model.{key}"], raw[f"base_model.model.{key.replace('.weight', '.default.weight')}"]
    )


def test_export_carries_the_merged_weights_and_not_the_adapter(lora_run):
    _, out = lora_run
    cli.main(["export", str(out)])
    files = sorted(p.name for p in (out / "export").iterdir())
    assert "adapter" not in files and "model.safetensors" in files
    exported, last = (load_file(out / folder / "model.safetensors") for folder in ("export", "last"))
    assert exported.keys() == last.keys() and all(torch.equal(exported[k], last[k]) for k in last)


def test_a_bf16_run_keeps_fp32_adapters_and_exports_the_lora_models_logits(stanford_dir, tmp_path, bf16_process):
    """bf16 autocast (the recipes' GPU precision, here on the CPU) with an fp32 evaluation: peft's layers run under
    Accelerate's autocast wrapper and without it (engine.own_forward), the adapters stay fp32 weights, and last/
    is the trained LoRA model merged."""
    config = FinetuneConfig(
        model=lora(lora_rank=4, lora_dropout=0.1),
        data=DataConfig(source=str(stanford_dir), image_size=32, num_workers=0),
        train=TrainConfig(
            epochs=1, batch_size=8, micro_batch_size=4, mixed_precision="bf16", eval_precision="fp32",
            output_dir=str(tmp_path), progress=False,
        ),
    )  # fmt: skip
    finetune(config)
    saved = load_file(next((tmp_path / "checkpoints").iterdir()) / "model.safetensors")
    adapters = {k: v for k, v in saved.items() if ".lora_" in k}
    assert adapters and all(v.dtype == torch.float32 and v.isfinite().all() for v in adapters.values())
    x = torch.randn(3, 3, 32, 32)
    plain = timm.create_model(f"local-dir:{tmp_path / 'last'}", pretrained=True)
    torch.testing.assert_close(_logits(plain, x), _logits(_trained_lora_model(tmp_path), x), rtol=0, atol=1e-5)
