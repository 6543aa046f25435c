"""Head mode's speed options (backbone.py, and the evaluation's): a bf16 backbone computes what bf16 autocast does,
exports fp32 weights and resumes bitwise; a compiled backbone compiles once per mode per run, ragged batches included,
and computes what the eager one does; the evaluation's batch size and precision change no trained weight, and its
fp32 is fp32."""

import copy
import dataclasses
import shutil
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch._dynamo.testing import CompileCounter

from tiny_transformers import FinetuneConfig, ModelConfig, TrainConfig, finetune
from tiny_transformers import backbone as backbone_module
from tiny_transformers.backbone import backbone_in_fp32, cast_backbone, compile_backbone
from tiny_transformers.config import trajectory_differences
from tiny_transformers.errors import ConfigError
from tiny_transformers.models import build_model
from tiny_transformers.validation import validate

sys.path.insert(0, str(Path(__file__).parent))
from test_finetune import tiny_config  # noqa: E402

needs_cpp = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="torch.compile on a CPU needs a C++ compiler"
)


def head_config(source, output_dir, model=None, **train) -> FinetuneConfig:
    """test_finetune's tiny_config in head mode and bf16; micro-batch 5 leaves a ragged last batch in training
    (24 = 4 x 5 + 4) and in evaluation (12 = 2 x 5 + 2)."""
    config = tiny_config(
        source, output_dir, **{"batch_size": 5, "micro_batch_size": 5, "mixed_precision": "bf16", **train}
    )
    config.model = dataclasses.replace(config.model, train_mode="head", **(model or {}))
    return config


def untimed(history):
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]


def assert_resumes_bitwise(result, source, output_dir, model) -> None:
    """What a crash during epoch 2 of ``result``'s two-epoch head_config run leaves (the epoch-1 checkpoint and its
    metrics line), copied to ``output_dir`` and resumed with ``model``'s settings, ends with the uninterrupted run's
    history and last weights, bitwise."""
    shutil.copytree(result.output_dir, output_dir)
    for leftover in ("best", "last", "checkpoints/step_00000010"):
        shutil.rmtree(output_dir / leftover)
    (output_dir / "finished.json").unlink()  # a crash leaves none: the run goes on instead of saying it is finished
    (output_dir / "metrics.jsonl").write_text((output_dir / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    resumed = finetune(head_config(source, output_dir, model=model))
    assert untimed(resumed.history) == untimed(result.history)
    a, b = (load_file(r.output_dir / "last" / "model.safetensors") for r in (result, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "name, size",
    [
        ("test_vit", 32),
        ("deit_tiny_distilled_patch16_224", 32),
        ("cait_xxs24_224", 32),
        ("swin_tiny_patch4_window7_224", 224),
    ],
)
def test_bf16_backbone_computes_what_bf16_autocast_does(name, size):
    """Storing the frozen linear/conv weights in bf16 is autocast's own rounding done once: same logits, same loss,
    same head gradient. Tolerance 1e-6 (absolute) for other CPUs' kernels; on this machine they are bitwise equal."""
    if not timm.is_model(name):
        pytest.skip(f"{name} is not in this timm")
    torch.manual_seed(0)
    autocast_model = build_model(ModelConfig(name=name, pretrained=False), 5, size)
    bf16_model = copy.deepcopy(autocast_model)
    assert cast_backbone(bf16_model) > 0
    x, labels = torch.randn(3, 3, size, size), torch.tensor([0, 3, 4])
    results = []
    for model in (autocast_model, bf16_model):
        torch.manual_seed(1)  # train mode: drop path draws the same paths for both
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
            logits = logits[0] if isinstance(logits, tuple) else logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        results.append((logits.float(), loss, grads))
        assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)  # fp32 master weights
    (logits_a, loss_a, grads_a), (logits_b, loss_b, grads_b) = results
    torch.testing.assert_close(logits_b, logits_a, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-6)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_bf16_backbone_trains_like_autocast_exports_fp32_and_resumes_bitwise(stanford_dir, tmp_path, bf16_process):
    """Two head-mode epochs with model.backbone_dtype bf16 against the default (bf16 autocast of fp32 weights):
    the same top-1, top-5 and losses (tolerance 1e-5; bitwise here); the export holds fp32 weights that plain timm
    loads; one epoch, then a resumed second, ends with the uninterrupted run's weights, bitwise."""
    reference = finetune(head_config(stanford_dir, tmp_path / "fp32"))
    config = head_config(stanford_dir, tmp_path / "bf16", model={"backbone_dtype": "bf16"})
    result = finetune(config)
    for a, b in zip(untimed(reference.history), untimed(result.history)):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], abs=1e-5), key

    exported = load_file(result.output_dir / "last" / "model.safetensors")
    assert {t.dtype for t in exported.values()} == {torch.float32}
    model = timm.create_model("test_vit", num_classes=4, img_size=32)
    model.load_state_dict(exported)
    qkv = exported["blocks.0.attn.qkv.weight"]
    assert torch.equal(qkv, qkv.bfloat16().float())  # the bf16 values the run trained with, exactly
    # recorded in the run's config, and a resume with another backbone_dtype is refused (it changes the weights)
    assert trajectory_differences(config.to_dict(), head_config(stanford_dir, tmp_path / "bf16")) == [
        "model.backbone_dtype"
    ]

    assert_resumes_bitwise(result, stanford_dir, tmp_path / "resumed", {"backbone_dtype": "bf16"})


