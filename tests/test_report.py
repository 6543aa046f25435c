"""Pictures and results.md at the end of a run: valid PNGs of the expected size, the grid's cells and pixels,
the curves' data, results beside the paper, and the per-class table."""

import json

import numpy as np
import pytest
from PIL import Image

from tiny_transformers import DataConfig, FinetuneConfig, ModelConfig, TrainConfig, evaluate_checkpoint, finetune
from tiny_transformers.data import decode_image, load_data
from tiny_transformers.optim import lr_per_update
from tiny_transformers.report import (
    CURVES_SIZE,
    grid_pixel_size,
    grid_sample,
    grid_scale,
    per_class_accuracy,
    plot_prediction_grid,
    prediction_grid_figure,
    results_markdown,
    training_curves_figure,
    write_per_class_csv,
)

RED = "#c62828"


@pytest.fixture(scope="module")
def run(stanford_dir, tmp_path_factory):
    """One two-epoch test_vit run at 32 px on the 4-class fixture (12 eval images)."""
    config = FinetuneConfig(
        model=ModelConfig(name="test_vit", pretrained=False, train_mode="full"),
        data=DataConfig(source=str(stanford_dir), image_size=32, num_workers=0),
        train=TrainConfig(
            epochs=2,
            batch_size=8,
            micro_batch_size=4,
            mixed_precision="no",
            output_dir=str(tmp_path_factory.mktemp("report") / "out"),
            progress=False,
        ),
    )
    return config, finetune(config)


def png(path) -> Image.Image:
    with Image.open(path) as image:
        image.verify()  # a complete, uncorrupted PNG
    image = Image.open(path)
    assert image.format == "PNG"
    return image


def cell_box(i: int, columns: int, native: int) -> tuple[int, int, int]:
    """(left, top, side) in pixels of grid cell i's image (the layout documented in report.py)."""
    side = native * grid_scale(native)
    row, column = divmod(i, columns)
    return column * (side + 16) + 8, row * (side + 34 + 8) + 34, side


def test_training_curves_png_plots_the_runs_history(run):
    config, result = run
    image = png(result.output_dir / "training_curves.png")
    assert image.size == CURVES_SIZE
    fig = training_curves_figure(result.history)
    loss_ax, acc_ax, lr_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train", "eval"]
    assert list(loss_ax.lines[0].get_ydata()) == [h["train_loss"] for h in result.history]
    assert list(loss_ax.lines[1].get_ydata()) == [h["eval_loss"] for h in result.history]
    assert list(acc_ax.lines[0].get_ydata()) == [h["top1"] for h in result.history]
    assert list(acc_ax.lines[1].get_ydata()) == [h["top5"] for h in result.history]
    assert list(lr_ax.lines[0].get_ydata()) == [h["lr"] for h in result.history]
    assert list(lr_ax.lines[0].get_xdata()) == [1, 2]
    by_step = training_curves_figure(result.history, x="step")
    assert list(by_step.axes[0].lines[0].get_xdata()) == [3, 6] and by_step.axes[0].get_xlabel() == "optimizer step"
    # the run's report: the lr of every update (2 epochs x 3), from the run's own schedule, through the recorded values
    schedule, recorded = training_curves_figure(result.history, config=config).axes[2].lines
    assert [schedule.get_label(), recorded.get_label()] == ["per update", "epoch end"]
    assert list(schedule.get_xdata()) == pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2])
    lrs = list(schedule.get_ydata())
    assert lrs == lr_per_update(config.optim, 3, 2) and lrs[0] == config.optim.lr
    assert [lrs[3], lrs[6]] == [h["lr"] for h in result.history] == list(recorded.get_ydata())
    assert lrs[0] > lrs[1] > lrs[2] > lrs[3] > lrs[4] > lrs[5] >= lrs[6]  # the cosine between the epochs' ends


def test_prediction_grid_of_the_run_shows_its_eval_images_and_evaluations_predictions(run, stanford_dir):
    config, result = run
    image = png(result.output_dir / "predictions.png")
    assert image.size == grid_pixel_size(12, 64)  # all 12 eval images (fewer than 16), 4 columns, 3x upscaled
    pixels = np.asarray(image.convert("RGB"))
    data = load_data(config.data)
    indices = grid_sample(len(data.eval), 16, config.train.seed)
    assert indices == list(range(12))
    evaluated = evaluate_checkpoint(
        FinetuneConfig.from_dict(
            {**config.to_dict(), "model": {**config.to_dict()["model"], "checkpoint": str(result.output_dir / "last")}}
        )
    )
    for i, index in enumerate(indices):
        left, top, side = cell_box(i, 4, 64)
        native = decode_image(data.eval[index]["image"], 64).permute(1, 2, 0).numpy()
        shown = pixels[top : top + side, left : left + side]
        wrong = evaluated["predictions"][index] != evaluated["references"][index]
        inner = slice(6, -6) if wrong else slice(None)  # a wrong cell's red frame covers its edge
        # every native pixel is a 3x3 block: the picture shows the 64x64 data the model saw
        assert np.array_equal(shown[inner, inner], native.repeat(3, 0).repeat(3, 1)[inner, inner])


