"""`tiny-transformers ablate`: the paper's ablation rows as ordinary runs under one root, skipped once finished,
printed as launch commands, and reported against the paper's Swin-L numbers."""

import json
import shlex
import shutil

import pytest
from PIL import Image

from tiny_transformers import cli
from tiny_transformers.ablate import ABLATION_ROWS, CHART_SIZE

ROWS = ["default", "no_mixup"]


def tiny_overrides(source) -> list[str]:
    """test_vit at 32 px on the 24-image fixture, one epoch: each row trains in a few seconds."""
    return [
        *("--model.name", "test_vit", "--model.pretrained", "false", "--model.train_mode", "full"),
        *("--data.source", str(source), "--data.image_size", "32", "--data.num_workers", "0"),
        *("--train.epochs", "1", "--train.batch_size", "8", "--train.micro_batch_size", "4"),
        *("--train.mixed_precision", "no", "--train.progress", "false"),
    ]


def flat(path):
    config = json.loads(path.read_text())
    return {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()}


@pytest.fixture(scope="module")
def ablation(stanford_dir, tmp_path_factory):
    """Both rows trained once by the command; the tests below only read them."""
    root = tmp_path_factory.mktemp("ablation") / "swin_l"
    args = ["ablate", "swin_l", "--rows", *ROWS, "--root", str(root), *tiny_overrides(stanford_dir)]
    cli.main(args)
    return root, args


def test_each_row_is_a_finished_run_differing_only_in_its_field(ablation):
    root, _ = ablation
    for row in ROWS:
        assert (root / row / "last").is_dir() and len((root / row / "metrics.jsonl").read_text().splitlines()) == 1
    default, no_mixup = flat(root / "default" / "config.json"), flat(root / "no_mixup" / "config.json")
    changed = {name for name in default if default[name] != no_mixup[name]}
    assert changed == {"augment.mixup_alpha", "train.output_dir"}
    assert (default["augment.mixup_alpha"], no_mixup["augment.mixup_alpha"]) == (0.8, 0.0)
    # the default row is the library's recipe: RandAugment 2 ops at magnitude 0, as the official code runs it
    assert (default["augment.randaugment_ops"], default["augment.randaugment_magnitude"]) == (2, 0)


def test_a_second_invocation_skips_finished_rows(ablation, capsys):
    root, args = ablation
    before = {row: (root / row / "metrics.jsonl").read_text() for row in ROWS}
    capsys.readouterr()
    cli.main(args)
    out = capsys.readouterr().out
    for row in ROWS:
        assert f"{row}: skipped, already finished" in out
        assert (root / row / "metrics.jsonl").read_text() == before[row]
    assert "training into" not in out


def test_print_commands_gives_one_launch_line_per_row(stanford_dir, tmp_path, capsys):
    root = tmp_path / "printed"
    overrides = tiny_overrides(stanford_dir)
    cli.main(["ablate", "swin_large_patch4_window12_384", "--rows", *ROWS, "--print-commands", "--root", str(root),
              *overrides])  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, row in zip(lines, ROWS):
        words = shlex.split(line)
        assert words[:5] == ["accelerate", "launch", "recipes/swin_l.py", "--train.output_dir", str(root / row)]
        assert (
            words[5:] == [w for name, value in ABLATION_ROWS[row].overrides for w in (f"--{name}", value)] + overrides
        )
    assert not root.exists()  # printed, not run


def test_a_failed_row_is_named_and_the_next_row_still_runs(ablation, stanford_dir, tmp_path, capsys):
    root = tmp_path / "ablation"
    shutil.copytree(ablation[0] / "no_mixup", root / "no_mixup")  # finished: skipped
    (root / "default").write_text("not a folder")  # fails at once
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ablate", "swin_l", "--rows", *ROWS, "--root", str(root), *tiny_overrides(stanford_dir)])
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    assert "[1/2] default: failed: train.output_dir" in err and "failed row(s): default" in err
    assert "[2/2] no_mixup: skipped, already finished" in out
    assert "| no_mixup |" in (root / "ablation.md").read_text()


def test_report_writes_the_table_and_the_chart(ablation, capsys):
    root, _ = ablation
    cli.main(["ablate", "--report", str(root)])
    text = (root / "ablation.md").read_text()
    for row in ROWS:
        record = json.loads((root / row / "metrics.jsonl").read_text().splitlines()[-1])
        (line,) = [line for line in text.splitlines() if line.startswith(f"| {row} |")]
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[3:5] == [f"{record['top1']:.2f}", f"{record['top5']:.2f}"] and cells[6] == "1"
    assert "no RandAugment" in text and "not started" in text  # the rows not run are listed as such
    with Image.open(root / "ablation.png") as chart:
        assert chart.size == CHART_SIZE


