"""Every path that only a GPU runs, once, on tiny models, in under a minute: the first stage of benchmarks/gpu.sh, so
that the first session lent a GPU finds any CUDA-only break at once, before any figure is measured.

    python -m benchmarks.cuda_smoke [--json gpu-smoke.json] [--seconds 60] [--checks preprocess fp16_step ...]

One markdown table of check | pass/fail | detail, and the same rows as JSON (rewritten after each check). Each check
catches its own exception: a failure is a row, not a crash. A check that this machine cannot run (fp8 without an
fp8 GPU, fp16 on a CPU) is a skip row saying why; a check not started before ``--seconds`` is a skip row too. Tiny
models with random weights (``test_vit``; a tiny CaiT and Swin for ``model.fast_attention``) on the synthetic
Tiny-ImageNet look-alike of ``tiny_transformers.synthetic``: nothing is downloaded. Without CUDA it says so in one
line and exits 0; ``--device cpu`` runs the same checks on the CPU (the tests do: tests/test_gpu_script.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import tyro

from .report import write_json

RESUME_KILL_AT = "step_00000004"  # the checkpoint after which the interrupted run is killed: mid-epoch 2 of 3 steps


@dataclass(frozen=True)
class Settings:
    """The CUDA smoke stage: every GPU-only path once, on tiny models."""

    device: str = "cuda"  # where the checks run; cpu: the same checks on the CPU (tests)
    seconds: float = 60.0  # checks not started within this many seconds of the start are skipped, saying so
    checks: tuple[str, ...] = ()  # the checks to run (default: all, in order)
    json: str | None = None  # write the rows here, after every check
    workdir: str | None = None  # where the runs' data and folders go (default: a temporary folder, removed)


class Skip(Exception):
    """A check this machine cannot run; its message says why."""


class Smoke:
    """What the checks share: the device, the tiny data set, and the runs several checks read (made on first use)."""

    def __init__(self, device: torch.device, root: Path) -> None:
        from tiny_transformers.synthetic import make_stanford

        self.device, self.root = device, root
        self.precision = "fp16" if device.type == "cuda" else "no"  # the paper's fp16 where it runs; exact on a CPU
        self.source = make_stanford(root / "data", n_classes=4, n_train=6, n_val=2)  # 3 updates an epoch
        self._runs: dict[str, Any] = {}

    def autocast(self) -> Callable[[], contextlib.AbstractContextManager]:
        """The runs' autocast (fp16 on a GPU, as the paper recipes; none on the CPU), for the model-level checks."""
        from .machine import autocast

        return autocast(self.device, self.precision)

    def tolerance(self) -> float:
        """Largest relative difference of two computations of the same function: half precision's on a GPU."""
        return 5e-2 if self.precision == "fp16" else 1e-4

    def config(self, name: str, **train: Any):
        """The vit_l paper recipe made tiny (test_vit at 32 px, random weights, 2 epochs), into ``root/name``."""
        from tiny_transformers.config import paper_config

        config = paper_config("vit_l")
        config.model = dataclasses.replace(config.model, name="test_vit", pretrained=False)
        config.data = dataclasses.replace(config.data, source=str(self.source), image_size=32, num_workers=0)
        config.train = dataclasses.replace(
            config.train, epochs=2, batch_size=8, micro_batch_size=4, mixed_precision=self.precision,
            output_dir=str(self.root / name), progress=False, checkpoint_every=1, keep_checkpoints=100, **train,
        )  # fmt: skip
        return config

    def finetune(self, config):
        """``finetune(config)`` in this process on this device, its printing kept in ``root/runs.log``."""
        from accelerate.state import AcceleratorState

        from tiny_transformers.train import finetune

        AcceleratorState._reset_state(reset_partial_state=True)  # each run fixes its own precision, as a process
        with self.on_device(), open(self.root / "runs.log", "a") as log:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                return finetune(config)

    @contextlib.contextmanager
    def on_device(self) -> Iterator[None]:
        """Accelerate on this check's device: the CPU even where a GPU is visible when ``device`` is cpu."""
        before = os.environ.get("ACCELERATE_USE_CPU")
        if self.device.type == "cpu":
            os.environ["ACCELERATE_USE_CPU"] = "true"
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("ACCELERATE_USE_CPU", None)
            else:
                os.environ["ACCELERATE_USE_CPU"] = before

    def run(self, name: str, make: Callable[[], Any]) -> Any:
        """The run ``name``, made once by ``make`` (a failure is raised again to every check that reads it)."""
        if name not in self._runs:
            try:
                self._runs[name] = make()
            except Exception as error:  # noqa: BLE001 - each reader reports it as its own failure
                self._runs[name] = error
        if isinstance(self._runs[name], Exception):
            raise RuntimeError(f"the {name} run failed: {type(self._runs[name]).__name__}: {self._runs[name]}")
        return self._runs[name]

    def reference(self):
        """The tiny recipe run: fp16 training with its scaler on a GPU, fp32 evaluation, checkpoints every update."""
        return self.run("reference", lambda: self.finetune(self.config("reference")))


