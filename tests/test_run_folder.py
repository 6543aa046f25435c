"""The run folder's small files: written whole or not at all, read back as one sentence when damaged, a run finished
only when its marker says so, and a full disk named with the file it stopped."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from tiny_transformers import cli, finetune
from tiny_transformers.checkpoint import TrainerState
from tiny_transformers.rundir import RunDir, RunSummary, best_record

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
