"""Trackers follow a run: the config as flat dotted keys with their types, running values every few updates, and a
killed-and-resumed run continues the same TensorBoard run with each step logged once."""

import json
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_resilience import EPOCHS, STEPS_PER_EPOCH, checkpoints, data, kill, run, start, wait_for  # noqa: E402, F401

from tiny_transformers.config import FinetuneConfig, flat_config  # noqa: E402

LOGGING = ("--train.log_with", "tensorboard", "--train.log_every", "1")


def scalars(folder: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))  # applies the purge that a resumed writer records
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_the_config_reaches_trackers_as_flat_typed_keys():
    flat = flat_config(FinetuneConfig())
    assert flat["optim.lr"] == 0.001 and flat["train.epochs"] == 30 and flat["model.pretrained"] is True
    assert flat["model.checkpoint"] == "None" and flat["train.log_with"] == ""
    assert set(flat) == {f"{s}.{k}" for s, v in FinetuneConfig().to_dict().items() for k in v}


@pytest.mark.slow
def test_a_killed_and_resumed_run_logs_each_step_once(data, tmp_path):  # noqa: F811
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    process = start(data, out, 1, *LOGGING)
    wait_for(lambda: len(checkpoints(out)) >= 4, process)
    kill(process, signal.SIGKILL)
    run(data, out, 1, *LOGGING)
    logs = out / "tiny_transformers"
    assert len(list(logs.glob("events.out.tfevents.*"))) == 2  # the same run's folder, continued
    steps = STEPS_PER_EPOCH * EPOCHS
    for tag in ("step/train_loss", "step/lr", "step/images_per_s"):
        assert scalars(logs, tag) == list(range(1, steps + 1)), tag  # each update once, none lost
    for tag in ("top1", "lr", "train_loss"):
        assert scalars(logs, tag) == [STEPS_PER_EPOCH, steps], tag
    assert json.loads((out / "trackers.json").read_text())["wandb_id"]  # kept for W&B to resume the same run


def test_a_tracker_that_is_not_installed_is_refused_before_training(tmp_path, capsys):
    """Accelerate drops a tracker whose package is missing without a word: the run would log nothing."""
    import importlib.util

    from tiny_transformers import cli

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "test_vit", "--train.log_with", "tensorboard", "wandb", "--train.output_dir", str(out)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: train.log_with wandb needs the wandb package, which this Python does not have; install it "
        "(pip install wandb) or leave wandb out of train.log_with."
    )
    assert not out.exists()  # no trackers.json with a wandb_id, nothing trained
