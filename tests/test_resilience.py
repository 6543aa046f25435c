"""One run, any hardware: the same weights on 1 or 2 processes, and after SIGKILL/SIGTERM and resume.

Everything here launches the user's real command, `accelerate launch [--multi_gpu --num_processes 2]
recipes/vit_l.py ...`, on CPU (gloo), with Mixup, CutMix, random erasing, drop path and shuffling on,
in `full` mode so every weight moves; the SIGKILL and 1-vs-2-process guarantees also in `lora` mode (peft's
adapters, with their dropout on: it draws from the same keyed generators).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# every test here starts processes, most of them two, which bind the launcher's port: one such test at a time
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("two_processes")]
ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 5  # 40 images / effective batch 8
EPOCHS = 2


@pytest.fixture(scope="module")
def data(tmp_path_factory, data_tools):
    """10 images per class: 40 training images, 5 optimizer steps per epoch."""
    return data_tools.make_stanford(tmp_path_factory.mktemp("resilience"), n_train=10, n_val=2)


MODES = ["full", "lora"]


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
    if processes > 1:
        layout = ["--multi_gpu", *layout]
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
    """``references(mode)``: an uninterrupted run in that train mode on 1 process with 2 accumulation steps, a
    checkpoint after every update (made once per module)."""
    made = {}

    def reference_of(mode: str) -> Path:
        if mode not in made:
            made[mode] = tmp_path_factory.mktemp(f"reference-{mode}") / "out"
            run(data, made[mode], 1, mode=mode)
        return made[mode]

    return reference_of


@pytest.fixture(scope="module")
def reference(references):
    return references("full")


def test_checkpoint_after_every_update(reference):
    names = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert names == [f"step_{s:08d}" for s in range(1, STEPS_PER_EPOCH * EPOCHS + 1)]


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_give_the_same_weights_after_every_step(data, references, mode, tmp_path):
    """1 process x accumulation 2 vs 2 processes x accumulation 1, 10 updates across an epoch boundary."""
    out, reference = tmp_path / "out", references(mode)
    done = run(data, out, 2, mode=mode)
    assert "2 process(es) x micro-batch 4 x 1 accumulation step(s) = effective batch 8" in done.stdout
    adapters = [key for key in weights(reference / "checkpoints" / "step_00000001") if ".lora_" in key]
    assert bool(adapters) == (mode == "lora")  # a lora run's checkpoints hold peft's adapters
    for step in range(1, STEPS_PER_EPOCH * EPOCHS + 1):
        name = f"step_{step:08d}"
        assert_close(weights(out / "checkpoints" / name), weights(reference / "checkpoints" / name), rel=1e-5)
    assert_close(weights(out / "last"), weights(reference / "last"), rel=1e-5)


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
    os.killpg(process.pid, sig)
    return process.communicate(timeout=120)


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_anywhere_then_resume_ends_with_the_same_weights(data, references, mode, tmp_path):
    out, reference = tmp_path / "out", references(mode)
    # 1. killed at a random step after the third update
    process = start(data, out, 1, mode=mode)
    wait_for(lambda: len(checkpoints(out)) >= 3, process)
    kill(process)
    assert process.returncode == -signal.SIGKILL
    # 2. resumed, then killed while a checkpoint is being written
    process = start(data, out, 1, mode=mode)
    seen = len(checkpoints(out))
    wait_for(
        lambda: (
            len(checkpoints(out)) > seen and any(p.name.startswith(".tmp") for p in (out / "checkpoints").iterdir())
        ),
        process,
    )
    kill(process)
    # 3. resumed to the end: bitwise the uninterrupted run's weights (lora: the merged export and the checkpoint's
    # adapters), and the same metrics
    done = run(data, out, 1, mode=mode)
    assert "resuming from step_" in done.stdout
    assert_close(weights(out / "last"), weights(reference / "last"))
    final = checkpoints(reference)[-1]
    assert_close(weights(out / "checkpoints" / final), weights(reference / "checkpoints" / final))
    assert scores(out) == scores(reference)
    assert (out / "metrics.jsonl").read_text().count("\n") == EPOCHS
    assert not any(p.name.startswith(".tmp") for p in (out / "checkpoints").iterdir())


def test_resume_on_another_process_count_continues_the_trajectory(data, reference, tmp_path):
    out = tmp_path / "out"
    process = start(data, out, 2)  # two processes...
    wait_for(lambda: len(checkpoints(out)) >= 4, process)
    kill(process)
    run(data, out, 1)  # ...then one
    assert_close(weights(out / "last"), weights(reference / "last"), rel=1e-5)


def test_sigterm_saves_a_checkpoint_and_prints_the_resume_command(data, reference, tmp_path):
    out = tmp_path / "out"
    process = start(data, out, 1)
    wait_for(lambda: len(checkpoints(out)) >= 2, process)
    _, stderr = kill(process, signal.SIGTERM)
    assert process.returncode != 0
    assert "Training stopped by SIGTERM" in stderr and "Resume with accelerate launch" in stderr
    stopped_at = checkpoints(out)[-1]
    assert f"step {int(stopped_at.split('_')[1]) % STEPS_PER_EPOCH or STEPS_PER_EPOCH}" in stderr or "step 0" in stderr
    run(data, out, 1)
    assert_close(weights(out / "last"), weights(reference / "last"))


def test_a_stopped_run_exits_with_status_143(data, tmp_path):
    """The documented status of an interrupted run (128 + SIGTERM), as `python recipes/vit_l.py` returns it."""
    launched = command(data, tmp_path / "out", 1)
    recipe = launched.index(str(ROOT / "recipes" / "vit_l.py"))
    process = subprocess.Popen(
        [sys.executable, *launched[recipe:]], stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True
    )
    wait_for(lambda: len(checkpoints(tmp_path / "out")) >= 1, process)
    _, stderr = kill(process, signal.SIGTERM)
    assert process.returncode == 143, stderr[-3000:]
    assert "Training stopped by SIGTERM" in stderr


def test_sigterm_to_two_processes_stops_both_at_the_same_update_and_resume_continues(data, reference, tmp_path):
    """SIGTERM to the launcher and its workers: both processes agree to stop (one all-reduce), write one checkpoint,
    wait for each other (the main process may be pushing it) and exit; a 1-process resume continues."""
    out = tmp_path / "out"
    process = start(data, out, 2)
    wait_for(lambda: len(checkpoints(out)) >= 2, process)
    _, stderr = kill(process, signal.SIGTERM)
    assert process.returncode != 0
    assert stderr.count("Training stopped by ") == 2, stderr[-3000:]  # each process says where it stopped
    run(data, out, 1)
    assert_close(weights(out / "last"), weights(reference / "last"), rel=1e-5)


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
    argv = command(data, out, 2)
    argv[argv.index(str(ROOT / "recipes" / "vit_l.py"))] = str(script)
    done = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode != 0
    assert (
        f"error: Process(es) 1 cannot see {out / 'checkpoints' / 'step_00000003'}, the checkpoint the main process "
        "resumes from" in done.stderr
    )
