"""Head mode's feature cache (``train.cache_features``): each head module's input from the frozen backbone, computed
once: at the first evaluation (replayed by every later one, raw and EMA) and, when nothing random happens before the
head, in the first epoch. Bitwise the uncached run's: the head sees the very tensors, in batches of the same size (a
matmul's rows can round differently at another size), and the first batch is checked against the model's output.
Never checkpointed: a resumed run computes them again. Costs: docs/benchmarks.md#feature-cache.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from functools import partial

import torch
from torch import nn

from .config import FinetuneConfig
from .models import head_modules, unwrap_logits
from .rundir import is_main_launch_process

Features = tuple[torch.Tensor, ...]  # one tensor per head module: its input, a row per image


def head_logits(model: nn.Module, features: Features) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The model's output from its heads' inputs alone, combined as its forward does (distilled DeiT: averaged, or
    the pair in distilled training).

    >>> import timm
    >>> model = timm.create_model("test_vit", pretrained=False, num_classes=3).eval()
    >>> x = torch.randn(2, 3, 160, 160)
    >>> with capture_head_inputs(model) as captured: logits = model(x)
    >>> torch.equal(head_logits(model, captured.features()), logits)
    True
    """
    heads = head_modules(model)
    outputs = [head(f) for head, f in zip(heads, features)]
    if len(outputs) == 1:
        return outputs[0]
    if getattr(model, "distilled_training", False) and model.training:
        return outputs[0], outputs[1]
    return (outputs[0] + outputs[1]) / 2


class _Captured:
    """The inputs of a model's head modules during one forward (filled by :func:`capture_head_inputs`)."""

    def __init__(self, count: int) -> None:
        self.inputs: list[torch.Tensor | None] = [None] * count

    def features(self) -> Features:
        if any(f is None for f in self.inputs):
            raise RuntimeError("the forward did not call every head module")
        return tuple(self.inputs)  # type: ignore[arg-type]


@contextlib.contextmanager
def capture_head_inputs(model: nn.Module, on: bool = True) -> Iterator[_Captured | None]:
    """Inside the block (when ``on``; else it yields None), each forward of ``model`` records each head module's input
    (a copy, so that a ViT's class-token view does not keep the whole token tensor alive)."""
    if not on:
        yield None
        return
    captured = _Captured(len(head_modules(model)))

    def record(index: int, _module: nn.Module, args: tuple) -> None:
        captured.inputs[index] = args[0].detach().clone()

    handles = [head.register_forward_pre_hook(partial(record, i)) for i, head in enumerate(head_modules(model))]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _stochastic_modules(model: nn.Module) -> list[str]:
    """The modules before the head that draw random numbers or see the batch in train mode: dropout, drop path,
    patch dropout with a non-zero rate, batch norm (batch statistics)."""
    heads = {id(m) for head in head_modules(model) for m in head.modules()}
    found = []
    for name, module in model.named_modules():
        if id(module) in heads:
            continue
        rate = next((getattr(module, a) for a in ("p", "drop_prob", "prob") if hasattr(module, a)), None)
        random_drop = "drop" in type(module).__name__.lower() and isinstance(rate, (int, float)) and rate > 0
        if random_drop or isinstance(module, nn.modules.batchnorm._BatchNorm):
            found.append(name or type(module).__name__)
    return found


def training_cache_off(config: FinetuneConfig) -> str | None:
    """Why a head-mode run's training features cannot be kept (the first reason, as the end of a sentence), or None
    (the model's own random layers are checked in :meth:`FeatureCache.for_run`).

    >>> from tiny_transformers.config import paper_config
    >>> training_cache_off(paper_config("vit_l"))
    'augment.randaugment_ops is 2'
    """
    a, m = config.augment, config.model
    mixing = (a.mixup_alpha > 0 or a.cutmix_alpha > 0) and a.mixup_prob > 0
    reasons = [
        (a.randaugment_ops > 0, f"augment.randaugment_ops is {a.randaugment_ops}"),
        (a.timm_randaugment is not None, f"augment.timm_randaugment is {a.timm_randaugment}"),
        (mixing, "Mixup/CutMix is on"),
        (a.random_erasing > 0, f"augment.random_erasing is {a.random_erasing:g}"),
        (m.drop_path_rate > 0, f"model.drop_path_rate is {m.drop_path_rate:g}"),
        (bool(config.distill.teacher), "distill.teacher is set"),
    ]
    return next((reason for on, reason in reasons if on), None)


class EvalFeatures:
    """This process's evaluation batches as head inputs, in loader order, kept by the first evaluation, each with the
    rows ``gather_for_metrics`` kept of it (a later pass drops the same duplicates)."""

    def __init__(self) -> None:
        self.batches: list[list] = []  # [features, labels, rows kept]
        self.ready = False  # every batch of one whole pass is in
        self.enabled = True  # False once the head alone did not reproduce the model's output

    def start(self) -> None:
        """A pass that keeps the batches begins (one cut short earlier kept part of the split)."""
        self.batches.clear()

    def add(self, model: nn.Module, captured: _Captured, output: torch.Tensor, labels: torch.Tensor) -> None:
        """Keep a batch's head inputs (call inside the forward's precision context); the first is checked."""
        features = captured.features()
        if self.batches or check_head_alone(model, features, output):
            self.batches.append([features, labels, None])
        else:
            self.enabled = False

    def kept(self, rows: int) -> None:
        """The rows of the last batch that the gather kept."""
        if self.enabled and self.batches and self.batches[-1][2] is None:
            self.batches[-1][2] = rows

    def finish(self) -> None:
        self.ready = self.enabled and bool(self.batches)


