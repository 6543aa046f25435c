"""Head mode's frozen backbone at inference speed: matmul weights in bf16 or fp8 (``model.backbone_dtype``) and
``forward_features`` compiled once per run (``train.compile``); module tree, state_dict keys, fp32 head unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .config import FinetuneConfig

# Autocast rounds these modules' weights to bf16 on every call anyway: storing them rounded computes the same without
# the per-call cast. Norms, embeddings and gammas stay fp32 (autocast runs their ops in fp32; under 1% of the weights).
_MATMUL_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

FP8_MIN_CAPABILITY = (8, 9)

# torch.compile's backend for the backbone; a test swaps in a counting backend (torch._dynamo.testing.CompileCounter)
BACKEND: str | Callable[..., Any] = "inductor"


def frozen_matmul_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The linear and convolution layers none of whose parameters train: in head mode, every one of the backbone's.

    >>> from tiny_transformers.models import build_model
    >>> from tiny_transformers.config import ModelConfig
    >>> model = build_model(ModelConfig(name="test_vit", pretrained=False), num_classes=4, image_size=32)
    >>> len(frozen_matmul_modules(model)), "head" in dict(frozen_matmul_modules(model))
    (25, False)
    """
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, _MATMUL_MODULES) and not any(p.requires_grad for p in module.parameters())
    ]


