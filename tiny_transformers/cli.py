"""Command lines: dotted overrides for recipes (``run``) and the ``tiny-transformers`` console script.

Overrides are parsed by tyro from the config dataclasses themselves, so every field is an option
with its type, default and comment as help, and a mistyped name is answered with the closest one.
"""

from __future__ import annotations

import difflib
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tyro

from .config import FinetuneConfig, HubConfig, paper_config
from .errors import TinyTransformersError, clean_message
from .paper import PAPER_MODELS

USAGE = """usage: tiny-transformers COMMAND [--section.field VALUE ...]

commands:
  train NAME      fine-tune; NAME is a paper recipe (vit_l, cait_s36, deit_b_distilled, swin_l) or a timm model name
  evaluate        top-1, top-5 and loss of --model.checkpoint (exported folder, training checkpoint or hf-hub:owner/name)
                  on --data.source; per-class accuracy goes to --output (default ./per_class_accuracy.csv)
  export DIR      write the run in DIR as a timm/Hub folder (weights, model card, curves, metrics) into --to
                  (default DIR/export); --hub.model_id owner/name, --hub.weights best, --hub.license as for push
  push DIR        export DIR and upload it to the Hub: --hub.model_id owner/name [--hub.private true]
  predict         top-5 classes with readable names for images or folders:
                  --model.checkpoint <exported folder | run dir | hf-hub:owner/name> IMAGE_OR_FOLDER... [--json true]
  benchmark       data path, loop overhead and training throughput on this machine (docs/benchmarks.md):
                  [--model test_vit ...] [--quick] [--json PATH]; random weights, synthetic images, no downloads

every config field is an option: --train.epochs 1 --data.source ./tiny-imagenet-200 --optim.lr 5e-4
--print-config prints the resolved config as JSON and exits; COMMAND --help lists every field.
"""


def _registry() -> tyro.constructors.ConstructorRegistry:
    """Booleans accept true/false/yes/no/1/0 in any case, as people type them."""
    registry = tyro.constructors.ConstructorRegistry()

    @registry.primitive_rule
    def bool_rule(type_info: tyro.constructors.PrimitiveTypeInfo):
        if type_info.type is not bool:
            return None
        truthy, falsy = ("true", "yes", "1", "on"), ("false", "no", "0", "off")

        def parse(args: list[str]) -> bool:
            value = args[0].lower()
            if value not in truthy + falsy:
                raise ValueError(f"expected true or false, got '{args[0]}'")
            return value in truthy

        return tyro.constructors.PrimitiveConstructorSpec(
            nargs=1,
            metavar="{true,false}",
            instance_from_str=parse,
            is_instance=lambda x: isinstance(x, bool),
            str_from_instance=lambda instance: ["true" if instance else "false"],
        )

    return registry


def parse_config(default: FinetuneConfig, args: Sequence[str], prog: str | None = None) -> tuple[FinetuneConfig, bool]:
    """Apply dotted overrides to ``default``; returns (config, print_config_requested).

    >>> cfg, show = parse_config(FinetuneConfig(), ["--train.epochs", "2", "--model.pretrained", "false"])
    >>> cfg.train.epochs, cfg.model.pretrained, show
    (2, False, False)
    """
    args = list(args)
    show = "--print-config" in args
    args = [a for a in args if a != "--print-config"]
    return _parse(FinetuneConfig, default, args, prog), show


def _parse(cls, default, args: Sequence[str], prog: str | None):
    """tyro with this CLI's conventions: ``--section.field_name VALUE``, booleans as values, not flags."""
    defaults = {} if default is None else {"default": default}
    return tyro.cli(
        cls,
        args=list(args),
        prog=prog,
        use_underscores=True,
        registry=_registry(),
        config=(tyro.conf.FlagConversionOff,),
        **defaults,
    )


def _fail(error: BaseException) -> None:
    print(f"error: {clean_message(error)}", file=sys.stderr)
    sys.exit(2)


def run(config: FinetuneConfig, args: Sequence[str] | None = None, command: str | None = None):
    """Entry point of a recipe file: apply command-line overrides, then train (or print the config).

    ``accelerate launch recipes/swin_l.py --train.epochs 1`` ends here. Problems with the user's input
    are printed as one sentence and exit with status 2; an interrupted run exits with status 143 and prints
    ``command`` (default: ``accelerate launch`` and this script's command line) as the way to resume.
    """
    args = sys.argv[1:] if args is None else list(args)
    if command is None:
        command = shlex.join(["accelerate", "launch", *sys.argv]) if sys.argv[0].endswith(".py") else None
    config, show = parse_config(config, args, prog=sys.argv[0])
    if show:
        print(config.to_json())
        return None
    from .train import TrainingInterrupted, finetune

    try:
        return finetune(config, command)
    except TrainingInterrupted as error:
        print(f"stopped: {clean_message(error)}", file=sys.stderr)
        sys.exit(143)
    except TinyTransformersError as error:
        _fail(error)


def _train(args: list[str]) -> None:
    if not args or args[0].startswith("-"):
        print(
            "usage: tiny-transformers train NAME [--section.field VALUE ...]\n"
            f"NAME: {', '.join(PAPER_MODELS)} or any timm model name",
            file=sys.stderr,
        )
        sys.exit(2)
    name, overrides = args[0], args[1:]
    if name in PAPER_MODELS:
        default = paper_config(name)
    else:
        default = FinetuneConfig()
        default.model.name = name
        default.train.output_dir = f"outputs/{name}"
    run(default, overrides, command=shlex.join(["tiny-transformers", "train", name, *overrides]))


