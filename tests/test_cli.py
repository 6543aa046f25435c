"""The command line: every boolean of every command works bare and with a value; evaluate's --output; the
benchmark command's pointer to the repository; `predict --json` end to end."""

import dataclasses
import functools
import json
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiny_transformers import FinetuneConfig, cli


def bool_options(cls: type, prefix: str = "--") -> list[str]:
    """Every boolean field of the dataclass ``cls`` as its option, nested dataclasses included."""
    hints = typing.get_type_hints(cls)  # the config modules use string annotations
    options = []
    for field in dataclasses.fields(cls):
        if hints[field.name] is bool:
            options.append(prefix + field.name)
        elif dataclasses.is_dataclass(hints[field.name]):
            options += bool_options(hints[field.name], f"{prefix}{field.name}.")
    return options


def parse_train(args):
    return cli.parse_config(FinetuneConfig(), args)[0]


def parse_evaluate(args):
    default = cli._options_of(cli.EvaluateArgs, FinetuneConfig())
    return cli._parse(cli.EvaluateArgs, default, args, "tiny-transformers evaluate")


def parse_publish(command):
    def parse(args):
        _, hub, to = cli._publish_args(command, ["no-such-run", *args])
        return types.SimpleNamespace(hub=hub, to=to)

    return parse


def parse_predict(args):
    # the image comes after the boolean: a bare boolean must not take it as its value
    return cli._parse(cli.PredictArgs, None, ["--model.checkpoint", "run", *args, "photo.jpg"], "predict")


# each command's parse and the dataclass its options come from
PARSERS = {
    "train": (parse_train, FinetuneConfig),
    "evaluate": (parse_evaluate, cli.EvaluateArgs),
    "export": (parse_publish("export"), cli.ExportArgs),
    "push": (parse_publish("push"), cli.PushArgs),
    "predict": (parse_predict, cli.PredictArgs),
    "ablate": (lambda args: cli._parse(cli.AblateArgs, None, args, "ablate"), cli.AblateArgs),
}
OTHER = {
    "train": "--train.seed",
    "evaluate": "--data.num_workers",
    "export": "--to",
    "push": "--to",
    "predict": "--top_k",
    "ablate": "--train.seed",
}
CASES = [(command, option) for command, (_, cls) in PARSERS.items() for option in bool_options(cls)]


def test_every_command_is_covered():
    assert set(PARSERS) == set(cli.COMMANDS) - {"benchmark"}
    # the config's booleans under train and ablate; evaluate's data.skip_corrupt and train.progress; none under
    # export; push's hub.private; predict --json; ablate's --grid and --print-commands
    config = len(bool_options(FinetuneConfig))
    assert config >= 13 and len(CASES) == config + 2 + 0 + 1 + 1 + config + 2


@pytest.mark.parametrize("command,option", CASES)
def test_every_boolean_works_bare_and_with_a_value(command, option):
    parse, _ = PARSERS[command]

    def value(args):
        parsed = parse(args)
        if command == "predict":
            assert parsed.images == ("photo.jpg",)
        return functools.reduce(getattr, option[2:].split("."), parsed)

    assert value([option]) is True
    assert value([option, "true"]) is True
    assert value([option, "false"]) is False
    assert value([option, "OFF"]) is False and value([f"{option}=yes"]) is True
    assert value([option, OTHER[command], "3"]) is True  # followed by another option
    prefix, dot, name = option[2:].rpartition(".")
    negated = f"--{prefix}{dot}no-{name.replace('_', '-')}"  # tyro's flag style: --model.no-pretrained
    assert value([negated]) is False and value([negated, OTHER[command], "3"]) is False