def untimed(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in record.items() if k != "epoch_seconds"} for record in history]


def weights_differ(a: Path, b: Path) -> str | None:
    """None when two runs' ``last/`` weights are bitwise equal, else the largest difference in words."""
    from safetensors.torch import load_file

    x, y = load_file(a / "last" / "model.safetensors"), load_file(b / "last" / "model.safetensors")
    if x.keys() != y.keys():
        return f"different tensors: {sorted(x.keys() ^ y.keys())}"
    worst = max(((x[k].float() - y[k].float()).abs().max().item(), k) for k in x)
    return None if all(torch.equal(x[k], y[k]) for k in x) else f"{worst[1]} differs by up to {worst[0]:.3g}"


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float32 on the CPU."""
    a, b = a.float().cpu(), b.float().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


# --------------------------------------------------------------------------------------------------
# The checks: each takes the shared Smoke, returns its detail on success, raises on failure (Skip: cannot run here)
# --------------------------------------------------------------------------------------------------


def check_preprocess(smoke: Smoke) -> str:
    """data.preprocess official (uint8 bicubic resize, RandAugment 2 ops at magnitude 0) on the device against the
    CPU's, the same images and draws: the resize may differ by one level of 255 (float rounding before the round)."""
    from tiny_transformers.augment import BatchAugment
    from tiny_transformers.config import AugmentConfig
    from tiny_transformers.models import IMAGENET_MEAN, IMAGENET_STD
    from tiny_transformers.randaugment import resize_uint8

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 200, (16,), generator=generator)
    augment = AugmentConfig(randaugment_ops=2, randaugment_magnitude=0, mixup_alpha=0, cutmix_alpha=0)
    augment = dataclasses.replace(augment, random_erasing=0)
    outputs = {}
    for device in (torch.device("cpu"), smoke.device):
        batch = BatchAugment(384, IMAGENET_MEAN, IMAGENET_STD, 200, augment, device, "official")
        torch.manual_seed(0)  # RandAugment draws its ops on the CPU: the same ops on both devices
        train, _ = batch.train(images.to(device), labels.to(device))
        resized = resize_uint8(images.to(device), 384)
        outputs[device.type] = (resized.cpu(), batch.resize_normalize(images.to(device)).cpu(), train.cpu())
    (cpu_resize, cpu_eval, cpu_train), (resize, evaluation, train) = outputs["cpu"], outputs[smoke.device.type]
    levels = (resize.int() - cpu_resize.int()).abs()
    detail = (
        f"uint8 resize: max {levels.max().item()} level(s), {(levels > 0).float().mean().item():.2e} of pixels; "
        f"normalized max |difference|: evaluation {(evaluation - cpu_eval).abs().max().item():.3g}, "
        f"training (RandAugment) {(train - cpu_train).abs().max().item():.3g}"
    )
    if levels.max().item() > 1:
        raise AssertionError(detail)
    return detail


def check_fp16_step(smoke: Smoke) -> str:
    """The tiny recipe trained in fp16 autocast with Accelerate's gradient scaler: finite losses, moving weights."""
    if smoke.precision != "fp16":
        raise Skip("fp16 autocast and its gradient scaler need CUDA (the runs here are fp32)")
    result = smoke.reference()
    losses = [record["train_loss"] for record in result.history]
    if not all(torch.isfinite(torch.tensor(losses))) or losses[0] == losses[-1]:
        raise AssertionError(f"train losses {losses}")
    return f"2 epochs x 3 updates: train loss {losses[0]:.4f} -> {losses[-1]:.4f}, top-1 {result.top1:.2f}%"


