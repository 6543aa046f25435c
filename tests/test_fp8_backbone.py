"""model.backbone_dtype fp8: torchao's fp8 linear layers in the frozen backbone, tested on the CPU.

The ``fp8_on_this_cpu`` fixture (conftest.py) lets torchao's real fp8 tensors run on the CPU. What the tests prove:
each layer's output is fp8's rounding of bf16's (not bf16's itself); the module tree, state_dict, checkpoints and
exports are those of a bf16 backbone; an EMA's copy computes with the same fp8 weights; dynamo compiles the fp8
backbone in one graph; a run resumes bitwise; and a machine that cannot run it gets one sentence. The speed is the
GPU's (benchmarks/gpu.sh).
"""

import copy
import dataclasses
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch._dynamo.testing import CompileCounter

from tiny_transformers import FinetuneConfig, ModelConfig, TrainConfig, finetune
from tiny_transformers import backbone as backbone_module
from tiny_transformers.backbone import cast_backbone, compile_backbone, fp8_backbone, frozen_matmul_modules
from tiny_transformers.errors import ConfigError
from tiny_transformers.models import build_model, unwrap_logits
from tiny_transformers.validation import validate

sys.path.insert(0, str(Path(__file__).parent))
from test_backbone import assert_resumes_bitwise, head_config  # noqa: E402

MODELS = [
    ("test_vit", 32),
    ("deit_tiny_distilled_patch16_224", 32),
    ("cait_xxs24_224", 32),
    ("swin_tiny_patch4_window7_224", 224),
]


def fp8_capable_linears(model):
    """The frozen linear layers whose dimensions the fp8 matmul takes (multiples of 16), counted independently."""
    return [
        name
        for name, m in frozen_matmul_modules(model)
        if isinstance(m, torch.nn.Linear) and m.in_features % 16 == 0 and m.out_features % 16 == 0
    ]


def relative_error(reference, other):
    return ((other.float() - reference.float()).norm() / reference.float().norm()).item()


@pytest.mark.parametrize("name, size", MODELS)
def test_fp8_layers_round_bf16_outputs_and_keep_the_state_dict(name, size, fp8_on_this_cpu):
    """Every frozen linear layer that fp8 can take computes in fp8 (the rest, e.g. CaiT's 8x8 talking-heads mixes,
    stay bf16): its output is near its bf16 output (relative error under 0.1; e4m3 keeps 3 mantissa bits: up to
    6.25% per element, 3.4-3.9% here) and not equal to it, the model's features stay within 0.15 of bf16's, and the
    state_dict is the bf16 backbone's, bitwise (nothing of fp8 reaches a checkpoint or an export)."""
    if not timm.is_model(name):
        pytest.skip(f"{name} is not in this timm")
    torch.manual_seed(0)
    bf16 = build_model(ModelConfig(name=name, pretrained=False), 5, size)
    cast_backbone(bf16)
    fp8 = copy.deepcopy(bf16)
    expected = fp8_capable_linears(bf16)
    assert fp8_backbone(fp8) == len(expected) > 0
    assert [n for n, m in fp8.named_modules() if "forward" in vars(m)] == expected

    layer_name = expected[len(expected) // 2]
    layer_bf16, layer_fp8 = bf16.get_submodule(layer_name), fp8.get_submodule(layer_name)
    x = torch.randn(4, 7, layer_bf16.in_features, dtype=torch.bfloat16)
    with torch.no_grad():
        a, b = layer_bf16(x), layer_fp8(x)
    assert b.dtype == torch.bfloat16 and b.shape == a.shape
    assert 1e-3 < relative_error(a, b) < 0.1

    images = torch.randn(4, 3, size, size)
    features = []
    for model in (bf16.eval(), fp8.eval()):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            features.append(model.forward_features(images))
    assert relative_error(*features) < 0.15
    a, b = bf16.state_dict(), fp8.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fp8_head_trains_in_fp32_and_copies_share_the_fp8_weights(fp8_on_this_cpu):
    """The head keeps fp32 master weights and gets gradients through the fp8 backbone; a copy made before (an EMA,
    given to fp8_backbone) and one made after (a deepcopy) compute with the same fp8 weights: the same logits."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="test_vit", pretrained=False), 5, 32)
    cast_backbone(model)
    before = copy.deepcopy(model)
    fp8_backbone(model, before)
    after = copy.deepcopy(model)
    qkv = "blocks.0.attn.qkv"
    assert vars(before.get_submodule(qkv))["forward"] is vars(model.get_submodule(qkv))["forward"]
    assert vars(after.get_submodule(qkv))["forward"] is vars(model.get_submodule(qkv))["forward"]

    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 3, 4])
    logits = []
    for each in (model, before.eval(), after.eval()):
        each.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits.append(unwrap_logits(each(images)).float())
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])
    torch.nn.functional.cross_entropy(logits[0], labels).backward()
    head = [p for p in model.parameters() if p.requires_grad]
    assert head and all(p.dtype == torch.float32 and p.grad is not None and p.grad.abs().sum() > 0 for p in head)


def test_compiled_fp8_backbone_is_one_graph_and_computes_the_eager_features(fp8_on_this_cpu, monkeypatch):
    """train.compile with fp8: dynamo traces torchao's fp8 layers into the backbone's one graph per mode (counted
    with dynamo's CompileCounter backend, which runs the traced graph as it is), with the eager fp8 features."""
    counter = CompileCounter()
    monkeypatch.setattr(backbone_module, "BACKEND", counter)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="test_vit", pretrained=False), 5, 32).eval()
    cast_backbone(model)
    fp8_backbone(model)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        eager = model.forward_features(images)
        compile_backbone(model, train_batch=4, eval_batch=4)
        compiled = [model.forward_features(images) for _ in range(2)]
    assert counter.frame_count == 1
    assert all(torch.equal(eager, c) for c in compiled)


