"""Stop signals where a run is not training: between two ablation rows, and to the whole process group (as SLURM
stops a job step), which the DataLoader workers receive too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiny_transformers import cli
from tiny_transformers import train as train_module
from tiny_transformers.synthetic import make_stanford

from .test_ablate import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("when", ["after the row returned", "while the row wrote last/"])
def test_sigint_between_two_ablation_rows_is_the_stop_sentence_and_exit_130(
    stanford_dir, tmp_path, capsys, monkeypatch, when
):
    """A real SIGINT to this process once the first row's training is over (after finetune returned, or while its
    finish() writes last/ and the report, where the row's own handler records it): no KeyboardInterrupt, no second
    row, the first row finished."""
    real = train_module.finetune if when == "after the row returned" else train_module.finish
    calls = []

    def then_interrupt(*args, **kwargs):
        calls.append(1)
        result = real(*args, **kwargs)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(train_module, "finetune" if when == "after the row returned" else "finish", then_interrupt)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a shell's background job
    root = tmp_path / "swin_l"
    args = ["ablate", "swin_l", "--rows", "default", "no_mixup", "--root", str(root), *tiny_overrides(stanford_dir)]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    printed = capsys.readouterr()
    assert exit_.value.code == 130
    assert printed.err.strip().splitlines()[-1] == (
        "stopped: Ablation stopped by SIGINT between rows, before [2/2] no_mixup; the rows before it are kept. "
        f"Resume with tiny-transformers ablate {' '.join(args[1:])} (finished rows are skipped)."
    )
    assert "KeyboardInterrupt" not in printed.err and "Traceback" not in printed.err
    assert "[1/2] default: done" in printed.out and "[2/2] no_mixup: training" not in printed.out
    assert (root / "default" / "last" / "model.safetensors").is_file() and not (root / "no_mixup").exists()
    assert signal.getsignal(signal.SIGINT) is before  # the handlers came back


# ---------------------------------------------------------------- the process group's signal (SLURM, kill -- -PGID)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def longer_data(tmp_path_factory):
    """40 training images per class: 20 updates an epoch, so a run is still training when the signal comes."""
    return make_stanford(tmp_path_factory.mktemp("signals"), n_train=40, n_val=4)


def overrides(source: Path, out: Path) -> list[str]:
    """test_vit at 32 px, 2 loader workers, 3 epochs, checkpoint_every 0 (the default: only the stop checkpoint)."""
    return [
        *("--model.name", "test_vit", "--model.pretrained", "false", "--model.train_mode", "full"),
        *("--data.source", str(source), "--data.image_size", "32", "--data.num_workers", "2"),
        *("--train.epochs", "3", "--train.batch_size", "8", "--train.micro_batch_size", "4"),
        *("--train.mixed_precision", "no", "--train.progress", "false", "--train.output_dir", str(out)),
    ]


def tree(root: int) -> list[int]:
    """``root`` and its live descendants (torch's launcher starts each process in a session of its own, so a process
    group does not hold them all)."""
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":  # a zombie has exited
            parents[int(entry)] = int(fields[1])
    found, frontier = [root] if root in parents else [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def signal_once_workers_run(process: subprocess.Popen, size: int, every_process: bool) -> tuple[str, str]:
    """SIGTERM once the run's tree holds ``size`` processes (its loader workers are up): ``kill -TERM -- -PGID`` to
    its process group, and with ``every_process`` to each process as well (SLURM signals every process of a job
    step); returns the run's output."""
    deadline = time.monotonic() + 240
    while len(tree(process.pid)) < size:
        assert process.poll() is None, f"the run ended before the signal: {process.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "the loader workers never started"
        time.sleep(0.01)
    started = tree(process.pid)
    subprocess.run(["kill", "-TERM", "--", f"-{process.pid}"], check=True)
    for pid in started[1:] if every_process else []:
        os.kill(pid, signal.SIGTERM)
    output = process.communicate(timeout=240)
    grace = time.monotonic() + 1  # the launcher's children end after it returns at most by its own kill: 1 s
    while [pid for pid in started if pid in tree(pid)] and time.monotonic() < grace:
        time.sleep(0.01)
    assert not [pid for pid in started if pid in tree(pid)], "a process of the run was left behind"
    return output


