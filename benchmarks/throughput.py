"""3. Training and inference throughput, FLOPs and memory of one model, in head and full mode.

Every measurement here takes a :class:`Workload`: the model, batch, image size, device, precision and how
long to time it.

>>> figures = train_throughput(Workload("test_vit", 2, 32, "cpu", "no", steps=1, warmup=1, repeats=1), "head")
>>> figures["mode"], figures["images_per_s"] > 0, figures["mfu"]  # MFU only on a GPU
('head', True, None)
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from tiny_transformers.augment import BatchAugment
from tiny_transformers.backbone import cast_backbone, compile_backbone, fp8_backbone
from tiny_transformers.config import AugmentConfig, FinetuneConfig, ModelConfig, OptimConfig, TrainConfig
from tiny_transformers.models import IMAGENET_MEAN, IMAGENET_STD
from tiny_transformers.paper import paper_model_for, resolve_model_name

from .machine import autocast, free, fresh_accelerator, peak_flops, resolve_device, sync

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass(frozen=True)
class Workload:
    """What a throughput measurement runs, and how long it is timed."""

    model: str = "test_vit"  # paper short name (vit_l, cait_s36, deit_b_distilled, swin_l) or timm name; random weights
    micro_batch: int = 8  # images per forward pass
    image_size: int = 32  # pixels, the side of the square images the model sees
    device: torch.device | str | None = None  # None: the GPU if torch sees one, else the CPU
    precision: str = "bf16"  # autocast: "bf16", "fp16", or "no" (float32)
    steps: int = 10  # timed steps (forward passes for inference) per repeat
    warmup: int = 3  # untimed steps before the first repeat
    repeats: int = 3  # timed repeats; figures are their median

    @classmethod
    def for_model(cls, model: str, micro_batch: int | None = None, image_size: int | None = None, **rest: Any):
        """The workload with the paper's micro-batch and 384 px for its models (8 and 32 px for others),
        where ``micro_batch`` or ``image_size`` is None.

        >>> Workload.for_model("test_vit").micro_batch, Workload.for_model("vit_l", image_size=224).image_size
        (8, 224)
        """
        paper = paper_model_for(model)
        return cls(
            model,
            micro_batch or (paper.micro_batch_size if paper else 8),
            image_size or (384 if paper else 32),
            **rest,
        )

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)


@contextlib.contextmanager
def _fused_attention(enabled: bool | None) -> Iterator[None]:
    """timm's fused attention (F.scaled_dot_product_attention) on or off for models built inside the block."""
    if enabled is None:
        yield
        return
    from timm.layers import config as timm_config

    previous = timm_config._USE_FUSED_ATTN
    timm_config.set_fused_attn(enabled)
    try:
        yield
    finally:
        timm_config._USE_FUSED_ATTN = previous


def model_config_for(model: str, **changes: Any) -> ModelConfig:
    """The :class:`ModelConfig` a benchmark builds ``model`` with: the paper's drop path for its models, else 0.1.

    >>> model_config_for("deit_b_distilled", fast_attention=True).drop_path_rate
    0.0
    """
    paper = paper_model_for(model)
    return ModelConfig(name=model, drop_path_rate=paper.drop_path_rate if paper else 0.1, **changes)


def build(
    model: str | ModelConfig,
    mode: str,
    image_size: int,
    device: torch.device,
    fused_attention: bool | None = None,
) -> torch.nn.Module:
    """``model`` with random weights for 200 classes in ``mode`` ("head" or "full"), built on ``device``: a name (the
    paper's drop path) or a recipe's :class:`ModelConfig` (its drop path, head init and ``model.fast_attention``)."""
    from tiny_transformers.models import build_model

    if isinstance(model, str):
        model = model_config_for(model)
    cfg = dataclasses.replace(model, pretrained=False, checkpoint=None, train_mode=mode)
    torch.manual_seed(0)
    # Built on the device itself: initialising 300M parameters on the CPU would take longer than the benchmark.
    with _fused_attention(fused_attention), torch.device(device):
        return build_model(cfg, 200, image_size)