def test_bf16_backbone_is_refused_where_it_cannot_work():
    head = ModelConfig(backbone_dtype="bf16")
    for config, needs in [
        (FinetuneConfig(model=ModelConfig(backbone_dtype="bf16", train_mode="full")), "model.train_mode head"),
        (FinetuneConfig(model=head, train=TrainConfig(mixed_precision="no")), "train.mixed_precision bf16"),
        (FinetuneConfig(model=head, train=TrainConfig(eval_precision="fp32")), "train.eval_precision autocast"),
    ]:
        with pytest.raises(ConfigError, match=f"model.backbone_dtype bf16 needs {needs}"):
            validate(config, num_processes=1, cuda_available=False)
    validate(FinetuneConfig(model=head), num_processes=1, cuda_available=False)


def test_backbone_in_fp32_restores_the_bf16_weights_bitwise():
    model = build_model(ModelConfig(name="test_vit", pretrained=False), 4, 32)
    cast_backbone(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with backbone_in_fp32(model):
        assert {v.dtype for v in model.state_dict().values()} == {torch.float32}
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


@needs_cpp
def test_compiled_backbone_compiles_once_per_mode_for_a_run(stanford_dir, tmp_path, monkeypatch, bf16_process):
    """train.compile in head mode, counted with dynamo's CompileCounter backend (it traces as inductor would and
    runs the captured graph, so the count is exact and fast): two epochs, each with a ragged last micro-batch and an
    evaluation with a ragged last batch, make exactly 2 graphs (train and eval mode), never recompiled; the run's
    numbers equal the eager run's (tolerance 1e-5: the padded rows change nothing the loss or metrics see).

    Drop path is off here: in train mode it draws one number per image and block, so a padded ragged batch shifts
    the draws of its real images (an equally likely pattern, not the same one; inductor's own random numbers differ
    from eager's anyway), and the runs would agree only in distribution."""
    counter = CompileCounter()
    monkeypatch.setattr(backbone_module, "BACKEND", counter)
    torch._dynamo.reset()
    model = {"drop_path_rate": 0.0}
    compiled = finetune(head_config(stanford_dir, tmp_path / "compiled", model, compile=True, mixed_precision="no"))
    assert counter.frame_count == 2
    eager = finetune(head_config(stanford_dir, tmp_path / "eager", model, mixed_precision="no"))
    for a, b in zip(untimed(eager.history), untimed(compiled.history)):
        for key in a:
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
    weights = load_file(compiled.output_dir / "last" / "model.safetensors")
    assert weights.keys() == load_file(eager.output_dir / "last" / "model.safetensors").keys()


@needs_cpp
def test_inductor_compiled_backbone_computes_what_the_eager_one_does():
    """The real backend (inductor writes and compiles C++: ~20 s on 2 CPU cores), in eval mode: a full batch and a
    ragged one (padded) give the eager features to fp32 tolerance, one graph for both."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="test_vit", pretrained=False), 4, 32).eval()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    features = compile_backbone(model, train_batch=4, eval_batch=4)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for batch in (x, x[:3]):
            torch.testing.assert_close(model(batch), model.forward_head(features.eager(batch)), rtol=1e-4, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_fp32_evaluation_is_fp32_and_changes_no_trained_weight(stanford_dir, tmp_path, bf16_process):
    """train.eval_precision of a bf16 run: fp32 (the official code's, the paper recipes') scores exactly what
    `evaluate` scores the exported weights with in fp32 (Accelerate's prepared forward carries the training autocast,
    which evaluation must step around: engine.own_forward); autocast (the fast table's: an fp32 evaluation alone keeps
    the exact recipes above 90 minutes on an H100, docs/benchmarks.md) scores what `evaluate` scores in bf16. Either
    way the run trains bitwise the same weights with the same training losses."""
    from accelerate.state import AcceleratorState

    from tiny_transformers.evaluation import evaluate_checkpoint

    runs = {p: finetune(head_config(stanford_dir, tmp_path / p, eval_precision=p)) for p in ("fp32", "autocast")}
    exact, fast = runs["fp32"], runs["autocast"]
    a, b = (load_file(r.output_dir / "last" / "model.safetensors") for r in (exact, fast))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in exact.history] == [h["train_loss"] for h in fast.history]
    for run, precision in ((exact, "no"), (fast, "bf16")):
        config = head_config(stanford_dir, tmp_path / "unused")
        config.model = dataclasses.replace(config.model, checkpoint=str(run.output_dir / "last"))
        AcceleratorState._reset_state(reset_partial_state=True)  # as a new process would: another precision
        scored = evaluate_checkpoint(config, mixed_precision=precision)
        last = run.history[-1]
        assert (scored["loss"], scored["top1"], scored["top5"]) == (last["eval_loss"], last["top1"], last["top5"])
    assert exact.history[-1]["eval_loss"] != fast.history[-1]["eval_loss"]  # bf16 rounding moved it
    # this process now runs bf16 and the config says bf16, but the exact run recorded an fp32 evaluation: the
    # refusal names where each precision came from and the keyword that changes it
    config.model = dataclasses.replace(config.model, checkpoint=str(exact.output_dir / "last"))
    with pytest.raises(ConfigError) as refused:
        evaluate_checkpoint(config)
    assert str(refused.value) == (
        f"The precision 'no' recorded with model.checkpoint '{exact.output_dir / 'last'}' (its run evaluated in fp32) "
        "differs from the 'bf16' this Python process already runs with, and Accelerate fixes it once per process; "
        "pass mixed_precision='bf16' to evaluate_checkpoint, or run this in a new process (e.g. restart the notebook "
        "kernel)."
    )


def test_a_larger_evaluation_batch_scores_the_same(stanford_dir, tmp_path, bf16_process):
    """train.eval_batch_size: the 12-image eval split in one batch against micro-batches of 5 (5 + 5 + 2): each image is
    scored alone, so the same top-1 and top-5, the loss to float rounding, and the same trained weights."""
    small = finetune(head_config(stanford_dir, tmp_path / "small"))
    large = finetune(head_config(stanford_dir, tmp_path / "large", eval_batch_size=12))
    for a, b in zip(small.history, large.history):
        assert (a["top1"], a["top5"]) == (b["top1"], b["top5"])
        # equal on the 2-core CPU; bf16 kernels blocked for another batch shape may round differently elsewhere
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-3)
    weights = [load_file(r.output_dir / "last" / "model.safetensors") for r in (small, large)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
