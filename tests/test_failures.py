"""Nothing lost, nothing silently wrong: runs own their folder, a diverging run stops with one sentence and keeps
its last good state, and every failure around checkpoints is one sentence that blames the right thing."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_transformers import evaluate_checkpoint, finetune
from tiny_transformers.errors import CheckpointError, ConfigError, DataError, TinyTransformersError

sys.path.insert(0, str(Path(__file__).parent))
from test_finetune import tiny_config  # noqa: E402


def test_a_diverging_run_stops_keeps_its_last_good_checkpoint_and_exports_nothing(stanford_dir, tmp_path):
    from tiny_transformers.train import TrainingDiverged

    out = tmp_path / "out"
    config = tiny_config(stanford_dir, out, checkpoint_every=1, keep_checkpoints=100)
    config.optim.lr = 1e6
    with pytest.raises(TrainingDiverged) as stopped:
        finetune(config)
    message = str(stopped.value)
    assert isinstance(stopped.value, TinyTransformersError)  # the command line prints it as one sentence
    assert message.startswith("Training diverged: the loss became non-finite at optimizer step ")
    assert "the learning rate there" in message and "--optim.lr 100000" in message
    assert "nothing was exported" in message
    for folder in ("best", "last", "export"):
        assert not (out / folder).exists()
    kept = sorted((out / "checkpoints").glob("step_*"))
    assert kept, "the steps before the divergence were checkpointed"
    assert str(kept[-1]) in message
    for path in kept:  # every checkpoint left behind holds finite weights
        assert all(torch.isfinite(t).all() for t in load_file(path / "model.safetensors").values())
    if (out / "metrics.jsonl").exists():  # valid JSON, NaN never written
        for line in (out / "metrics.jsonl").read_text().splitlines():
            json.loads(line)


def run_script(body: str, timeout: int = 300) -> subprocess.Popen:
    """A Python process that trains as a user's script would (its own process: Accelerate state, signals)."""
    script = f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n" + textwrap.dedent(body)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.mark.slow
def test_two_runs_into_one_folder_one_runs_and_the_other_names_the_holder(stanford_dir, tmp_path):
    """Both start together (each imports first, then waits for the go file); one trains until it is stopped, the
    other refuses with the holder's host, pid and start time, and writes nothing."""
    out, go = tmp_path / "out", tmp_path / "go"
    body = f"""
    import time
    from pathlib import Path
    from test_finetune import tiny_config
    from tiny_transformers import finetune
    from tiny_transformers.errors import TinyTransformersError
    while not Path({str(go)!r}).exists():
        time.sleep(0.01)
    try:
        finetune(tiny_config({str(stanford_dir)!r}, {str(out)!r}, epochs=500))
    except TinyTransformersError as error:
        print("refused:" if "in use" in str(error) else "stopped:", error)
    """
    runs = [run_script(body), run_script(body)]
    go.write_text("")
    deadline = time.monotonic() + 120
    while not any(run.poll() is not None for run in runs) and time.monotonic() < deadline:
        time.sleep(0.05)
    refused = next(run for run in runs if run.poll() is not None)  # the one that did not get the folder ends first
    running = runs[1 - runs.index(refused)]
    holder = json.loads((out / ".lock").read_text())
    refused_out, refused_err = refused.communicate(timeout=60)
    while not list((out / "checkpoints").glob("step_*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    running.send_signal(signal.SIGTERM)
    running_out, running_err = running.communicate(timeout=120)
    assert refused.returncode == 0 and running.returncode == 0, refused_err[-2000:] + running_err[-2000:]
    (refusal,) = [line for line in refused_out.splitlines() if line.startswith("refused:")]
    assert f"is in use by another run (host {socket.gethostname()}, pid {running.pid}, started " in refusal
    assert holder["pid"] == running.pid and holder["started"] in refusal
    assert "stopped: Training stopped by SIGTERM" in running_out
    assert not (out / ".lock").exists()  # released when the run ended


@pytest.mark.slow
def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(stanford_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"host": socket.gethostname(), "pid": int(dead.stdout), "started": "2026-01-01 00:00:00"}
    (out / ".lock").write_text(json.dumps(stale))
    (out / ".tiny_transformers_run").write_text("{}")
    result = finetune(tiny_config(stanford_dir, out, epochs=1))
    assert result.epochs_completed == 1 and not (out / ".lock").exists()
    assert f"taking over {out / '.lock'}, left by process {stale['pid']}" in capsys.readouterr().err


@pytest.mark.parametrize("foreign", ["config.json", "results.md", "labels.json", "export"])
def test_a_folder_holding_files_no_run_wrote_is_refused_and_left_as_it_was(stanford_dir, tmp_path, foreign):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / foreign).mkdir() if foreign == "export" else (out / foreign).write_text("someone else's")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ConfigError, match=rf"holds files that no tiny_transformers run wrote \({foreign}\); train "):
        finetune(tiny_config(stanford_dir, out))
    assert sorted(p.name for p in out.iterdir()) == before
    if foreign != "export":
        assert (out / foreign).read_text() == "someone else's"