def cast_backbone(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Store the frozen linear and convolution weights (and biases) in ``dtype``, in place; returns how many changed.
    Under autocast of the same dtype the model computes what it did in fp32.

    >>> from tiny_transformers.models import build_model
    >>> from tiny_transformers.config import ModelConfig
    >>> model = build_model(ModelConfig(name="test_vit", pretrained=False), num_classes=4, image_size=32)
    >>> cast_backbone(model), model.head.weight.dtype, model.blocks[0].attn.qkv.weight.dtype
    (50, torch.float32, torch.bfloat16)
    """
    changed = 0
    for _, module in frozen_matmul_modules(model):
        for parameter in module.parameters(recurse=False):
            if parameter.is_floating_point() and parameter.dtype != dtype:
                parameter.data = parameter.data.to(dtype)
                changed += 1
    return changed


@contextlib.contextmanager
def backbone_in_fp32(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the frozen bf16 weights are fp32 again, exactly (for an export plain timm loads); bf16 after.

    >>> from tiny_transformers.models import build_model
    >>> from tiny_transformers.config import ModelConfig
    >>> model = build_model(ModelConfig(name="test_vit", pretrained=False), num_classes=4, image_size=32)
    >>> _ = cast_backbone(model)
    >>> with backbone_in_fp32(model): model.blocks[0].attn.qkv.weight.dtype
    torch.float32
    >>> model.blocks[0].attn.qkv.weight.dtype
    torch.bfloat16
    """
    cast = [p for _, m in frozen_matmul_modules(model) for p in m.parameters(recurse=False) if p.dtype != torch.float32]
    dtypes = [p.dtype for p in cast]
    for parameter in cast:
        parameter.data = parameter.data.float()
    try:
        yield model
    finally:
        for parameter, dtype in zip(cast, dtypes):
            parameter.data = parameter.data.to(dtype)


def fp8_unavailable() -> str | None:
    """Why ``model.backbone_dtype fp8`` cannot run in this process (``LOCAL_RANK``'s GPU), as the end of a sentence
    (e.g. "a CUDA GPU of compute capability 8.9 or newer (...), and this machine has no CUDA GPU"), or None."""
    gpu = "a CUDA GPU of compute capability 8.9 or newer (H100, H200, L4, RTX 4090)"
    if importlib.util.find_spec("torchao") is None:  # found, not imported: importing torchao takes seconds
        return "torchao, which is not installed (pip install 'tiny_transformers[fp8]')"
    if not torch.cuda.is_available():
        return f"{gpu}, and this machine has no CUDA GPU"
    index = int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()
    capability = torch.cuda.get_device_capability(index)
    if capability < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(index)
        return f"{gpu}, and this machine's {name} is {capability[0]}.{capability[1]}"
    return None


class Float8Forward:
    """A frozen ``nn.Linear``'s forward through torchao's fp8 copy of its weight (dynamic activations, ``PerRow``
    scales), kept outside the module tree so that state_dict, checkpoints and exports stay bf16's. ``quantized`` is
    False where torchao leaves the weight as it is (a dimension not a multiple of 16); such a layer stays bf16.
    """

    def __init__(self, linear: nn.Linear) -> None:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        # quantize_ replaces a module's weight by its fp8 tensor: it works on this stand-in, not on the model's layer
        stand_in = nn.Linear(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        for name, parameter in linear.named_parameters(recurse=False):
            setattr(stand_in, name, nn.Parameter(parameter.detach().to(torch.bfloat16), requires_grad=False))
        quantize_(stand_in, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        self.linear = stand_in
        self.quantized = type(stand_in.weight) not in (torch.Tensor, nn.Parameter)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def __deepcopy__(self, memo: dict[int, Any]) -> Float8Forward:
        return self  # frozen: a copy of the model computes with the same fp8 weights


def fp8_backbone(model: nn.Module, *copies: nn.Module) -> int:
    """Compute the frozen linear layers of ``model`` and of ``copies`` (an EMA's) in fp8 with the same fp8 weights, in
    place; returns how many layers (test_vit's 24, not its patch embedding's conv). Call it once the model is on its
    GPU (torchao quantizes where the weights are)."""
    layers = 0
    for name, module in frozen_matmul_modules(model):
        if isinstance(module, nn.Linear) and (forward := Float8Forward(module)).quantized:
            for each in (model, *copies):
                each.get_submodule(name).forward = forward  # an instance attribute: nn.Module.__call__ calls it
            layers += 1
    return layers


class CompiledFeatures:
    """``model.forward_features`` compiled once per mode (train, eval: two graphs per run) at fixed batch sizes.

    A smaller batch (a ragged last one) is padded with zeros and the padded rows dropped rather than made dynamic
    (why: docs/benchmarks.md, "Head mode's options"); a larger one runs eager. Always under ``torch.no_grad``, so
    the evaluation's no-grad pass adds no third graph.
    """

    def __init__(self, model: nn.Module, train_batch: int, eval_batch: int) -> None:
        self.model = model
        self.sizes = {True: train_batch, False: eval_batch}  # by module.training
        self.eager = type(model).forward_features.__get__(model)  # the class's own method, bound to this model
        self.compiled = torch.compile(self.eager, backend=BACKEND, dynamic=False)

    def __call__(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The features of ``x``; ``kwargs`` (timm's ViT passes ``attn_mask=None``) go to the model's own method."""
        size, images = self.sizes[self.model.training], x.shape[0]
        with torch.no_grad():  # frozen: nothing before the head needs a graph for backward
            if images > size:
                return self.eager(x, **kwargs)
            if images < size:
                padding = x.new_zeros((size - images, *x.shape[1:]))
                return self.compiled(torch.cat([x, padding]), **kwargs)[:images]
            return self.compiled(x, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> CompiledFeatures:
        # A copy of the model (an EMA's) compiles its own forward, bound to the copy (already in memo).
        return CompiledFeatures(copy.deepcopy(self.model, memo), self.sizes[True], self.sizes[False])


def compile_backbone(model: nn.Module, train_batch: int, eval_batch: int) -> CompiledFeatures:
    """Compile a head-mode timm model's frozen ``forward_features`` in place (head and loss stay eager).

    >>> from tiny_transformers.models import build_model
    >>> from tiny_transformers.config import ModelConfig
    >>> model = build_model(ModelConfig(name="test_vit", pretrained=False), num_classes=4, image_size=32)
    >>> compile_backbone(model, train_batch=8, eval_batch=16).sizes
    {True: 8, False: 16}
    """
    features = CompiledFeatures(model, train_batch, eval_batch)
    model.forward_features = features  # an instance attribute: forward() calls self.forward_features(x)
    return features


def speed_up_backbone(model: nn.Module, config: FinetuneConfig) -> None:
    """Apply ``config``'s backbone speed options to a freshly built model, before ``prepare``: the bf16 cast (fp8's
    copies come later, on the GPU: :func:`fp8_backbone`) and ``train.compile`` (head mode: the backbone; full mode:
    ``nn.Module.compile``, same state_dict keys).

    >>> from tiny_transformers.config import FinetuneConfig, ModelConfig
    >>> from tiny_transformers.models import build_model
    >>> config = FinetuneConfig(model=ModelConfig(name="test_vit", pretrained=False, backbone_dtype="bf16"))
    >>> model = build_model(config.model, num_classes=4, image_size=32)
    >>> speed_up_backbone(model, config); model.blocks[0].mlp.fc1.weight.dtype
    torch.bfloat16
    """
    t = config.train
    if config.model.backbone_dtype in ("bf16", "fp8"):
        cast_backbone(model, torch.bfloat16)
    if t.compile and config.model.train_mode == "head":
        compile_backbone(model, t.micro_batch_size, t.eval_batch_size or t.micro_batch_size)
    elif t.compile:
        model.compile()
