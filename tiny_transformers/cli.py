"""Command lines: dotted overrides for recipes (``run``) and the ``tiny-transformers`` console script.

tyro parses every command's options from dataclasses (field comments are the help). A boolean takes a value
(``--model.pretrained false``), stands alone (``--json``) or is negated (``--model.no-pretrained``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import io
import json
import os
import shlex
import sys
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path

import tyro

from .config import FinetuneConfig, HubConfig, ModelConfig, TrainConfig, paper_config
from .errors import ConfigError, TinyTransformersError, clean_message
from .paper import PAPER_MODELS, paper_model_for
from .rundir import PER_CLASS_FILE, RunDir, is_main_launch_process, json_line

if typing.TYPE_CHECKING:
    from .ablate import AblationRow

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
                  or any fields' cross product: --sweep train.batch_size=32,64,128 [optim.lr=1e-3,5e-4];
                  ablate --report ROOT writes ROOT/ablation.md and ablation.png (docs/ablation.md)

every config field is an option: --train.epochs 1 --data.source ./tiny-imagenet-200 --optim.lr 5e-4
a boolean alone is true, or takes a value: --hub.push, --model.pretrained false (true/false/yes/no/1/0/on/off),
or --model.no-pretrained
--print-config prints the resolved config as JSON and exits; COMMAND --help lists its options (train --help: every
config field, train NAME --help: with NAME's recipe as the defaults).
"""


TRUTHY, FALSY = ("true", "yes", "1", "on"), ("false", "no", "0", "off")
_REGISTRY = tyro.constructors.ConstructorRegistry()


@_REGISTRY.primitive_rule
def _bool_rule(type_info: tyro.constructors.PrimitiveTypeInfo) -> tyro.constructors.PrimitiveConstructorSpec | None:
    """A boolean takes one value, true/false/yes/no/1/0/on/off in any case (``_bare_booleans`` gives bare ones)."""
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
    """``--json`` alone becomes ``--json true`` and ``--model.no-pretrained`` ``--model.pretrained false``: a boolean
    is bare when the next word is missing, an option, or (where ``cls`` takes positional words, as ``predict`` its
    images) no truth value; ``--json=no`` and words after ``--`` are left alone."""
    booleans = _bool_options(cls)
    negations = {f"--{prefix}{dot}no_{name}": b for b in booleans for prefix, dot, name in [b[2:].rpartition(".")]}
    hints = typing.get_type_hints(cls, include_extras=True).values()
    positionals = any(tyro.conf.Positional in typing.get_args(hint) for hint in hints)
    args, out = list(args), []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        if "=" not in arg and _option(arg) not in booleans and _option(arg) in negations:
            out += [negations[_option(arg)], "false"]
            continue
        out.append(arg)
        if "=" not in arg and _option(arg) in booleans:
            following = args[i + 1] if i + 1 < len(args) else "-"
            if following.startswith("-") or (positionals and following.lower() not in TRUTHY + FALSY):
                out.append("true")
    return out


def _parse(cls, default, args: Sequence[str], prog: str | None, description: str | None = None):
    """tyro with this CLI's conventions; ``prog``: the command as typed; ``description``: the help's head."""
    defaults = {} if default is None else {"default": default}
    return tyro.cli(
        cls,
        args=_bare_booleans(cls, args),
        prog=prog,
        description=description,
        use_underscores=True,
        registry=_REGISTRY,
        config=(tyro.conf.FlagConversionOff,),  # booleans are `--x [VALUE]`, not tyro's `--x/--no-x` flags
        **defaults,
    )


def parse_config(
    default: FinetuneConfig, args: Sequence[str], prog: str | None = None, description: str | None = None
) -> tuple[FinetuneConfig, bool]:
    """Apply dotted overrides to ``default``; returns (config, print_config_requested).

    >>> cfg, show = parse_config(FinetuneConfig(), ["--train.epochs", "2", "--model.no-pretrained", "--hub.push"])
    >>> cfg.train.epochs, cfg.model.pretrained, cfg.hub.push, show
    (2, False, True, False)
    """
    description = description or "Fine-tune: every config field below is an option (the defaults are this recipe's)."
    overrides = [a for a in args if a != "--print-config"]
    return _parse(FinetuneConfig, default, overrides, prog, description), "--print-config" in args