def test_a_bare_boolean_is_not_given_the_next_word_as_a_value(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_train(["--model.pretrained", "maybe"])
    assert exit_info.value.code == 2
    assert "expected true or false, got 'maybe'" in "".join(capsys.readouterr())
    options = cli._parse(cli.PredictArgs, None, ["--json", "a.jpg", "b.jpg", "--model.checkpoint", "run"], "predict")
    assert options.json is True and options.images == ("a.jpg", "b.jpg")


def test_evaluate_parses_output_with_the_config_in_one_call():
    options = parse_evaluate(
        ["--model.checkpoint", "run/export", "--data.source", "data", "--output", "classes.csv", "--train.progress"]
    )
    assert (options.model.checkpoint, options.data.source, options.output) == ("run/export", "data", "classes.csv")
    assert options.train.progress is True
    assert parse_evaluate([]).output == "per_class_accuracy.csv"


def test_evaluate_prints_the_config_without_output(capsys):
    args = ["--model.checkpoint", "run/export", "--output", "x.csv", "--data.max_eval_samples", "5", "--print-config"]
    cli.main(["evaluate", *args])
    printed = json.loads(capsys.readouterr().out)
    assert printed["model"]["checkpoint"] == "run/export" and printed["data"]["max_eval_samples"] == 5
    assert FinetuneConfig.from_dict(printed).model.checkpoint == "run/export"  # no "output" in the config


def help_text(capsys, *args: str) -> str:
    """What ``tiny-transformers ARGS --help`` prints; it must exit 0."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*args, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_train_help_without_a_model_lists_every_field_with_its_comment(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = help_text(capsys, "train")
    assert text.startswith("usage: tiny-transformers train NAME ")
    config = FinetuneConfig()
    for section in dataclasses.fields(config):
        for field in dataclasses.fields(getattr(config, section.name)):
            assert f"--{section.name}.{field.name}" in text
    assert "passes over the training split" in text and "[{true,false}]" in text
    assert "tiny-transformers train NAME --help" in text  # where a recipe's own defaults are shown


def offered(text: str) -> set[str]:
    return set(re.findall(r"(--[a-z_]+(?:\.[a-z_]+)?) ", text)) - {"--help"}


def test_evaluate_export_and_push_offer_only_the_options_that_act_there(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    evaluate = {"--model.checkpoint", "--data.source", "--data.max_eval_samples", "--data.skip_corrupt",
                "--data.num_workers", "--data.native_size", "--train.mixed_precision", "--train.eval_batch_size",
                "--train.progress", "--output"}  # fmt: skip
    assert offered(help_text(capsys, "evaluate")) == evaluate
    export = {"--hub.model_id", "--hub.weights", "--hub.license", "--to"}
    assert offered(help_text(capsys, "export")) == export
    assert offered(help_text(capsys, "push")) == export | {"--hub.private", "--hub.strategy"}
    # each one is the config field of that name, of the same type
    for cls in (cli.EvaluateArgs, cli.PushArgs):
        for section, hint in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(hint):
                config = typing.get_type_hints(type(getattr(FinetuneConfig(), section)))
                for name, kind in typing.get_type_hints(hint).items():
                    assert kind == config[name] or (section, name) == ("train", "mixed_precision"), (section, name)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--model.checkpoint", "run/best", "--train.epochs", "3"])
    assert exit_info.value.code == 2
    said = capsys.readouterr()
    assert "Unrecognized options: --train.epochs" in said.out + said.err
    assert "run tiny-transformers evaluate --help" in said.out + said.err


def test_help_and_error_footers_name_the_command_as_typed(capsys, monkeypatch):
    """No interpreter path, no reStructuredText or doctest at the top; a typo's footer names the --help that lists
    the fields."""
    monkeypatch.setenv("COLUMNS", "200")
    for args in (["train"], ["train", "swin_l"], ["evaluate"], ["export"], ["push"], ["predict"], ["ablate", "vit_l"]):
        text = help_text(capsys, *args)
        assert text.startswith(f"usage: tiny-transformers {args[0]} "), text[:80]
        assert "``" not in text and ">>>" not in text, args
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "swin_l", "--train.epoch", "3"])
    assert exit_info.value.code == 2
    said = capsys.readouterr()
    assert (
        "--train.epochs" in said.out + said.err and "run tiny-transformers train swin_l --help" in said.out + said.err
    )


@pytest.mark.slow
def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path):
    """`tiny-transformers train swin_l --print-config | head` and a recipe's: status 141 (SIGPIPE's), no traceback."""
    root = Path(__file__).resolve().parents[1]
    for command in (
        [sys.executable, "-m", "tiny_transformers.cli", "train", "swin_l", "--print-config"],
        [sys.executable, "recipes/swin_l.py", "--print-config"],
    ):
        process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        process.stdout.close()  # the reader left before the first line
        stderr = process.stderr.read()
        assert process.wait(timeout=60) == 141 and stderr == "", (command, stderr)


def test_benchmark_points_at_the_repository(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["benchmark", "--quick"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "python -m benchmarks --quick" in line and "repository" in line


def test_predict_json_bare_end_to_end(stanford_dir, tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_finetune import tiny_config

    from tiny_transformers import finetune

    out = tmp_path / "out"
    finetune(tiny_config(stanford_dir, out, epochs=1))
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((64, 64, 3), (200, 40, 40), dtype=np.uint8)).save(image)
    capsys.readouterr()
    cli.main(["predict", "--model.checkpoint", str(out), "--json", str(image), "--top_k", "2"])
    (prediction,) = json.loads(capsys.readouterr().out)
    assert prediction["file"] == str(image) and len(prediction["predictions"]) == 2


@pytest.mark.parametrize("short", ["vit_l", "cait_s36", "deit_b_distilled", "swin_l"])
def test_a_paper_models_timm_name_trains_with_its_recipe_and_says_so(short, capsys):
    from tiny_transformers.config import paper_config
    from tiny_transformers.paper import PAPER_MODELS

    timm_name = PAPER_MODELS[short].timm_name
    cli.main(["train", timm_name, "--print-config"])
    printed = json.loads(capsys.readouterr().out)
    assert FinetuneConfig.from_dict(printed) == paper_config(short)
    with pytest.raises(SystemExit):  # fp16 on a CPU stops at once, after the note
        cli.main(["train", timm_name, "--data.source", "/nonexistent"])
    assert f"{timm_name}: the paper's {PAPER_MODELS[short].title}, trained with its recipe" in capsys.readouterr().err


def test_any_other_timm_name_says_it_uses_the_generic_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "vit_small_patch16_384", "--data.source", ""])
    assert "vit_small_patch16_384: not one of the paper's models, trained with the library's defaults" in (
        capsys.readouterr().err
    )
