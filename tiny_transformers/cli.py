"""Command lines: dotted overrides for recipes (``run``) and the ``tiny-transformers`` console script.

Overrides are parsed by tyro from the config dataclasses themselves, so every field is an option
with its type, default and comment as help, and a mistyped name is answered with the closest one.
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

import tyro

from .config import FinetuneConfig, paper_config
from .errors import TinyTransformersError, clean_message
from .paper import PAPER_MODELS

USAGE = """usage: tiny-transformers COMMAND [--section.field VALUE ...]

commands:
  train NAME      fine-tune; NAME is a paper recipe (vit_l, cait_s36, deit_b_distilled, swin_l) or a timm model name
  evaluate        top-1, top-5 and loss of --model.checkpoint (exported folder or training checkpoint) on --data.source

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
    config = tyro.cli(
        FinetuneConfig,
        default=default,
        args=args,
        prog=prog,
        use_underscores=True,
        registry=_registry(),
        config=(tyro.conf.FlagConversionOff,),
    )
    return config, show


def _fail(error: BaseException) -> None:
    print(f"error: {clean_message(error)}", file=sys.stderr)
    sys.exit(2)


def run(config: FinetuneConfig, args: Sequence[str] | None = None):
    """Entry point of a recipe file: apply command-line overrides, then train (or print the config).

    ``accelerate launch recipes/swin_l.py --train.epochs 1`` ends here. Problems with the user's input
    are printed as one sentence and exit with status 2; an interrupted run exits with status 143.
    """
    config, show = parse_config(config, sys.argv[1:] if args is None else args, prog=sys.argv[0])
    if show:
        print(config.to_json())
        return None
    from .train import TrainingInterrupted, finetune

    try:
        return finetune(config)
    except TrainingInterrupted as error:
        print(f"stopped: {clean_message(error)}", file=sys.stderr)
        sys.exit(143)
    except TinyTransformersError as error:
        _fail(error)


def _train(args: list[str]) -> None:
    if not args or args[0].startswith("-"):
        print("usage: tiny-transformers train NAME [--section.field VALUE ...]\n"
              f"NAME: {', '.join(PAPER_MODELS)} or any timm model name", file=sys.stderr)
        sys.exit(2)
    name, overrides = args[0], args[1:]
    if name in PAPER_MODELS:
        default = paper_config(name)
    else:
        default = FinetuneConfig()
        default.model.name = name
        default.train.output_dir = f"outputs/{name}"
    sys.argv = [f"tiny-transformers train {name}"] + overrides
    run(default, overrides)


def _evaluate(args: list[str]) -> None:
    config, show = parse_config(FinetuneConfig(), args, prog="tiny-transformers evaluate")
    if show:
        print(config.to_json())
        return
    from .train import evaluate_checkpoint

    try:
        result = evaluate_checkpoint(config)
    except TinyTransformersError as error:
        _fail(error)
    print(json.dumps({k: result[k] for k in ("top1", "top5", "loss", "count")}))


COMMANDS = {"train": _train, "evaluate": _evaluate}


def main(argv: Sequence[str] | None = None) -> None:
    """The ``tiny-transformers`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"error: unknown command '{argv[0]}'; choose one of {', '.join(COMMANDS)}.\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    command(argv[1:])


if __name__ == "__main__":
    main()