def test_fp8_run_evaluates_near_bf16_exports_bf16_values_and_resumes_bitwise(
    stanford_dir, tmp_path, bf16_process, fp8_on_this_cpu, capsys
):
    """Two head-mode epochs with model.backbone_dtype fp8 against bf16: the start says how many layers run fp8;
    the losses are near bf16's (within 0.01 on this 4-class set; they differ by under 1e-3) and not equal; the
    export holds the bf16 backbone's values in fp32, bitwise the bf16 run's, loadable by plain timm; one epoch, then
    a resumed second, ends with the uninterrupted run's weights and history, bitwise."""
    bf16 = finetune(head_config(stanford_dir, tmp_path / "bf16", model={"backbone_dtype": "bf16"}))
    capsys.readouterr()
    result = finetune(head_config(stanford_dir, tmp_path / "fp8", model={"backbone_dtype": "fp8"}))
    assert "model.backbone_dtype fp8: 24 linear layers compute in fp8, the rest in bf16" in capsys.readouterr().out
    for a, b in zip(bf16.history, result.history):
        for key in ("train_loss", "eval_loss"):
            assert b[key] == pytest.approx(a[key], abs=0.01), key
    assert [h["eval_loss"] for h in result.history] != [h["eval_loss"] for h in bf16.history]

    exported = load_file(result.output_dir / "last" / "model.safetensors")
    reference = load_file(bf16.output_dir / "last" / "model.safetensors")
    assert {t.dtype for t in exported.values()} == {torch.float32}
    backbone = [k for k in reference if not k.startswith("head.")]
    assert all(torch.equal(exported[k], reference[k]) for k in backbone)
    timm.create_model("test_vit", num_classes=4, img_size=32).load_state_dict(exported)

    assert_resumes_bitwise(result, stanford_dir, tmp_path / "resumed", {"backbone_dtype": "fp8"})


def test_fp8_is_refused_in_one_sentence_where_it_cannot_run(monkeypatch):
    """No torchao, no GPU, a GPU before compute capability 8.9, or a setting bf16 weights cannot serve: each named,
    with the way out, before any process group starts."""
    fp8 = FinetuneConfig(model=ModelConfig(backbone_dtype="fp8"), train=TrainConfig(mixed_precision="bf16"))

    def refused(config=fp8):
        with pytest.raises(ConfigError) as error:
            validate(config, num_processes=1, cuda_available=False)
        return str(error.value)

    full = dataclasses.replace(fp8, model=ModelConfig(backbone_dtype="fp8", train_mode="full"))
    assert refused(full).startswith("model.backbone_dtype fp8 needs model.train_mode head")

    monkeypatch.setattr(backbone_module.importlib.util, "find_spec", lambda name: None)
    assert refused() == (
        "model.backbone_dtype fp8 needs torchao, which is not installed (pip install 'tiny_transformers[fp8]'); "
        "use --model.backbone_dtype bf16."
    )
    monkeypatch.undo()
    pytest.importorskip("torchao")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gpu = "a CUDA GPU of compute capability 8.9 or newer (H100, H200, L4, RTX 4090)"
    assert refused() == f"model.backbone_dtype fp8 needs {gpu}, and this machine has no CUDA GPU; use " + (
        "--model.backbone_dtype bf16."
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA A100-SXM4-80GB")
    assert f"needs {gpu}, and this machine's NVIDIA A100-SXM4-80GB is 8.0;" in refused()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    validate(fp8, num_processes=1, cuda_available=True)  # an H100: accepted