@contextlib.contextmanager
def _quiet_exits() -> Iterator[None]:
    """A :class:`TinyTransformersError` exits with its one sentence and ``exit_status`` (a stopped run: 143 or 130),
    else 2; a reader of stdout that leaves early (``--print-config | head``) with 141 (128 + SIGPIPE): no traceback."""
    try:
        yield
        sys.stdout.flush()  # inside: a pipe closed during the interpreter's own last flush is met here
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # that last flush now writes nowhere
        sys.exit(141)
    except TinyTransformersError as error:  # every command's problems
        status = getattr(error, "exit_status", 2)
        if not error.every_process or int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one process per host says it
            print(f"{'stopped' if status != 2 else 'error'}: {clean_message(error)}", file=sys.stderr)
        sys.exit(status)


def run(
    config: FinetuneConfig,
    args: Sequence[str] | None = None,
    command: str | None = None,
    prog: str | None = None,
    description: str | None = None,
):
    """Entry point of a recipe file (``accelerate launch recipes/swin_l.py --train.epochs 1``): overrides, then train.

    ``command`` (default: ``accelerate launch`` and this script's line) is printed as the way to resume a stopped
    run; ``prog`` and ``description`` head ``--help``.

    >>> run(paper_config("swin_l"), ["--train.epochs", "1", "--print-config"])  # doctest: +ELLIPSIS
    {...
    """
    args = sys.argv[1:] if args is None else list(args)
    if command is None:
        command = shlex.join(["accelerate", "launch", *sys.argv]) if sys.argv[0].endswith(".py") else None
    with _quiet_exits():  # as the console script's commands
        config, show = parse_config(config, args, prog or sys.argv[0], description)
        if show:
            print(config.to_json())
            return None
        from .train import finetune

        return finetune(config, command)


def _usage(text: str) -> typing.NoReturn:
    """A command line that cannot run: ``text`` (its usage, or the error) on stderr, exit status 2."""
    print(text, file=sys.stderr)
    sys.exit(2)


def _train(args: list[str]) -> None:
    """``train NAME``: the paper recipe of NAME (or defaults for any timm model) with the overrides applied."""
    names = f"NAME is a paper recipe ({', '.join(PAPER_MODELS)}) or any timm model name"
    if args and args[0] in ("-h", "--help"):  # every field, with the library's defaults
        description = (
            f"Fine-tune a model: {names} (trained with the library's defaults, shown here); a paper recipe sets its "
            "own, which `tiny-transformers train NAME --help` shows. Every config field below is an option."
        )
        parse_config(FinetuneConfig(), args, "tiny-transformers train NAME", description)
    if not args or args[0].startswith("-"):
        _usage(
            f"usage: tiny-transformers train NAME [--section.field VALUE ...]\n{names}; tiny-transformers train "
            "--help lists every field"
        )
    name, overrides = args[0], args[1:]
    paper = paper_model_for(name)  # a short name (swin_l) or the timm name of one of the paper's four models
    if paper is not None:
        default = paper_config(paper.short_name)
        note = f"{name}: the paper's {paper.title}, trained with its recipe (recipes/{paper.short_name}.py)"
    else:
        default = FinetuneConfig(model=ModelConfig(name=name), train=TrainConfig(output_dir=f"outputs/{name}"))
        note = f"{name}: not one of the paper's models, trained with the library's defaults (docs/config.md)"
    if "--print-config" not in overrides and not {"-h", "--help"} & set(overrides):
        print(f"tiny_transformers: {note}", file=sys.stderr)
    description = f"Fine-tune {note}. Every config field below is an option, its default the one {name} trains with."
    command = shlex.join(["tiny-transformers", "train", name, *overrides])
    run(default, overrides, command, f"tiny-transformers train {name}", description)


