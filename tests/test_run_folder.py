"""The run folder's small files: written whole or not at all, read back as one sentence when damaged, a run finished
only when its marker says so, and a full disk named with the file it stopped."""

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_transformers import cli, finetune
from tiny_transformers.checkpoint import TrainerState
from tiny_transformers.errors import ConfigError
from tiny_transformers.rundir import RunDir, RunSummary, best_record
from tiny_transformers.runfiles import RunFileError, write_atomic

sys.path.insert(0, str(Path(__file__).parent))
from test_ablate import tiny_overrides  # noqa: E402
from test_finetune import tiny_config  # noqa: E402


class Killed(BaseException):
    """What a SIGKILL does to the code that runs: nothing after this point happens (not an Exception: no handler
    of the library catches it)."""


@pytest.fixture(scope="module")
def finished(stanford_dir, tmp_path_factory):
    """A two-epoch run the tests below copy before they damage it."""
    return finetune(tiny_config(stanford_dir, tmp_path_factory.mktemp("finished") / "out", epochs=2))


def copy_run(finished, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished.output_dir, run)
    return run


def fail(args, capsys) -> str:
    """Run the command line, expect exit 2, return its one error line on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]


# --------------------------------------------------------------------------------------------------
# One writer
# --------------------------------------------------------------------------------------------------


def test_a_write_killed_before_its_rename_leaves_the_previous_file_whole(finished, tmp_path, monkeypatch):
    """23.9: a kill while a restart rewrites labels.json left it empty and every resume failed."""
    run = copy_run(finished, tmp_path)
    before = {name: (run / name).read_bytes() for name in ("config.json", "labels.json", ".tiny_transformers_run")}

    def killed(descriptor):
        raise Killed

    monkeypatch.setattr(os, "fsync", killed)  # the bytes are in the temporary file; the kill comes before the rename
    with pytest.raises(Killed):
        RunDir(run).write_start(tiny_config("x", run), ["a"], ["ant"])
    monkeypatch.undo()
    assert {name: (run / name).read_bytes() for name in before} == before
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # a failed write cleans up after itself
    resumed = finetune(_same_config(finished, run))  # the run goes on from its folder as it was
    assert resumed.epochs_completed == 2


def _same_config(finished, run):
    config = RunDir(finished.output_dir).read_config()
    config.train.output_dir = str(run)
    return config


def test_every_small_file_of_a_run_goes_through_the_one_writer(stanford_dir, tmp_path, monkeypatch):
    import tiny_transformers.runfiles as runfiles

    written = []
    real = runfiles.write_atomic

    def recording(path, text):
        written.append(Path(path).name)
        return real(path, text)

    for module in ("rundir", "report", "ablate", "weights", "checkpoint"):
        monkeypatch.setattr(f"tiny_transformers.{module}.write_atomic", recording)
    out = tmp_path / "out"
    finetune(tiny_config(stanford_dir, out, epochs=1, log_with=("tensorboard",)))
    small = {p.name for p in out.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl", ".md", "")}
    small |= {"config.json", "trainer_state.json"}  # best/ and last/, and each checkpoint's state
    assert small <= set(written), small - set(written)


# --------------------------------------------------------------------------------------------------
# One reader: a damaged file is one sentence naming it and the fix
# --------------------------------------------------------------------------------------------------


def test_a_missing_run_file_is_named_with_its_fix(tmp_path):
    with pytest.raises(RunFileError, match=rf"^'{tmp_path / 'config.json'}' is missing; restore it from a copy, or "):
        RunDir(tmp_path).read_config()


@pytest.mark.parametrize(
    ("damaged", "content", "says"),
    [
        ("config.json", b'{"model": {"name": "te', "is truncated or not valid JSON"),
        ("labels.json", b"", "is empty"),
        ("labels.json", b"[1, 2]", "holds a JSON array where a JSON object belongs"),
        ("metrics.jsonl", b'{"epoch": 1, "top1": 50.0}\n{"epoch": 2, "to', "line 2 is not an epoch's record"),
        ("metrics.jsonl", b"\xff\xfe{", "cannot be read"),
        ("last/model.safetensors", b"\x00" * 10, "is truncated or not a safetensors file"),
    ],
)
def test_export_of_a_damaged_run_file_is_one_sentence_naming_it(finished, tmp_path, capsys, damaged, content, says):
    run = copy_run(finished, tmp_path)
    (run / damaged).write_bytes(content)
    err = fail(["export", str(run)], capsys)
    assert err.startswith(f"error: '{run / damaged}' {says}"), err
    assert "run the training command again" in err or "restore it" in err
    assert not (run / "export").exists()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_predict_and_evaluate_of_a_truncated_weights_config_is_one_sentence(
    finished, stanford_dir, tmp_path, capsys, command
):
    best = tmp_path / "best"
    shutil.copytree(finished.output_dir / "best", best)
    (best / "config.json").write_text((best / "config.json").read_text()[:40])
    image = next((stanford_dir / "val" / "images").iterdir())
    args = {
        "predict": ["predict", "--model.checkpoint", str(best), str(image)],
        "evaluate": ["evaluate", "--model.checkpoint", str(best), "--data.source", str(stanford_dir)],
    }[command]
    err = fail(args, capsys)
    assert err.startswith(f"error: '{best / 'config.json'}' is truncated or not valid JSON"), err
    assert "copy the folder again from its run" in err


@pytest.mark.parametrize(
    ("damaged", "content", "says"),
    [
        ("default/config.json", "", "is empty"),
        ("ablation.json", "", "is empty"),
        ("default/metrics.jsonl", "not json\n", "line 1 is not an epoch's record"),
    ],
)
def test_ablate_report_of_a_damaged_file_is_one_sentence(finished, tmp_path, capsys, damaged, content, says):
    root = tmp_path / "ablation"
    shutil.copytree(finished.output_dir, root / "default", ignore=shutil.ignore_patterns("checkpoints"))
    (root / "ablation.json").write_text(json.dumps({"model": "swin_l"}))
    (root / damaged).write_text(content)
    err = fail(["ablate", "--report", str(root)], capsys)
    assert err.startswith(f"error: '{root / damaged}' {says}"), err
    assert not (root / "ablation.md").exists()


def test_a_resume_over_damaged_small_files_names_the_one_it_needs_or_writes_them_anew(finished, tmp_path, capsys):
    """labels.json is checked against the data on resume: damaged, it is named with its fix, and the fix works;
    config.json and metrics.jsonl are written anew from the config and the checkpoint."""
    run = copy_run(finished, tmp_path)
    shutil.rmtree(run / "last")
    (run / "finished.json").unlink()
    (run / "labels.json").write_text('{"class_ids": ["n0')
    (run / "config.json").write_text("")
    (run / "metrics.jsonl").write_text('{"epoch": 1, "to')
    with pytest.raises(RunFileError) as damaged:
        finetune(_same_config(finished, run))
    assert str(damaged.value).startswith(f"'{run / 'labels.json'}' is truncated or not valid JSON (")
    assert damaged.value.every_process  # every process of a launch reads it: one per machine says it
    assert str(damaged.value).endswith(
        "restore it from a copy, or delete it and run the training command again (it resumes from the newest "
        "checkpoint and writes labels.json anew)."
    )
    (run / "labels.json").unlink()  # the fix the sentence gives
    resumed = finetune(_same_config(finished, run))
    assert resumed.epochs_completed == 2
    assert RunDir(run).read_labels() == RunDir(finished.output_dir).read_labels()
    assert RunDir(run).read_config() == _same_config(finished, run)  # written anew at the start
    assert [r["top1"] for r in RunDir(run).read_metrics()] == [r["top1"] for r in finished.history]
    assert json.loads((run / "finished.json").read_text()) == {"epochs": 2}


def test_a_damaged_finished_marker_is_named_once_per_machine(finished, tmp_path):
    """finished.json says whether there is anything to train; damaged, it is named with its fix, and every process of a
    launch finds it, so the first process of each machine says it (errors.raised_on_every_process)."""
    run = copy_run(finished, tmp_path)
    (run / "finished.json").write_text('{"epo')
    with pytest.raises(RunFileError, match=rf"^'{run / 'finished.json'}' is truncated or not valid JSON") as damaged:
        finetune(_same_config(finished, run))
    assert damaged.value.every_process


@pytest.mark.parametrize("value", [{"epoch": "2"}, {"history": {"epoch": 1}}, {"best_top1": [1]}, []])
def test_a_trainer_state_of_the_wrong_type_falls_back_like_a_corrupt_one(finished, tmp_path, capsys, value):
    """23.12: a field of the wrong type was a traceback mid-resume; now the previous checkpoint is used."""
    run = copy_run(finished, tmp_path)
    steps = sorted((run / "checkpoints").glob("step_*"))
    state = steps[-1] / "trainer_state.json"
    payload = json.loads(state.read_text())
    if isinstance(value, dict):
        payload["state"].update(value)
    else:
        payload["state"] = value
    state.write_text(json.dumps(payload))
    shutil.rmtree(run / "last")
    (run / "finished.json").unlink(missing_ok=True)
    capsys.readouterr()
    resumed = finetune(_same_config(finished, run))
    printed = capsys.readouterr()
    assert f"Checkpoint '{steps[-1]}' is corrupt" in printed.err
    assert f"resuming from {steps[-2].name}" in printed.out
    assert [h["top1"] for h in resumed.history] == [h["top1"] for h in finished.history]


# --------------------------------------------------------------------------------------------------
# Finished: a marker written last
# --------------------------------------------------------------------------------------------------


def weights_of(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def reference_row(stanford_dir, tmp_path_factory):
    """The `default` row trained for two epochs without interruption: what a killed and resumed row must equal."""
    root = tmp_path_factory.mktemp("reference") / "swin_l"
    cli.main(["ablate", "swin_l", "--rows", "default", "--root", str(root), *two_epochs(stanford_dir)])
    return root / "default"


def two_epochs(source) -> list[str]:
    overrides = tiny_overrides(source)
    overrides[overrides.index("--train.epochs") + 1] = "2"
    return overrides


@pytest.mark.parametrize("killed_in", ["the last epoch's checkpoint", "last/"])
def test_a_row_killed_before_its_marker_resumes_and_its_report_matches_last(
    stanford_dir, reference_row, tmp_path, monkeypatch, capsys, killed_in
):
    """23.1: killed after metrics.jsonl got the last epoch's line, the row was skipped as finished while last/ held
    another epoch (or nothing); now only finished.json, written after everything else, makes a row finished."""
    import timm
    from accelerate import Accelerator

    root = tmp_path / "swin_l"
    args = ["ablate", "swin_l", "--rows", "default", "--root", str(root), *two_epochs(stanford_dir)]
    if killed_in == "last/":
        real = timm.models.save_for_hf

        def save_for_hf(model, folder, **kwargs):
            real(model, folder, **kwargs)
            if Path(folder).name == "last":
                (Path(folder) / "config.json").unlink()  # the weights written, its config not yet
                raise Killed

        monkeypatch.setattr(timm.models, "save_for_hf", save_for_hf)
    else:
        real, calls = Accelerator.save_state, []

        def save_state(self, output_dir=None, **kwargs):
            calls.append(output_dir)
            real(self, output_dir, **kwargs)
            if len(calls) == 2:  # the second epoch's: half written when the process dies
                raise Killed

        monkeypatch.setattr(Accelerator, "save_state", save_state)
    with pytest.raises(Killed):
        cli.main(args)
    monkeypatch.undo()
    row = root / "default"
    assert len((row / "metrics.jsonl").read_text().splitlines()) == 2  # the last epoch was logged
    assert not (row / "finished.json").exists()
    capsys.readouterr()
    cli.main(args)
    out = capsys.readouterr().out
    assert "[1/1] default: training into" in out and "skipped, already finished" not in out
    assert json.loads((row / "finished.json").read_text()) == {"epochs": 2}
    expected = weights_of(reference_row / "last")
    assert all(torch.equal(t, expected[k]) for k, t in weights_of(row / "last").items())
    history, expected_history = RunDir(row).read_metrics(), RunDir(reference_row).read_metrics()
    untimed = [{k: v for k, v in record.items() if k != "epoch_seconds"} for record in history]
    assert untimed == [{k: v for k, v in record.items() if k != "epoch_seconds"} for record in expected_history]
    final = history[-1]
    (line,) = [line for line in (root / "ablation.md").read_text().splitlines() if line.startswith("| default |")]
    assert f" {final['top1']:.2f} | {final['top5']:.2f} | " in line and line.endswith("| 2 |")
    assert f"{final['top1']:.2f}" in (row / "results.md").read_text()


def test_the_marker_is_written_last_and_removed_when_the_run_goes_on(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    marker = run / "finished.json"
    assert json.loads(marker.read_text()) == {"epochs": 2}
    outputs = [run / "last" / "model.safetensors", run / "results.md", run / "metrics.jsonl", run / "predictions.png"]
    assert all(marker.stat().st_mtime_ns >= path.stat().st_mtime_ns for path in outputs)
    RunDir(run).write_start(_same_config(finished, run), ["a"], ["ant"])  # a run that continues is unfinished again
    assert not marker.exists() and RunDir(run).finished_epochs() is None


def test_running_a_finished_run_again_says_so_and_trains_nothing(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    again = finetune(_same_config(finished, run))
    assert capsys.readouterr().out.strip() == (
        f"tiny_transformers: the run in {run.resolve()} is already finished (2 epochs, top-1 {finished.top1:.2f}%); "
        "its results are there (best, last, results.md, ...). Raise --train.epochs to train it further, or give "
        "another --train.output_dir for a new run."
    )
    assert (again.top1, again.best_top1, again.epochs_completed) == (finished.top1, finished.best_top1, 2)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == {
        p: t for p, t in before.items() if p.name != ".lock"
    }  # nothing rewritten: not last/, not the report, not the marker
    publish = _same_config(finished, run)
    publish.hub.push, publish.hub.model_id = True, "me/tiny-vit"  # pushing is the push command's work now
    finetune(publish)
    assert capsys.readouterr().out.strip().endswith(f"new run; to push it: tiny-transformers push {run.resolve()}.")


# --------------------------------------------------------------------------------------------------
# A shorter train.epochs than the checkpoint reached
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("keep", "where"), [(5, "step 2 of epoch 2"), (6, "the end of epoch 2")])
def test_resuming_with_fewer_epochs_than_the_checkpoint_reached_is_refused(stanford_dir, tmp_path, capsys, keep, where):
    """23.2: exit 0 with epoch 1's top-1 while last/ held the mid-epoch-2 weights; now one sentence, nothing written."""
    out = tmp_path / "out"
    finetune(tiny_config(stanford_dir, out, epochs=2, checkpoint_every=1, keep_checkpoints=100))
    for step in sorted((out / "checkpoints").glob("step_*"))[keep:]:
        shutil.rmtree(step)  # the run as a kill after step `keep` left it
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    overrides = tiny_overrides(stanford_dir)  # one epoch
    err = fail(["train", "test_vit", *overrides, "--train.output_dir", str(out)], capsys)
    newest = out / "checkpoints" / f"step_{keep:08d}"
    assert err == (
        f"error: Checkpoint '{newest}' has trained to {where}, past train.epochs 1; resume with --train.epochs 2 "
        "or more, or train the shorter run afresh in a new train.output_dir."
    )
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# --------------------------------------------------------------------------------------------------
# A full disk or a read-only folder: which file, what the error means, the fix
# --------------------------------------------------------------------------------------------------


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("writer", ["last/", "training_curves.png", "metrics.jsonl"])
def test_a_full_disk_while_writing_an_output_is_one_sentence_naming_it(stanford_dir, tmp_path, monkeypatch, writer):
    """23.13: `SafetensorError: No space left` from last/, `OSError 28` from the PNGs, were tracebacks."""
    import safetensors.torch
    from matplotlib.figure import Figure

    out = tmp_path / "out"
    if writer == "last/":
        real = safetensors.torch.save_file

        def save_file(tensors, filename, *args, **kwargs):
            if Path(filename).parent.name == "last":
                raise safetensors.SafetensorError(
                    "Error while serializing: IoError(No space left on device (os error 28))"
                )
            return real(tensors, filename, *args, **kwargs)

        monkeypatch.setattr(safetensors.torch, "save_file", save_file)
        path = out / "last" / "model.safetensors"
    elif writer == "training_curves.png":
        monkeypatch.setattr(Figure, "savefig", no_space)
        path = out / "training_curves.png"
    else:
        real_fsync = os.fsync

        def fsync(descriptor):
            if os.readlink(f"/proc/self/fd/{descriptor}").endswith(f".metrics.jsonl.{os.getpid()}.tmp"):
                no_space()
            real_fsync(descriptor)

        monkeypatch.setattr(os, "fsync", fsync)
        path = out / "metrics.jsonl"
    with pytest.raises(RunFileError) as full:
        finetune(tiny_config(stanford_dir, out, epochs=1))
    assert str(full.value) == (
        f"Writing '{path}' failed: No space left on device (ENOSPC); free some space on that disk, then run the same "
        "command again (what was written before is intact)."
    )
    assert not (out / "finished.json").exists()
    assert not [p for p in out.rglob("*.tmp")]