def saved_for_backward_bytes(model: torch.nn.Module, x: torch.Tensor, autocast: Callable) -> int:
    """Bytes of activations autograd keeps for the backward pass of one forward (parameters not counted).

    Storages are counted whole, as memory is held. In head mode only the head's input is kept (the frozen
    backbone builds no graph): for test_vit at 32 px, the class token is a view of the final (2, 5, 64)
    float32 token tensor, 2 x 5 x 64 x 4 bytes.

    >>> from tiny_transformers.models import build_model
    >>> m = build_model(ModelConfig(name="test_vit", pretrained=False, train_mode="head"), 10, 32)
    >>> saved_for_backward_bytes(m, torch.zeros(2, 3, 32, 32), contextlib.nullcontext)
    2560
    """
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, torch.UntypedStorage] = {}

    def pack(t: torch.Tensor) -> None:
        # Held here, as autograd would hold it, so that no later tensor reuses its address; the graph itself
        # keeps nothing: a hook returning an op's own output makes a reference cycle through the C++ graph
        # that Python's collector cannot see, and the whole graph (31 GiB for ViT-L) would leak.
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage

    def unpack(_: None) -> torch.Tensor:
        raise RuntimeError("saved_for_backward_bytes only measures; its graph cannot be backpropagated")

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack), autocast():
        model(x)
    total = sum(storage.nbytes() for storage in kept.values())
    kept.clear()
    return total


def _count_flops(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, autocast: Callable) -> int:
    """FLOPs of one training forward + backward (as far as anything requires grad), torch.utils.flop_counter."""
    from tiny_transformers.engine import loss_fn_per_image
    from tiny_transformers.models import unwrap_logits

    with FlopCounterMode(display=False) as counter:
        with autocast():
            logits = unwrap_logits(model(x))
        loss_fn_per_image(logits.float(), targets).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def head_flops_per_image(
    model: torch.nn.Module, x: torch.Tensor, autocast: Callable, targets: torch.Tensor | None = None
) -> float:
    """FLOPs per image of the trainable head alone on the frozen backbone's features (``forward_head`` on
    ``forward_features``'s output): what a head-mode pass costs once ``train.cache_features`` holds the features. Its
    forward; with ``targets``, forward and backward of the loss (the head's weight gradients), a training step's.

    >>> from tiny_transformers.models import build_model
    >>> m = build_model(ModelConfig(name="test_vit", pretrained=False, train_mode="head"), 10, 32)
    >>> head_flops_per_image(m, torch.zeros(2, 3, 32, 32), contextlib.nullcontext)  # 2 x 64 x 10 multiply-adds
    1280.0
    """
    from tiny_transformers.engine import loss_fn_per_image
    from tiny_transformers.models import unwrap_logits

    with torch.no_grad(), autocast():
        features = model.forward_features(x)
    with FlopCounterMode(display=False) as counter:
        with autocast():
            logits = unwrap_logits(model.forward_head(features))
        if targets is not None:
            loss_fn_per_image(logits.float(), targets).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


def frozen_backbone_dtype(net: torch.nn.Module, backbone_dtype: str) -> None:
    """``model.backbone_dtype`` on a head-mode model already on its device, as a run applies it: bf16 (and fp8) cast
    the frozen weights; fp8 then computes the linear layers in fp8 (``backbone.fp8_backbone``)."""
    if backbone_dtype in ("bf16", "fp8"):
        cast_backbone(net)
    if backbone_dtype == "fp8":
        fp8_backbone(net)


