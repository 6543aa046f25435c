"""Command lines: dotted overrides for recipes (``run``) and the ``tiny-transformers`` console script.

Every command's options are parsed by tyro from dataclasses (the config's own, or an args class per command),
so every field is an option with its type, default and comment as help, and a mistyped name is answered with the
closest one. A boolean takes a value (``--model.pretrained false``) or stands alone (``--json`` means true).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import shlex
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

import tyro

from .config import FinetuneConfig, HubConfig, paper_config
from .errors import TinyTransformersError, clean_message
from .paper import PAPER_MODELS, paper_model_for
from .rundir import PER_CLASS_FILE, RunDir, is_main_launch_process, json_line

USAGE = """usage: tiny-transformers COMMAND [--section.field VALUE ...]

commands:
  train NAME      fine-tune; NAME is a paper recipe (vit_l, cait_s36, deit_b_distilled, swin_l) or a timm model name
  evaluate        top-1, top-5 and loss of --model.checkpoint (exported folder, run dir, training checkpoint or
                  hf-hub:owner/name) on --data.source; per-class accuracy goes to --output (default
                  ./per_class_accuracy.csv)
  export DIR      write the run in DIR as a timm/Hub folder (weights, model card, curves, metrics) into --to
                  (default DIR/export); --hub.model_id owner/name, --hub.weights best, --hub.license as for push
  push DIR        export DIR and upload it to the Hub: --hub.model_id owner/name [--hub.private]
  predict         top-5 classes with readable names for images or folders:
                  --model.checkpoint <exported folder | run dir | hf-hub:owner/name> IMAGE_OR_FOLDER... [--json]
  ablate NAME     the paper's ablation rows of a paper model, one run each in --root/<row> (default
                  outputs/ablation/NAME): [--rows default no_mixup ...] [--grid] [--print-commands];
                  ablate --report ROOT writes ROOT/ablation.md and ablation.png (docs/ablation.md)

every config field is an option: --train.epochs 1 --data.source ./tiny-imagenet-200 --optim.lr 5e-4
a boolean alone is true, or takes a value: --hub.push, --model.pretrained false (true/false/yes/no/1/0/on/off)
--print-config prints the resolved config as JSON and exits; COMMAND --help lists every field.
"""


TRUTHY, FALSY = ("true", "yes", "1", "on"), ("false", "no", "0", "off")
_REGISTRY = tyro.constructors.ConstructorRegistry()


@_REGISTRY.primitive_rule
def _bool_rule(type_info: tyro.constructors.PrimitiveTypeInfo) -> tyro.constructors.PrimitiveConstructorSpec | None:
    """A boolean takes one value, true/false/yes/no/1/0/on/off in any case; ``_bare_booleans`` gives a bare one."""
    if type_info.type is not bool:
        return None

    def parse(args: list[str]) -> bool:
        if args[0].lower() not in TRUTHY + FALSY:
            raise ValueError(f"expected true or false, got '{args[0]}'")
        return args[0].lower() in TRUTHY

    return tyro.constructors.PrimitiveConstructorSpec(
        nargs=1,
        metavar="[{true,false}]",  # the value may be left out: `--json` alone means `--json true`
        instance_from_str=parse,
        is_instance=lambda x: isinstance(x, bool),
        str_from_instance=lambda instance: ["true" if instance else "false"],
    )


def _bool_options(cls: type, prefix: str = "--") -> set[str]:
    """The option of every boolean field of the dataclass ``cls``, nested dataclasses included."""
    names = set()
    for name, hint in typing.get_type_hints(cls).items():
        if hint is bool:
            names.add(prefix + name)
        elif dataclasses.is_dataclass(hint):
            names |= _bool_options(hint, f"{prefix}{name}.")
    return names


def _option(arg: str) -> str:
    """The option an argument names, as the dataclass spells it: ``--top-k=3`` -> ``--top_k`` (tyro takes both)."""
    return "--" + arg[2:].split("=", 1)[0].replace("-", "_") if arg.startswith("--") else arg


def _bare_booleans(cls: type, args: Sequence[str]) -> list[str]:
    """``--json`` alone becomes ``--json true``, so tyro reads every boolean as one value.

    A boolean is bare when the next word is missing, an option, or (where ``cls`` takes positional words,
    as ``predict`` its images) anything but a truth value; ``--json=no`` and words after ``--`` are left alone.
    """
    booleans = _bool_options(cls)
    hints = typing.get_type_hints(cls, include_extras=True).values()
    positionals = any(tyro.conf.Positional in typing.get_args(hint) for hint in hints)
    args, out = list(args), []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        out.append(arg)
        if "=" not in arg and _option(arg) in booleans:
            following = args[i + 1] if i + 1 < len(args) else "-"
            if following.startswith("-") or (positionals and following.lower() not in TRUTHY + FALSY):
                out.append("true")
    return out


def _parse(cls, default, args: Sequence[str], prog: str | None):
    """tyro with this CLI's conventions: ``--section.field_name VALUE``, booleans bare or with a value."""
    defaults = {} if default is None else {"default": default}
    return tyro.cli(
        cls,
        args=_bare_booleans(cls, args),
        prog=prog,
        use_underscores=True,
        registry=_REGISTRY,
        config=(tyro.conf.FlagConversionOff,),  # booleans are `--x [VALUE]`, not tyro's `--x/--no-x` flags
        **defaults,
    )