def test_grid_has_one_titled_cell_per_image_and_marks_wrong_predictions(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 3, 64, 64), dtype=np.uint8)
    truth = ["goldfish", "teapot", "lemon", "volcano", "a very long class name indeed, alias"]
    predicted = ["goldfish", "lemon", "lemon", "teapot", "a very long class name indeed, alias"]
    fig = prediction_grid_figure(images, truth, predicted, columns=3)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == len(fig.axes) == 5
    assert titled[1].get_title() == "true: teapot\npred: lemon"
    assert titled[4].get_title() == "true: a very long class name…\npred: a very long class name…"
    wrong = [ax.title.get_color() == RED for ax in titled]
    assert wrong == [False, True, False, True, False]
    assert [ax.spines["top"].get_visible() for ax in titled] == wrong
    path = plot_prediction_grid(images, truth, predicted, tmp_path / "grid.png", columns=3)
    image = png(path)
    assert image.size == grid_pixel_size(5, 64, columns=3) == (3 * 208, 2 * 234)
    left, top, side = cell_box(2, 3, 64)
    shown = np.asarray(image.convert("RGB"))[top : top + side, left : left + side]
    assert np.array_equal(shown, images[2].transpose(1, 2, 0).repeat(3, 0).repeat(3, 1))
    with pytest.raises(ValueError, match="got 5 images, 4 true and 5 predicted names"):
        prediction_grid_figure(images, truth[:4], predicted)


def test_results_md_compares_with_the_paper(run):
    config, result = run
    text = (result.output_dir / "results.md").read_text()
    assert text.startswith("# Results: test_vit (test_vit)\n")
    assert f"| this run, final (epoch 2) | {result.top1:.2f} | {result.top5:.2f} | {result.loss:.4f} | 2 |" in text
    assert "The paper reports no number for test_vit" in text
    history = [
        {"epoch": 1, "top1": 80.0, "top5": 95.0, "eval_loss": 0.9},
        {"epoch": 2, "top1": 85.93, "top5": 97.5, "eval_loss": 0.7},
    ]
    paper = results_markdown(FinetuneConfig(model=ModelConfig(name="swin_l")), history)
    assert "| paper: Swin-L/4 (Huynh 2022) | 91.35 | – | – | 30 |" in paper
    assert "Final top-1 is 5.42 points below the paper's 91.35% for Swin-L/4." in paper
    assert "| this run, best top-1 (epoch 2) | 85.93 | 97.50 | 0.7000 | 2 |" in paper
    # a timm name of a paper model counts too
    assert "86.43" in results_markdown(FinetuneConfig(model=ModelConfig(name="vit_large_patch16_384")), history)


def test_per_class_table_counts_each_class(tmp_path):
    rows = per_class_accuracy([0, 0, 0, 2, 2], [0, 1, 0, 2, 0], ["a", "b", "c"], ["ant", "bee", "cat"])
    assert rows == [
        {"class_id": "a", "class_name": "ant", "images": 3, "correct": 2, "top1": pytest.approx(200 / 3)},
        {"class_id": "b", "class_name": "bee", "images": 0, "correct": 0, "top1": None},
        {"class_id": "c", "class_name": "cat", "images": 2, "correct": 1, "top1": 50.0},
    ]
    path = write_per_class_csv(rows, tmp_path / "deep" / "per_class.csv")
    assert path.read_text().splitlines() == [
        "class_id,class_name,images,correct,top1",
        "a,ant,3,2,66.6667",
        "b,bee,0,0,",
        "c,cat,2,1,50.0000",
    ]


def test_every_run_writes_its_pictures_without_a_display(run):
    _, result = run
    names = {p.name for p in result.output_dir.iterdir()}
    assert {"training_curves.png", "predictions.png", "results.md"} <= names
    assert "export" not in names  # exporting is asked for (hub.push or `tiny-transformers export`), not automatic
    assert json.loads((result.output_dir / "config.json").read_text())["hub"]["push"] is False