def test_a_fresh_run_with_another_config_over_a_finished_run_is_refused(stanford_dir, tmp_path):
    out = tmp_path / "out"
    finetune(tiny_config(stanford_dir, out, epochs=1))
    shutil.rmtree(out / "checkpoints")  # the space saved; the results stay
    card_before = (out / "last" / "config.json").read_bytes()
    other = tiny_config(stanford_dir, out, epochs=1)
    other.model.name = "vit_tiny_patch16_224"
    with pytest.raises(ConfigError, match=r"holds the results of another run \(best, last, metrics.jsonl"):
        finetune(other)
    assert (out / "last" / "config.json").read_bytes() == card_before
    # the same config again is the same run restarted: allowed
    assert finetune(tiny_config(stanford_dir, out, epochs=1)).epochs_completed == 1


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_an_output_dir_that_cannot_hold_a_run_gets_one_sentence(stanford_dir, tmp_path, kind):
    target = tmp_path / "out"
    if kind == "file":
        target.write_text("not a folder")
        expected = "is a file, not a folder"
    elif os.geteuid() == 0:  # root writes into any folder whatever its mode: use a read-only file system
        target = Path("/proc/tiny-transformers-out")
        expected = "cannot be written"
    else:
        target.mkdir()
        target.chmod(0o500)
        expected = "cannot be written"
    with pytest.raises(ConfigError, match=expected):
        finetune(tiny_config(stanford_dir, target))


def test_resuming_on_data_with_other_classes_blames_the_data_not_the_checkpoint(stanford_factory, tmp_path):
    data = stanford_factory(tmp_path / "data", n_classes=4)
    out = tmp_path / "out"
    finetune(tiny_config(data, out, epochs=1))
    extra = data / "train" / "n09999999"
    shutil.copytree(data / "train" / sorted(p.name for p in (data / "train").iterdir())[0], extra)
    for image in (extra / "images").iterdir():
        image.rename(image.with_name(image.name.replace(image.name.split("_")[0], "n09999999")))
    (data / "wnids.txt").write_text((data / "wnids.txt").read_text() + "n09999999\n")
    with pytest.raises(CheckpointError) as refused:
        finetune(tiny_config(data, out, epochs=2))
    message = str(refused.value)
    assert f"The classes of data.source '{data}' (5) differ from the 4 this run" in message
    assert "the checkpoints are fine" in message and "delete" not in message


