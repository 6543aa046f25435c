"""The evaluation scores kept on the device equal the evaluate Metric's, and importing them loads no evaluate."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from tiny_transformers import metrics


def test_device_scores_equal_the_evaluate_metric():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(103, 7, generator=generator)
    labels = torch.randint(0, 7, (103,), generator=generator)
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    topk = logits.topk(5, dim=-1).indices
    scores, metric = metrics.TopKScores(k=5), metrics.TopKAccuracy(k=5)
    for start in range(0, 103, 10):  # batches, the last one short
        part = slice(start, start + 10)
        scores.add(topk[part], labels[part], losses[part])
        metric.add_batch(predictions=topk[part].numpy(), references=labels[part].numpy(), losses=losses[part].numpy())
    assert scores.compute() == metric.compute()  # bitwise: the same float64 mean of the same losses
    assert scores.compute()["count"] == 103 and np.isfinite(scores.compute()["loss"])


@pytest.mark.slow
def test_training_imports_no_evaluate_nor_transformers():
    code = "import sys, tiny_transformers.train; print('evaluate' in sys.modules, 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == [
        "False",
        "False",
    ]
