"""Speed options (docs/benchmarks.md): off by default, validated up front, and the same results when on."""

import shutil

import pytest
import timm
import torch

from tiny_transformers.config import FinetuneConfig, OptimConfig, TrainConfig
from tiny_transformers.errors import ConfigError
from tiny_transformers.optim import build_optimizer
from tiny_transformers.validation import validate


def test_speed_options_are_off_by_default():
    config = FinetuneConfig()
    assert config.optim.fused is False and config.train.compile is False


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_optimizer_takes_the_same_steps(name):
    """torch's fused kernel against its default implementation: five steps of test_vit on the same batches.

    Every weight agrees to float32 rounding, except the attention key biases (qkv.bias[64:128] at width
    64): softmax ignores them, so their exact gradient is zero and Adam's normalised step follows rounding
    noise, whichever kernel computes it.
    """
    weights = {}
    for fused in (False, True):
        torch.manual_seed(0)
        model = timm.create_model("test_vit", num_classes=4, img_size=32)
        optimizer = build_optimizer(OptimConfig(name=name, fused=fused), model)
        assert optimizer.defaults.get("fused") is (True if fused else None)
        generator = torch.Generator().manual_seed(1)
        for _ in range(5):
            x = torch.randn(4, 3, 32, 32, generator=generator)
            torch.nn.functional.cross_entropy(model(x), torch.arange(4)).backward()
            optimizer.step()
            optimizer.zero_grad()
        weights[fused] = model.state_dict()
    for key, value in weights[False].items():
        actual = weights[True][key]
        if key.endswith("attn.qkv.bias"):
            actual, value = torch.cat([actual[:64], actual[128:]]), torch.cat([value[:64], value[128:]])
        torch.testing.assert_close(actual, value, rtol=0, atol=2.5e-7)


def test_compile_keeps_the_modules_and_their_state_dict_keys():
    """train.compile compiles in place (nn.Module.compile): checkpoints and exports see the same keys."""
    model = timm.create_model("test_vit", num_classes=4, img_size=32)
    keys = list(model.state_dict())
    model.compile()
    assert list(model.state_dict()) == keys and type(model).__name__ == "VisionTransformer"


@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="torch.compile on a CPU needs a C++ compiler"
)
def test_compiled_model_computes_what_the_eager_one_does():
    """About 25 s on 2 CPU cores (inductor compiles C++): worth it, train.compile must not change results."""
    torch.manual_seed(0)
    eager = timm.create_model("test_vit", num_classes=4, img_size=32).eval()
    compiled = timm.create_model("test_vit", num_classes=4, img_size=32).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-5)


def test_fused_optimizer_on_the_cpu_needs_torch_2_4(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.3.1+cpu")
    with pytest.raises(ConfigError, match="optim.fused on the CPU needs torch 2.4 or newer"):
        validate(FinetuneConfig(optim=OptimConfig(fused=True)), num_processes=1, cuda_available=False)
    validate(FinetuneConfig(optim=OptimConfig(fused=True)), num_processes=1, cuda_available=True)


def test_compile_on_the_cpu_needs_a_cpp_compiler(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="train.compile on the CPU needs a C\\+\\+ compiler"):
        validate(FinetuneConfig(train=TrainConfig(compile=True)), num_processes=1, cuda_available=False)
    validate(FinetuneConfig(train=TrainConfig(compile=True)), num_processes=1, cuda_available=True)