def parse_config(default: FinetuneConfig, args: Sequence[str], prog: str | None = None) -> tuple[FinetuneConfig, bool]:
    """Apply dotted overrides to ``default``; returns (config, print_config_requested).

    >>> cfg, show = parse_config(FinetuneConfig(), ["--train.epochs", "2", "--model.pretrained", "false", "--hub.push"])
    >>> cfg.train.epochs, cfg.model.pretrained, cfg.hub.push, show
    (2, False, True, False)
    """
    args = list(args)
    return _parse(FinetuneConfig, default, [a for a in args if a != "--print-config"], prog), "--print-config" in args


def _fail(error: BaseException) -> typing.NoReturn:
    """Exit with the error's one sentence: a stopped run (``TrainingInterrupted``) with its status (143, or 130 for
    SIGINT between ablation rows), anything else a user can fix with 2."""
    status = getattr(error, "exit_status", 2)
    if isinstance(error, TinyTransformersError) and error.every_process and not is_main_launch_process():
        sys.exit(status)  # the launch's first process prints the same sentence
    print(f"{'stopped' if status != 2 else 'error'}: {clean_message(error)}", file=sys.stderr)
    sys.exit(status)


def _config_of(options: FinetuneConfig) -> FinetuneConfig:
    """The plain config inside a command's options (a dataclass that extends FinetuneConfig with its own fields)."""
    return FinetuneConfig(**{f.name: getattr(options, f.name) for f in dataclasses.fields(FinetuneConfig)})


def run(config: FinetuneConfig, args: Sequence[str] | None = None, command: str | None = None):
    """Entry point of a recipe file: apply command-line overrides, then train (or print the config).

    ``accelerate launch recipes/swin_l.py --train.epochs 1`` ends here. Problems with the user's input
    are printed as one sentence and exit with status 2; an interrupted run exits with status 143 and prints
    ``command`` (default: ``accelerate launch`` and this script's command line) as the way to resume.

    >>> run(paper_config("swin_l"), ["--train.epochs", "1", "--print-config"])  # doctest: +ELLIPSIS
    {...
    """
    args = sys.argv[1:] if args is None else list(args)
    if command is None:
        command = shlex.join(["accelerate", "launch", *sys.argv]) if sys.argv[0].endswith(".py") else None
    config, show = parse_config(config, args, prog=sys.argv[0])
    if show:
        print(config.to_json())
        return None
    from .train import finetune

    try:
        return finetune(config, command)
    except TinyTransformersError as error:
        _fail(error)


def _train(args: list[str]) -> None:
    """``train NAME``: the paper recipe of NAME (or defaults for any timm model) with the overrides applied."""
    if not args or args[0].startswith("-"):
        print(
            "usage: tiny-transformers train NAME [--section.field VALUE ...]\n"
            f"NAME: {', '.join(PAPER_MODELS)} or any timm model name",
            file=sys.stderr,
        )
        sys.exit(2)
    name, overrides = args[0], args[1:]
    paper = paper_model_for(name)  # a short name (swin_l) or the timm name of one of the paper's four models
    if paper is not None:
        default = paper_config(paper.short_name)
        note = f"{name}: the paper's {paper.title}, trained with its recipe (recipes/{paper.short_name}.py)"
    else:
        default = FinetuneConfig()
        default.model.name = name
        default.train.output_dir = f"outputs/{name}"
        note = f"{name}: not one of the paper's models, trained with the library's defaults (docs/config.md)"
    if "--print-config" not in overrides:
        print(f"tiny_transformers: {note}", file=sys.stderr)
    run(default, overrides, command=shlex.join(["tiny-transformers", "train", name, *overrides]))


@dataclasses.dataclass
class EvaluateArgs(FinetuneConfig):
    """Options of ``evaluate``: the config (--model.checkpoint, --data.source, ...) and where per-class results go."""

    output: str = PER_CLASS_FILE  # the per-class accuracy CSV (class_id, class_name, images, correct, top1)


