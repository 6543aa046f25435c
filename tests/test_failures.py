"""Nothing lost, nothing silently wrong: a diverging run stops with one sentence and keeps its last good state."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_transformers import finetune
from tiny_transformers.errors import TinyTransformersError

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