def inference_throughput(
    workload: Workload,
    fused_attention: bool | None = None,
    backbone_dtype: str = "fp32",
    compile: bool = False,
    model_config: ModelConfig | None = None,
) -> dict[str, Any]:
    """Images/s of the model's forward pass alone: eval mode, inference mode, autocast, inputs ready on the device
    (what an evaluation pass runs, at ``workload.micro_batch`` images per batch). ``backbone_dtype`` and
    ``compile`` are head mode's backbone options (backbone.py): bf16 frozen weights, the compiled backbone forward;
    ``first_seconds`` is the warm-up (with ``compile``, mostly compiling). ``model_config``: a recipe's model
    (``model.fast_attention`` among its settings) instead of ``workload.model`` with the paper's drop path.

    >>> inference_throughput(Workload(device="cpu", precision="no", steps=1, warmup=0, repeats=1))["model"]
    'test_vit'
    """
    w, device = workload, workload.torch_device()
    head = backbone_dtype != "fp32" or compile
    net = build(model_config or w.model, "head" if head else "full", w.image_size, device, fused_attention).eval()
    frozen_backbone_dtype(net, backbone_dtype)
    x = torch.randn(w.micro_batch, 3, w.image_size, w.image_size, device=device)
    # Before compiling, so that the counter sees every op of the eager forward; with grad mode on, as its module
    # tracker needs (under no_grad or inference_mode it fails on CaiT's class-attention blocks, torch 2.14).
    with FlopCounterMode(display=False) as counter, autocast(device, w.precision)():
        net(x[:1])
    head_flops = head_flops_per_image(net, x[:1], autocast(device, w.precision))
    if compile:
        compile_backbone(net, w.micro_batch, w.micro_batch)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), autocast(device, w.precision)():
        sync(device)
        started = time.perf_counter()
        for _ in range(max(w.warmup, 1 if compile else 0)):
            net(x)
        sync(device)
        first = time.perf_counter() - started
        for _ in range(w.repeats):
            sync(device)
            started = time.perf_counter()
            for _ in range(w.steps):
                net(x)
            sync(device)
            times.append((time.perf_counter() - started) / w.steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del net, x
    free(device)
    seconds = statistics.median(times)
    flops, (peak_device_flops, peak_source) = counter.get_total_flops(), peak_flops(device, w.precision)
    return {
        "model": w.model,
        "micro_batch": w.micro_batch,
        "image_size": w.image_size,
        "precision": w.precision,
        "backbone_dtype": backbone_dtype,
        "compile": compile,
        "seconds_per_batch": seconds,
        "images_per_s": w.micro_batch / seconds,
        "first_seconds": first,
        "flops_per_image": flops,
        "head_flops_per_image": head_flops,  # the forward of the head alone (a cached evaluation's)
        "mfu": flops * w.micro_batch / seconds / peak_device_flops if peak_device_flops else None,
        "peak_flops_source": peak_source,
        "peak_memory_gib": peak,
    }


def _timed_epoch(
    accelerator: Accelerator,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    batch_augment: BatchAugment,
    steps: int,
    device: torch.device,
) -> float:
    """Seconds for one epoch of ``steps`` optimizer steps of ``engine.train_steps``, each on ``batch``, and the
    epoch's loss read once at its end, as finetune() reads it for its log."""
    from tiny_transformers import engine  # looked up at each call: benchmarks/diagnose_step.py wraps it
    from tiny_transformers.checkpoint import TrainerState
    from tiny_transformers.optim import build_schedule
    from tiny_transformers.plan import Plan

    micro_batch = len(batch[0])
    config = FinetuneConfig(
        train=TrainConfig(batch_size=micro_batch, micro_batch_size=micro_batch, epochs=1, progress=False)
    )
    plan = Plan.build(config, 1, steps * micro_batch)
    # what train.Run holds, for the parts train_steps reads (no EMA or teacher: the paper's recipes have none)
    schedule = build_schedule(optimizer, config.optim, plan)
    run = SimpleNamespace(
        accelerator=accelerator, model=net, optimizer=optimizer, scheduler=schedule, augment=batch_augment, plan=plan,
        state=TrainerState(), config=config, ema=None, teacher=None, features=None,
    )  # fmt: skip
    sync(device)
    started = time.perf_counter()
    for _ in engine.train_steps(run, [batch] * steps):
        pass
    state = run.state
    state.loss.mean()
    sync(device)
    return time.perf_counter() - started


def train_throughput(
    workload: Workload,
    mode: str,
    native_size: int = 64,
    fused_optimizer: bool = False,
    compile: bool = False,
    fused_attention: bool | None = None,
    augment: AugmentConfig | None = None,
    backbone_dtype: str = "fp32",
    model_config: ModelConfig | None = None,
    preprocess: str = "default",
) -> dict[str, Any]:
    """Images/s of the library's own training step (``engine.train_steps``) in ``mode``, with FLOPs and memory.

    Micro-batches of random 64x64 uint8 images come from pinned host memory (the loader's side is item 1),
    so this times: transfer, upscaling and the paper's augmentation on the device, forward, backward,
    optimizer and schedule steps. One micro-batch per optimizer step. ``peak_memory_gib`` is
    ``torch.cuda.max_memory_allocated`` (GPU only); ``saved_for_backward_mib`` is the activation memory
    autograd keeps per micro-batch, measured on any device. ``compile``: in full mode the whole model, in head mode
    the frozen backbone's forward (as ``train.compile`` does); ``backbone_dtype`` bf16: head mode's frozen weights
    in bf16 (``model.backbone_dtype``); ``model_config``, ``augment`` and ``preprocess``: a recipe's model, augmentation
    and ``data.preprocess`` (official: the uint8 resize and RandAugment at full size on the device).
    """
    from tiny_transformers.optim import build_optimizer

    w, device = workload, workload.torch_device()
    augment_cfg = augment if augment is not None else AugmentConfig()
    accelerator = fresh_accelerator(device, w.precision)
    net = build(model_config or w.model, mode, w.image_size, device, fused_attention)
    frozen_backbone_dtype(net, backbone_dtype)
    optimizer = build_optimizer(OptimConfig(fused=fused_optimizer), net)
    cast = autocast(device, w.precision)

    generator = torch.Generator().manual_seed(0)
    shape = (w.micro_batch, 3, native_size, native_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 200, (w.micro_batch,), generator=generator)
    if device.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()
    batch_augment = BatchAugment(w.image_size, IMAGENET_MEAN, IMAGENET_STD, 200, augment_cfg, device, preprocess)

    # Memory and FLOPs first, on the uncompiled model (FlopCounterMode and saved-tensor hooks see every op).
    net.train()
    x, targets = batch_augment.train(images.to(device), labels.to(device))
    saved = saved_for_backward_bytes(net, x, cast)
    flops = _count_flops(net, x, targets, cast)
    head_flops = head_flops_per_image(net, x, cast, targets) if mode == "head" else None
    del x, targets

    if compile and mode == "head":
        compile_backbone(net, w.micro_batch, w.micro_batch)
    elif compile:
        net.compile()
    net, optimizer = accelerator.prepare(net, optimizer)
    run = (accelerator, net, optimizer, (images, labels), batch_augment)
    first = _timed_epoch(*run, max(w.warmup, 1), device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [_timed_epoch(*run, w.steps, device) / w.steps for _ in range(w.repeats)]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del run, net, optimizer
    accelerator.free_memory()
    free(device)

    seconds = statistics.median(times)
    images_per_s = w.micro_batch / seconds
    peak_device_flops, peak_source = peak_flops(device, w.precision)
    achieved = flops / w.micro_batch * images_per_s
    return {
        "model": w.model,
        "timm_name": resolve_model_name(w.model),
        "mode": mode,
        "micro_batch": w.micro_batch,
        "image_size": w.image_size,
        "precision": w.precision,
        "fused_optimizer": fused_optimizer,
        "compile": compile,
        "backbone_dtype": backbone_dtype,
        "fused_attention": fused_attention,
        "fast_attention": bool(model_config and model_config.fast_attention),
        "preprocess": preprocess,
        "seconds_per_step": seconds,
        "images_per_s": images_per_s,
        "warmup_seconds": first,
        "flops_per_image": flops / w.micro_batch,
        "head_flops_per_image": head_flops,  # head mode: the head's forward and backward alone (a cached step's)
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / peak_device_flops if peak_device_flops else None,
        "peak_flops_source": peak_source,
        "peak_memory_gib": peak,
        "saved_for_backward_mib": saved / 2**20,
    }


def _attempt(measure: Callable[..., dict[str, Any]], workload: Workload, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``measure(workload, **kwargs)``, or {"error": ..., "out_of_memory": bool} if it raises: one model's failure
    must not lose the other figures. Memory is freed after the exception (and the frames it holds) is gone."""
    try:
        return measure(workload, **kwargs)
    except Exception as error:  # noqa: BLE001
        failure = {
            "error": f"{type(error).__name__}: {str(error)[:300]}",
            "out_of_memory": isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower(),
        }
    free(workload.torch_device())
    return failure


def measure(
    measurement: Callable[..., dict[str, Any]], workload: Workload, isolate: bool = False, **kwargs: Any
) -> dict[str, Any]:
    """``measurement(workload, **kwargs)`` with failures recorded (see :func:`_attempt`), in a fresh spawned
    process when ``isolate``.

    In its own process a measurement's peak memory is its own whatever ran before, and all the memory it
    took comes back when it exits. Costs a process start-up (imports, CUDA context) per measurement.
    """
    if not isolate:
        return _attempt(measurement, workload, kwargs)
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(_attempt, measurement, workload, kwargs).result()
        except Exception as error:  # noqa: BLE001 - the process itself died (killed, crashed)
            return {
                "error": f"measurement process failed: {type(error).__name__}: {str(error)[:250]}",
                "out_of_memory": False,
            }


TRAIN_IMAGES, EVAL_IMAGES = 100_000, 10_000  # Tiny ImageNet's training and validation splits


def projected_minutes(
    train_images_per_s: float,
    eval_images_per_s: float,
    epochs: int = 30,
    train_images: int = TRAIN_IMAGES,
    eval_images: int = EVAL_IMAGES,
) -> float:
    """Minutes of a run at these speeds: ``epochs`` x (a pass over the training images + the evaluation after every
    epoch), by default over Tiny ImageNet's 100,000 + 10,000; loading and checkpoints not included (the end-to-end
    epoch measured against it is in docs/benchmarks.md).

    >>> round(projected_minutes(2660, 8000), 1)  # DeiT-B's H200 head-mode speed, an inference speed of 8,000 img/s
    19.4
    """
    return epochs * (train_images / train_images_per_s + eval_images / eval_images_per_s) / 60


def model_throughput(
    workload: Workload,
    modes: Sequence[str] = ("head", "full"),
    isolate: bool = False,
    on_progress: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Inference, then training in each mode, for one model; a mode that runs out of memory is retried at
    half the micro-batch (down to 1) and the failure recorded. ``isolate``: each in its own process.
    ``on_progress`` gets the partial result after each measurement.

    >>> quick = Workload(device="cpu", precision="no", steps=1, warmup=1, repeats=1)
    >>> model_throughput(quick)["head"]["mode"]  # doctest: +SKIP
    'head'
    """
    workload = dataclasses.replace(workload, device=workload.torch_device())
    result: dict[str, Any] = {"model": workload.model, "timm_name": resolve_model_name(workload.model)}
    report = on_progress or (lambda _: None)
    result["inference"] = measure(inference_throughput, workload, isolate)
    report(result)
    for mode in modes:
        batch, failures = workload.micro_batch, []
        while True:
            result[mode] = measure(
                train_throughput, dataclasses.replace(workload, micro_batch=batch), isolate, mode=mode
            )
            if result[mode].get("out_of_memory") and batch > 1:
                failures.append(batch)
                batch //= 2
                continue
            break
        if failures:
            result[mode]["out_of_memory_at"] = failures
        report(result)
    inference = result["inference"].get("images_per_s")
    head = result.get("head", {})
    if inference and head.get("images_per_s") and head.get("micro_batch") == workload.micro_batch:
        result["head_over_inference"] = head["images_per_s"] / inference
    if inference and head.get("images_per_s"):
        result["projected_recipe_minutes"] = projected_minutes(head["images_per_s"], inference)
    if head.get("saved_for_backward_mib") and result.get("full", {}).get("saved_for_backward_mib"):
        result["full_over_head_saved_memory"] = (
            result["full"]["saved_for_backward_mib"] / head["saved_for_backward_mib"]
        )
    return result
