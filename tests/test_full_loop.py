"""Full fine-tuning keeps every guarantee of the loop: a longer run after resume follows the new cosine, the
distillation head learns the teacher's answers on the same augmented images, and EMA exports load in timm and
transformers. The launched guarantees of full fine-tuning (layer decay, warmup, clipping, EMA and gradient
checkpointing on: 1 vs 2 processes give the same raw and EMA weights, a SIGKILL anywhere resumes bitwise, the learning
rate follows the formula at every update) share their runs with tests/test_resilience.py, whose full mode has them
all on."""

import dataclasses
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import PIL.Image
import pytest
import timm
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from test_finetune import tiny_config  # noqa: E402
from test_resilience import LR, WARMUP_LR, ema, expected_lr, optimizer_lrs  # noqa: E402

from tiny_transformers import engine, finetune  # noqa: E402


@pytest.mark.parametrize("extra", [{}, {"warmup_epochs": 0.5, "warmup_lr": WARMUP_LR}], ids=["paper", "warmup"])
def test_more_epochs_on_resume_follow_the_new_cosine_to_min_lr(stanford_dir, tmp_path, extra):
    """30 -> 40 epochs used to keep the old cosine (ending at lr 2.5e-4); the schedule now re-plans."""
    out = tmp_path / "out"
    first = tiny_config(stanford_dir, out, epochs=1, checkpoint_every=1, keep_checkpoints=100)
    for name, value in extra.items():
        setattr(first.optim, name, value)
    finetune(first)
    longer = tiny_config(stanford_dir, out, epochs=3, checkpoint_every=1, keep_checkpoints=100)
    longer.optim = first.optim
    result = finetune(longer)
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-15)  # ends at min_lr
    total, warmup = 9, (round(0.5 * 3) if extra else 0)  # 3 updates per epoch
    for step in range(4, 10):  # after the resume: the 3-epoch schedule
        lr = max(optimizer_lrs(out / "checkpoints" / f"step_{step:08d}"))
        if extra:
            assert lr == pytest.approx(expected_lr(step, total, warmup), rel=1e-9, abs=1e-15)
        else:
            assert lr == pytest.approx(0.5 * LR * (1 + math.cos(math.pi * step / total)), rel=1e-9, abs=1e-15)


def test_the_distillation_head_learns_the_teachers_answer_on_the_same_augmented_images(monkeypatch):
    from tiny_transformers.augment import BatchAugment
    from tiny_transformers.checkpoint import TrainerState
    from tiny_transformers.config import AugmentConfig, DistillConfig, FinetuneConfig, ModelConfig, TrainConfig
    from tiny_transformers.optim import build_optimizer, build_schedule
    from tiny_transformers.plan import Plan

    class Teacher(torch.nn.Module):
        """Always class 2, and remembers what it was shown."""

        def forward(self, x):
            self.seen = x.clone()
            return F.one_hot(torch.full((len(x),), 2), 4).float() * 10

    student = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=4, img_size=32)
    student.set_distilled_training(True)
    shown = []
    student.register_forward_pre_hook(lambda _, args: shown.append(args[0].clone()))
    config = FinetuneConfig(
        model=ModelConfig(name="deit_tiny_distilled_patch16_224", train_mode="full"),
        distill=DistillConfig(teacher="a teacher"),
        train=TrainConfig(batch_size=4, micro_batch_size=4, epochs=1, mixed_precision="no", progress=False),
    )
    captured = []
    real_loss = engine.loss_per_image

    def loss_per_image(output, targets, teacher_logits=None, distill=None):
        value = real_loss(output, targets, teacher_logits, distill)
        captured.append((output, targets, teacher_logits, value))
        return value

    monkeypatch.setattr(engine, "loss_per_image", loss_per_image)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    optimizer = build_optimizer(config.optim, student)
    plan = Plan.build(config, 1, 4)
    augment = BatchAugment(32, (0.5,) * 3, (0.5,) * 3, 4, AugmentConfig(), "cpu")
    schedule = build_schedule(optimizer, config.optim, plan)
    training = SimpleNamespace(
        accelerator=accelerator, model=student, optimizer=optimizer, scheduler=schedule, augment=augment, plan=plan,
        state=TrainerState(), config=config, ema=None, teacher=Teacher(), features=None,
    )  # fmt: skip
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert list(engine.train_steps(training, [(images, torch.tensor([0, 1, 2, 3]))])) == [1]
    ((output, targets, teacher_logits, value),) = captured
    assert torch.equal(training.teacher.seen, shown[0])  # the same mixed and erased images
    assert teacher_logits.argmax(-1).tolist() == [2, 2, 2, 2]
    cls, dist = output
    expected = (
        torch.sum(-targets * F.log_softmax(cls, -1), -1) + F.cross_entropy(dist, torch.full((4,), 2), reduction="none")
    ) / 2
    assert torch.allclose(value, expected)


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_distillation_alpha_weighs_the_two_heads(kind):
    """DeiT's DistillationLoss: (1 - alpha) x the class head's loss + alpha x the distillation head's."""
    from tiny_transformers.config import DistillConfig

    generator = torch.Generator().manual_seed(0)
    cls, dist, teacher = (torch.randn(3, 5, generator=generator) for _ in range(3))
    targets = torch.softmax(torch.randn(3, 5, generator=generator), -1)
    base = torch.sum(-targets * F.log_softmax(cls, -1), -1)
    if kind == "hard":
        distill = F.cross_entropy(dist, teacher.argmax(-1), reduction="none")
    else:  # DeiT: kl_div(log_softmax(s/T), log_softmax(t/T), sum, log_target) * T^2 / numel, here per image
        log_p, log_q = F.log_softmax(dist / 2, -1), F.log_softmax(teacher / 2, -1)
        distill = (log_q.exp() * (log_q - log_p)).sum(-1) * 4 / 5
    value = engine.loss_per_image((cls, dist), targets, teacher, DistillConfig(type=kind, temperature=2.0, alpha=0.3))
    assert torch.allclose(value, 0.7 * base + 0.3 * distill, atol=1e-6)
    half = engine.loss_per_image((cls, dist), targets, teacher, DistillConfig(type=kind, temperature=2.0))
    assert torch.allclose(half, (base + distill) / 2, atol=1e-6)  # the default alpha: DeiT's 0.5
    assert not torch.allclose(value, half)