def _pop_option(args: list[str], name: str) -> tuple[list[str], str | None]:
    """Remove ``--name VALUE`` (or ``--name=VALUE``) from ``args``; options outside the config take this path."""
    rest, value = [], None
    i = 0
    while i < len(args):
        if args[i] == name:
            if i + 1 >= len(args):
                _fail(TinyTransformersError(f"{name} needs a value, e.g. {name} per_class_accuracy.csv."))
            value, i = args[i + 1], i + 2
            continue
        if args[i].startswith(name + "="):
            value = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    return rest, value


def _evaluate(args: list[str]) -> None:
    """``evaluate``: prints {"top1", "top5", "loss", "count"} as JSON; writes per-class accuracy to ``--output``."""
    args, output = _pop_option(args, "--output")
    config, show = parse_config(FinetuneConfig(), args, prog="tiny-transformers evaluate [--output CSV]")
    given = any(a == "--train.mixed_precision" or a.startswith("--train.mixed_precision=") for a in args)
    if show:
        print(config.to_json())
        return
    from .report import PER_CLASS_FILE, per_class_accuracy, write_per_class_csv
    from .train import evaluate_checkpoint

    try:
        result = evaluate_checkpoint(config, config.train.mixed_precision if given else None)
    except TinyTransformersError as error:
        _fail(error)
    rows = per_class_accuracy(result["references"], result["predictions"], result["class_ids"], result["class_names"])
    path = write_per_class_csv(rows, output or PER_CLASS_FILE)
    print(json.dumps({k: result[k] for k in ("top1", "top5", "loss", "count")}))
    print(f"per-class accuracy: {path}", file=sys.stderr)  # stdout stays one JSON line for scripts


@dataclass
class PublishArgs:
    """Options of ``export`` and ``push``; the hub.* defaults are the ones recorded in the run's config.json."""

    hub: HubConfig
    to: str | None = None  # the export folder; default: OUTPUT_DIR/export


def _publish_args(command: str, args: list[str]) -> tuple[Path, PublishArgs]:
    usage = (
        f"usage: tiny-transformers {command} OUTPUT_DIR [--hub.model_id owner/name] [--hub.private true] [--to FOLDER]"
    )
    if not args or args[0].startswith("-"):
        if args and args[0] in ("-h", "--help"):
            _parse(PublishArgs, PublishArgs(HubConfig()), ["--help"], f"tiny-transformers {command} OUTPUT_DIR")
        print(f"{usage}\nOUTPUT_DIR: the train.output_dir of a finished run", file=sys.stderr)
        sys.exit(2)
    output_dir = Path(args[0]).expanduser()
    hub = HubConfig()
    try:  # the run's own hub settings are the defaults, so `push OUTPUT_DIR` repeats a failed push as configured
        hub = FinetuneConfig.from_dict(json.loads((output_dir / "config.json").read_text())).hub
    except (OSError, ValueError):
        pass  # not a run folder: export_run/push_run name the problem
    return output_dir, _parse(PublishArgs, PublishArgs(hub), args[1:], f"tiny-transformers {command} {args[0]}")


def _export(args: list[str]) -> None:
    """``export OUTPUT_DIR``: the folder ``push`` would upload, written locally only."""
    output_dir, options = _publish_args("export", args)
    from .hub import export_run

    try:
        folder = export_run(output_dir, options.hub, options.to)
    except TinyTransformersError as error:
        _fail(error)
    print(f"exported to {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")


def _push(args: list[str]) -> None:
    """``push OUTPUT_DIR --hub.model_id owner/name``: export, then upload to the Hub."""
    output_dir, options = _publish_args("push", args)
    from .hub import push_run

    try:
        url = push_run(output_dir, options.hub, options.to)
    except TinyTransformersError as error:
        _fail(error)
    print(f"pushed to https://huggingface.co/{options.hub.model_id} ({url})")


def _benchmark(args: list[str]) -> None:
    from .benchmark import main as benchmark_main  # torch, timm and datasets load only for this command

    benchmark_main(args)


@dataclass
class PredictModel:
    checkpoint: str  # exported folder, a run's output dir (its best/), a training checkpoint, or hf-hub:owner/name


@dataclass
class PredictArgs:
    """Options of ``predict``."""

    images: tyro.conf.Positional[tuple[str, ...]]  # image files and folders (walked recursively)
    model: PredictModel
    json: bool = False  # one JSON document on stdout instead of readable lines
    top_k: int = 5  # classes shown per image
    batch_size: int = 64  # images per forward pass


def _predict(args: list[str]) -> None:
    """``predict --model.checkpoint X IMAGE_OR_FOLDER...``: top-k classes per image."""
    options = _parse(PredictArgs, None, args, "tiny-transformers predict")
    from .predict import Predictor, find_images, format_predictions

    try:
        files = find_images(options.images)
        predictor = Predictor.load(options.model.checkpoint)
    except TinyTransformersError as error:
        _fail(error)
    predictions = predictor.predict(files, top_k=options.top_k, batch_size=options.batch_size)
    for skipped in predictor.skipped:
        print(f"skipped {skipped}", file=sys.stderr)
    if options.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
    else:
        print(format_predictions(predictions))
    if not predictions:
        _fail(TinyTransformersError("None of the given files could be read as an image."))


COMMANDS = {
    "train": _train,
    "evaluate": _evaluate,
    "export": _export,
    "push": _push,
    "predict": _predict,
    "benchmark": _benchmark,
}


def main(argv: Sequence[str] | None = None) -> None:
    """The ``tiny-transformers`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command = COMMANDS.get(argv[0])
    if command is None:
        close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(
            f"error: unknown command '{argv[0]}'; choose one of {', '.join(COMMANDS)}.{hint}\n\n{USAGE}",
            file=sys.stderr,
        )
        sys.exit(2)
    command(argv[1:])


if __name__ == "__main__":
    main()
