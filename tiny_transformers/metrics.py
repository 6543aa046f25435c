"""Top-k accuracy and mean loss of an evaluation pass: :class:`TopKScores` on the device for training's evaluations,
``TopKAccuracy`` (the same scores as a local ``evaluate`` Metric) for the ``evaluate`` command, defined on first use:
importing ``evaluate`` imports ``transformers``' pipelines, seconds a training run does not need.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class TopKScores:
    """Top-1 and top-k accuracy in percent (0-100) and the mean loss, kept on the batches' device and read once by
    ``compute``, reduced as ``TopKAccuracy`` does (the loss mean in float64, NumPy's summation).

    >>> scores = TopKScores(k=2)
    >>> scores.add(torch.tensor([[3, 1], [0, 2]]), torch.tensor([1, 0]), torch.tensor([0.5, 1.5]))
    >>> scores.compute()
    {'top1': 50.0, 'top2': 100.0, 'loss': 1.0, 'count': 2}
    """

    def __init__(self, k: int = 5) -> None:
        self.k = k
        self._hits: list[torch.Tensor] = []  # per batch: (samples, k) bool, on the device
        self._losses: list[torch.Tensor] = []

    def add(self, predictions: torch.Tensor, references: torch.Tensor, losses: torch.Tensor) -> None:
        """One batch: each sample's k best class indices (best first), its true class and its loss."""
        self._hits.append(predictions[:, : self.k] == references[:, None])
        self._losses.append(losses.detach())

    def compute(self) -> dict[str, Any]:
        """The scores of every sample added so far (one host read)."""
        if not self._hits:
            return _scores(np.zeros((0, self.k), dtype=bool), np.zeros(0), self.k)
        hits, losses = torch.cat(self._hits).cpu().numpy(), torch.cat(self._losses).cpu().numpy()
        return _scores(hits, losses.astype(np.float64), self.k)


def _scores(hits: np.ndarray, losses: np.ndarray, k: int) -> dict[str, Any]:
    """Percent top-1/top-k from a (samples, k) hit matrix, the mean of float64 losses, the count."""
    return {
        "top1": float(hits[:, 0].mean() * 100),
        f"top{k}": float(hits[:, :k].any(axis=1).mean() * 100),
        "loss": float(np.mean(losses)),
        "count": int(len(losses)),
    }


def __getattr__(name: str) -> Any:
    """``TopKAccuracy``, defined on first use (importing ``evaluate`` costs seconds)."""
    if name != "TopKAccuracy":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import datasets
    import evaluate

    class TopKAccuracy(evaluate.Metric):
        """Top-1 and top-k accuracy in percent (0-100) and the mean loss, from each sample's k best classes (fed by
        ``add_batch`` or :meth:`add`; the same numbers as :class:`TopKScores`: tests/test_metrics.py)."""

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

        def add(self, predictions: torch.Tensor, references: torch.Tensor, losses: torch.Tensor) -> None:
            """One batch of device tensors, as :meth:`TopKScores.add` takes them (read to the host here)."""
            self.add_batch(
                predictions=predictions[:, : self.k].cpu().numpy(),
                references=references.cpu().numpy(),
                losses=losses.detach().double().cpu().numpy(),
            )

        def _compute(self, predictions, references, losses) -> dict:
            hits = np.asarray(predictions) == np.asarray(references)[:, None]
            return _scores(hits, np.asarray(losses, dtype=np.float64), self.k)

    TopKAccuracy.__module__ = __name__
    globals()[name] = TopKAccuracy
    return TopKAccuracy