@dataclasses.dataclass
class EvaluateModel:
    # the trained model: an exported folder (outputs/run/best), a training checkpoint, or hf-hub:owner/name
    checkpoint: str | None


@dataclasses.dataclass
class EvaluateData:
    # the images scored (their eval split): Hub id, Stanford folder or zip, imagefolder, save_to_disk folder, parquet
    source: str
    max_eval_samples: int | None  # score a fixed random subset of N evaluation images
    skip_corrupt: bool  # False: stop at the first unreadable image, naming it; True: scan, skip and count them
    num_workers: int | None  # loader processes (decoding only); None: as many as the usable cores allow, up to 4
    native_size: int  # pixels per side the images are decoded to, for weights that record none (Tiny ImageNet: 64)


@dataclasses.dataclass
class EvaluateTrain:
    # the autocast to evaluate under; default: the weights' own, so the run's numbers come back (no CUDA: fp16 -> fp32)
    mixed_precision: typing.Literal["bf16", "fp16", "no"] | None
    eval_batch_size: int | None  # images per forward pass; default: 64
    progress: bool  # a progress bar


@dataclasses.dataclass
class EvaluateArgs:
    """Top-1, top-5 and loss of a trained model as one JSON line, and its per-class accuracy in a CSV file. The
    model is fed as its run fed it (image size, normalization, preprocessing and autocast as its weights record)."""

    model: EvaluateModel
    data: EvaluateData
    train: EvaluateTrain
    output: str = PER_CLASS_FILE  # the per-class accuracy CSV (class_id, class_name, images, correct, top1)


def _options_of(cls: type, config: FinetuneConfig) -> typing.Any:
    """A command's options ``cls``, its sections (some config fields, same names) filled from ``config``."""
    return cls(
        **{
            name: hint(**{f.name: getattr(getattr(config, name), f.name) for f in dataclasses.fields(hint)})
            for name, hint in typing.get_type_hints(cls).items()
            if dataclasses.is_dataclass(hint)
        }
    )


def _with_options(config: FinetuneConfig, options: typing.Any) -> FinetuneConfig:
    """``config`` with the fields of ``options``' sections set to theirs."""
    sections = {f.name for f in dataclasses.fields(config)} & {f.name for f in dataclasses.fields(options)}
    return dataclasses.replace(
        config,
        **{name: dataclasses.replace(getattr(config, name), **vars(getattr(options, name))) for name in sections},
    )


def _evaluate(args: list[str]) -> None:
    """``evaluate``: prints {"top1", "top5", "loss", "count"} as JSON; writes per-class accuracy to ``--output``."""
    show = "--print-config" in args
    default = _options_of(EvaluateArgs, FinetuneConfig())
    default.train.mixed_precision = None  # the weights' own, unless given
    options = _parse(EvaluateArgs, default, [a for a in args if a != "--print-config"], "tiny-transformers evaluate")
    precision = options.train.mixed_precision  # None: evaluate_checkpoint takes the one the weights record
    options.train.mixed_precision = precision or FinetuneConfig().train.mixed_precision
    config = _with_options(FinetuneConfig(), options)
    if show:
        print(config.to_json())
        return
    from .evaluation import evaluate_checkpoint
    from .report import PER_CLASS_COLUMNS, per_class_accuracy, write_per_class_csv

    _refuse_foreign_output(Path(options.output), ",".join(PER_CLASS_COLUMNS))
    result = evaluate_checkpoint(config, precision)
    if not is_main_launch_process():  # under `accelerate launch`, every process scores; the first one reports
        return
    # the scores first: a per-class file that cannot be written must not cost the evaluation
    print(json_line({k: result[k] for k in ("top1", "top5", "loss", "count")}), flush=True)  # NaN -> null
    rows = per_class_accuracy(result["references"], result["predictions"], result["class_ids"], result["class_names"])
    try:
        path = write_per_class_csv(rows, options.output)
    except OSError as error:
        raise TinyTransformersError(
            f"--output '{options.output}' cannot be written ({error.strerror or error}); the scores are above; give "
            "a path in a folder you can write to."
        ) from None
    except TinyTransformersError as error:  # a full disk or a read-only folder: the file, the errno, the fix
        raise TinyTransformersError(f"{error} The scores are above.") from None
    print(f"per-class accuracy: {path}", file=sys.stderr)  # stdout stays one JSON line for scripts