def test_a_read_only_file_names_the_errno_and_its_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only")))
    with pytest.raises(RunFileError, match=r"Read-only file system \(EROFS\); make that file system writable"):
        write_atomic(tmp_path / "results.md", "x")
    monkeypatch.undo()
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------
# The raw-vs-EMA rule for best/, in one place
# --------------------------------------------------------------------------------------------------


def test_best_is_chosen_by_one_rule_everywhere():
    history = [
        {"epoch": 1, "top1": 50.0, "top5": 80.0, "eval_loss": 1.0, "ema_top1": 50.0, "ema_top5": 81.0, "ema_loss": 0.9},
        {"epoch": 2, "top1": 49.0, "top5": 80.0, "eval_loss": 1.0, "ema_top1": 52.0, "ema_top5": 82.0, "ema_loss": 0.8},
        {"epoch": 3, "top1": 52.0, "top5": 83.0, "eval_loss": 0.7, "ema_top1": 51.0, "ema_top5": 82.0, "ema_loss": 0.8},
    ]
    state, improved = TrainerState(), []
    for record in history:
        improved.append(state.finish_epoch(dict(record)))
    assert improved == [True, True, False]  # epoch 3 ties epoch 2's 52.0: the first keeps best/
    assert best_record(history)["epoch"] == 2 and state.best_top1 == 52.0
    run = RunSummary(Path("x"), tiny_config("x", "x"), history, [], [])
    assert run.record_for("best")["top1"] == 52.0 and run.record_for("best")["top5"] == 82.0  # the EMA's numbers
    assert run.record_for("last")["top1"] == 51.0  # last/ holds the EMA


