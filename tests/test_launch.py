"""The user's real commands: `accelerate launch recipes/<name>.py` with overrides, on 1 and 2 CPU processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_transformers.engine import usable_cores
from tiny_transformers.paper import PAPER_MODELS

pytestmark = pytest.mark.slow  # every test here starts processes
ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
CORES = usable_cores()
ONE_THREAD_WARNING = (
    f"warning: training on the CPU with 1 thread(s) of {CORES} usable cores (OMP_NUM_THREADS=1; accelerate launch "
    f"sets 1 where there is no GPU); use them with accelerate launch --num_cpu_threads_per_process {CORES} ..."
)


def tiny_overrides(source: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--model.name",
        "test_vit",
        "--model.pretrained",
        "false",
        "--data.source",
        str(source),
        "--data.image_size",
        "32",
        "--data.num_workers",
        "0",
        "--train.batch_size",
        "8",
        "--train.micro_batch_size",
        "4",
        "--train.mixed_precision",
        "no",
        "--train.output_dir",
        str(output_dir),
        "--train.progress",
        "false",
        *extra,
    ]


def launch(
    args: list[str], processes: int = 1, timeout: int = 300, threads: int | None = None
) -> subprocess.CompletedProcess:
    """`accelerate launch` on ``processes`` CPU processes; ``threads``: --num_cpu_threads_per_process, else 1 thread
    (OMP_NUM_THREADS=1, what accelerate launch sets on a machine without a GPU)."""
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
    if threads:
        layout += ["--num_cpu_threads_per_process", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*ACCELERATE, *layout, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_recipe_trains_one_short_epoch_under_accelerate_launch_and_warns_of_one_thread_only(
    name, stanford_dir, tmp_path
):
    """accelerate launch gives a process 1 thread where there is no GPU: the run then says so, and how to use every
    core (on 2 cores a real recipe epoch took 1.97x its projection so, docs/benchmarks.md). deit_b_distilled is
    launched given every core (--num_cpu_threads_per_process, on a machine of 2 or more): it says nothing of threads."""
    out = tmp_path / "out"
    every_core = name == "deit_b_distilled" and CORES >= 2
    done = launch(
        [str(ROOT / "recipes" / f"{name}.py"), *tiny_overrides(stanford_dir, out, "--train.epochs", "1")],
        threads=CORES if every_core else None,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 process(es) x micro-batch 4 x 2 accumulation step(s) = effective batch 8" in done.stdout
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1] and history[0]["step"] == 3
    config = json.loads((out / "config.json").read_text())
    # the recipe's paper values survive, the overrides apply
    assert config["model"]["train_mode"] == "head" and config["optim"]["lr"] == 1e-3
    assert config["model"]["drop_path_rate"] == PAPER_MODELS[name].drop_path_rate
    assert config["model"]["name"] == "test_vit" and config["train"]["epochs"] == 1
    assert (out / "best" / "model.safetensors").is_file() and (out / "last" / "config.json").is_file()
    if every_core:
        assert "training on the CPU with" not in done.stderr
    else:  # accelerate launch gave it 1 thread (no GPU): on 2 or more cores the run says so, and how to use them
        assert (ONE_THREAD_WARNING in done.stderr) == (CORES >= 2)


def test_bad_input_is_one_sentence_not_a_traceback(tmp_path):
    """A missing data.source: one sentence from `python recipes/swin_l.py`; under `accelerate launch` (no -q) the same
    sentence once, then the launcher's own CalledProcessError traceback (what -q drops: the fp16 test below), and no
    traceback from this library; on two processes, the sentence once too."""
    args = [
        str(ROOT / "recipes" / "swin_l.py"),
        "--data.source",
        str(tmp_path / "missing"),
        "--train.mixed_precision",
        "no",
        "--train.output_dir",
        str(tmp_path / "out"),
    ]
    plain = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2
    lines = plain.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: data.source '{tmp_path / 'missing'}' does not exist")
    # under accelerate launch the same sentence arrives; the launcher then reports the exit status
    # with a traceback of its own, but none comes from this library
    launched = launch(args)
    assert launched.returncode != 0 and lines[0] in launched.stderr
    assert f'File "{ROOT / "tiny_transformers"}' not in launched.stderr
    assert launched.stderr.splitlines().count(lines[0]) == 1, launched.stderr[-3000:]
    assert "CalledProcessError" in launched.stderr  # accelerate's, printed after the child's sentence unless -q
    # two processes find the same missing folder before their process group exists: one of them says it
    two = launch(["-q", *args], processes=2)
    assert two.returncode != 0 and two.stderr.splitlines().count(lines[0]) == 1, two.stderr[-3000:]
    assert f'File "{ROOT / "tiny_transformers"}' not in two.stderr and not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs where there is a GPU")
def test_an_fp16_recipe_without_a_gpu_says_its_fix_once(tmp_path):
    """The user's command on a CPU: the sentence once (the first process of a launch says it), naming the override;
    `accelerate launch -q` drops the launcher's own CalledProcessError traceback after it (docs/scaling.md). Without
    -q that traceback follows the sentence, and the sentence is still there once: test_bad_input_is_one_sentence_not_a_
    traceback's launch (the same 1-process launch of a refused recipe; -q changes only what the launcher prints)."""
    sentence = (
        "error: train.mixed_precision fp16 needs a CUDA GPU and none is visible; use --train.mixed_precision bf16 "
        "(or no) on this machine."
    )
    args = [str(ROOT / "recipes" / "vit_l.py"), "--train.output_dir", str(tmp_path / "out")]
    quiet, two = launch(["-q", *args]), launch(["-q", *args], processes=2)
    for done in (quiet, two):
        assert done.returncode != 0 and done.stderr.splitlines().count(sentence) == 1, done.stderr[-3000:]
    assert "Traceback" not in quiet.stderr and quiet.stderr.count("train.mixed_precision fp16") == 1
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_demo_writes_under_the_current_directory_and_names_its_extra(tmp_path, monkeypatch, capsys):
    """README's first run, `python recipes/demo.py` (one epoch here), from another folder than the checkout: its data
    and its run land in outputs/ there; the same command again (run here as Python runs a file: runpy as __main__,
    its command line in sys.argv, that folder current) says the run is finished; without scikit-learn (the demo
    extra) it says so in one sentence."""
    import runpy

    demo = str(ROOT / "recipes" / "demo.py")
    done = subprocess.run(
        [sys.executable, demo, "--train.epochs", "1", "--train.progress", "false"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "outputs" / "demo-data" / "digits-200" / "wnids.txt").is_file()
    assert (tmp_path / "outputs" / "demo" / "finished.json").is_file()
    assert f"outputs in {tmp_path / 'outputs' / 'demo'}" in done.stdout
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", done.args[1:])  # a finished run
    returncode = 0
    try:
        runpy.run_path(demo, run_name="__main__")
    except SystemExit as exit_:
        returncode = exit_.code
    again = capsys.readouterr()
    assert returncode == 0 and "resuming" not in again.out, again.err[-3000:]
    assert f"the run in {tmp_path / 'outputs' / 'demo'} is already finished (1 epochs" in again.out
    hidden = f"import runpy, sys; sys.modules['sklearn'] = None; sys.argv = [{demo!r}]; runpy.run_path({demo!r})"
    missing = subprocess.run([sys.executable, "-c", hidden], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert missing.returncode == 1 and missing.stderr.strip() == (
        "error: recipes/demo.py trains on scikit-learn's digits and scikit-learn is not installed; install the demo "
        'extra: pip install -e ".[demo]" (or pip install scikit-learn).'
    )