def _refuse_foreign_output(path: Path, header: str) -> None:
    """``evaluate --output`` replaces only a per-class table it wrote (its header line), never another file."""
    first = ""  # also for a file that cannot be read
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline().strip()
    if path.exists() and first != header:
        raise TinyTransformersError(
            f"--output '{path}' already exists and is not a per-class table that evaluate wrote (its first line is "
            f"not '{header}'); give a new file name, or move that file away first."
        )


@dataclasses.dataclass
class ExportHub:
    model_id: str | None  # the Hub repo owner/name that the model card's usage lines name (and push uploads to)
    weights: typing.Literal["last", "best"]  # last: the final epoch (the reported numbers); best: the best top-1
    license: str  # the model card's license (a Hub license id)


@dataclasses.dataclass
class PushHub(ExportHub):
    private: bool  # visibility of a repo that the push creates (an existing repo keeps its own)
    # end or epoch: the exported folder; checkpoint: also the newest training checkpoint, as last-checkpoint/
    strategy: typing.Literal["end", "epoch", "checkpoint"]


@dataclasses.dataclass
class ExportArgs:
    """Write the run in OUTPUT_DIR as a folder that timm and the Hub load: weights, model card, training curves and
    metrics. The hub.* defaults are the ones the run recorded."""

    hub: ExportHub
    to: str | None = None  # the export folder; default: OUTPUT_DIR/export


@dataclasses.dataclass
class PushArgs(ExportArgs):
    """Export the run in OUTPUT_DIR (as export does) and upload that folder to the Hub repo hub.model_id. The hub.*
    defaults are the ones the run recorded, so that a failed push is repeated as configured."""

    hub: PushHub


def _publish_args(command: str, args: list[str]) -> tuple[Path, HubConfig, str | None]:
    """OUTPUT_DIR, the hub settings (the run's, with the options given) and --to of ``export`` or ``push``."""
    cls = ExportArgs if command == "export" else PushArgs
    options = "[--hub.model_id owner/name] [--hub.weights best]" if cls is ExportArgs else "--hub.model_id owner/name"
    usage = f"usage: tiny-transformers {command} OUTPUT_DIR {options} [--to FOLDER] (--help: every option)"
    if not args or args[0].startswith("-"):
        if args and args[0] in ("-h", "--help"):
            _parse(cls, _options_of(cls, FinetuneConfig()), ["--help"], f"tiny-transformers {command} OUTPUT_DIR")
        _usage(f"{usage}\nOUTPUT_DIR: the train.output_dir of a finished run")
    output_dir = Path(args[0]).expanduser()
    config = FinetuneConfig()
    # the run's hub settings are the defaults, so `push OUTPUT_DIR` retries as configured (no run: push_run says so)
    with contextlib.suppress(TinyTransformersError):
        config = RunDir(output_dir).read_config()
    options = _parse(cls, _options_of(cls, config), args[1:], f"tiny-transformers {command} {args[0]}")
    return output_dir, _with_options(config, options).hub, options.to


def _publish(command: str, args: list[str]) -> None:
    """``export OUTPUT_DIR``: the folder ``push`` would upload, written locally; ``push``: that folder, uploaded."""
    output_dir, hub, to = _publish_args(command, args)
    from .publish import export_run, push_run

    if command == "push":
        print(f"pushed to https://huggingface.co/{hub.model_id} ({push_run(output_dir, hub, to)})")
        return
    folder = export_run(output_dir, hub, to)
    print(f"exported to {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")