def check_fp32_evaluation(smoke: Smoke) -> str:
    """train.eval_precision fp32 in a run (the forward Accelerate wrapped in the training autocast put back for the
    evaluation): the run's last scores equal `evaluate`'s fp32 scores of its exported weights (bitwise on the CPU;
    the loss within 1e-5, relative, elsewhere)."""
    from accelerate.state import AcceleratorState

    from tiny_transformers.evaluation import evaluate_checkpoint

    result = smoke.reference()
    config = smoke.config("unused")
    config.model = dataclasses.replace(config.model, checkpoint=str(result.output_dir / "last"))
    AcceleratorState._reset_state(reset_partial_state=True)
    with smoke.on_device(), contextlib.redirect_stdout(io.StringIO()):
        scored = evaluate_checkpoint(config, mixed_precision="no")
    last = result.history[-1]
    ours, theirs = (last["eval_loss"], last["top1"], last["top5"]), (scored["loss"], scored["top1"], scored["top5"])
    detail = f"in training: loss {ours[0]:.6f}, top-1 {ours[1]:.2f}%; evaluate: loss {theirs[0]:.6f}, "
    detail += f"top-1 {theirs[1]:.2f}%"
    if ours == theirs:
        return f"equal, bitwise ({detail})"
    # another process's kernels may round fp32 differently; an evaluation left in fp16 moves the loss by ~1e-3
    if ours[1:] != theirs[1:] or abs(ours[0] - theirs[0]) > 1e-5 * abs(theirs[0]):
        raise AssertionError(f"not equal: {detail}")
    return f"equal top-1 and top-5, loss within {abs(ours[0] - theirs[0]) / abs(theirs[0]):.1e} ({detail})"


def check_compile(smoke: Smoke) -> str:
    """train.compile in head mode (backbone.compile_backbone: forward_features compiled, ragged batches padded):
    the compiled model's logits against eager's, in train and eval mode, a full and a ragged batch."""
    from tiny_transformers.backbone import compile_backbone
    from tiny_transformers.config import ModelConfig

    from .throughput import build

    net = build(ModelConfig(name="test_vit", drop_path_rate=0.0), "head", 32, smoke.device)
    x, cast, worst = torch.randn(8, 3, 32, 32, device=smoke.device), smoke.autocast(), 0.0
    with torch.no_grad(), cast():
        eager = {(mode, n): net.train(mode)(x[:n]) for mode in (True, False) for n in (8, 5)}
        compile_backbone(net, 8, 8)
        for (mode, n), expected in eager.items():
            worst = max(worst, relative_difference(net.train(mode)(x[:n]), expected))
    tolerance = smoke.tolerance()
    detail = f"train and eval mode, batches of 8 and 5: max relative difference {worst:.2e} (tolerance {tolerance:g})"
    if worst > tolerance:
        raise AssertionError(detail)
    return detail


def check_fast_attention(smoke: Smoke) -> str:
    """model.fast_attention on a tiny CaiT (talking heads rewritten) and a tiny Swin (fused window attention): the
    same weights' logits with and without it."""
    from tiny_transformers.config import ModelConfig

    from .throughput import build

    cast, parts, tolerance = smoke.autocast(), [], smoke.tolerance()
    for name in ("cait_xxs24_224", "swin_tiny_patch4_window7_224"):
        x = torch.randn(2, 3, 224, 224, device=smoke.device)
        logits = []
        for fast in (False, True):
            net = build(ModelConfig(name=name, drop_path_rate=0.0, fast_attention=fast), "head", 224, smoke.device)
            with torch.no_grad(), cast():
                logits.append(net.eval()(x))
            del net
        difference = relative_difference(logits[1], logits[0])
        parts.append(f"{name} {difference:.2e}")
        if difference > tolerance:
            raise AssertionError(f"max relative difference {', '.join(parts)} (tolerance {tolerance:g})")
    return f"max relative difference of the logits: {', '.join(parts)} (tolerance {tolerance:g})"


def check_backbone_bf16(smoke: Smoke) -> str:
    """model.backbone_dtype bf16 (backbone.cast_backbone): logits against the fp32 weights under bf16 autocast."""
    from tiny_transformers.backbone import cast_backbone
    from tiny_transformers.config import ModelConfig

    from .machine import autocast
    from .throughput import build

    net = build(ModelConfig(name="test_vit"), "head", 32, smoke.device).eval()
    x, cast = torch.randn(8, 3, 32, 32, device=smoke.device), autocast(smoke.device, "bf16")
    with torch.no_grad(), cast():
        expected = net(x)
        layers = cast_backbone(net)
        logits = net(x)
    if torch.equal(logits, expected):
        return f"{layers} layers in bf16: logits bitwise equal to bf16 autocast's"
    difference = relative_difference(logits, expected)
    if difference > 1e-2:
        raise AssertionError(f"{layers} layers in bf16: max relative difference {difference:.2e} from autocast's")
    return f"{layers} layers in bf16: max relative difference {difference:.2e} from autocast's (not bitwise)"


