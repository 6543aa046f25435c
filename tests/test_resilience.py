"""One run, any hardware: the same weights on 1 or 2 processes, and after SIGKILL/SIGTERM and resume.

Everything here launches the user's real command, `accelerate launch [--multi_gpu --num_processes 2]
recipes/vit_l.py ...` (and `python recipes/vit_l.py ...`), on CPU (gloo), with Mixup, CutMix, random erasing, drop
path and shuffling on, in `full` mode so every weight moves, with every part of the full fine-tuning loop on (layer
decay, warmup, clipping, an EMA, gradient checkpointing: ``FULL``); the SIGKILL and 1-vs-2-process guarantees also in
`lora` mode (peft's adapters, with their dropout on: it draws from the same keyed generators). Each launch serves as
many guarantees as it can: a run is stopped, killed and resumed in one chain rather than once per test.
"""

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import timm
import torch
from safetensors.torch import load_file

# every test here starts processes (two-process launches on a free port: see command)
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 5  # 40 images / effective batch 8
EPOCHS = 2


@pytest.fixture(scope="module")
def data(tmp_path_factory, data_tools):
    """10 images per class: 40 training images, 5 optimizer steps per epoch."""
    return data_tools.make_stanford(tmp_path_factory.mktemp("resilience"), n_train=10, n_val=2)


MODES = ["full", "lora"]
LR, WARMUP_LR, WARMUP_EPOCHS = 1e-3, 1e-5, 0.5  # the recipe's lr; half an epoch of warmup: round(2.5) = 2 updates
FULL = (
    "--optim.layer_decay", "0.75", "--optim.warmup_epochs", str(WARMUP_EPOCHS), "--optim.warmup_lr", str(WARMUP_LR),
    "--optim.clip_grad", "0.05", "--train.ema_decay", "0.9", "--model.grad_checkpointing", "true",
)  # fmt: skip


def loop(mode: str) -> tuple[str, ...]:
    """The overrides of a run in ``mode``: full mode with every part of the full fine-tuning loop on."""
    return FULL if mode == "full" else ()


def expected_lr(updates_done: int, total: int, warmup: int = 2) -> float:
    """The lr of the next update, written out: linear warmup, then the cosine over the remaining updates."""
    if updates_done < warmup:
        return WARMUP_LR + updates_done * (LR - WARMUP_LR) / warmup
    progress = min(updates_done - warmup, total - warmup) / (total - warmup)
    return 0.5 * LR * (1 + math.cos(math.pi * progress))


def optimizer_lrs(checkpoint: Path) -> list[float]:
    return [group["lr"] for group in torch.load(checkpoint / "optimizer.bin", weights_only=False)["param_groups"]]


LOGGING = ("--train.log_with", "tensorboard", "--train.log_every", "1")


def scalars(folder: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))  # applies the purge that a resumed writer records
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def ema(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=False)


