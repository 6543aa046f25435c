"""Top-k accuracy and mean loss as an ``evaluate`` Metric defined here (no Hub download, works offline)."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np


class TopKAccuracy(evaluate.Metric):
    """Top-1 and top-k accuracy in percent (0-100) and the mean loss, from each sample's k best classes.

    >>> metric = TopKAccuracy(k=2)
    >>> metric.add_batch(predictions=[[3, 1], [0, 2]], references=[1, 0], losses=[0.5, 1.5])
    >>> metric.compute()
    {'top1': 50.0, 'top2': 100.0, 'loss': 1.0, 'count': 2}
    """

    def __init__(self, k: int = 5, **kwargs) -> None:
        self.k = k
        super().__init__(keep_in_memory=True, **kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Top-1 and top-k classification accuracy (percent) and mean per-sample loss.",
            citation="",
            inputs_description="predictions: the k best class indices of each sample, best first; "
            "references: the true class index; losses: each sample's loss.",
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Value("int64"),
                    "losses": datasets.Value("float64"),
                }
            ),
        )

    def _compute(self, predictions, references, losses) -> dict:
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        hits = predictions == references[:, None]
        return {
            "top1": float(hits[:, 0].mean() * 100),
            f"top{self.k}": float(hits[:, : self.k].any(axis=1).mean() * 100),
            "loss": float(np.mean(losses)),
            "count": int(len(references)),
        }