def check_backbone_fp8(smoke: Smoke) -> str:
    """model.backbone_dtype fp8 (torchao) where the GPU has fp8: logits against bf16's, within fp8's rounding."""
    from tiny_transformers.backbone import cast_backbone, fp8_backbone, fp8_unavailable
    from tiny_transformers.config import ModelConfig

    from .machine import autocast
    from .throughput import build

    reason = fp8_unavailable() if smoke.device.type == "cuda" else "fp8 runs on a GPU only"
    if reason:
        raise Skip(f"needs {reason}" if smoke.device.type == "cuda" else reason)
    net = build(ModelConfig(name="vit_small_patch16_224"), "head", 224, smoke.device).eval()
    x, cast = torch.randn(16, 3, 224, 224, device=smoke.device), autocast(smoke.device, "bf16")
    with torch.no_grad(), cast():
        cast_backbone(net)
        expected = net(x)
        layers = fp8_backbone(net)
        logits = net(x)
    difference = relative_difference(logits, expected)
    agreement = (logits.argmax(-1) == expected.argmax(-1)).float().mean().item()
    detail = f"{layers} fp8 layers: logits {difference:.3f} relative from bf16's, top-1 agreement {agreement:.2f}"
    if layers == 0 or difference > 0.15:
        raise AssertionError(detail)
    return detail


def check_feature_cache(smoke: Smoke) -> str:
    """train.cache_features on against off, on the tiny recipe as a linear probe (the ablation's probe row: the
    evaluation's and the training's features cached): the same metrics and head weights, bitwise."""
    from tiny_transformers.ablate import ALL_ROWS
    from tiny_transformers.cli import row_config

    runs = {}
    for cached in (True, False):
        config = row_config(smoke.config("unused"), ALL_ROWS["probe"], smoke.root / f"probe-cache-{cached}")
        config.train = dataclasses.replace(config.train, cache_features=cached)
        runs[cached] = smoke.finetune(config)
    on, off = runs[True], runs[False]
    last = on.history[-1]
    detail = f"2 epochs: top-1 {last['top1']:.2f}%, eval loss {last['eval_loss']:.6f}"
    if untimed(on.history) != untimed(off.history):
        raise AssertionError(f"metrics differ: {untimed(on.history)} against {untimed(off.history)}")
    if difference := weights_differ(on.output_dir, off.output_dir):
        raise AssertionError(f"same metrics, weights differ: {difference}")
    return f"metrics and weights bitwise equal ({detail})"


_CHILD = """
import json, sys, time
from tiny_transformers import train
from tiny_transformers.config import FinetuneConfig
save = train.save_checkpoint
def pausing(*args, **kwargs):  # waits to be killed once the named checkpoint is complete
    path = save(*args, **kwargs)
    if path.name == sys.argv[2]:
        print("checkpoint saved", flush=True)
        time.sleep(600)
    return path
train.save_checkpoint = pausing
train.finetune(FinetuneConfig.from_dict(json.loads(open(sys.argv[1]).read())))
"""


