"""Training steps with a Hub push in flight against the same steps without any push (issue 14).

    python -m benchmarks.push_overlap [--model test_vit] [--image-size 32] [--epochs 4] [--upload-seconds 5]
                                      [--repeats 2] [--json push_overlap.json]

Two runs of ``finetune`` on the same synthetic Stanford folder, alternating, ``--repeats`` times each: one with
``hub.push true --hub.strategy checkpoint`` (a push of the export and the checkpoint after every epoch), one
without. Uploads go to a stand-in for huggingface_hub's ``HfApi`` that sleeps ``--upload-seconds`` (longer than an
epoch, so one upload is always in flight from the end of epoch 1 on) and sends nothing; everything else is the
real code path: the snapshot on the training thread, the export (weights copy, curves, card) and the upload on
the push thread. Each optimizer step is timed (wall time between two updates of ``train.train_steps``); epochs
2 and later are compared, where the push run always has an upload in flight. The timings are the ones of the
``finetune`` loop, not of a bare model: what a push may slow is the step, the epoch's evaluation and its end.

>>> rows = measure(model="test_vit", image_size=32, epochs=2, upload_seconds=0.5, repeats=1, images=8)
>>> rows["with_push"]["steps"] == rows["without_push"]["steps"] > 0
True
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import tiny_transformers.hub as hub_io
import tiny_transformers.train as train_module
from tiny_transformers import DataConfig, FinetuneConfig, ModelConfig, TrainConfig, finetune
from tiny_transformers.config import HubConfig
from tiny_transformers.synthetic import write_stanford_folder

from .report import write_json


class _SlowHub:
    """Stands in for ``HfApi``: every upload sleeps ``seconds`` and commits nothing (no network here)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.uploads = seconds, 0

    def __call__(self, **kwargs: Any) -> _SlowHub:
        return self

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id: str, **kwargs: Any) -> Any:
        time.sleep(self.seconds)
        self.uploads += 1
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/{self.uploads}"})()


@contextlib.contextmanager
def _timed_steps(epochs: list[list[float]]) -> Iterator[None]:
    """``train.train_steps`` recording, per epoch, the seconds between consecutive optimizer updates."""
    real = train_module.train_steps

    def steps(run: Any, loader: Any) -> Iterator[Any]:
        durations: list[float] = []
        epochs.append(durations)
        last = time.perf_counter()
        for item in real(run, loader):
            now = time.perf_counter()
            durations.append(now - last)
            last = now
            yield item

    train_module.train_steps = steps
    try:
        yield
    finally:
        train_module.train_steps = real


def _run(source: Path, out: Path, model: str, image_size: int, epochs: int, push: bool) -> list[list[float]]:
    config = FinetuneConfig(
        model=ModelConfig(name=model, pretrained=False, train_mode="full"),
        data=DataConfig(source=str(source), image_size=image_size, num_workers=0),
        train=TrainConfig(
            epochs=epochs, batch_size=8, micro_batch_size=8, mixed_precision="no", output_dir=str(out),
            progress=False, resume="never",
        ),
        hub=HubConfig(push=push, model_id="bench/push-overlap", strategy="checkpoint"),
    )  # fmt: skip
    timings: list[list[float]] = []
    with _timed_steps(timings), contextlib.redirect_stdout(None):
        finetune(config)
    return timings


def _summary(steps: list[float], epoch_seconds: list[float]) -> dict[str, Any]:
    return {
        "steps": len(steps),
        "median_step_s": statistics.median(steps),
        "mean_step_s": statistics.fmean(steps),
        "epoch_steps_s": sum(epoch_seconds) / len(epoch_seconds),
        "each_epoch_steps_s": epoch_seconds,  # epochs 2.., one repeat after the other
    }


def measure(
    model: str = "test_vit",
    image_size: int = 32,
    epochs: int = 4,
    upload_seconds: float = 5.0,
    repeats: int = 2,
    images: int = 160,
) -> dict[str, Any]:
    """Both runs ``repeats`` times, alternating; the steps of epochs 2..``epochs`` of each, pooled."""
    collected: dict[str, tuple[list[float], list[float]]] = {"with_push": ([], []), "without_push": ([], [])}
    slow = _SlowHub(upload_seconds)
    real_api = hub_io.HfApi
    hub_io.HfApi = slow
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source = write_stanford_folder(Path(tmp), classes=4, train_per_class=images // 4, size=64)
            for repeat in range(repeats):
                for name, push in (("with_push", True), ("without_push", False)):
                    timings = _run(source, Path(tmp) / f"{name}-{repeat}", model, image_size, epochs, push)
                    later = timings[1:]  # from epoch 2 on, the push run has an upload in flight throughout
                    collected[name][0].extend(s for epoch in later for s in epoch)
                    collected[name][1].extend(sum(epoch) for epoch in later)
    finally:
        hub_io.HfApi = real_api
    rows: dict[str, Any] = {name: _summary(*values) for name, values in collected.items()}
    rows["median_ratio"] = rows["with_push"]["median_step_s"] / rows["without_push"]["median_step_s"]
    rows["mean_ratio"] = rows["with_push"]["mean_step_s"] / rows["without_push"]["mean_step_s"]
    rows["settings"] = dict(
        model=model, image_size=image_size, epochs=epochs, upload_seconds=upload_seconds, repeats=repeats
    )
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.push_overlap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="test_vit")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--upload-seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images", type=int, default=160, help="training images (4 classes)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    rows = measure(args.model, args.image_size, args.epochs, args.upload_seconds, args.repeats, args.images)
    for name in ("with_push", "without_push"):
        row = rows[name]
        print(
            f"{name:13s} {row['steps']:4d} steps  median {row['median_step_s'] * 1e3:7.2f} ms  "
            f"mean {row['mean_step_s'] * 1e3:7.2f} ms  steps of each epoch from the 2nd: "
            + " ".join(f"{s:.2f}" for s in row["each_epoch_steps_s"])
            + " s"
        )
    print(f"with / without a push in flight: median step {rows['median_ratio']:.3f}x, mean {rows['mean_ratio']:.3f}x")
    write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