# --------------------------------------------------------------------------------------------------
# The lock: filelock holds the folder; what a killed holder left is taken over aloud
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("left", ["", '{"host": "'])
def test_an_empty_or_unreadable_lock_is_taken_over_aloud(stanford_dir, tmp_path, capsys, left):
    """23.9: a kill between creating .lock and writing it blocked every rerun ("host ?, pid ?, started ?")."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").write_text(left)
    (out / ".tiny_transformers_run").write_text("{}")
    assert finetune(tiny_config(stanford_dir, out, epochs=1)).epochs_completed == 1
    err = capsys.readouterr().err
    assert f"warning: taking over {out / '.lock'}, whose contents are unreadable (a run killed while it took the" in err
    assert not (out / ".lock").exists()


def test_a_held_lock_is_refused_at_once_naming_the_holder_and_left_as_it_was(tmp_path):
    from tiny_transformers.rundir import RunFolderBusy, RunLock

    folder = RunDir(tmp_path / "out")
    with RunLock(folder) as holder:
        written = (folder.root / ".lock").read_text()
        assert json.loads(written) == holder.mine
        with pytest.raises(RunFolderBusy, match=r"is already used by this process\.$"):
            with RunLock(folder):
                pass
        assert (folder.root / ".lock").read_text() == written  # the refused one changed nothing
    assert not folder.root.exists()  # created by the lock, released empty: no trace


def test_a_lock_just_taken_is_refused_naming_the_holder_once_it_has_written_its_entry(tmp_path):
    """The holder takes the flock, then writes its entry: a run refused in between names it all the same (it waits up
    to a second for the entry, instead of saying "pid ?")."""
    import socket
    import threading

    from filelock import FileLock

    from tiny_transformers.rundir import RunFolderBusy, RunLock

    folder = RunDir(tmp_path / "out")
    folder.root.mkdir()
    entry = {"host": socket.gethostname(), "pid": os.getppid(), "started": "2026-12-05 10:00:00"}
    with FileLock(folder.root / ".lock", timeout=0):  # held, its entry not written yet
        later = threading.Timer(0.2, lambda: (folder.root / ".lock").write_text(json.dumps(entry)))
        later.start()
        with pytest.raises(RunFolderBusy, match=rf"pid {entry['pid']}, started 2026-12-05 10:00:00\)"):
            with RunLock(folder):
                pass
        later.join()


@pytest.mark.parametrize(
    "left", [[".lock"], [".lock", ".write-test-4242"], [".lock", "checkpoints/"], [".lock", "checkpoints/.tmp-hub/x"]]
)
def test_a_folder_holding_only_what_the_main_process_makes_first_is_claimed(stanford_dir, tmp_path, left):
    """In a launch every process claims the folder while the main one takes it (the lock, a writability probe) and
    downloads a Hub checkpoint to resume: those files are no foreign run's. A two-process run saw the probe and
    refused its own folder."""
    from tiny_transformers.rundir import claim

    folder = RunDir(tmp_path / "out")
    folder.root.mkdir()
    for name in left:
        path = folder.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir()
        else:
            path.write_text("")
    claim(folder, tiny_config(stanford_dir, folder.root), resuming=False)  # no ConfigError
    (folder.root / "notes.txt").write_text("a user's")
    with pytest.raises(ConfigError, match=r"holds files that no tiny_transformers run wrote \(notes.txt\); train "):
        claim(folder, tiny_config(stanford_dir, folder.root), resuming=False)


# --------------------------------------------------------------------------------------------------
# export --to: only over its own folder, and the previous export kept until the new one is complete
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreign", ["a user's folder", "another run's best/"])
def test_export_refuses_a_folder_it_did_not_write_and_leaves_it_as_it_was(finished, tmp_path, capsys, foreign):
    """23.3: a folder holding a user's README.md and config.json, or another run's best/, was replaced silently."""
    target = tmp_path / "target"
    if foreign == "a user's folder":
        target.mkdir()
        (target / "README.md").write_text("my notes")
        (target / "config.json").write_text("{}")
        names = "README.md, config.json"
    else:
        shutil.copytree(finished.output_dir / "best", target)
        names = "config.json, model.safetensors"
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    err = fail(["export", str(finished.output_dir), "--to", str(target)], capsys)
    assert err == (
        f"error: '{target}' already holds files that export did not write ({names}); export into a new or empty "
        "folder, or move them away first."
    )
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["target"]  # nothing left beside it


@pytest.mark.slow
def test_an_export_killed_midway_keeps_the_previous_one_and_the_next_removes_what_it_left(finished, tmp_path, capsys):
    """23.10: a kill during export left .export.tmp-PID (a copy of the weights) for good and the old export gone."""
    import subprocess

    target = tmp_path / "shared"
    cli.main(["export", str(finished.output_dir), "--to", str(target)])
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    assert set(before) == {"model.safetensors", "config.json", "README.md", "training_curves.png", "metrics.jsonl",
                           ".tiny_transformers_export"}  # fmt: skip
    killed = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; import tiny_transformers.publish as p; "
         "p.plot_training_curves = lambda *a, **k: os._exit(9); p.export_run(sys.argv[1], folder=sys.argv[2])",
         str(finished.output_dir), str(target)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    assert killed.wait(timeout=300) == 9  # died between copying the weights and finishing the folder
    (left,) = [p for p in tmp_path.iterdir() if p.name != "shared"]
    assert left.name.startswith(f".shared.tmp-{killed.pid}-") and (left / "model.safetensors").is_file()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # the previous export, whole
    capsys.readouterr()
    cli.main(["export", str(finished.output_dir), "--to", str(target)])
    assert f"removed what an export killed mid-write left beside {target}" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]
    assert (target / "model.safetensors").read_bytes() == before["model.safetensors"]


# --------------------------------------------------------------------------------------------------
# evaluate --output: only over a table evaluate wrote, and only from the main process
# --------------------------------------------------------------------------------------------------


def evaluate_args(finished, source, output) -> list[str]:
    return ["evaluate", "--model.checkpoint", str(finished.output_dir / "last"), "--data.source", str(source),
            "--data.num_workers", "0", "--train.progress", "false", "--output", str(output)]  # fmt: skip


def test_evaluate_output_refuses_a_file_it_did_not_write_and_replaces_its_own(finished, stanford_dir, tmp_path, capsys):
    """23.11: `evaluate --output` onto an existing file (even the run's own metrics.jsonl) overwrote it silently."""
    run = copy_run(finished, tmp_path)
    metrics = (run / "metrics.jsonl").read_bytes()
    err = fail(evaluate_args(finished, stanford_dir, run / "metrics.jsonl"), capsys)
    assert err == (
        f"error: --output '{run / 'metrics.jsonl'}' already exists and is not a per-class table that evaluate wrote "
        "(its first line is not 'class_id,class_name,images,correct,top1'); give a new file name, or move that file "
        "away first."
    )
    assert (run / "metrics.jsonl").read_bytes() == metrics
    table = tmp_path / "classes.csv"
    for _ in range(2):  # the second run replaces the table the first one wrote
        cli.main(evaluate_args(finished, stanford_dir, table))
        assert json.loads(capsys.readouterr().out)["top1"] == finished.top1
    assert table.read_text().splitlines()[0] == "class_id,class_name,images,correct,top1"
    assert len(table.read_text().splitlines()) == 1 + 4  # a row per class


@pytest.mark.slow
def test_evaluate_under_a_two_process_launch_prints_and_writes_once(finished, stanford_dir, tmp_path):
    import subprocess

    table = tmp_path / "classes.csv"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--main_process_port", "0",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "tiny_transformers.cli"]  # fmt: skip
    done = subprocess.run(
        [*launch, *evaluate_args(finished, stanford_dir, table)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("{")]  # one process printed the scores
    assert json.loads(line)["top1"] == finished.top1 and json.loads(line)["count"] == 12
    assert done.stderr.count("per-class accuracy:") == 1
    assert table.read_text().splitlines()[0] == "class_id,class_name,images,correct,top1"


def test_a_lock_entry_naming_this_pid_is_an_earlier_process_taken_over_aloud(tmp_path, capsys):
    """In a container every run may get the same pid: an entry of that pid whose flock nobody holds is stale."""
    import socket

    from tiny_transformers.rundir import RunLock

    folder = RunDir(tmp_path / "out")
    folder.root.mkdir()
    stale = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2026-01-01 00:00:00"}
    (folder.root / ".lock").write_text(json.dumps(stale))
    with RunLock(folder) as lock:
        assert json.loads((folder.root / ".lock").read_text()) == lock.mine
    assert f"taking over {folder.root / '.lock'}, left by process {os.getpid()} (started 2026-01-01" in (
        capsys.readouterr().err
    )