def check_resume(smoke: Smoke) -> str:
    """A run of the tiny recipe SIGKILLed in another process mid-epoch 2 (right after its 4th update's checkpoint),
    then resumed: the uninterrupted run's metrics and weights, bitwise."""
    reference = smoke.reference()
    config = smoke.config("killed")
    (smoke.root / "killed.json").write_text(config.to_json())
    environment = {**os.environ, **({"ACCELERATE_USE_CPU": "true"} if smoke.device.type == "cpu" else {})}
    command = [sys.executable, "-c", _CHILD, str(smoke.root / "killed.json"), RESUME_KILL_AT]
    log = smoke.root / "killed.log"
    with open(log, "w") as errors:
        child = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, text=True, env=environment, start_new_session=True
        )
    try:
        if not any(line.strip() == "checkpoint saved" for line in child.stdout):  # the run's own lines before it
            raise AssertionError(f"the run to kill ended first (status {child.wait()}): {log.read_text()[-500:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate(timeout=60)
    if child.returncode != -signal.SIGKILL:
        raise AssertionError(f"the run ended with status {child.returncode}, not by SIGKILL")
    resumed = smoke.finetune(config)
    if untimed(resumed.history) != untimed(reference.history):
        raise AssertionError(f"metrics differ: {untimed(resumed.history)} against {untimed(reference.history)}")
    if difference := weights_differ(resumed.output_dir, reference.output_dir):
        raise AssertionError(f"same metrics, weights differ: {difference}")
    return f"killed (SIGKILL) after {RESUME_KILL_AT}, resumed: metrics and weights bitwise the uninterrupted run's"


CHECKS: dict[str, tuple[str, Callable[[Smoke], str]]] = {
    "preprocess": ("data.preprocess official: device against CPU", check_preprocess),
    "fp16_step": ("fp16 training step with the gradient scaler", check_fp16_step),
    "fp32_evaluation": ("train.eval_precision fp32", check_fp32_evaluation),
    "backbone_bf16": ("model.backbone_dtype bf16", check_backbone_bf16),
    "backbone_fp8": ("model.backbone_dtype fp8", check_backbone_fp8),
    "fast_attention": ("model.fast_attention (CaiT, Swin)", check_fast_attention),
    "feature_cache": ("train.cache_features true against false", check_feature_cache),
    "resume": ("SIGKILL and resume, bitwise", check_resume),
    "compile": ("train.compile in head mode", check_compile),  # last: compiling is the slowest (20-45 s on a GPU)
}


def run_check(name: str, smoke: Smoke) -> dict[str, Any]:
    """One check as a row: ``{"check", "name", "status": pass/fail/skip, "detail", "seconds"}``; never raises."""
    title, check = CHECKS[name]
    started = time.perf_counter()
    try:
        status, detail = "pass", check(smoke)
    except Skip as reason:
        status, detail = "skip", str(reason)
    except Exception as error:  # noqa: BLE001 - a failure is a row, not a crash
        status, detail = "fail", f"{type(error).__name__}: {error}"
    return {"check": title, "name": name, "status": status, "detail": detail, "seconds": time.perf_counter() - started}


TABLE_HEAD = "| check | pass/fail | detail |\n|---|---|---|"


def table_row(row: dict[str, Any]) -> str:
    """One row of the markdown table (printed as soon as its check ends: a stage cut short keeps its rows).

    >>> table_row({"check": "x", "status": "pass", "detail": "a|b", "seconds": 1.0})
    '| x | pass | a/b (1.0 s) |'
    """
    detail = " ".join(row["detail"].replace("|", "/").split())
    return f"| {row['check']} | {row['status']} | {detail} ({row['seconds']:.1f} s) |"


def smoke_test(settings: Settings, on_row: Callable[[dict[str, Any]], None] = lambda row: None) -> list[dict[str, Any]]:
    """Every check of ``settings`` on its device, in order, each a row, written to ``settings.json`` and given to
    ``on_row`` as they come."""
    unknown = [name for name in settings.checks if name not in CHECKS]
    if unknown:
        raise SystemExit(f"unknown check(s) {', '.join(unknown)}; the checks are {', '.join(CHECKS)}")
    deadline = time.monotonic() + settings.seconds
    root = Path(settings.workdir or tempfile.mkdtemp(prefix="cuda-smoke-"))
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    try:
        try:
            smoke: Smoke | Exception = Smoke(torch.device(settings.device), root)
        except Exception as error:  # noqa: BLE001 - no data set: every check is a row saying so
            smoke = error
        for name in [n for n in CHECKS if n in settings.checks] if settings.checks else list(CHECKS):
            row = {"check": CHECKS[name][0], "name": name, "status": "skip", "seconds": 0.0}
            if isinstance(smoke, Exception):
                rows.append({**row, "status": "fail", "detail": f"set-up: {type(smoke).__name__}: {smoke}"})
            elif time.monotonic() > deadline:
                rows.append({**row, "detail": "not started: --seconds ran out"})
            else:
                rows.append(run_check(name, smoke))
            write_json(settings.json, {"device": settings.device, "rows": rows})
            on_row(rows[-1])
    finally:
        if settings.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def parse_settings(argv: list[str] | None = None) -> Settings:
    """The settings ``argv`` (without the program name) asks for.

    >>> parse_settings(["--device", "cpu", "--checks", "preprocess", "resume"]).checks
    ('preprocess', 'resume')
    """
    return tyro.cli(Settings, args=argv, prog="python -m benchmarks.cuda_smoke")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """``python -m benchmarks.cuda_smoke``: the table, or one line without CUDA (exit status 0 either way)."""
    settings = parse_settings(argv)
    if settings.device.startswith("cuda") and not torch.cuda.is_available():
        print("benchmarks.cuda_smoke: no CUDA GPU visible to torch; no check run")
        return []
    print(TABLE_HEAD, flush=True)
    rows = smoke_test(settings, lambda row: print(table_row(row), flush=True))
    failed = [row["name"] for row in rows if row["status"] == "fail"]
    summary = f"\ncuda smoke: {len(rows) - len(failed)} of {len(rows)} passed or skipped"
    print(summary + (f"; failed: {', '.join(failed)}" if failed else ""))
    return rows


if __name__ == "__main__":
    main()