def assert_stopped_with_a_checkpoint(out: Path, stderr: str, stops: int) -> None:
    # no traceback through the library's or a recipe's code: SIGTERM sent three times to torch's launcher (SLURM, srun
    # and the test each send one) can make the launcher's own logging print one of its own, torch's, not the run's
    before = stderr.split("Training stopped by")[0]
    ours = [f'File "{ROOT / top}' for top in ("tiny_transformers", "recipes")]
    assert "DataLoader worker" not in stderr and not any(frame in before for frame in ours), stderr
    assert stderr.count("Training stopped by SIGTERM at epoch 1, step ") == stops, stderr[-3000:]
    (checkpoint,) = (out / "checkpoints").glob("step_*")  # the stop checkpoint (checkpoint_every 0: no other)
    assert (checkpoint / "trainer_state.json").is_file() and not (out / "last").exists()


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_two_loader_workers_writes_the_stop_checkpoint_and_exits_143(
    longer_data, tmp_path
):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tiny_transformers.cli", "train", "test_vit", *overrides(longer_data, out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                               start_new_session=True)  # fmt: skip  # setsid: its own group, as a job step
    _, stderr = signal_once_workers_run(process, 1 + 2, every_process=False)
    assert process.returncode == 143, stderr[-3000:]
    assert_stopped_with_a_checkpoint(out, stderr, stops=1)


def test_the_evaluation_loaders_workers_leave_stop_signals_to_the_main_process(stanford_dir):
    """The eval loader's workers (as training and evaluate build it) survive SIGTERM and SIGINT from another process
    (a group signal): every batch arrives."""
    import multiprocessing

    from accelerate import Accelerator

    from tiny_transformers import DataConfig, FinetuneConfig, TrainConfig
    from tiny_transformers.data import load_data
    from tiny_transformers.engine import eval_loader

    config = FinetuneConfig(
        data=DataConfig(source=str(stanford_dir), num_workers=2), train=TrainConfig(micro_batch_size=2)
    )
    data = load_data(config.data)
    loader = eval_loader(data, config, 64, Accelerator(cpu=True))
    before = set(multiprocessing.active_children())
    batches = iter(loader)
    seen = len(next(batches)[1])
    workers = [worker for worker in multiprocessing.active_children() if worker not in before]
    assert len(workers) == 2
    for worker in workers:  # from a process of its own, as a scheduler's signal comes
        subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)
        subprocess.run(["kill", "-INT", str(worker.pid)], check=True)
    seen += sum(len(labels) for _, labels in batches)
    assert seen == len(data.eval) == 12
    assert all(worker.is_alive() for worker in workers)
    batches._shutdown_workers()  # persistent workers end with their loader
    assert not any(worker.is_alive() for worker in workers)


