"""finetune(): two epochs with accumulation, checkpoints, best/ and last/, exact resume, evaluation."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from tiny_transformers import DataConfig, FinetuneConfig, ModelConfig, TrainConfig, evaluate_checkpoint, finetune
from tiny_transformers.errors import CheckpointError
from tiny_transformers.weights import describe_trained_weights


def untimed(history):
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]


def tiny_config(source, output_dir, **train) -> FinetuneConfig:
    """test_vit (0.3M parameters) at 32 px on the 24-image fixture: 3 optimizer steps per epoch."""
    return FinetuneConfig(
        model=ModelConfig(name="test_vit", pretrained=False, train_mode="full"),
        data=DataConfig(source=str(source), image_size=32, num_workers=0),
        train=TrainConfig(
            **{
                "epochs": 2,
                "batch_size": 8,
                "micro_batch_size": 4,
                "mixed_precision": "no",
                "output_dir": str(output_dir),
                "progress": False,
                **train,
            }
        ),
    )


@pytest.fixture(scope="module")
def trained(stanford_dir, tmp_path_factory):
    """One uninterrupted two-epoch run, shared by the tests below (they only read it)."""
    out = tmp_path_factory.mktemp("run") / "out"
    config = tiny_config(stanford_dir, out)
    return config, finetune(config)


def test_two_epochs_with_accumulation_write_every_output(trained):
    config, result = trained
    out = result.output_dir
    assert result.epochs_completed == 2 and len(result.history) == 2
    assert [h["step"] for h in result.history] == [3, 6]  # 24 images / (4 x 2 accumulation) = 3 steps
    assert result.top1 == result.history[-1]["top1"] and result.top5 == result.history[-1]["top5"]
    assert result.best_top1 == max(h["top1"] for h in result.history)
    assert all(0 <= h["top1"] <= h["top5"] <= 100 for h in result.history)
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine ends at min_lr
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == result.history
    assert FinetuneConfig.from_dict(json.loads((out / "config.json").read_text())) == config
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]
    for folder in ("best", "last"):
        assert {p.name for p in (out / folder).iterdir()} == {"model.safetensors", "config.json"}
    saved = json.loads((out / "last" / "config.json").read_text())
    assert saved["label_names"] == json.loads((out / "labels.json").read_text())["class_ids"]
    assert saved["pretrained_cfg"]["input_size"] == [3, 32, 32]


def test_best_round_trips_through_plain_timm(trained):
    _, result = trained
    out = result.output_dir
    best_epoch = max(range(2), key=lambda i: result.history[i]["top1"])  # first best wins on ties
    checkpoint = load_file(out / "checkpoints" / f"step_{3 * (best_epoch + 1):08d}" / "model.safetensors")
    model = timm.create_model(f"local-dir:{out / 'best'}", pretrained=True).eval()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in checkpoint.items())
    reference = timm.create_model("test_vit", num_classes=4, img_size=32).eval()
    reference.load_state_dict(checkpoint)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(model(x), reference(x))


def test_evaluate_reproduces_the_runs_final_numbers(trained):
    config, result = trained
    config = FinetuneConfig.from_dict(config.to_dict())
    config.model.checkpoint = str(result.output_dir / "last")
    metrics = evaluate_checkpoint(config)
    assert metrics["count"] == 12
    assert metrics["top1"] == result.top1 and metrics["top5"] == result.top5
    assert metrics["loss"] == pytest.approx(result.loss, rel=1e-6)
    # the training checkpoint itself evaluates the same way
    config.model.checkpoint = str(result.output_dir / "checkpoints" / "step_00000006")
    assert describe_trained_weights(config.model.checkpoint).class_ids == metrics["class_ids"]
    assert evaluate_checkpoint(config)["top1"] == result.top1


def test_resume_after_an_interruption_ends_with_the_same_weights(trained, tmp_path):
    config, result = trained
    out = tmp_path / "out"
    shutil.copytree(result.output_dir, out)
    # what a crash during epoch 2 leaves behind: only the epoch-1 checkpoint and its metrics line, and no
    # finished.json (written last; a run that goes on removes it when it starts)
    for leftover in ("best", "last", "checkpoints/step_00000006"):
        shutil.rmtree(out / leftover)
    (out / "finished.json").unlink()
    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    resumed = finetune(tiny_config(config.data.source, out))
    assert untimed(resumed.history) == untimed(result.history)
    expected = load_file(result.output_dir / "last" / "model.safetensors")
    actual = load_file(out / "last" / "model.safetensors")
    assert all(torch.equal(actual[k], expected[k]) for k in expected)


def test_resume_refuses_a_config_that_changes_the_run(trained):
    config, result = trained
    changed = tiny_config(config.data.source, result.output_dir)
    changed.optim.lr, changed.augment.mixup_alpha = 5e-4, 0.0
    with pytest.raises(CheckpointError, match=r"different config \(augment.mixup_alpha, optim.lr\)"):
        finetune(changed)
    never = tiny_config(config.data.source, result.output_dir, resume="never")
    with pytest.raises(CheckpointError, match="already holds checkpoints .* new train.output_dir"):
        finetune(never)


def test_resume_skips_a_corrupt_newest_checkpoint(trained, tmp_path):
    config, result = trained
    out = tmp_path / "out"
    shutil.copytree(result.output_dir, out)
    (out / "checkpoints" / "step_00000006" / "model.safetensors").write_bytes(b"not a tensor file")
    # three epochs: the newest (corrupt) checkpoint is skipped, the run continues from step 3
    resumed = finetune(tiny_config(config.data.source, out, epochs=3))
    assert resumed.epochs_completed == 3
    assert untimed(resumed.history)[0] == untimed(result.history)[0]
    assert [h["step"] for h in resumed.history] == [3, 6, 9]


def test_a_checkpoint_from_before_a_field_existed_still_resumes(trained):
    """Fields added later (e.g. optim.fused) are absent from old checkpoints: absent means the default."""
    from tiny_transformers.config import trajectory_differences

    config, _ = trained
    saved = config.to_dict()
    del saved["optim"]["fused"], saved["train"]["compile"]
    assert trajectory_differences(saved, config) == []
    config_changed = FinetuneConfig.from_dict(config.to_dict())
    config_changed.optim.fused = True
    assert trajectory_differences(saved, config_changed) == ["optim.fused"]


def test_resume_from_a_folder_that_is_not_a_usable_checkpoint_touches_nothing(trained, tmp_path):
    config, result = trained
    out = tmp_path / "out"
    not_a_checkpoint = tmp_path / "somewhere"
    not_a_checkpoint.mkdir()
    with pytest.raises(CheckpointError, match="is not a tiny_transformers checkpoint .* use 'auto'"):
        finetune(tiny_config(config.data.source, out, resume=str(not_a_checkpoint)))
    future = tmp_path / "future"
    shutil.copytree(result.output_dir / "checkpoints" / "step_00000006", future)
    state = json.loads((future / "trainer_state.json").read_text())
    state["format_version"] = 99
    (future / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(
        CheckpointError, match="incompatible tiny_transformers \\(format 99, this version reads 1 or 2\\)"
    ):
        finetune(tiny_config(config.data.source, out, resume=str(future)))
    assert not out.exists()  # refused before anything was written


def test_log_with_passes_metrics_to_accelerate_trackers(stanford_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = finetune(tiny_config(stanford_dir, tmp_path / "out", epochs=1, log_with=("tensorboard",)))
    run_logs = tmp_path / "out" / "tiny_transformers"  # Accelerate's project_dir / the run name
    assert len(list(run_logs.glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(run_logs))
    events.Reload()
    top1 = events.Scalars("top1")
    assert [(e.step, e.value) for e in top1] == [(3, pytest.approx(result.top1))]


@pytest.mark.slow
def test_a_second_run_in_another_precision_is_refused_before_it_starts(stanford_dir, tmp_path):
    """Accelerate fixes the precision once per Python process (a notebook): a second finetune() or evaluation
    in another precision gets one sentence with the fix, before any data loads or any file is written.
    In its own process, as a notebook is, whatever precision earlier tests in this one used."""
    script = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_finetune import tiny_config
from tiny_transformers import evaluate_checkpoint, finetune
from tiny_transformers.errors import ConfigError
first = tiny_config({str(stanford_dir)!r}, {str(tmp_path / "no")!r}, epochs=1)
finetune(first)
second = tiny_config({str(stanford_dir)!r}, {str(tmp_path / "bf16")!r}, epochs=1, mixed_precision="bf16")
evaluation = tiny_config({str(stanford_dir)!r}, {str(tmp_path / "no")!r}, mixed_precision="bf16")
evaluation.model.checkpoint = {str(tmp_path / "no" / "best")!r}
# evaluate_checkpoint defaults to the precision the weights were trained in ('no'); bf16 is asked for explicitly
for call, config in ((finetune, second), (lambda c: evaluate_checkpoint(c, "bf16"), evaluation)):
    try:
        call(config)
    except ConfigError as error:
        print("refused:", error)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    refusals = [line for line in done.stdout.splitlines() if line.startswith("refused:")]
    tail = "differs from the 'no' this Python process already runs with, and Accelerate fixes it once per process; "
    assert refusals == [
        f"refused: train.mixed_precision 'bf16' {tail}use 'no' here or run this in a new process (e.g. restart the "
        "notebook kernel).",
        f"refused: mixed_precision 'bf16' (the keyword of evaluate_checkpoint) {tail}pass mixed_precision='no' to "
        "evaluate_checkpoint, or run this in a new process (e.g. restart the notebook kernel).",
    ]
    assert not (tmp_path / "bf16").exists()