@dataclasses.dataclass
class PredictModel:
    checkpoint: str  # exported folder, a run's output dir (its best/), a training checkpoint, or hf-hub:owner/name


@dataclasses.dataclass
class PredictArgs:
    """Top-k classes, with readable names, of each image (files, and folders walked recursively) by a trained
    model, fed as its run fed it."""

    images: tyro.conf.Positional[tuple[str, ...]]  # image files and folders (walked recursively)
    model: PredictModel
    json: bool = False  # one JSON document on stdout instead of readable lines
    top_k: int = 5  # classes shown per image
    batch_size: int = 64  # images per forward pass


def _predict(args: list[str]) -> None:
    """``predict --model.checkpoint X IMAGE_OR_FOLDER...``: top-k classes per image."""
    options = _parse(PredictArgs, None, args, "tiny-transformers predict")
    from .predict import Predictor, find_images, format_predictions

    files = find_images(options.images)
    predictor = Predictor.load(options.model.checkpoint)
    predictions = predictor.predict(files, top_k=options.top_k, batch_size=options.batch_size)
    for skipped in predictor.skipped:
        print(f"skipped {skipped}", file=sys.stderr)
    print(json.dumps([p.to_dict() for p in predictions], indent=2) if options.json else format_predictions(predictions))
    if not predictions:
        raise TinyTransformersError("None of the given files could be read as an image.")


@dataclasses.dataclass
class AblateArgs(FinetuneConfig):
    """The paper's ablation rows of NAME, one run each under --root: the config fields are every row's base (NAME's
    recipe), the rows change theirs."""

    # rows to run: default randaugment_9 no_random_erasing no_mixup no_cutmix probe (all six)
    rows: tuple[str, ...] = ()
    grid: bool = False  # also the AdamW lr x weight-decay grid (rows lr3e-3_wd0.2 ... lr5e-4_wd0.01)
    # FIELD=V1,V2,... words: one row per combination of the values, instead of the paper's six rows (with --rows or
    # --grid: beside them); each value parsed as --FIELD VALUE would be
    sweep: tuple[str, ...] = ()
    print_commands: bool = False  # print each row's `accelerate launch` command instead of training
    root: str | None = None  # the folder of the rows' runs; default outputs/ablation/NAME
    report: str | None = None  # write ablation.md and ablation.png of the ablation in this folder; never trains


_ABLATE_OWN = {"--rows", "--grid", "--print_commands", "--root", "--report", "--sweep"}


def _config_overrides(args: list[str]) -> list[str]:
    """``ablate``'s arguments less its own options and their values: the config overrides, as given."""
    args, out, i = _bare_booleans(AblateArgs, args), [], 0
    while i < len(args):
        word, i = args[i], i + 1
        if _option(word) not in _ABLATE_OWN:
            out.append(word)
        elif "=" not in word and _option(word) in ("--rows", "--sweep"):
            while i < len(args) and not args[i].startswith("-"):
                i += 1  # --rows and --sweep take several words
        elif "=" not in word:
            i += 1  # the option's one value (a bare boolean was given "true" above)
    return out


def _type_words(hint: object) -> str:
    """A field's type as the user writes its values: ``one of 'no', 'bf16'``, ``true or false``, ``int``."""
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(hint))
    return "true or false" if hint is bool else getattr(hint, "__name__", str(hint).replace("typing.", ""))


