"""The paper's ablation in one command: its rows as ordinary runs under one root, resumable, and their report.

Each row is a paper recipe with a few fields changed, trained by ``finetune`` into ``<root>/<row>``; the root also
holds ``ablation.json`` (the model and sweep) and the report ``ablation.md``/``ablation.png``. Why ``default`` is
the paper's "no RandAugment" and ``randaugment_9`` its "default", and what ``probe`` is: docs/ablation.md.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import signal
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import FinetuneConfig
from .errors import ConfigError, TinyTransformersError, clean_message
from .paper import PAPER_MODELS, PaperModel, paper_model_for
from .rundir import RunDir, RunSummary
from .runfiles import read_json, write_atomic, writing

MANIFEST_FILE = "ablation.json"  # {"model": short name, "sweep": {field: [values]}}: what the root holds
_MANIFEST_FIX = "delete it: the report then takes the model from the rows' config.json, and ablate writes it anew"
REPORT_FILE = "ablation.md"
CHART_FILE = "ablation.png"
CHART_DPI = 100
CHART_SIZE = (1000, 600)  # pixels (width, height) of ablation.png
GRID_LRS = ("3e-3", "1e-3", "7e-4", "5e-4")  # the paper's AdamW grid (section 4.1), as the row names spell them
GRID_WDS = ("0.2", "0.05", "0.01")
DEFAULT_CELL = ("1e-3", "0.05")  # the recipe's own lr / weight decay: the grid's cell that is the `default` row


@dataclass(frozen=True)
class AblationRow:
    """One row: the fields it changes (dotted name, value as the command line writes it) and the paper's row."""

    name: str
    overrides: tuple[tuple[str, str], ...]
    paper_row: str | None = None  # the paper's name for the same setting; None: a row the paper does not have
    swin_l_top1: float | None = None  # the paper's Swin-L top-1 for it (paper-recipe.md); None: not reported

    @property
    def change(self) -> str:
        """What the row changes, in words."""
        if not self.overrides:
            return "nothing: the paper recipe as the library runs it (RandAugment 2 ops at magnitude 0)"
        return ", ".join(f"{name} {value}" for name, value in self.overrides)

    def args(self) -> list[str]:
        """The row's overrides as command-line words: ``['--augment.mixup_alpha', '0']``."""
        return [word for name, value in self.overrides for word in (f"--{name}", value)]


def grid_row_name(lr: str, wd: str) -> str:
    """The name of a cell of the lr x weight-decay grid.

    >>> grid_row_name("3e-3", "0.2")
    'lr3e-3_wd0.2'
    """
    return f"lr{lr}_wd{wd}"


# A linear probe of the recipe: nothing random before the head (the feature cache then serves epochs 2..N), the
# recipe's optimizer, schedule and label smoothing (not an augmentation) unchanged.
PROBE_OVERRIDES = (
    ("model.train_mode", "head"),
    ("model.drop_path_rate", "0"),
    ("augment.randaugment_ops", "0"),
    ("augment.mixup_alpha", "0"),
    ("augment.cutmix_alpha", "0"),
    ("augment.random_erasing", "0"),
)
ABLATION_ROWS: dict[str, AblationRow] = {
    row.name: row
    for row in (
        AblationRow("default", (), "no RandAugment (the official code's magnitude 0)", 91.35),
        AblationRow(
            "randaugment_9", (("augment.randaugment_magnitude", "9"),), "default (RandAugment magnitude 9)", 91.34
        ),
        AblationRow("no_random_erasing", (("augment.random_erasing", "0"),), "no random erasing", 91.28),
        AblationRow("no_mixup", (("augment.mixup_alpha", "0"),), "no Mixup", 91.11),
        AblationRow("no_cutmix", (("augment.cutmix_alpha", "0"),), "no CutMix", 91.04),
        AblationRow("probe", PROBE_OVERRIDES),
    )
}
GRID_ROWS: dict[str, AblationRow] = {
    grid_row_name(lr, wd): AblationRow(
        grid_row_name(lr, wd),
        (("optim.lr", lr), ("optim.weight_decay", wd)),
        f"AdamW grid, lr {lr} / wd {wd} (the paper names only the best cell, 1e-3 / 0.05)",
    )
    for lr in GRID_LRS
    for wd in GRID_WDS
    if (lr, wd) != DEFAULT_CELL
}
ALIASES = {grid_row_name(*DEFAULT_CELL): "default"}  # the grid's recipe cell is trained once, as `default`
ALL_ROWS: dict[str, AblationRow] = {**ABLATION_ROWS, **GRID_ROWS}