def test_a_checkpoint_copied_out_of_its_run_still_checks_its_classes(stanford_dir, stanford_factory, tmp_path):
    out = tmp_path / "out"
    finetune(tiny_config(stanford_dir, out, epochs=1))
    moved = tmp_path / "elsewhere" / "step"
    shutil.copytree(sorted((out / "checkpoints").glob("step_*"))[-1], moved)
    other = stanford_factory(tmp_path / "other", n_classes=3)
    config = tiny_config(other, tmp_path / "unused")
    config.model.checkpoint = str(moved)
    with pytest.raises(
        DataError, match=r"\(3, starting .*\) are not the 4 classes model.checkpoint was trained on"
    ) as refused:
        evaluate_checkpoint(config)
    assert refused.value.every_process  # found by every process of an `evaluate` launch: one per machine says it


def test_a_corrupt_newest_trainer_state_falls_back_and_says_which_it_loads(stanford_dir, tmp_path, capsys):
    out = tmp_path / "out"
    reference = finetune(tiny_config(stanford_dir, tmp_path / "reference", epochs=2))
    finetune(tiny_config(stanford_dir, out, epochs=1, checkpoint_every=1, keep_checkpoints=10))
    steps = sorted((out / "checkpoints").glob("step_*"))
    (steps[-1] / "trainer_state.json").write_bytes(b"\xff\xfe not json")
    resumed = finetune(tiny_config(stanford_dir, out, epochs=2, checkpoint_every=1, keep_checkpoints=10))
    printed = capsys.readouterr()
    assert f"Checkpoint '{steps[-1]}' is corrupt" in printed.err
    assert f"resuming from {steps[-2].name}" in printed.out
    assert resumed.epochs_completed == 2
    assert [h["top1"] for h in resumed.history] == [h["top1"] for h in reference.history]