def row_config(base: FinetuneConfig, row: AblationRow, root: str | Path) -> FinetuneConfig:
    """``base`` with a row's fields set as ``--field value`` sets them and ``train.output_dir`` ``<root>/<row>``.

    >>> from tiny_transformers.ablate import ALL_ROWS
    >>> config = row_config(paper_config("swin_l"), ALL_ROWS["lr3e-3_wd0.2"], "out")
    >>> config.optim.lr, config.optim.weight_decay, config.train.output_dir
    (0.003, 0.2, 'out/lr3e-3_wd0.2')
    """
    hints = {
        f"{section}.{name}": hint
        for section, cls in typing.get_type_hints(FinetuneConfig).items()
        for name, hint in typing.get_type_hints(cls).items()
    }
    for name, value in row.overrides:
        if name not in hints:
            close = difflib.get_close_matches(name, list(hints), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{name} is not a config field{hint}; the fields are listed in docs/config.md.")
        try:  # tyro prints its own box and exits; the sentence below says the same in one line
            with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                parse_config(base, [f"--{name}", value])
        except SystemExit:
            raise ConfigError(f"'{value}' is not a value of {name}, which takes {_type_words(hints[name])}.") from None
    return parse_config(base, [*row.args(), "--train.output_dir", str(Path(root) / row.name)])[0]


def _ablate(args: list[str]) -> None:
    """``ablate NAME``: the paper's ablation rows of NAME as ordinary runs; ``ablate --report ROOT``: their table."""
    from . import ablate as ablation

    prog = "tiny-transformers ablate"
    name = args[0] if args and not args[0].startswith("-") else None
    rest = args[1:] if name else args
    if name is None and not any(_option(a) in ("--report", "--help", "-h") for a in rest):
        _usage(
            f"usage: {prog} NAME [--rows ROW ...] [--grid] [--sweep FIELD=V1,V2 ...] [--print-commands] [--root "
            f"FOLDER] [--section.field VALUE ...]\n       {prog} --report ROOT\nNAME: {', '.join(PAPER_MODELS)} (or "
            "its timm name)"
        )
    paper = ablation.paper_model(name) if name else None
    default = paper_config(paper.short_name) if paper else FinetuneConfig()
    options = _parse(AblateArgs, AblateArgs(**vars(default)), rest, f"{prog} {name or ''}".strip())
    if options.report is not None:
        markdown, chart = ablation.write_ablation_report(options.report)
        print(f"ablation report: {markdown}, {chart}")
        return
    if paper is None:
        raise TinyTransformersError(f"ablate needs a model before its options: {prog} swin_l [--rows ...].")
    overrides = _config_overrides(rest)
    sweep = ablation.parse_sweep(options.sweep)
    rows = ablation.select_rows(options.rows, options.grid) if options.rows or options.grid or not sweep else []
    rows += ablation.sweep_rows(sweep)
    ablation.check_overrides([_option(a) for a in overrides if a.startswith("--")], rows)
    root = Path(options.root).expanduser() if options.root else ablation.default_root(paper.short_name)
    base = _with_options(FinetuneConfig(), options)
    runs = [(row, row_config(base, row, root)) for row in rows]  # every value checked before any row trains
    if options.print_commands:
        if sweep:  # the report of the printed runs lists the sweep's rows
            ablation.write_manifest(root, paper.short_name, sweep)
        print("\n".join(ablation.ablation_commands(paper.short_name, rows, root, overrides)))
        return
    command = shlex.join(["tiny-transformers", "ablate", *args])
    # a failed row is listed and the next one starts; a stopped one ends the ablation with its status (main)
    if ablation.run_ablation(runs, paper.short_name, root, command, sweep):
        sys.exit(1)


def _benchmark(args: list[str]) -> None:
    """``benchmark`` lives in the repository, not the package: say so."""
    _usage(
        "error: the benchmarks live beside the library in the repository, not in the installed package; "
        "run them from a checkout with `python -m benchmarks --quick` (docs/benchmarks.md)."
    )


COMMANDS = {
    "train": _train,
    "evaluate": _evaluate,
    "export": functools.partial(_publish, "export"),
    "push": functools.partial(_publish, "push"),
    "predict": _predict,
    "ablate": _ablate,
    "benchmark": _benchmark,  # kept as a name only, to point at the repository's benchmarks
}


def main(argv: Sequence[str] | None = None) -> None:
    """The ``tiny-transformers`` console script.

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
        _usage(f"error: unknown command '{argv[0]}'; choose one of {', '.join(COMMANDS)}.{hint}\n\n{USAGE}")
    with _quiet_exits():
        command(argv[1:])


if __name__ == "__main__":
    main()