def paper_model(name: str) -> PaperModel:
    """The paper model an ablation is of, by short or timm name; any other name is refused in one sentence.

    >>> paper_model("swin_large_patch4_window12_384").short_name
    'swin_l'
    """
    model = paper_model_for(name)
    if model is None:
        raise ConfigError(
            f"'{name}' is not one of the paper's models; the ablation runs the paper recipe of "
            f"{', '.join(PAPER_MODELS)} (short or timm name)."
        )
    return model


def default_root(model: str) -> Path:
    """Where the rows go unless ``--root`` says otherwise.

    >>> default_root("swin_l").as_posix()
    'outputs/ablation/swin_l'
    """
    return Path("outputs") / "ablation" / paper_model(model).short_name


def select_rows(names: Sequence[str] = (), grid: bool = False) -> list[AblationRow]:
    """The rows named (all six ablation rows when none), plus the lr x wd grid with ``grid``; in table order.

    >>> [row.name for row in select_rows(["no_mixup", "default"])]
    ['default', 'no_mixup']
    >>> len(select_rows(grid=True))
    17
    """
    unknown = [name for name in names if name not in ALL_ROWS and name not in ALIASES]
    if unknown:
        raise ConfigError(
            f"unknown ablation row{'s' if len(unknown) > 1 else ''} {', '.join(repr(n) for n in unknown)}; the rows "
            f"are {', '.join(ABLATION_ROWS)} and the lr x weight-decay grid's {', '.join(GRID_ROWS)} (its "
            f"{grid_row_name(*DEFAULT_CELL)} is default)."
        )
    chosen = {ALIASES.get(name, name) for name in names} or set(ABLATION_ROWS)
    return [row for name, row in ALL_ROWS.items() if name in chosen or (grid and name in GRID_ROWS)]


def check_overrides(options: Iterable[str], rows: Sequence[AblationRow]) -> None:
    """Refuse an override that a selected row sets itself, or ``--train.output_dir`` (each row has its own).

    >>> check_overrides(["--train.epochs"], select_rows(["no_mixup"]))
    >>> check_overrides(["--augment.mixup_alpha"], select_rows(["no_mixup"]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tiny_transformers.errors.ConfigError: --augment.mixup_alpha is what the ablation row no_mixup changes; ...
    """
    for option in options:
        if option == "--train.output_dir":
            raise ConfigError(
                "--train.output_dir is set for each row (<root>/<row>); give the ablation's folder with --root instead."
            )
        for row in rows:
            if option in {f"--{name}" for name, _ in row.overrides} and row.name not in ALL_ROWS:
                raise ConfigError(f"{option} is swept by --sweep, which sets it for each row; give it in one place.")
            if option in {f"--{name}" for name, _ in row.overrides}:
                raise ConfigError(
                    f"{option} is what the ablation row {row.name} changes; leave it out, or select rows that do not "
                    "set it with --rows."
                )