@pytest.mark.slow
def test_a_process_that_exits_with_its_loader_workers_running_ends_them(stanford_dir):
    """multiprocessing ends a process's workers at its exit with SIGTERM from that process: that one they obey (a
    worker ignoring every SIGTERM would hang the exit forever)."""
    script = (
        "import os, sys; from accelerate import Accelerator\n"
        "from tiny_transformers import DataConfig, FinetuneConfig, TrainConfig\n"
        "from tiny_transformers.data import load_data\nfrom tiny_transformers.engine import eval_loader\n"
        f"config = FinetuneConfig(data=DataConfig(source={str(stanford_dir)!r}, num_workers=2), "
        "train=TrainConfig(micro_batch_size=2))\n"
        "batches = iter(eval_loader(load_data(config.data), config, 64, Accelerator(cpu=True)))\n"
        "next(batches)\nprint(*(w.pid for w in batches._workers), flush=True)\n"
        "import atexit; atexit.register(print, 'exiting', flush=True)\n"  # the workers still run here
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    # ended with status 0 as torch's own workers are, else the SIGCHLD check raises "DataLoader worker ... exited
    # unexpectedly" in the exiting process (a fresh-clone CI run once printed it before a stop checkpoint)
    assert "DataLoader worker" not in done.stderr, done.stderr[-2000:]
    pids = [int(pid) for pid in done.stdout.split()[:2]]
    assert done.stdout.split()[2] == "exiting"
    assert not [pid for pid in pids if tree(pid)]


# ------------------------------------------------------------- docs/scaling.md's SLURM script, on one CPU machine


def slurm_script(source: Path, out: Path, port: int) -> str:
    """docs/scaling.md's SLURM script as written, made to run here: 2 processes instead of 8 GPUs, the tiny model and
    data, this machine's port (each replaced text must be in the doc, so the doc cannot drift from this test)."""
    doc = (ROOT / "docs" / "scaling.md").read_text()
    script = doc.split("```bash\n#!/bin/bash\n", 1)[1].split("```", 1)[0]
    tiny = " ".join(overrides(source, out)[:-2])  # the output dir is the script's own
    for old, new in {
        "$((SLURM_NNODES * 8))": "$((SLURM_NNODES * 2))",
        "--main_process_port 29500": f"--main_process_port {port}",
        "recipes/swin_l.py": str(ROOT / "recipes" / "swin_l.py"),
        "--data.source /shared/tiny-imagenet-200": "",
        "--train.output_dir /shared/runs/swin_l": f"--train.output_dir {out}",
        "--train.preempt_seconds 25'": f"--train.preempt_seconds 25 {tiny}'",
    }.items():
        assert old in script, old
        script = script.replace(old, new)
    return script


# srun's stand-in: runs its one task, forwards SIGTERM to it as srun does, and exits with the task's exit status (that
# of accelerate launch), written to $TASK_STATUS too; a wait after the task is reaped returns its saved status
SRUN = """#!/bin/bash
trap 'kill -TERM "$task" 2>/dev/null' TERM
"$@" &
task=$!
while kill -0 "$task" 2>/dev/null; do wait "$task"; done
wait "$task"
status=$?
echo $status > "$TASK_STATUS"
exit $status
"""


def start_slurm_job(tmp_path: Path, source: Path) -> tuple[subprocess.Popen, Path, Path]:
    """The script under bash, with `srun` (SRUN) and `scontrol` (hostnames; requeue leaves a file) standing in for
    SLURM's on one machine."""
    import socket

    shims, out = tmp_path / "bin", tmp_path / "run"
    shims.mkdir()
    (shims / "srun").write_text(SRUN)
    (shims / "scontrol").write_text(
        '#!/bin/bash\ncase "$1" in show) echo localhost ;; requeue) touch "$REQUEUED" ;; esac\n'
    )
    for shim in shims.iterdir():
        shim.chmod(0o755)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    (tmp_path / "job.sh").write_text(slurm_script(source, out, port))
    env = {
        **ENV,
        "PATH": f"{shims}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "REQUEUED": str(tmp_path / "requeued"),
        "TASK_STATUS": str(tmp_path / "task_status"),
    }
    env.update(SLURM_JOB_NODELIST="localhost", SLURM_NNODES="1", SLURM_NODEID="0", SLURM_JOB_ID="42")
    job = subprocess.Popen(["bash", str(tmp_path / "job.sh")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env, start_new_session=True, cwd=tmp_path)  # fmt: skip
    return job, out, tmp_path / "requeued"


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["USR1 to the batch shell (the time limit)", "SIGTERM to every process (preemption)"])
def test_the_slurm_script_of_docs_scaling_stops_its_two_process_launch_with_one_checkpoint(longer_data, tmp_path, stop):
    """`#SBATCH --signal B:USR1@180`: the trap sends SIGTERM to srun's task, checkpoints, requeues. Preemption or
    scancel: SLURM sends SIGTERM to every process of the job, the loader workers too, which is also the process group's
    signal of a 2-process `accelerate launch` (`kill -TERM -- -PGID`, and each process) with nothing left behind.
    Both: accelerate launch exits non-zero (it reports its stopped children), both processes stop at the same update,
    one stop checkpoint."""
    job, out, requeued = start_slurm_job(tmp_path, longer_data)
    size = 1 + 1 + 1 + 2 + 2 * 2  # bash, srun, the launcher, 2 processes, their loader workers
    deadline = time.monotonic() + 240
    while len(tree(job.pid)) < size:
        assert job.poll() is None, f"the job ended before the signal: {job.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "the loader workers never started"
        time.sleep(0.01)
    if stop.startswith("USR1"):
        os.kill(job.pid, signal.SIGUSR1)
        _, stderr = job.communicate(timeout=240)
        assert requeued.exists()  # the trap requeued the job after the run stopped
    else:
        _, stderr = signal_once_workers_run(job, size, every_process=True)
        assert not requeued.exists()  # SLURM itself requeues a preempted --requeue job
    assert int((tmp_path / "task_status").read_text()) != 0  # accelerate launch reports its stopped children
    assert_stopped_with_a_checkpoint(out, stderr, stops=2)  # both processes stop at the same update