class TrainFeatures:
    """Each training image's head inputs from a full micro-batch, by its row in the train split; served only to full
    micro-batches (the ragged one is recomputed every epoch)."""

    def __init__(self, train_samples: int, micro_batch_size: int) -> None:
        self.size, self.micro_batch_size = train_samples, micro_batch_size
        self.store: list[torch.Tensor] | None = None  # one (train_samples, ...) tensor per head, made at first use
        self.filled: torch.Tensor | None = None  # on the host: looking up a micro-batch reads nothing from the GPU
        self.enabled = True  # False once the head alone did not reproduce the model's output
        self.device: torch.device | None = None  # the model's, where a served micro-batch goes

    def lookup(self, indices: Sequence[int]) -> Features | None:
        """The kept head inputs of a full micro-batch whose every image is kept, else None."""
        if self.store is None or len(indices) != self.micro_batch_size:
            return None
        rows = torch.as_tensor(indices)
        if not bool(self.filled[rows].all()):
            return None
        return tuple(s[rows.to(s.device)].to(self.device, non_blocking=True) for s in self.store)

    def keep(self, model: nn.Module, indices: Sequence[int], captured: _Captured, output: torch.Tensor) -> None:
        """Keep a full micro-batch's head inputs (inside the forward's precision context); the first is checked."""
        if len(indices) != self.micro_batch_size or not self.enabled:
            return
        features = captured.features()
        if self.store is None and not check_head_alone(model, features, output):
            self.enabled = False
            return
        if self.store is None:
            self.device, self.store = features[0].device, _allocate(features, self.size)
            self.filled = torch.zeros(self.size, dtype=torch.bool)
        rows = torch.as_tensor(indices)
        for store, f in zip(self.store, features):
            store[rows.to(store.device)] = f.to(store.device)
        self.filled[rows] = True


def _allocate(features: Features, rows: int) -> list[torch.Tensor]:
    """One (rows, ...) tensor per head input, on the model's device, or in (pinned) host memory where it has no room."""
    try:
        return [f.new_empty((rows, *f.shape[1:])) for f in features]
    except torch.OutOfMemoryError:
        pinned = torch.cuda.is_available()
        return [torch.empty((rows, *f.shape[1:]), dtype=f.dtype, pin_memory=pinned) for f in features]


@contextlib.contextmanager
def head_forward(model: nn.Module) -> Iterator[None]:
    """Inside the block ``model`` (the module inside DDP) takes head inputs and runs only its head(s); called through
    the prepared model, DDP still all-reduces the gradients. The block sets the autocast itself: Accelerate's
    wrapped forward is set aside meanwhile."""
    own = model.__dict__.get("forward")  # Accelerate's autocast wrapper, when it made one
    model.forward = lambda features: head_logits(model, features)
    try:
        yield
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own


class FeatureCache:
    """A run's kept features: evaluation always (in head mode), training when its input is deterministic."""

    def __init__(self, train: TrainFeatures | None) -> None:
        self.eval = EvalFeatures()
        self.train = train

    @classmethod
    def for_run(
        cls, config: FinetuneConfig, model: nn.Module, train_samples: int, micro_batch_size: int
    ) -> tuple[FeatureCache | None, str]:
        """The cache of a run (None in full mode or with ``train.cache_features false``) and the plan's line on it."""
        mode = config.model.train_mode
        if mode != "head" or not config.train.cache_features:
            why = f"{mode} mode" if mode != "head" else "train.cache_features false"
            return None, f"feature cache: off ({why}): every feature computed every time"
        off = training_cache_off(config)
        if off is None and (stochastic := _stochastic_modules(model)):
            off = f"the backbone has random or batch-dependent layers in training ({', '.join(stochastic[:3])})"
        train = TrainFeatures(train_samples, micro_batch_size) if off is None else None
        line = "feature cache: evaluation features computed once per run" + (
            "; training features too, in the first epoch (nothing random before the head)"
            if train
            else f"; training features every step ({off}; train.cache_features needs no augmentation before the head)"
        )
        return cls(train), line


def check_head_alone(model: nn.Module, features: Features, output: torch.Tensor) -> bool:
    """Whether the head alone reproduces ``output`` bitwise from ``features`` (in the forward's precision context);
    when not, says once that the cache is off."""
    with torch.no_grad():
        alone = unwrap_logits(head_logits(model, features))
    if torch.equal(alone.float(), unwrap_logits(output).float()):
        return True
    if is_main_launch_process():  # every process finds the same; one says it
        print(
            "warning: train.cache_features: this model's output is not its head's output on the backbone's "
            "features, so every feature is computed every time (the same results, without the speed-up).",
            file=sys.stderr,
            flush=True,
        )
    return False