def parse_sweep(specs: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Split ``--sweep FIELD=V1,V2,...`` words into (field, values), the values as text (parsed per row).

    >>> parse_sweep(["train.batch_size=32,64", "optim.lr=1e-3"])
    [('train.batch_size', ('32', '64')), ('optim.lr', ('1e-3',))]
    """
    sweep: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        field, _, text = spec.partition("=")
        values = tuple(text.split(","))
        if not field or "." not in field or "" in values:
            raise ConfigError(f"--sweep '{spec}' is not FIELD=V1,V2,...; write it as train.batch_size=32,64,128.")
        if field == "train.output_dir":
            raise ConfigError("--sweep train.output_dir: each row has its own folder (<root>/<row>); use --root.")
        if field in sweep or len(set(values)) < len(values):
            raise ConfigError(f"--sweep gives {field} or one of its values twice ({spec}); give each once.")
        sweep[field] = values
    return list(sweep.items())


def sweep_rows(sweep: Sequence[tuple[str, Sequence[str]]]) -> list[AblationRow]:
    """The cross product of the swept values, one row each, named after its values (the field's last part).

    >>> [row.name for row in sweep_rows([("train.batch_size", ("32", "64")), ("optim.lr", ("1e-3",))])]
    ['batch_size32_lr1e-3', 'batch_size64_lr1e-3']
    """
    if not sweep:
        return []  # (the product of no values would be one row changing nothing)
    fields = [field for field, _ in sweep]
    short = [field.rsplit(".", 1)[-1] for field in fields]
    labels = short if len(set(short)) == len(short) else [field.replace(".", "-") for field in fields]
    rows = [
        AblationRow(
            "_".join(label + re.sub(r"[^A-Za-z0-9.+-]", "-", value) for label, value in zip(labels, values)),
            tuple(zip(fields, values)),
        )
        for values in itertools.product(*(values for _, values in sweep))
    ]
    names = [row.name for row in rows]
    clash = sorted({name for name in names if names.count(name) > 1 or name in ALL_ROWS})
    if clash:
        raise ConfigError(
            f"--sweep values give two rows (or a row and a paper row) the folder name {clash[0]}; sweep them into "
            "another --root."
        )
    return rows


def is_finished(folder: RunDir, epochs: int) -> bool:
    """Whether the run in ``folder`` finished ``epochs`` epochs (its ``finished.json``, written last, says so)."""
    finished = folder.finished_epochs()
    return finished is not None and finished >= epochs


def ablation_commands(
    model: str, rows: Sequence[AblationRow], root: str | Path, overrides: Sequence[str] = ()
) -> list[str]:
    """One shell-quoted ``accelerate launch`` line per row, for a cluster's scheduler.

    >>> ablation_commands("swin_l", select_rows(["no_mixup"]), "out", ["--train.epochs", "1"])[0]
    'accelerate launch recipes/swin_l.py --train.output_dir out/no_mixup --augment.mixup_alpha 0 --train.epochs 1'
    """
    recipe = f"recipes/{paper_model(model).short_name}.py"
    return [
        shlex.join(
            ["accelerate", "launch", recipe, "--train.output_dir", str(Path(root) / row.name), *row.args(), *overrides]
        )
        for row in rows
    ]


def write_manifest(root: Path, model: str, sweep: Sequence[tuple[str, Sequence[str]]] = ()) -> None:
    """Record in ``root/ablation.json`` the paper model and the latest ``--sweep`` (kept when this run has none)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        old = read_manifest(root)
    except TinyTransformersError:  # a damaged one is written anew, as its fix says
        old = {}
    sweep_map = {field: list(values) for field, values in sweep} or old.get("sweep", {})
    write_atomic(root / MANIFEST_FILE, json.dumps({"model": model, "sweep": sweep_map}))


def read_manifest(root: Path) -> dict:
    """``root/ablation.json`` as written by :func:`write_manifest`; empty when there is none."""
    manifest = root / MANIFEST_FILE
    return read_json(manifest, fix=_MANIFEST_FIX) if manifest.is_file() else {}  # read_json refuses a non-object


def run_ablation(
    runs: Sequence[tuple[AblationRow, FinetuneConfig]],
    model: str,
    root: str | Path,
    command: str | None = None,
    sweep: Sequence[tuple[str, Sequence[str]]] = (),
) -> list[tuple[str, str]]:
    """Train each row's config in turn (finished ones skipped, interrupted ones resumed), then write the report;
    returns the failed rows (name, sentence), e.g. ``[('no_mixup', 'data.source ... does not exist; ...')]``. A
    stop signal (``TrainingInterrupted``) ends the whole ablation."""
    from .stop import StopSignals
    from .train import TrainingInterrupted, finetune

    root, rows = Path(root), [row for row, _ in runs]
    short = paper_model(model).short_name
    print(f"ablation of {short}: {len(rows)} row(s) into {root}: {', '.join(row.name for row in rows)}", flush=True)
    write_manifest(root, short, sweep)
    failed: list[tuple[str, str]] = []
    with StopSignals() as stop:  # a signal between rows (a row's own run handles those during it)
        for index, (row, config) in enumerate(runs, 1):
            folder, step = RunDir(root / row.name), f"[{index}/{len(rows)}] {row.name}"
            if stop.received:
                raise TrainingInterrupted(
                    f"Ablation stopped by {stop.received} between rows, before {step}; the rows before it are kept. "
                    f"Resume with {command or 'the same command again'} (finished rows are skipped).",
                    exit_status=128 + getattr(signal, stop.received, signal.SIGTERM),
                )
            if is_finished(folder, config.train.epochs) and not folder.trajectory_changes(config):
                print(f"{step}: skipped, already finished ({config.train.epochs} epochs in {folder.root})", flush=True)
                continue
            print(f"{step}: training into {folder.root} ({row.change})", flush=True)
            try:
                result = finetune(config, command)
            except TrainingInterrupted:
                raise
            except TinyTransformersError as error:
                failed.append((row.name, clean_message(error)))
                print(f"{step}: failed: {clean_message(error)}", file=sys.stderr, flush=True)
                continue
            print(f"{step}: done, top-1 {result.top1:.2f}%", flush=True)
    markdown, _ = write_ablation_report(root)
    print(f"ablation: {len(rows) - len(failed)} of {len(rows)} row(s) finished or skipped; report: {markdown}")
    if failed:
        print(f"ablation: failed row(s): {', '.join(name for name, _ in failed)}", file=sys.stderr, flush=True)
    return failed


@dataclass(frozen=True)
class RowResult:
    """What a row's folder holds: ``status`` is finished, unfinished or not started."""

    row: AblationRow
    status: str
    epochs_done: int = 0
    epochs: int | None = None
    top1: float | None = None  # the final epoch's, as last/ holds it (the EMA's with an EMA)
    top5: float | None = None
    model: str | None = None  # the model.name the run trained (None: not started)


def read_row(root: Path, row: AblationRow) -> RowResult:
    """The state and final numbers of one row's run under ``root``."""
    folder = RunDir(root / row.name)
    if not folder.config.is_file():
        return RowResult(row, "not started")
    config = folder.read_config()
    history = folder.read_metrics() if folder.metrics.is_file() else []
    name = config.model.name
    if not is_finished(folder, config.train.epochs):
        return RowResult(row, "unfinished", len(history), config.train.epochs, model=name)
    final = RunSummary(folder.root, config, history, [], []).record_for("last")
    return RowResult(row, "finished", len(history), config.train.epochs, final["top1"], final["top5"], name)


def ablation_model(root: Path) -> PaperModel | None:
    """The paper model of the ablation in ``root``: as the runner recorded it, else the model its runs trained."""
    if (root / MANIFEST_FILE).is_file():
        model = read_manifest(root).get("model")
        return paper_model_for(model if isinstance(model, str) else "")
    for row in ALL_ROWS:
        if RunDir(root / row).config.is_file():
            return paper_model_for(RunDir(root / row).read_config().model.name)
    return None


def compared_with_paper(results: Sequence[RowResult], model: PaperModel | None) -> bool:
    """Whether the paper's numbers belong beside these rows: every started row trained the paper's model itself.

    >>> swin, row = paper_model("swin_l"), ABLATION_ROWS["default"]
    >>> compared_with_paper([RowResult(row, "finished", model="swin_large_patch4_window12_384")], swin)
    True
    >>> compared_with_paper([RowResult(row, "finished", model="test_vit")], swin)
    False
    """
    return model is not None and all(paper_model_for(r.model) == model for r in results if r.model is not None)


def _title(results: Sequence[RowResult], model: PaperModel | None) -> str:
    """The model the rows trained, in words: the paper's title when it is the paper's model."""
    if compared_with_paper(results, model):
        return f"{model.title} ({model.short_name})"
    trained = ", ".join(sorted({r.model for r in results if r.model is not None})) or "unknown model"
    return f"{trained}, with the {model.short_name} recipe" if model else trained


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _epochs(result: RowResult) -> str:
    done = {"finished": str(result.epochs_done), "unfinished": f"{result.epochs_done} of {result.epochs} (unfinished)"}
    return done.get(result.status, "not started")


def ablation_markdown(
    root: Path, results: Sequence[RowResult], model: PaperModel | None, sweep: Sequence[RowResult] = ()
) -> str:
    """The text of ``ablation.md``: a table of the paper's rows (and lr x wd grid), one of the ``--sweep`` rows."""
    compare = compared_with_paper([*results, *sweep], model)
    swin = compare and model.short_name == "swin_l"
    lines = [f"# Ablation: {_title([*results, *sweep], model)}"]
    if not compare and model is not None:
        lines += [
            "",
            f"These runs trained {_title([*results, *sweep], None)}, not the paper's {model.title}: the paper's "
            "numbers are not shown beside them.",
        ]
    if results:
        lines += _paper_table(root, results, swin, compare)
    if sweep:
        lines += _sweep_table(root, sweep)
    lines += ["", f"![final top-1 per row]({CHART_FILE})", ""]
    return "\n".join(lines)


def _paper_table(root: Path, results: Sequence[RowResult], swin: bool, compare: bool) -> list[str]:
    lines = [
        "",
        f"Runs under `{root}`, one folder per row; top-1/top-5 are the final epoch's (the weights in `last/`), on "
        "the eval split each run used. The paper's numbers are Swin-L top-1 on the Tiny ImageNet validation set "
        '(Huynh 2022, section 4); it reports no ablation for the other models. Its "default" had RandAugment on '
        '(magnitude 9), which is the `randaugment_9` row here; its "no RandAugment" is the official code\'s '
        "RandAugment at magnitude 0, which is this library's recipe: the `default` row. The `probe` row, a plain "
        "linear probe of the same recipe, is not in the paper.",
        "",
        "| row | what it changes | the paper's row | top-1 (%) | top-5 (%) | paper top-1 (%) | epochs |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for result in results:
        row = result.row
        paper = _number(row.swin_l_top1) if swin and row.swin_l_top1 is not None else "not reported"
        if row.paper_row is None:
            paper = "not in the paper"
        elif not compare:
            paper = "not compared"
        lines.append(
            f"| {row.name} | {row.change} | {row.paper_row or 'none'} | {_number(result.top1)} | "
            f"{_number(result.top5)} | {paper} | {_epochs(result)} |"
        )
    by_name = {result.row.name: result for result in results}
    default, probe = by_name.get("default"), by_name.get("probe")
    if default and probe and default.top1 is not None and probe.top1 is not None:
        lines += [
            "",
            f"What the paper's augmentation buys over a plain linear probe: {default.top1 - probe.top1:+.2f} points "
            f"top-1 (default {default.top1:.2f} against probe {probe.top1:.2f}).",
        ]
    if any(name in by_name for name in GRID_ROWS):
        lines += ["", "## AdamW lr x weight decay (final top-1, %)", "", "| lr \\ wd | " + " | ".join(GRID_WDS) + " |"]
        lines.append("|---|" + "---:|" * len(GRID_WDS))
        for lr in GRID_LRS:
            cells = [by_name.get(ALIASES.get(grid_row_name(lr, wd), grid_row_name(lr, wd))) for wd in GRID_WDS]
            lines.append(f"| {lr} | " + " | ".join(_number(c.top1 if c else None) for c in cells) + " |")
        lines += ["", "The 1e-3 / 0.05 cell is the `default` row. The paper names it the best and gives no numbers."]
    return lines


def _sweep_table(root: Path, sweep: Sequence[RowResult]) -> list[str]:
    fields = [field for field, _ in sweep[0].row.overrides]
    return [
        "",
        f"## Sweep: {' x '.join(fields)}",
        "",
        f"Runs under `{root}`, one folder per combination of the swept values (`--sweep`), the rest of the config "
        "as given; top-1/top-5 are the final epoch's (the weights in `last/`).",
        "",
        "| row | " + " | ".join(fields) + " | top-1 (%) | top-5 (%) | epochs |",
        "|---|" + "---|" * len(fields) + "---:|---:|---|",
        *(
            f"| {r.row.name} | {' | '.join(value for _, value in r.row.overrides)} | {_number(r.top1)} | "
            f"{_number(r.top5)} | {_epochs(r)} |"
            for r in sweep
        ),
    ]


def ablation_figure(results: Sequence[RowResult], model: PaperModel | None):
    """Horizontal bars from 0: each row's final top-1, and beside it the paper's for runs of Swin-L itself."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(CHART_SIZE[0] / CHART_DPI, CHART_SIZE[1] / CHART_DPI), dpi=CHART_DPI, layout="constrained")
    ax = fig.subplots()
    swin = compared_with_paper(results, model) and model.short_name == "swin_l"
    ys = list(range(len(results)))[::-1]  # the table's first row on top
    ours = [r.top1 for r in results]
    papers = [r.row.swin_l_top1 if swin else None for r in results]
    height = 0.38
    bars = ((height / 2, ours, "tab:blue", "this run (final)"), (-height / 2, papers, "tab:gray", "paper (Swin-L)"))
    for offset, values, color, label in bars:
        for y, value in ((y + offset, v) for y, v in zip(ys, values) if v is not None):
            ax.barh(y, value, height, color=color, label=label)
            ax.text(value, y, f" {value:.2f}", va="center", fontsize=8)
    labels = [r.row.name + ("" if r.status == "finished" else f" ({r.status})") for r in results]
    ax.set_yticks(ys, labels)
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    if unique:
        ax.legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.0, 1.0))
    # from 0: a bar's length is its accuracy, whatever the rows' spread
    ax.set(xlim=(0.0, 100.0), xlabel="top-1 (%)", title=f"Ablation: {_title(results, model)}, final top-1 per row")
    ax.grid(axis="x", alpha=0.3)
    return fig


def write_ablation_report(root: str | Path) -> tuple[Path, Path]:
    """Write ``ablation.md`` and ``ablation.png`` (:data:`CHART_SIZE` pixels) into ``root``; never trains.

    Listed: the six rows (unless the root holds only a ``--sweep``), grid rows with a folder, the latest sweep's.

    >>> write_ablation_report("outputs/ablation/swin_l")  # doctest: +SKIP
    (PosixPath('outputs/ablation/swin_l/ablation.md'), PosixPath('outputs/ablation/swin_l/ablation.png'))
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"'{root}' is not a folder; give the --root of an ablation (default outputs/ablation/MODEL).")
    swept = read_manifest(root).get("sweep") or {}
    sweep = [read_row(root, row) for row in sweep_rows(list(swept.items()))] if isinstance(swept, dict) else []
    listed = [name for name in ALL_ROWS if (root / name).is_dir() or (name in ABLATION_ROWS and not sweep)]
    results = [read_row(root, ALL_ROWS[name]) for name in listed]
    if all(result.status == "not started" for result in [*results, *sweep]):
        raise ConfigError(f"'{root}' holds no ablation run yet; run `tiny-transformers ablate MODEL --root {root}`.")
    model = ablation_model(root)
    markdown, chart = root / REPORT_FILE, root / CHART_FILE
    write_atomic(markdown, ablation_markdown(root, results, model, sweep))
    with writing(chart):
        ablation_figure([*results, *sweep], model).savefig(chart, dpi=CHART_DPI)  # no bbox_inches: the exact size
    return markdown, chart