def test_the_report_of_another_model_names_it_and_leaves_the_paper_out(ablation):
    """The fixture ran Swin-L's recipe with `--model.name test_vit`: the report names test_vit (not "Swin-L/4"),
    shows no paper number beside its rows, and its chart's bars start at 0 with no paper bar."""
    from tiny_transformers.ablate import ablation_figure, ablation_model, read_row

    root, _ = ablation
    text = (root / "ablation.md").read_text()
    assert text.splitlines()[0] == "# Ablation: test_vit, with the swin_l recipe"
    assert "These runs trained test_vit, not the paper's Swin-L/4" in text and "Swin-L/4 (swin_l)" not in text
    assert "91.35" not in text and "91.11" not in text
    (line,) = [line for line in text.splitlines() if line.startswith("| no_mixup |")]
    assert line.split("|")[6].strip() == "not compared"
    results = [read_row(root, ABLATION_ROWS[row]) for row in ROWS]
    figure = ablation_figure(results, ablation_model(root))
    (axes,) = figure.axes
    assert axes.get_xlim()[0] == 0 and "test_vit" in axes.get_title() and "Swin-L" not in axes.get_title()
    assert [bar.get_width() for bar in axes.patches] == [result.top1 for result in results]  # ours only


def test_an_unknown_row_is_one_sentence(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ablate", "swin_l", "--rows", "default", "no_mixups", "--root", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unknown ablation row 'no_mixups'" in line and "no_mixup," in line and line.count(". ") == 0
    assert not (tmp_path / "r").exists()


# The probe row: a plain linear probe of the paper recipe, beside the paper's rows
PROBE_FIELDS = {
    "model.drop_path_rate": 0.0,
    "augment.randaugment_ops": 0,
    "augment.mixup_alpha": 0.0,
    "augment.cutmix_alpha": 0.0,
    "augment.random_erasing": 0.0,
}


@pytest.mark.parametrize("model", ["vit_l", "cait_s36", "deit_b_distilled", "swin_l"])
def test_the_probe_row_is_the_recipe_without_augmentation_or_drop_path(model, tmp_path, capsys):
    """`ablate MODEL --rows probe` resolves to the paper recipe with exactly the augmentation and drop path off (head
    only, the recipe's optimizer, schedule and label smoothing kept), and its printed launch line, parsed as the recipe
    file parses its arguments, gives that same config."""
    from tiny_transformers.ablate import ALL_ROWS
    from tiny_transformers.config import paper_config

    recipe = paper_config(model)
    probe = cli.row_config(recipe, ALL_ROWS["probe"], tmp_path)
    old, new = (
        {f"{s}.{k}": v for s, values in c.to_dict().items() for k, v in values.items()} for c in (recipe, probe)
    )
    changed = {name: new[name] for name in new if new[name] != old[name]}
    expected = {**PROBE_FIELDS, "train.output_dir": str(tmp_path / "probe")}
    if recipe.model.drop_path_rate == 0:  # distilled DeiT: the official code already ran it without drop path
        del expected["model.drop_path_rate"]
    assert changed == expected
    assert new["model.train_mode"] == "head" and new["augment.label_smoothing"] == 0.1
    assert (new["optim.lr"], new["optim.weight_decay"], new["train.epochs"]) == (1e-3, 0.05, 30)

    cli.main(["ablate", model, "--rows", "probe", "--print-commands", "--root", str(tmp_path)])
    (line,) = capsys.readouterr().out.strip().splitlines()
    words = shlex.split(line)
    assert words[:3] == ["accelerate", "launch", f"recipes/{model}.py"]
    assert words[3:] == [
        *("--train.output_dir", str(tmp_path / "probe"), "--model.train_mode", "head"),
        *("--model.drop_path_rate", "0", "--augment.randaugment_ops", "0", "--augment.mixup_alpha", "0"),
        *("--augment.cutmix_alpha", "0", "--augment.random_erasing", "0"),
    ]
    launched, _ = cli.parse_config(recipe, words[3:])
    assert launched == probe


def test_the_default_rows_include_the_probe_and_refuse_overriding_its_fields(tmp_path, capsys):
    from tiny_transformers.ablate import select_rows

    assert [row.name for row in select_rows()] == list(ABLATION_ROWS)[:5] + ["probe"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ablate", "swin_l", "--model.train_mode", "full", "--root", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "--model.train_mode is what the ablation row probe changes" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_report_shows_the_probe_as_a_row_the_paper_has_not_and_what_augmentation_buys(tmp_path):
    """A finished probe row: its numbers, 'not in the paper' where the paper's number would be, and one line with the
    difference between the recipe (default) and the probe."""
    from tiny_transformers.ablate import RowResult, ablation_markdown
    from tiny_transformers.paper import PAPER_MODELS

    swin = "swin_large_patch4_window12_384"  # the paper's model itself: its numbers are shown
    results = [
        RowResult(ABLATION_ROWS["default"], "finished", 30, 30, 91.5, 98.0, swin),
        RowResult(ABLATION_ROWS["no_mixup"], "not started"),
        RowResult(ABLATION_ROWS["probe"], "finished", 30, 30, 89.25, 97.5, swin),
    ]
    text = ablation_markdown(tmp_path, results, PAPER_MODELS["swin_l"])
    (probe,) = [line for line in text.splitlines() if line.startswith("| probe |")]
    cells = [cell.strip() for cell in probe.strip("|").split("|")]
    assert cells[2:] == ["none", "89.25", "97.50", "not in the paper", "30"]
    assert "augment.mixup_alpha 0, augment.cutmix_alpha 0" in cells[1]
    assert "| default | nothing: the paper recipe" in text and "| 91.35 | 30 |" in text
    assert text.splitlines()[0] == "# Ablation: Swin-L/4 (swin_l)" and "not compared" not in text
    assert "What the paper's augmentation buys over a plain linear probe: +2.25 points top-1" in text
    unfinished = [results[0], RowResult(ABLATION_ROWS["probe"], "unfinished", 3, 30)]
    assert "buys" not in ablation_markdown(tmp_path, unfinished, PAPER_MODELS["swin_l"])


@pytest.mark.slow
def test_the_probe_row_trains_head_only_without_augmentation(ablation, stanford_dir, tmp_path, capsys):
    """One real probe run (test_vit, random weights, the 24-image fixture, one epoch, head mode as the row requires):
    a finished run whose config has the probe's fields and whose line is in the report beside the recipe's."""
    root = tmp_path / "swin_l"
    overrides = [word for word in tiny_overrides(stanford_dir) if word not in ("--model.train_mode", "full")]
    cli.main(["ablate", "swin_l", "--rows", "probe", "--root", str(root), *overrides])
    config = flat(root / "probe" / "config.json")
    assert {name: config[name] for name in PROBE_FIELDS} == PROBE_FIELDS and config["model.train_mode"] == "head"
    record = json.loads((root / "probe" / "metrics.jsonl").read_text().splitlines()[-1])
    shutil.copytree(ablation[0] / "default", root / "default")  # the recipe's row, trained by the fixture
    cli.main(["ablate", "--report", str(root)])
    text = (root / "ablation.md").read_text()
    assert f"| {record['top1']:.2f} | {record['top5']:.2f} | not in the paper | 1 |" in text
    assert "What the paper's augmentation buys over a plain linear probe:" in text


# --sweep: the cross product of any config fields' values as rows, reported like the paper's rows
SWEEP = ["train.batch_size=4,8", "optim.lr=1e-3,5e-4"]
SWEEP_ROWS = {"batch_size4_lr1e-3": (4, 1e-3), "batch_size4_lr5e-4": (4, 5e-4),
              "batch_size8_lr1e-3": (8, 1e-3), "batch_size8_lr5e-4": (8, 5e-4)}  # fmt: skip


def sweep_overrides(source) -> list[str]:
    return [w for w in tiny_overrides(source) if w not in ("--train.batch_size", "8")]


def test_a_sweep_prints_one_launch_line_per_combination(stanford_dir, tmp_path, capsys):
    """`--sweep` with --print-commands: one line per combination of the values, in folders named after them; each
    line parsed as its recipe parses it gives the value with the field's own type. The manifest is the only file."""
    root = tmp_path / "sweep"
    overrides = sweep_overrides(stanford_dir)
    cli.main(["ablate", "swin_l", "--sweep", *SWEEP, "--print-commands", "--root", str(root), *overrides])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    for line, (row, (batch, lr)) in zip(lines, SWEEP_ROWS.items()):
        words = shlex.split(line)
        assert words[:5] == ["accelerate", "launch", "recipes/swin_l.py", "--train.output_dir", str(root / row)]
        config, _ = cli.parse_config(cli.paper_config("swin_l"), words[3:])
        assert (config.train.batch_size, config.optim.lr, config.data.source) == (batch, lr, str(stanford_dir))
    assert [p.name for p in root.iterdir()] == ["ablation.json"]
    assert json.loads((root / "ablation.json").read_text())["sweep"] == {
        "train.batch_size": ["4", "8"],
        "optim.lr": ["1e-3", "5e-4"],
    }


@pytest.mark.parametrize(
    "sweep, sentence",
    [
        ("train.batch_sizes=4,8", "train.batch_sizes is not a config field (did you mean train.batch_size?)"),
        ("train.batch_size=4,abc", "'abc' is not a value of train.batch_size, which takes int."),
        ("model.pretrained=yes,maybe", "'maybe' is not a value of model.pretrained, which takes true or false."),
        ("train.batch_size", "--sweep 'train.batch_size' is not FIELD=V1,V2,..."),
        ("train.epochs=1,2", "--train.epochs is swept by --sweep, which sets it for each row; give it in one place."),
    ],
)
def test_a_sweep_of_an_unknown_field_or_a_bad_value_is_one_sentence(sweep, sentence, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ablate", "swin_l", "--sweep", sweep, "--root", str(tmp_path / "r"), "--train.epochs", "3"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and sentence in line
    assert not (tmp_path / "r").exists()


def test_a_swept_value_has_its_fields_type(tmp_path):
    """Values are parsed as `--field value` is: 'no' is False for a boolean, '0' is 0.0 for a float."""
    from tiny_transformers.ablate import parse_sweep, sweep_rows

    (row,) = sweep_rows(parse_sweep(["model.pretrained=no", "augment.mixup_alpha=0"]))
    config = cli.row_config(cli.paper_config("swin_l"), row, tmp_path)
    assert row.name == "pretrainedno_mixup_alpha0"
    assert (config.model.pretrained, config.augment.mixup_alpha) == (False, 0.0)
    assert config.train.output_dir == str(tmp_path / row.name)


@pytest.mark.slow
def test_a_sweep_trains_each_combination_reports_them_and_skips_them_once_finished(stanford_dir, tmp_path, capsys):
    """Two fields of two values on test_vit: four finished runs whose configs carry the values with their types, a
    table of the swept values and scores in ablation.md (no paper rows), and a second run skips all four."""
    root = tmp_path / "sweep"
    args = ["ablate", "swin_l", "--sweep", *SWEEP, "--root", str(root), *sweep_overrides(stanford_dir)]
    cli.main(args)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(SWEEP_ROWS)
    text = (root / "ablation.md").read_text()
    assert "| row | train.batch_size | optim.lr | top-1 (%) | top-5 (%) | epochs |" in text
    assert "| default |" not in text and "91.35" not in text
    for row, (batch, lr) in SWEEP_ROWS.items():
        config = flat(root / row / "config.json")
        assert (config["train.batch_size"], config["optim.lr"]) == (batch, lr)
        record = json.loads((root / row / "metrics.jsonl").read_text().splitlines()[-1])
        values = f"{batch} | {'1e-3' if lr == 1e-3 else '5e-4'}"
        assert f"| {row} | {values} | {record['top1']:.2f} | {record['top5']:.2f} | 1 |" in text
    with Image.open(root / "ablation.png") as chart:
        assert chart.size == CHART_SIZE
    before = {row: (root / row / "metrics.jsonl").read_text() for row in SWEEP_ROWS}
    capsys.readouterr()
    cli.main(args)
    out = capsys.readouterr().out
    assert out.count("skipped, already finished") == 4 and "training into" not in out
    assert {row: (root / row / "metrics.jsonl").read_text() for row in SWEEP_ROWS} == before


def test_the_documented_batch_size_sweep_gives_three_valid_runs(tmp_path, capsys):
    """docs/ablation.md's command for the seed report's table: three launch lines, each a config validate() accepts."""
    from tiny_transformers.validation import validate

    root = tmp_path / "deit"
    sweep = ["--sweep", "train.batch_size=32,64,128", "--train.micro_batch_size", "32"]
    cli.main(["ablate", "deit_b_distilled", *sweep, "--print-commands", "--root", str(root)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [shlex.split(line)[4] for line in lines] == [str(root / f"batch_size{b}") for b in (32, 64, 128)]
    for line, batch in zip(lines, (32, 64, 128)):
        config, _ = cli.parse_config(cli.paper_config("deit_b_distilled"), shlex.split(line)[3:])
        assert (config.train.batch_size, config.train.micro_batch_size) == (batch, 32)
        validate(config, num_processes=1, cuda_available=True)