def test_ema_exports_load_in_timm_and_transformers_as_the_ema_weights(stanford_dir, tmp_path, monkeypatch, capsys):
    """With an EMA, last/ holds the EMA and best/ the better of raw and EMA; the result, the final line, results.md,
    the prediction grid and the model card give those weights' numbers and say which they are."""
    from tiny_transformers import report
    from tiny_transformers.card import model_card
    from tiny_transformers.rundir import GRID_FILE, RESULTS_FILE, epoch_score, read_run

    out = tmp_path / "out"
    config = tiny_config(stanford_dir, out, epochs=2)
    config.train.ema_decay = 0.5
    grid_models, sample = [], report.sample_predictions

    def sample_predictions(model, *args, **kwargs):
        grid_models.append((model, sample(model, *args, **kwargs)))
        return grid_models[-1][1]

    monkeypatch.setattr(report, "sample_predictions", sample_predictions)
    result = finetune(config)
    final_record, best_record = result.history[-1], max(result.history, key=epoch_score)
    assert (result.top1, result.top5, result.loss, result.weights) == (
        final_record["ema_top1"],
        final_record["ema_top5"],
        final_record["ema_loss"],
        "ema",
    )  # last/'s numbers, not the raw weights'
    assert result.best_top1 == epoch_score(best_record)
    printed = capsys.readouterr().out
    assert (
        f"done: top-1 {result.top1:.2f}% (EMA weights), best top-1 {result.best_top1:.2f}% "
        f"({result.best_weights} weights)"
    ) in printed
    results = (out / RESULTS_FILE).read_text()
    assert f"| this run, final (epoch 2, EMA weights) | {result.top1:.2f} | {result.top5:.2f} |" in results
    best_label = "EMA" if result.best_weights == "ema" else "raw"
    assert f"best top-1 (epoch {best_record['epoch']}, {best_label} weights) | {result.best_top1:.2f} |" in results
    ((grid_model, _),) = grid_models  # the grid's predictions are those of last/'s weights
    last = load_file(out / "last" / "model.safetensors")
    assert all(torch.equal(tensor.cpu(), last[key]) for key, tensor in grid_model.state_dict().items())
    with PIL.Image.open(out / GRID_FILE) as grid:  # with its caption strip, saying which weights
        assert grid.size == report.grid_pixel_size(len(grid_models[0][1][0]), 64, caption=True)
    card = str(model_card(read_run(out)))
    assert "the exponential moving average (EMA) of the weights" in card
    again = finetune(config)  # the same command on the finished run reports the same saved weights' numbers
    assert dataclasses.astuple(again) == dataclasses.astuple(result)
    assert f"| this run, final (epoch 2, EMA weights) | {result.top1:.2f} |" in card
    final = sorted((out / "checkpoints").glob("step_*"))[-1]
    # what README's run-folder listing says a checkpoint holds: no scheduler (the lr is a function of the step)
    assert sorted(p.name for p in final.iterdir()) == [
        "custom_checkpoint_0.pkl", "model.safetensors", "optimizer.bin", "random_states_0.pkl", "trainer_state.json"
    ]  # fmt: skip
    averaged = {k.removeprefix("module."): v for k, v in ema(final).items()}
    exported = load_file(out / "last" / "model.safetensors")
    assert all(torch.equal(exported[k], averaged[k]) for k in exported)
    recorded = json.loads((out / "last" / "config.json").read_text())["tiny_transformers"]
    assert recorded["weights"] == "ema"
    best = json.loads((out / "best" / "config.json").read_text())["tiny_transformers"]["weights"]
    top = max(result.history, key=lambda h: max(h["top1"], h["ema_top1"]))
    assert best == ("ema" if top["ema_top1"] > top["top1"] else "raw")
    timm_model = timm.create_model(f"local-dir:{out / 'last'}", pretrained=True).eval()
    auto = transformers.AutoModelForImageClassification.from_pretrained(str(out / "last")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (auto(pixel_values=x).logits - timm_model(x)).abs().max().item() < 1e-5