def test_a_full_disk_while_checkpointing_says_so_and_keeps_the_last_checkpoint(stanford_dir, tmp_path, monkeypatch):
    from accelerate import Accelerator

    out = tmp_path / "out"
    real_save, calls = Accelerator.save_state, []

    def save_state(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            real_save(self, output_dir, **kwargs)  # half written, then the disk is full
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4480 vs 4374")
        return real_save(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    with pytest.raises(CheckpointError) as full:
        finetune(tiny_config(stanford_dir, out, checkpoint_every=1))
    message = str(full.value)
    assert message.startswith(f"The disk holding {out / 'checkpoints'} is full: writing checkpoint step_00000002")
    assert f"the last complete checkpoint {out / 'checkpoints' / 'step_00000001'} is intact" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001"]


def test_resuming_with_the_same_folder_spelled_differently_is_the_same_run(stanford_dir, tmp_path):
    out = tmp_path / "out"
    finetune(tiny_config(stanford_dir, out, epochs=1))
    resumed = finetune(tiny_config(f"{stanford_dir}/", out, epochs=2))  # data/small/ vs data/small
    assert resumed.epochs_completed == 2


def test_a_refused_resume_shows_both_values(stanford_dir, tmp_path):
    out = tmp_path / "out"
    finetune(tiny_config(stanford_dir, out, epochs=1))
    changed = tiny_config(stanford_dir, out, epochs=2)
    changed.optim.lr = 5e-4
    with pytest.raises(CheckpointError, match=r"optim.lr: 0.001 -> 0.0005"):
        finetune(changed)


@pytest.mark.parametrize(
    ("model", "size", "sizes"), [("vit_tiny_patch16_224", 40, "32 or 48"), ("test_vit", 40, "32 or 48")]
)
def test_an_image_size_the_model_cannot_see_whole_is_refused_before_the_data_loads(tmp_path, model, size, sizes):
    config = tiny_config(tmp_path / "no-data-here", tmp_path / "out")  # loading it would fail: it is never reached
    config.model.name, config.data.image_size = model, size
    with pytest.raises(ConfigError, match=rf"^data.image_size {size} is not a multiple of the 16 px patches .*{sizes}"):
        finetune(config)
    assert not (tmp_path / "out").exists()


# the tests reading finished, on one worker of `pytest -n 2 --dist loadgroup`: each worker would train it once
FINISHED_GROUP = pytest.mark.xdist_group("failures_finished")


@pytest.fixture(scope="module")
def finished(stanford_dir, tmp_path_factory):
    """A one-epoch run that the command-line cases below read (they never change it)."""
    return finetune(tiny_config(stanford_dir, tmp_path_factory.mktemp("finished") / "out", epochs=1))


@FINISHED_GROUP
def test_the_librarys_own_weights_at_another_image_size_name_the_size_they_need(finished, stanford_dir, tmp_path):
    from tiny_transformers.errors import ModelError

    trained = finished  # the same one-epoch tiny_config run this test trained for itself; it only reads best/
    config = tiny_config(stanford_dir, tmp_path / "second", epochs=1)
    config.model.checkpoint, config.data.image_size = str(trained.output_dir / "best"), 48
    with pytest.raises(
        ModelError, match=r"pos_embed: \(1, 5, 64\) saved, \(1, 10, 64\) here\); use --data.image_size 32"
    ):
        finetune(config)


@FINISHED_GROUP
@pytest.mark.parametrize(("option", "value"), [("--top_k", "0"), ("--top_k", "-2"), ("--batch_size", "0")])
def test_predict_with_a_count_below_one_is_one_sentence(finished, stanford_dir, capsys, option, value):
    from tiny_transformers.cli import main

    image = next((stanford_dir / "val" / "images").iterdir())
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--model.checkpoint", str(finished.output_dir), str(image), option, value])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {option[2:]} must be 1 or more, got {value}; e.g. {option} " + (
        "5." if option == "--top_k" else "64."
    )


@FINISHED_GROUP
def test_evaluate_to_an_unwritable_output_prints_the_scores_then_the_error(finished, stanford_dir, capsys):
    from tiny_transformers.cli import main

    args = ["evaluate", "--model.checkpoint", str(finished.output_dir / "last"), "--data.source", str(stanford_dir)]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--data.num_workers", "0", "--train.progress", "false", "--output", "/proc/no/classes.csv"])
    printed = capsys.readouterr()
    assert exit_.value.code == 2
    assert json.loads(printed.out)["top1"] == finished.top1  # the scores came first
    assert "error: --output '/proc/no/classes.csv' cannot be written" in printed.err


@FINISHED_GROUP
def test_export_to_a_folder_that_cannot_be_written_is_one_sentence(finished, capsys):
    from tiny_transformers.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["export", str(finished.output_dir), "--to", "/proc/tiny-transformers-export"])
    assert exit_.value.code == 2
    assert "error: Cannot write the export to '/proc/tiny-transformers-export'" in capsys.readouterr().err


@FINISHED_GROUP
def test_weights_with_nan_are_never_exported(finished, tmp_path):
    from safetensors.torch import load_file, save_file

    from tiny_transformers.errors import PublishError
    from tiny_transformers.publish import export_run

    run = tmp_path / "run"
    shutil.copytree(finished.output_dir, run, ignore=shutil.ignore_patterns("checkpoints", "export"))
    weights = load_file(run / "last" / "model.safetensors")
    weights["head.weight"][0, 0] = float("nan")
    save_file(weights, run / "last" / "model.safetensors")
    with pytest.raises(PublishError, match=r"holds non-finite values in 1 tensor\(s\) \(e.g. head.weight\)"):
        export_run(run)
    assert not (run / "export").exists()


def test_a_corrupt_eval_image_stops_the_run_before_it_trains(stanford_factory, tmp_path):
    from tiny_transformers.errors import DataError

    data = stanford_factory(tmp_path / "data")
    broken = sorted((data / "val" / "images").iterdir())[2]
    broken.write_bytes(broken.read_bytes()[:100])  # a truncated JPEG
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"Cannot read image '{broken}'"):
        finetune(tiny_config(data, out))
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()  # no epoch was spent