def _evaluate(args: list[str]) -> None:
    """``evaluate``: prints {"top1", "top5", "loss", "count"} as JSON; writes per-class accuracy to ``--output``."""
    show = "--print-config" in args
    options = _parse(EvaluateArgs, None, [a for a in args if a != "--print-config"], "tiny-transformers evaluate")
    config = _config_of(options)
    if show:
        print(config.to_json())
        return
    # the user's precision only when given; otherwise evaluate_checkpoint takes the one the weights record
    given = any(_option(a) == "--train.mixed_precision" for a in args)
    from .evaluation import evaluate_checkpoint
    from .report import PER_CLASS_COLUMNS, per_class_accuracy, write_per_class_csv

    try:
        _refuse_foreign_output(Path(options.output), ",".join(PER_CLASS_COLUMNS))
        result = evaluate_checkpoint(config, config.train.mixed_precision if given else None)
    except TinyTransformersError as error:
        _fail(error)
    if not is_main_launch_process():  # under `accelerate launch`, every process scores; the first one reports
        return
    # the scores first: a per-class file that cannot be written must not cost the evaluation
    print(json_line({k: result[k] for k in ("top1", "top5", "loss", "count")}), flush=True)  # NaN -> null
    rows = per_class_accuracy(result["references"], result["predictions"], result["class_ids"], result["class_names"])
    try:
        path = write_per_class_csv(rows, options.output)
    except OSError as error:
        _fail(TinyTransformersError(f"--output '{options.output}' cannot be written ({error.strerror or error}); the "
                                    "scores are above; give a path in a folder you can write to."))  # fmt: skip
    except TinyTransformersError as error:  # a full disk or a read-only folder: the file, the errno, the fix
        _fail(TinyTransformersError(f"{error} The scores are above."))
    print(f"per-class accuracy: {path}", file=sys.stderr)  # stdout stays one JSON line for scripts


def _refuse_foreign_output(path: Path, header: str) -> None:
    """``evaluate --output`` replaces only a per-class table it wrote (its header line), never another file."""
    if not path.exists():
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = handle.readline().strip()
    except OSError:
        first = ""
    if first != header:
        raise TinyTransformersError(
            f"--output '{path}' already exists and is not a per-class table that evaluate wrote (its first line is "
            f"not '{header}'); give a new file name, or move that file away first."
        )


@dataclasses.dataclass
class PublishArgs:
    """Options of ``export`` and ``push``; the hub.* defaults are the ones recorded in the run's config.json."""

    hub: HubConfig
    to: str | None = None  # the export folder; default: OUTPUT_DIR/export


def _publish_args(command: str, args: list[str]) -> tuple[Path, PublishArgs]:
    usage = f"usage: tiny-transformers {command} OUTPUT_DIR [--hub.model_id owner/name] [--hub.private] [--to FOLDER]"
    if not args or args[0].startswith("-"):
        if args and args[0] in ("-h", "--help"):
            _parse(PublishArgs, PublishArgs(HubConfig()), ["--help"], f"tiny-transformers {command} OUTPUT_DIR")
        print(f"{usage}\nOUTPUT_DIR: the train.output_dir of a finished run", file=sys.stderr)
        sys.exit(2)
    output_dir = Path(args[0]).expanduser()
    hub = HubConfig()
    try:  # the run's own hub settings are the defaults, so `push OUTPUT_DIR` repeats a failed push as configured
        hub = RunDir(output_dir).read_config().hub
    except TinyTransformersError:
        pass  # not a run folder: export_run/push_run name the problem
    return output_dir, _parse(PublishArgs, PublishArgs(hub), args[1:], f"tiny-transformers {command} {args[0]}")


def _export(args: list[str]) -> None:
    """``export OUTPUT_DIR``: the folder ``push`` would upload, written locally only."""
    output_dir, options = _publish_args("export", args)
    from .publish import export_run

    try:
        folder = export_run(output_dir, options.hub, options.to)
    except TinyTransformersError as error:
        _fail(error)
    print(f"exported to {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")


def _push(args: list[str]) -> None:
    """``push OUTPUT_DIR --hub.model_id owner/name``: export, then upload to the Hub."""
    output_dir, options = _publish_args("push", args)
    from .publish import push_run

    try:
        url = push_run(output_dir, options.hub, options.to)
    except TinyTransformersError as error:
        _fail(error)
    print(f"pushed to https://huggingface.co/{options.hub.model_id} ({url})")


@dataclasses.dataclass
class PredictModel:
    checkpoint: str  # exported folder, a run's output dir (its best/), a training checkpoint, or hf-hub:owner/name


