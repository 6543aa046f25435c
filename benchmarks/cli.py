"""The command, ``python -m benchmarks [options]``: its settings, every section in order, the report.

Options are parsed by tyro from :class:`Settings`, each field's comment being its help. A boolean option
works bare (``--quick``) or with a value (``--quick true``, ``--quick false``).
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import tyro

from .data_path import data_path
from .loop_overhead import loop_overhead
from .machine import default_device, describe_machine, threads
from .options import head_option_effects, option_effects, pin_memory_effect
from .recipes import PAPER_RECIPES, recipe_table
from .report import format_report, write_json
from .throughput import Workload, model_throughput

PROG = "python -m benchmarks"


@dataclass(frozen=True)
class Settings:
    """Data path, loop overhead and training throughput (docs/benchmarks.md). Random weights and synthetic
    images: nothing is downloaded."""

    # what to measure: data path, loop overhead, training throughput, GPU speed options (full mode, --options-model),
    # head mode's backbone options (each --model) and the recipe files as they run (--recipes); the last three are
    # not in the default
    sections: tuple[Literal["data", "loop", "train", "options", "head_options", "recipes"], ...] = (
        "data",
        "loop",
        "train",
    )
    # models for the throughput section: paper short names (vit_l, cait_s36, deit_b_distilled, swin_l) or timm names
    model: tuple[str, ...] = ("test_vit",)
    # training modes for the throughput section: head (backbone frozen) and/or full
    mode: tuple[Literal["head", "full"], ...] = ("head", "full")
    micro_batch: int | None = None  # images per forward pass; default: the paper's for its models, else 8
    image_size: int | None = None  # pixels per image side the model sees; default: 384 for paper models, else 32
    # autocast for throughput: bf16, fp16 or no (float32); default: bf16 on a GPU, no on a CPU
    precision: Literal["bf16", "fp16", "no"] | None = None
    # loader processes for the data path, one measurement each; default: 0, plus 2 without --quick
    workers: tuple[int, ...] | None = None
    options_model: str | None = None  # model for --sections options; default: the first --model
    # leave torch.compile out of the options sections (it compiles first: slow to measure)
    no_compile: bool = False
    quick: bool = False  # fewer images, steps and repeats: seconds on a CPU
    steps: int | None = None  # timed steps per repeat; default: 10, with --quick 3
    warmup: int | None = None  # untimed steps before timing; default: 3, with --quick 1
    repeats: int | None = None  # timed repeats, medians taken; default: 3, with --quick 2
    min_seconds: float | None = None  # data path: seconds per side and repeat; default: 1, with --quick 0.2
    # recipe files for --sections recipes, each measured and projected as its config runs (benchmarks/recipes.py)
    recipes: tuple[str, ...] = PAPER_RECIPES
    # overrides for --sections recipes, one projected table each: space-separated field=value ("": as written);
    # stem:field=value applies to that recipe alone (cait_s36:model.fast_attention=true)
    recipe_variants: tuple[str, ...] = ("",)
    # each throughput measurement in its own process: clean peak memory, about 10 s more each
    isolate: bool = False
    # also write every figure to this JSON file, rewritten after each measurement (a run cut short keeps them)
    json: str | None = None


def _registry() -> tyro.constructors.ConstructorRegistry:
    """Booleans as options that take an optional value: bare means true; true/false/yes/no/1/0/on/off."""
    registry = tyro.constructors.ConstructorRegistry()
    truthy, falsy = ("true", "yes", "1", "on"), ("false", "no", "0", "off")

    @registry.primitive_rule
    def bool_rule(type_info: tyro.constructors.PrimitiveTypeInfo):
        if type_info.type is not bool:
            return None

        def parse(args: list[str]) -> bool:
            if not args:
                return True
            if args[0].lower() not in truthy + falsy:
                raise ValueError(f"expected true or false, got '{args[0]}'")
            return args[0].lower() in truthy

        return tyro.constructors.PrimitiveConstructorSpec(
            nargs=(0, 1),
            metavar="[{true,false}]",
            instance_from_str=parse,
            is_instance=lambda x: isinstance(x, bool),
            str_from_instance=lambda instance: ["true" if instance else "false"],
        )

    return registry


def parse_settings(argv: Sequence[str]) -> Settings:
    """The settings that ``argv`` (without the program name) asks for.

    >>> settings = parse_settings(["--quick", "--sections", "data", "loop", "--no-compile", "false"])
    >>> settings.quick, settings.sections, settings.no_compile, settings.model
    (True, ('data', 'loop'), False, ('test_vit',))
    """
    return tyro.cli(
        Settings,
        args=list(argv),
        prog=PROG,
        registry=_registry(),
        config=(tyro.conf.FlagConversionOff,),  # booleans go through the rule above, not --flag/--no-flag pairs
    )


def run_benchmark(
    settings: Settings, command: str = "", on_progress: Callable[[dict], None] | None = None
) -> dict[str, Any]:
    """Every section asked for, in order; ``on_progress`` gets the partial results after each measurement."""
    device = default_device()
    precision = settings.precision or ("bf16" if device.type == "cuda" else "no")
    quick = settings.quick
    repeats, steps, warmup = (2, 3, 1) if quick else (3, 10, 3)
    repeats, steps, warmup = settings.repeats or repeats, settings.steps or steps, settings.warmup or warmup
    min_seconds = settings.min_seconds if settings.min_seconds is not None else (0.2 if quick else 1.0)
    isolate = settings.isolate
    workers = list(settings.workers) if settings.workers is not None else ([0] if quick else [0, 2])
    data_sizes = dict(batch_size=16 if quick else 64, repeats=repeats, min_images=32 if quick else 256)
    results: dict[str, Any] = {
        "command": command,
        "machine": describe_machine(),
        "device": str(device),
        "precision": precision,
        "quick": quick,
    }
    report = on_progress or (lambda _: None)
    timing = dict(device=device, steps=steps, warmup=warmup, repeats=repeats)  # every throughput measurement's

    def workload(model: str) -> Workload:
        return Workload.for_model(model, settings.micro_batch, settings.image_size, precision=precision, **timing)

    def compute_threads() -> contextlib.AbstractContextManager:
        # On a CPU, one intra-op thread: figures per core, and no OpenMP stalls when other programs share it.
        return threads(1) if device.type == "cpu" else contextlib.nullcontext()

    if "data" in settings.sections:
        results["data_path"] = []
        for n in workers:
            results["data_path"].append(
                data_path(
                    num_workers=n,
                    device=device,
                    min_seconds=min_seconds,
                    warmup=1 if quick else 2,
                    unique_images=64 if quick else 256,
                    **data_sizes,
                )
            )
            report(results)
    if "loop" in settings.sections:
        results["loop_overhead"] = loop_overhead(steps=8 if quick else 60, repeats=repeats if quick else 5)
        report(results)
    if "train" in settings.sections:
        results["training"] = []
        for model in settings.model:
            results["training"].append({"model": model})

            def partial(result: dict[str, Any]) -> None:
                results["training"][-1] = result
                report(results)

            with compute_threads():
                partial(model_throughput(workload(model), settings.mode, isolate, on_progress=partial))
    if "options" in settings.sections:
        results["options"] = []
        if device.type == "cuda":
            results["options"].append(pin_memory_effect(max(workers), device, min_seconds=min_seconds, **data_sizes))
            report(results)
        with compute_threads():
            # compile runs last: the slowest to measure (it compiles first), and the JSON keeps the rest if cut short
            option_effects(
                workload(settings.options_model or settings.model[0]),
                compile=not settings.no_compile,
                isolate=isolate,
                on_effect=lambda effect: (results["options"].append(effect), report(results)),
            )
    if "head_options" in settings.sections:
        results["head_options"] = []
        with compute_threads():
            # every model's cheap options first, then the compiles model by model (20-45 s each): a run cut short
            # by a device's time limit keeps every figure measured before it in the JSON
            for others, compile in ((True, False), (False, not settings.no_compile)):
                for model in settings.model if others or compile else ():
                    head_option_effects(
                        workload(model),
                        compile=compile,
                        others=others,
                        isolate=isolate,
                        on_effect=lambda effect: (results["head_options"].append(effect), report(results)),
                    )
    if "recipes" in settings.sections:

        def tabled(table: list[dict[str, Any]]) -> None:
            results["recipes"] = table
            report(results)

        # every thread, unlike the sections above: a projection is of the run on this machine as it is
        recipe_table(settings.recipes, settings.recipe_variants, on_progress=tabled, isolate=isolate, **timing)
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m benchmarks [--model test_vit] [--quick] [--json PATH]``: measure, print, optionally save.

    The JSON file is rewritten after every measurement, so a run cut short keeps what it measured.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = parse_settings(argv)
    command = shlex.join([*PROG.split(), *argv])  # quoted as typed: a recipe variant holds spaces
    results = run_benchmark(settings, command, on_progress=lambda partial: write_json(settings.json, partial))
    write_json(settings.json, results)
    print(format_report(results))
    return results
