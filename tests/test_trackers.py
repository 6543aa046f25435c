"""Trackers follow a run: the config as flat dotted keys with their types, running values every few updates, and a
killed-and-resumed run continues the same TensorBoard run with each step logged once (on the runs of
tests/test_resilience.py's SIGTERM/SIGKILL chains, which log to TensorBoard)."""

import pytest

from tiny_transformers.config import FinetuneConfig, flat_config


def test_the_config_reaches_trackers_as_flat_typed_keys():
    flat = flat_config(FinetuneConfig())
    assert flat["optim.lr"] == 0.001 and flat["train.epochs"] == 30 and flat["model.pretrained"] is True
    assert flat["model.checkpoint"] == "None" and flat["train.log_with"] == ""
    assert set(flat) == {f"{s}.{k}" for s, v in FinetuneConfig().to_dict().items() for k in v}


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