@dataclasses.dataclass
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
        predictions = predictor.predict(files, top_k=options.top_k, batch_size=options.batch_size)
    except TinyTransformersError as error:
        _fail(error)
    for skipped in predictor.skipped:
        print(f"skipped {skipped}", file=sys.stderr)
    if options.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
    else:
        print(format_predictions(predictions))
    if not predictions:
        _fail(TinyTransformersError("None of the given files could be read as an image."))


@dataclasses.dataclass
class AblateArgs(FinetuneConfig):
    """Options of ``ablate``: the config every row starts from (the paper recipe of NAME), and which rows."""

    # rows to run: default randaugment_9 no_random_erasing no_mixup no_cutmix probe (all six)
    rows: tuple[str, ...] = ()
    grid: bool = False  # also the AdamW lr x weight-decay grid (rows lr3e-3_wd0.2 ... lr5e-4_wd0.01)
    print_commands: bool = False  # print each row's `accelerate launch` command instead of training
    root: str | None = None  # the folder of the rows' runs; default outputs/ablation/NAME
    report: str | None = None  # write ablation.md and ablation.png of the ablation in this folder; never trains


_ABLATE_OWN = {"--rows", "--grid", "--print_commands", "--root", "--report"}


def _config_overrides(args: list[str]) -> list[str]:
    """The config-field words of ``ablate``'s arguments (its own options and their values removed), as given."""
    args, out, i = _bare_booleans(AblateArgs, args), [], 0
    while i < len(args):
        word, i = args[i], i + 1
        if _option(word) not in _ABLATE_OWN:
            out.append(word)
        elif "=" not in word and _option(word) == "--rows":
            while i < len(args) and not args[i].startswith("-"):
                i += 1  # --rows takes several names
        elif "=" not in word:
            i += 1  # the option's one value (a bare boolean was given "true" above)
    return out


def _ablate(args: list[str]) -> None:
    """``ablate NAME``: the paper's ablation rows of NAME as ordinary runs; ``ablate --report ROOT``: their table."""
    from .ablate import (
        ablation_commands,
        check_overrides,
        default_root,
        paper_model,
        run_ablation,
        select_rows,
        write_ablation_report,
    )

    prog = "tiny-transformers ablate"
    name = args[0] if args and not args[0].startswith("-") else None
    rest = args[1:] if name else args
    if name is None and not any(_option(a) in ("--report", "--help", "-h") for a in rest):
        print(f"usage: {prog} NAME [--rows ROW ...] [--grid] [--print-commands] [--root FOLDER] [--section.field "
              f"VALUE ...]\n       {prog} --report ROOT\nNAME: {', '.join(PAPER_MODELS)} (or its timm name)",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    try:
        paper = paper_model(name) if name else None
        default = paper_config(paper.short_name) if paper else FinetuneConfig()
        options = _parse(AblateArgs, AblateArgs(**vars(default)), rest, f"{prog} {name or ''}".strip())
        if options.report is not None:
            markdown, chart = write_ablation_report(options.report)
            print(f"ablation report: {markdown}, {chart}")
            return
        if paper is None:
            raise TinyTransformersError(f"ablate needs a model before its options: {prog} swin_l [--rows ...].")
        overrides = _config_overrides(rest)
        rows = select_rows(options.rows, options.grid)
        check_overrides([_option(a) for a in overrides if a.startswith("--")], rows)
        root = Path(options.root).expanduser() if options.root else default_root(paper.short_name)
        if options.print_commands:
            print("\n".join(ablation_commands(paper.short_name, rows, root, overrides)))
            return
    except TinyTransformersError as error:
        _fail(error)
    config = _config_of(options)
    try:
        failed = run_ablation(config, paper.short_name, rows, root, shlex.join(["tiny-transformers", "ablate", *args]))
    except TinyTransformersError as error:  # a stopped row too: its sentence and exit status
        _fail(error)
    if failed:
        sys.exit(1)


def _benchmark(args: list[str]) -> None:
    """``benchmark`` moved out of the package: say where it lives now."""
    print(
        "error: the benchmarks live beside the library in the repository, not in the installed package; "
        "run them from a checkout with `python -m benchmarks --quick` (docs/benchmarks.md).",
        file=sys.stderr,
    )
    sys.exit(2)


COMMANDS = {
    "train": _train,
    "evaluate": _evaluate,
    "export": _export,
    "push": _push,
    "predict": _predict,
    "ablate": _ablate,
    "benchmark": _benchmark,  # kept as a name only, to point at the repository's benchmarks
}


def main(argv: Sequence[str] | None = None) -> None:
    """The ``tiny-transformers`` console script: one dispatch on the command name, then tyro for its options.

    >>> main(["train", "vit_l", "--train.epochs", "1", "--print-config"])  # doctest: +ELLIPSIS
    {...
    """
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