def command(source: Path, out: Path, processes: int, *extra: str, mode: str = "full") -> list[str]:
    layout = [
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    if processes > 1:  # port 0: accelerate picks a free one, so two such launches can run at once
        layout = ["--multi_gpu", "--main_process_port", "0", *layout]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *layout,
        str(ROOT / "recipes" / "vit_l.py"),
        "--model.name",
        "test_vit",
        "--model.pretrained",
        "false",
        "--model.train_mode",
        mode,
        "--data.source",
        str(source),
        "--data.image_size",
        "32",
        "--data.num_workers",
        "0",
        "--train.epochs",
        str(EPOCHS),
        "--train.batch_size",
        "8",
        "--train.micro_batch_size",
        "4",
        "--train.mixed_precision",
        "no",
        "--train.output_dir",
        str(out),
        "--train.progress",
        "false",
        "--train.checkpoint_every",
        "1",
        "--train.keep_checkpoints",
        "100",
        *(("--model.lora_dropout", "0.1") if mode == "lora" else ()),  # draws from the keyed generators too
        *extra,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(source, out, processes, *extra, timeout=300, mode="full"):
    done = subprocess.run(
        command(source, out, processes, *extra, mode=mode), capture_output=True, text=True, env=ENV, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def scores(out: Path) -> list[tuple[float, float, float]]:
    """(top-1, top-5, eval loss) of each epoch in metrics.jsonl."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["top1"], r["top5"], r["eval_loss"]) for r in records]


def assert_close(actual, expected, rel=0.0):
    for key, value in expected.items():
        tolerance = rel * value.abs().max().item()
        assert (actual[key] - value).abs().max().item() <= tolerance, key


@pytest.fixture(scope="module")
def references(data, tmp_path_factory):
    """``references(mode)``: an uninterrupted run in that train mode (full: with ``FULL``) on 1 process with 2
    accumulation steps, a checkpoint after every update (made once per module)."""
    made = {}

    def reference_of(mode: str) -> Path:
        if mode not in made:
            made[mode] = tmp_path_factory.mktemp(f"reference-{mode}") / "out"
            run(data, made[mode], 1, *loop(mode), mode=mode)
        return made[mode]

    return reference_of


@pytest.fixture(scope="module")
def reference(references):
    return references("full")


def test_checkpoint_after_every_update(reference):
    names = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert names == [f"step_{s:08d}" for s in range(1, STEPS_PER_EPOCH * EPOCHS + 1)]


def test_the_learning_rate_follows_warmup_then_cosine_at_every_update(reference):
    steps = STEPS_PER_EPOCH * EPOCHS
    for step in range(1, steps + 1):
        lrs = optimizer_lrs(reference / "checkpoints" / f"step_{step:08d}")
        assert max(lrs) == pytest.approx(expected_lr(step, steps), rel=1e-9, abs=1e-15), step
    # layer decay: the head's group runs at the base lr, the lowest at 0.75 ** depth of it
    lrs = optimizer_lrs(reference / "checkpoints" / "step_00000003")
    depth = len(timm.create_model("test_vit").blocks) + 1  # the blocks, plus the embeddings below them
    assert min(lrs) == pytest.approx(max(lrs) * 0.75**depth, rel=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_give_the_same_weights_ema_and_lr_after_every_step(data, references, mode, tmp_path):
    """1 process x accumulation 2 vs 2 processes x accumulation 1, 10 updates across an epoch boundary; full mode
    (``FULL``): the same raw and EMA weights and learning rates after every update, a gradient norm and the EMA's
    scores in every epoch's record."""
    out, reference = tmp_path / "out", references(mode)
    done = run(data, out, 2, *loop(mode), mode=mode)
    assert "2 process(es) x micro-batch 4 x 1 accumulation step(s) = effective batch 8" in done.stdout
    adapters = [key for key in weights(reference / "checkpoints" / "step_00000001") if ".lora_" in key]
    assert bool(adapters) == (mode == "lora")  # a lora run's checkpoints hold peft's adapters
    for step in range(1, STEPS_PER_EPOCH * EPOCHS + 1):
        name = f"step_{step:08d}"
        assert_close(weights(out / "checkpoints" / name), weights(reference / "checkpoints" / name), rel=1e-5)
        if mode == "full":
            assert_close(ema(out / "checkpoints" / name), ema(reference / "checkpoints" / name), rel=1e-5)
            assert optimizer_lrs(out / "checkpoints" / name) == optimizer_lrs(reference / "checkpoints" / name)
    assert_close(weights(out / "last"), weights(reference / "last"), rel=1e-5)
    if mode == "full":
        history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(0 < h["grad_norm"] and {"ema_top1", "ema_top5", "ema_loss"} <= set(h) for h in history)


def start(source, out, processes, *extra, mode="full"):
    return subprocess.Popen(
        command(source, out, processes, *extra, mode=mode),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,  # its own process group: the launcher and its workers are signalled together
    )


def wait_for(predicate, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            pytest.fail(
                f"the run ended (status {process.returncode}) before the signal: {process.communicate()[1][-3000:]}"
            )
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.0005)


def checkpoints(out: Path) -> list[str]:
    root = out / "checkpoints"
    return sorted(p.name for p in root.iterdir() if p.name.startswith("step_")) if root.is_dir() else []


def kill(process, sig=signal.SIGKILL):
    """``sig`` to the run's process group; a SIGKILL to every process of the run as well: torch's launcher starts each
    of several processes in a session of its own, out of the group (a SIGTERM reaches them through the launcher,
    which forwards it; a SIGKILLed launcher forwards nothing, and its processes would train on to the end)."""
    run_processes = psutil.Process(process.pid).children(recursive=True) if sig == signal.SIGKILL else []
    os.killpg(process.pid, sig)
    for child in run_processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    return process.communicate(timeout=120)


def stop_plain_python_run_with_sigterm(source: Path, out: Path, *extra: str) -> None:
    """`python recipes/vit_l.py ...` (full mode) stopped by SIGTERM once it wrote 2 checkpoints: it saves a
    checkpoint, prints where it stopped and the resume command, and exits with the documented status of an
    interrupted run, 143 (128 + SIGTERM)."""
    launched = command(source, out, 1, *extra)
    recipe = launched.index(str(ROOT / "recipes" / "vit_l.py"))
    process = subprocess.Popen(
        [sys.executable, *launched[recipe:]], stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True
    )
    wait_for(lambda: len(checkpoints(out)) >= 2, process)
    _, stderr = kill(process, signal.SIGTERM)
    assert process.returncode == 143, stderr[-3000:]
    assert "Training stopped by SIGTERM" in stderr and "Resume with accelerate launch" in stderr
    stopped_at = checkpoints(out)[-1]
    assert f"step {int(stopped_at.split('_')[1]) % STEPS_PER_EPOCH or STEPS_PER_EPOCH}" in stderr or "step 0" in stderr


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_and_sigkill_anywhere_then_resume_ends_with_the_same_weights_and_logs_each_step_once(
    data, references, mode, tmp_path
):
    """One run interrupted again and again, then resumed to the end: bitwise the uninterrupted run. Full mode
    (``FULL``) starts as `python recipes/vit_l.py` stopped by SIGTERM (a checkpoint, the resume command, status 143:
    stop_plain_python_run_with_sigterm), and ends with the same raw and EMA weights and the same learning rate at
    every update; both modes are SIGKILLed at a random step after the third update and while a checkpoint is being
    written. The run logs to TensorBoard: each process continues the same run, and each update is logged once."""
    out, reference, extra = tmp_path / "out", references(mode), (*loop(mode), *LOGGING)
    if mode == "full":  # 0. stopped by SIGTERM under plain python
        stop_plain_python_run_with_sigterm(data, out, *extra)
    # 1. (resumed and) killed at a random step after the third update
    process = start(data, out, 1, *extra, mode=mode)
    seen = len(checkpoints(out))
    wait_for(lambda: len(checkpoints(out)) >= max(3, seen + 1), process)
    kill(process)
    assert process.returncode == -signal.SIGKILL
    # 2. resumed, then killed while a checkpoint is being written
    process = start(data, out, 1, *extra, mode=mode)
    seen = len(checkpoints(out))
    wait_for(
        lambda: (
            len(checkpoints(out)) > seen and any(p.name.startswith(".tmp") for p in (out / "checkpoints").iterdir())
        ),
        process,
    )
    kill(process)
    # 3. resumed to the end: bitwise the uninterrupted run's weights (lora: the merged export and the checkpoint's
    # adapters; full: last/ holds the EMA, and the checkpoint's EMA), and the same metrics
    done = run(data, out, 1, *extra, mode=mode)
    assert "resuming from step_" in done.stdout
    assert_close(weights(out / "last"), weights(reference / "last"))
    final = checkpoints(reference)[-1]
    assert_close(weights(out / "checkpoints" / final), weights(reference / "checkpoints" / final))
    assert scores(out) == scores(reference)
    assert (out / "metrics.jsonl").read_text().count("\n") == EPOCHS
    assert not any(p.name.startswith(".tmp") for p in (out / "checkpoints").iterdir())
    if mode == "full":
        assert_close(ema(out / "checkpoints" / final), ema(reference / "checkpoints" / final))
        for step in range(1, STEPS_PER_EPOCH * EPOCHS + 1):  # the schedule, resumed, is the same schedule
            name = f"step_{step:08d}"
            assert optimizer_lrs(out / "checkpoints" / name) == optimizer_lrs(reference / "checkpoints" / name)
    # the trackers followed it: one TensorBoard run, continued by each process in the same folder
    logs, starts = out / "tiny_transformers", 4 if mode == "full" else 3
    assert len(list(logs.glob("events.out.tfevents.*"))) == starts
    steps = STEPS_PER_EPOCH * EPOCHS
    for tag in ("step/train_loss", "step/lr", "step/images_per_s"):
        assert scalars(logs, tag) == list(range(1, steps + 1)), tag  # each update once, none lost
    for tag in ("top1", "lr", "train_loss"):
        assert scalars(logs, tag) == [STEPS_PER_EPOCH, steps], tag
    assert json.loads((out / "trackers.json").read_text())["wandb_id"]  # kept for W&B to resume the same run


def test_two_processes_stopped_by_sigterm_then_killed_resume_on_one_process_continuing_the_trajectory(
    data, reference, tmp_path
):
    """SIGTERM to the launcher and its 2 workers: both processes agree to stop (one all-reduce), write one checkpoint,
    wait for each other (the main process may be pushing it) and exit; resumed on 2 processes and SIGKILLed, the run
    then continues on 1 process (another process count) to the uninterrupted run's weights."""
    out = tmp_path / "out"
    process = start(data, out, 2, *FULL)  # two processes, stopped...
    wait_for(lambda: len(checkpoints(out)) >= 2, process)
    _, stderr = kill(process, signal.SIGTERM)
    assert process.returncode != 0
    assert stderr.count("Training stopped by ") == 2, stderr[-3000:]  # each process says where it stopped
    process = start(data, out, 2, *FULL)  # ...resumed on two, killed...
    seen = len(checkpoints(out))
    wait_for(lambda: len(checkpoints(out)) >= max(4, seen + 1), process)
    kill(process)
    assert "resuming from step_" in run(data, out, 1, *FULL).stdout  # ...then one
    assert_close(weights(out / "last"), weights(reference / "last"), rel=1e-5)
    # the epochs' training loss counts both processes' images once, across the stop and the kill
    losses = [
        [json.loads(x)["train_loss"] for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (out, reference)
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_processes_that_cannot_see_the_main_processs_checkpoint_stop_the_run_naming_them(data, reference, tmp_path):
    """Two processes whose views of checkpoints/ differ (process 1 cannot see the newest): the main process's choice
    is the one every process must load, and the run stops with one sentence naming process 1."""
    out = tmp_path / "out"
    shutil.copytree(reference / "checkpoints" / "step_00000003", out / "checkpoints" / "step_00000003")
    (out / ".tiny_transformers_run").write_text("{}")
    script = tmp_path / "partial_view.py"
    script.write_text(
        "import os, runpy, sys\n"
        "from pathlib import Path\n"
        "import tiny_transformers.train as train\n"
        "if os.environ.get('RANK') == '1':  # this process's file system lacks the newest checkpoint\n"
        "    seen = train.is_checkpoint\n"
        "    train.is_checkpoint = lambda folder: seen(folder) and Path(folder).name != 'step_00000003'\n"
        f"sys.argv = [{str(ROOT / 'recipes' / 'vit_l.py')!r}] + sys.argv[1:]\n"
        f"runpy.run_path({str(ROOT / 'recipes' / 'vit_l.py')!r}, run_name='__main__')\n"
    )
    argv = command(data, out, 2, *FULL)
    argv[argv.index(str(ROOT / "recipes" / "vit_l.py"))] = str(script)
    done = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode != 0
    assert (
        f"error: Process(es) 1 cannot see {out / 'checkpoints' / 'step_00000003'}, the checkpoint the main process "
        "resumes from" in done.stderr
    )
