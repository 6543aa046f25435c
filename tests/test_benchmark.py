"""`python -m benchmarks` runs on a CPU in seconds and reports every figure it promises.

No timing is asserted anywhere: only that each figure exists and is a positive finite number, and the
behaviour the figures rest on (head mode keeps nothing of the backbone for backward; measuring leaks nothing).
"""

import contextlib
import gc
import io
import json
import math
import weakref

import pytest
import torch

from benchmarks import main, parse_settings, saved_for_backward_bytes
from tiny_transformers.config import ModelConfig
from tiny_transformers.models import build_model, head_modules


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


# a whole benchmark run (seconds of model work in this process): the whole suite's, not the fast tier's
BENCHMARK_RUN = pytest.mark.slow
# the tests reading quick_run, on one worker of `pytest -n 2 --dist loadgroup`: each worker would run it once
QUICK_RUN_GROUP = pytest.mark.xdist_group("benchmark_quick_run")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `--quick` run of the whole command (data path, loop overhead, test_vit throughput, and its speed options
    without compile), its JSON and report: `python -m benchmarks --quick --json PATH --sections ... --no-compile`
    calls main() with these arguments; and what the JSON file held after each write (after every measurement)."""
    import benchmarks.cli

    path = tmp_path_factory.mktemp("bench") / "bench.json"
    printed, written = io.StringIO(), []

    def write_json(target, results):  # main's writer, then a copy of what the file holds
        real_write_json(target, results)
        written.append(json.loads(path.read_text()))

    real_write_json = benchmarks.cli.write_json
    with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as patch:
        patch.setattr(benchmarks.cli, "write_json", write_json)
        main(["--quick", "--json", str(path), "--sections", "data", "loop", "train", "options", "--no-compile"])
    return json.loads(path.read_text()), printed.getvalue(), written


@QUICK_RUN_GROUP
@BENCHMARK_RUN
def test_machine_is_described(quick_run):
    results, report, _ = quick_run
    machine = results["machine"]
    assert machine["cpu"] and positive(machine["cpu_cores"]) and machine["torch"] == torch.__version__
    assert machine["gpu"] is None and results["device"] == "cpu"  # this suite runs on CPUs
    assert report.startswith(f"machine: {machine['cpu']}, {machine['cpu_cores']} cores")
    assert "command: python -m benchmarks --quick --json" in report


@QUICK_RUN_GROUP
@BENCHMARK_RUN
def test_data_path_figures(quick_run):
    results, report, _ = quick_run
    (data,) = results["data_path"]  # --quick: 0 workers only
    assert data["num_workers"] == 0 and data["image_size"] == 384 and data["native_size"] == 64
    for measure in ("ready", "loader_only"):
        for side in ("paper", "library"):
            assert positive(data[measure][f"{side}_images_per_s"])
            assert data[measure][f"{side}_images_per_s_per_core"] == data[measure][f"{side}_images_per_s"]
            assert positive(data[measure][f"{side}_first_batch_s"])
        assert data[measure]["ratio"] == pytest.approx(
            data[measure]["library_images_per_s"] / data[measure]["paper_images_per_s"]
        )
    assert "ready for the model  paper" in report and "loader output only   paper" in report


@QUICK_RUN_GROUP
@BENCHMARK_RUN
def test_loop_overhead_figures(quick_run):
    results, report, _ = quick_run
    loop = results["loop_overhead"]
    for key in (
        "finetune_cpu_seconds_per_step",
        "bare_cpu_seconds_per_step",
        "ratio",
        "finetune_wall_seconds_per_step",
        "bare_wall_seconds_per_step",
        "ratio_wall",
    ):
        assert positive(loop[key]), key
    assert len(loop["ratio_per_repeat"]) == loop["repeats"] and all(map(positive, loop["ratio_per_repeat"]))
    assert "2. loop overhead" in report and "finetune()" in report and "bare PyTorch loop" in report


@QUICK_RUN_GROUP
@BENCHMARK_RUN
def test_training_throughput_figures(quick_run):
    results, report, _ = quick_run
    (model,) = results["training"]
    assert model["model"] == "test_vit" and positive(model["inference"]["images_per_s"])
    for mode in ("head", "full"):
        figures = model[mode]
        assert figures["mode"] == mode and figures["micro_batch"] == 8 and figures["image_size"] == 32
        for key in ("images_per_s", "seconds_per_step", "flops_per_image", "achieved_tflops", "saved_for_backward_mib"):
            assert positive(figures[key]), (mode, key)
        assert figures["mfu"] is None and figures["peak_memory_gib"] is None  # GPU-only figures
    # full mode counts the backward of every layer: about three forward passes to head mode's one
    assert model["full"]["flops_per_image"] > 2.5 * model["head"]["flops_per_image"]
    assert positive(model["head_over_inference"]) and model["full_over_head_saved_memory"] > 10
    for label in (
        "inference  micro-batch 8",
        "head       micro-batch 8",
        "full       micro-batch 8",
        "GFLOP/img",
        "MFU n/a (no GPU)",
        "head-mode training / inference throughput",
    ):
        assert label in report


def test_head_mode_keeps_only_the_heads_input_for_backward():
    x = torch.zeros(2, 3, 32, 32)
    head = build_model(ModelConfig(name="test_vit", pretrained=False, train_mode="head"), 10, 32)
    full = build_model(ModelConfig(name="test_vit", pretrained=False, train_mode="full"), 10, 32)
    # test_vit at 32 px: 4 patches + class token = 5 tokens of width 64; the head reads the class token,
    # a view that holds the final (2, 5, 64) float32 tensor: nothing else of the frozen backbone is kept.
    assert saved_for_backward_bytes(head, x, contextlib.nullcontext) == 2 * 5 * 64 * 4
    assert saved_for_backward_bytes(full, x, contextlib.nullcontext) > 50 * 2 * 5 * 64 * 4
    head(x).sum().backward()
    with_grad = {id(p) for p in head.parameters() if p.grad is not None}
    assert with_grad == {id(p) for module in head_modules(head) for p in module.parameters()}


def test_measuring_saved_activations_leaks_nothing():
    model = build_model(ModelConfig(name="test_vit", pretrained=False, train_mode="full"), 10, 32)
    saved_for_backward_bytes(model, torch.zeros(2, 3, 32, 32), contextlib.nullcontext)
    alive = weakref.ref(model.patch_embed.proj.weight)
    del model
    gc.collect()
    assert alive() is None  # a leaked autograd graph would keep every weight (and activation) alive


def test_sections_and_json_are_optional(capsys):
    results = main(["--quick", "--sections", "train", "--mode", "head", "--model", "test_vit"])
    assert (
        set(results) >= {"machine", "training"} and "data_path" not in results and "full" not in results["training"][0]
    )
    assert "3. training throughput: test_vit" in capsys.readouterr().out


@QUICK_RUN_GROUP
@BENCHMARK_RUN
def test_results_are_reported_after_every_measurement(quick_run):
    """A run cut short keeps what it measured: the partial results (what --json writes) grow one measurement
    at a time, inference before head mode, and each speed option as soon as it is measured."""
    final, _, written = quick_run
    assert written[-1] == final  # main writes the whole results once more at the end
    snapshots = written[:-1]  # the writes after each measurement
    trained = [set(s["training"][0]) & {"inference", "head", "full"} for s in snapshots if "training" in s]
    assert trained[:3] == [{"inference"}, {"inference", "head"}, {"inference", "head", "full"}]
    options = [[o["option"] for o in s["options"]] for s in snapshots if "options" in s]
    assert options == [[o["option"] for o in final["options"]][:n] for n in range(1, len(final["options"]) + 1)]
    assert len(final["options"]) == 3  # fp32/bf16, fused AdamW, timm fused attention off (compile left out)


@pytest.mark.parametrize(
    ("args", "quick", "isolate"),
    [
        ([], False, False),
        (["--quick"], True, False),
        (["--quick", "true"], True, False),
        (["--quick", "false"], False, False),
        (["--quick", "--isolate"], True, True),
        (["--isolate", "yes", "--quick", "--sections", "data"], True, True),
    ],
)
def test_boolean_options_work_bare_and_with_a_value(args, quick, isolate):
    settings = parse_settings(args)
    assert (settings.quick, settings.isolate) == (quick, isolate)
    assert settings.sections == (("data",) if "--sections" in args else ("data", "loop", "train"))


def test_a_boolean_option_refuses_other_values(capsys):
    with pytest.raises(SystemExit):
        parse_settings(["--quick", "maybe"])
    assert "maybe" in capsys.readouterr().err


@QUICK_RUN_GROUP
@BENCHMARK_RUN
def test_the_recipe_projection_is_the_formula_of_the_measured_speeds(quick_run):
    results, report, _ = quick_run
    (model,) = results["training"]
    expected = 30 * (100_000 / model["head"]["images_per_s"] + 10_000 / model["inference"]["images_per_s"]) / 60
    assert model["projected_recipe_minutes"] == pytest.approx(expected)
    assert (
        f"projected 30-epoch head-mode recipe (100,000 train + 10,000 eval images an epoch): {expected:,.1f} min"
        in (report)
    )


@BENCHMARK_RUN
def test_head_mode_options_are_measured_per_model(capsys, bf16_process):
    """The head_options section of benchmarks/gpu.sh, in its CPU smoke form (compile left out: it is timed on the
    GPU; tests/test_backbone.py covers its correctness): each option against its default, per model, in the JSON
    and the report; model.fast_attention only for a model it rewrites (a CaiT here, not the ViT)."""
    args = ["--quick", "--sections", "head_options", "--model", "test_vit", "cait_xxs24_224", "--no-compile"]
    results = main([*args, "--repeats", "1"])  # bf16 measurements: bf16_process resets Accelerate's state after
    effects = results["head_options"]
    common = [
        "model.backbone_dtype bf16 (training step)",
        "model.backbone_dtype bf16 (evaluation)",
        "train.eval_batch_size 2x micro-batch (evaluation)",
        "train.eval_batch_size 4x micro-batch (evaluation)",
    ]
    fast = ["model.fast_attention (training step)", "model.fast_attention (evaluation)"]
    assert [(e["model"], e["option"]) for e in effects] == [
        *(("test_vit", option) for option in common),
        *(("cait_xxs24_224", option) for option in common + fast),
    ]
    assert all("error" not in e and e["speedup"] == e["images_per_s"] / e["baseline_images_per_s"] for e in effects)
    assert [e["micro_batch"] for e in effects[:4]] == [8, 8, 16, 32] and effects[0]["precision"] == "bf16"
    report = capsys.readouterr().out
    e = effects[2]  # a row of the printed markdown table, as the Speed options table of docs/benchmarks.md takes it
    assert (
        f"| test_vit | train.eval_batch_size 2x micro-batch (evaluation) | {e['images_per_s']:,.1f} vs "
        f"{e['baseline_images_per_s']:,.1f} | **{e['speedup']:.3f}** | 16 vs 8, {e['precision']} | n/a | "
        f"{e['warmup_seconds']:.1f} s |"
    ) in report


@BENCHMARK_RUN
def test_fp8_is_measured_against_bf16_with_its_agreement_where_the_machine_runs_it(
    capsys, fp8_on_this_cpu, bf16_process
):
    """Where fp8 runs (an fp8 GPU; this CPU through the fixture), the head_options section adds
    model.backbone_dtype fp8 against bf16 in the training step and in evaluation, and beside the evaluation's speed
    how far fp8's outputs are from bf16's (fp8_agreement): the same images, in the JSON and the report."""
    results = main(["--quick", "--sections", "head_options", "--model", "test_vit", "--no-compile", "--repeats", "1"])
    effects = {e["option"]: e for e in results["head_options"]}
    assert list(effects)[-2:] == ["model.backbone_dtype fp8 (training step)", "model.backbone_dtype fp8 (evaluation)"]
    for effect in list(effects.values())[-2:]:
        assert "error" not in effect and effect["precision"] == "bf16"
    agreement = effects["model.backbone_dtype fp8 (evaluation)"]["agreement"]
    assert agreement["images"] == 4 * 8  # four micro-batches of --quick's 8
    assert 1e-3 < agreement["features_relative_error"] < 0.15  # fp8's rounding: not bf16's outputs, near them
    assert 0.5 <= agreement["top1_agreement"] <= 1.0 and agreement["logits_max_abs_difference"] > 0
    a = agreement
    assert (
        f"| test_vit | 32, {a['weights']} | {a['features_relative_error']:.4f} | {a['logits_relative_error']:.4f} | "
        f"{a['top1_agreement']:.3f} |"
    ) in capsys.readouterr().out


def test_versus_timm_skips_without_timms_train_py(tmp_path, capsys):
    """timm's train.py is not a dependency: without it the comparison says why and measures nothing."""
    from benchmarks.versus_timm import main as versus_timm

    assert versus_timm(["--timm-train", str(tmp_path / "absent.py"), "--json", str(tmp_path / "out.json")]) is None
    assert "skipped:" in capsys.readouterr().out and not (tmp_path / "out.json").exists()
    assert versus_timm([]) is None and "pass --timm-train PATH" in capsys.readouterr().out


@BENCHMARK_RUN
def test_the_recipes_are_measured_as_their_configs_run_them_and_projected(tmp_path, capsys, monkeypatch, bf16_process):
    """`--sections recipes` (benchmarks/gpu.sh's projection of the paper's table) on the real recipe files, made tiny
    by overrides: each recipe's training step runs at its micro-batch with its preprocessing and its evaluation in
    its eval precision (the paper recipes: fp32); each variant's table is the sum of the formula of its measured
    speeds; a recipe-scoped override reaches that recipe alone; a bad override is one recipe's error, not the run's."""
    # As on a GPU whose datasheet gives 100 TFLOP/s in bf16 and 10 in fp32 (peak_flops is None on a CPU)
    peaks = {"bf16": 100e12, "no": 10e12}
    monkeypatch.setattr("benchmarks.throughput.peak_flops", lambda device, precision: (peaks[precision], "test"))
    tiny = "model.name=test_vit data.image_size=32 train.mixed_precision=bf16 train.micro_batch_size=4"
    fast = f"{tiny} train.eval_precision=autocast train.eval_batch_size=8 cait_s36:model.name=cait_xxs24_224"
    fast += " cait_s36:model.fast_attention=true deit_b_distilled:train.cache_features=false"
    path = tmp_path / "recipes.json"
    args = ["--sections", "recipes", "--recipes", "recipes/cait_s36.py", "recipes/deit_b_distilled.py"]
    args += ["--recipe-variants", tiny, fast, "train.compile", "--steps", "1", "--warmup", "1", "--repeats", "1"]
    main([*args, "--json", str(path)])  # bf16 measurements: bf16_process resets Accelerate's state after
    written, report = json.loads(path.read_text())["recipes"], capsys.readouterr().out
    assert [v["variant"] for v in written] == [tiny, fast, "train.compile"]
    for variant in written[:2]:
        assert variant["complete"] and len(variant["recipes"]) == 2
        for r in variant["recipes"]:
            train, evaluation = r["train"], r["eval"]
            assert r["epochs"] == 30 and train["mode"] == "head" and train["preprocess"] == "official"
            assert train["micro_batch"] == 4 and train["precision"] == "bf16" and train["image_size"] == 32
            expected = 30 * (100_000 / train["images_per_s"] + 10_000 / evaluation["images_per_s"]) / 60
            assert r["projected_minutes"] == pytest.approx(expected)
            # the run's FLOPs at the peaks: an fp32 evaluation is held to the fp32 peak, autocast to the bf16 one
            assert positive(train["flops_per_image"]) and positive(evaluation["flops_per_image"])
            eval_peak = peaks[evaluation["precision"]]
            at_peak = 30 * (1e5 * train["flops_per_image"] / 100e12 + 1e4 * evaluation["flops_per_image"] / eval_peak)
            assert r["minutes_at_peak"] == pytest.approx(at_peak / 60)
            assert r["fraction_of_peak"] == pytest.approx(r["minutes_at_peak"] / r["projected_minutes"])
            # the printed table's row (markdown, as docs/benchmarks.md shows the paper's table)
            assert (
                f"| {r['recipe']} | {r['model']} | 4 x bf16: {train['images_per_s']:,.1f} | "
                f"{evaluation['micro_batch']} x {r['eval_precision']}: {evaluation['images_per_s']:,.1f} | "
                f"{r['projected_minutes']:,.1f} min ({r['train_minutes']:,.1f} + {r['eval_minutes']:,.1f}) | "
                f"{evaluation['flops_per_image'] / 1e9:.4g} | {train['mfu'] * 100:.1f}% / "
                f"{evaluation['mfu'] * 100:.1f}% | {r['minutes_at_peak']:,.1f} min |"
            ) in report
        assert variant["projected_table_minutes"] == pytest.approx(
            sum(r["projected_minutes"] for r in variant["recipes"])
        )
        assert variant["table_minutes_at_peak"] == pytest.approx(sum(r["minutes_at_peak"] for r in variant["recipes"]))
        assert f"{variant['table_fraction_of_peak'] * 100:.1f}% of peak" in report
        assert f"projected table: {variant['projected_table_minutes']:,.1f} min (2 of 2 recipes measured)" in report
        for r in variant["recipes"]:
            if "cached" in r:
                check_cached_projection(r, peaks, report)
        cached = [r for r in variant["recipes"] if "cached" in r]
        for kind in ("cached", "probe"):
            table = variant[kind]
            assert table["complete"] == (len(cached) == 2)
            assert table["projected_table_minutes"] == pytest.approx(sum(r[kind]["projected_minutes"] for r in cached))
            assert table["table_minutes_at_peak"] == pytest.approx(sum(r[kind]["minutes_at_peak"] for r in cached))
    # the feature cache is projected where the run would use it: not with train.cache_features false
    assert ["cached" in r for r in written[0]["recipes"] + written[1]["recipes"]] == [True, True, True, False]
    as_written, faster = written[0]["recipes"], written[1]["recipes"]
    # as written: fp32 evaluation (the official code's) at the micro-batch; the variant: autocast at 8
    assert [(r["eval_precision"], r["eval"]["precision"], r["eval"]["micro_batch"]) for r in as_written] == [
        ("fp32", "no", 4)
    ] * 2
    assert [(r["eval_precision"], r["eval"]["micro_batch"]) for r in faster] == [("bf16", 8)] * 2
    assert [(r["model"], r["train"]["fast_attention"]) for r in faster] == [
        ("cait_xxs24_224", True),
        ("test_vit", False),
    ]
    # "train.compile" is not field=value: each recipe of that variant says so, and nothing is projected for it
    broken = written[2]
    assert not broken["complete"] and broken["projected_table_minutes"] == 0
    assert all("recipe override 'train.compile' is not field=value" in r["error"] for r in broken["recipes"])
    assert "| recipes/cait_s36.py | ValueError: recipe override 'train.compile' is not field=value" in report


def check_cached_projection(r, peaks, report):
    """One recipe's projection with the feature cache and as a linear probe, recomputed from its JSON's inputs: a
    split whose features are cached costs one whole pass, then 29 passes of the head alone, counted from the head's
    FLOPs at the rate measured for the whole pass; at the datasheet peaks, the same FLOPs at the pass's peak."""
    train, evaluation = r["train"], r["eval"]
    head = {"test_vit": 64 * 200 * 2, "cait_xxs24_224": 192 * 200 * 2}[r["model"]]  # features x classes multiply-adds
    assert (evaluation["head_flops_per_image"], train["head_flops_per_image"]) == (head, 2 * head)  # + weight grads
    eval_seconds = 10_000 / evaluation["images_per_s"] * (1 + 29 * head / evaluation["flops_per_image"])
    probe_train_seconds = 100_000 / train["images_per_s"] * (1 + 29 * 2 * head / train["flops_per_image"])
    # the recipe's Mixup, CutMix, random erasing and drop path: every training pass stays whole
    assert r["cached"]["train_minutes"] == pytest.approx(r["train_minutes"])
    assert r["cached"]["eval_minutes"] == pytest.approx(eval_seconds / 60)
    assert r["probe"]["eval_minutes"] == pytest.approx(eval_seconds / 60)
    assert r["probe"]["train_minutes"] == pytest.approx(probe_train_seconds / 60)
    for kind in ("cached", "probe"):
        assert r[kind]["projected_minutes"] == pytest.approx(r[kind]["train_minutes"] + r[kind]["eval_minutes"])
    train_peak, eval_peak = peaks[train["precision"]], peaks[evaluation["precision"]]
    eval_flops = 10_000 * (evaluation["flops_per_image"] + 29 * head)
    recipe_train_flops = 30 * 100_000 * train["flops_per_image"]
    probe_train_flops = 100_000 * (train["flops_per_image"] + 29 * 2 * head)
    assert r["cached"]["minutes_at_peak"] == pytest.approx(
        (recipe_train_flops / train_peak + eval_flops / eval_peak) / 60
    )
    assert r["probe"]["minutes_at_peak"] == pytest.approx(
        (probe_train_flops / train_peak + eval_flops / eval_peak) / 60
    )
    c, p = r["cached"], r["probe"]
    assert (
        f"| {r['recipe']} | {2 * head / 1e9:.4g} / {head / 1e9:.4g} | {r['projected_minutes']:,.1f} min | "
        f"{c['projected_minutes']:,.1f} min ({c['train_minutes']:,.1f} + {c['eval_minutes']:,.1f}) | "
        f"{c['minutes_at_peak']:,.1f} min | {p['projected_minutes']:,.1f} min ({p['train_minutes']:,.1f} + "
        f"{p['eval_minutes']:,.1f}) | {p['minutes_at_peak']:,.1f} min |"
    ) in report


def test_the_probe_caches_training_features_and_the_recipes_do_not():
    """The projection's rule for the training features is the library's (features.training_cache_off): cached only
    when nothing random happens before the head, as in the ablation's probe row; each of the recipe's random steps
    alone turns it off."""
    from benchmarks.recipes import load_recipe
    from tiny_transformers.ablate import ABLATION_ROWS
    from tiny_transformers.features import training_cache_off

    def cached(args):
        return training_cache_off(load_recipe("recipes/vit_l.py", args)) is None

    bf16 = ["--train.mixed_precision", "bf16"]  # fp16 needs a GPU
    assert not cached(bf16)
    probe = ABLATION_ROWS["probe"].args()
    assert cached([*bf16, *probe])
    for field, value in [("augment.randaugment_ops", "2"), ("augment.mixup_alpha", "0.8"), ("model.drop_path_rate",
                         "0.1"), ("augment.random_erasing", "0.25")]:  # fmt: skip
        assert not cached([*bf16, *probe, f"--{field}", value])
    assert cached([*bf16, *probe, "--augment.mixup_alpha", "0.8", "--augment.mixup_prob", "0"])


@pytest.mark.slow
def test_one_real_epoch_is_timed_against_its_projection(tmp_path, capsys):
    """benchmarks/end_to_end.py, as gpu.sh runs it but tiny: it writes the synthetic set (Tiny ImageNet's parquet
    layout, the sizes asked for), launches the real recipe for one epoch with `accelerate launch`, and divides the
    run's own epoch_seconds by the projection's epoch of the same recipe and variant."""
    import datasets

    from benchmarks.end_to_end import main as end_to_end

    recipe, variant = "recipes/deit_b_distilled.py", "model.name=test_vit data.image_size=32 train.micro_batch_size=8"
    variant += " train.batch_size=16 train.mixed_precision=bf16"
    projection = tmp_path / "projection.json"  # as --sections recipes writes it: 1,000 img/s training, 500 evaluation
    entry = {"recipe": recipe, "train": {"images_per_s": 1000.0}, "eval": {"images_per_s": 500.0}}
    projection.write_text(json.dumps({"recipes": [{"variant": variant, "recipes": [entry]}]}))
    data, out, figures = tmp_path / "set", tmp_path / "run", tmp_path / "e2e.json"
    args = ["--data", str(data), "--output-dir", str(out), "--classes", "3", "--train-per-class", "16"]
    args += ["--val-per-class", "2", "--variant", variant, "--projection", str(projection), "--json", str(figures)]
    result = end_to_end(args)

    splits = datasets.load_dataset("parquet", data_dir=str(data / "data"))
    assert {name: len(split) for name, split in splits.items()} == {"train": 48, "validation": 6}
    assert splits["train"].features["label"].names == ["n00000000", "n00000001", "n00000002"]
    assert result["returncode"] == 0 and "error" not in result
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert result["epoch_seconds"] == record["epoch_seconds"] and record["epoch"] == 1
    assert result["projected_epoch_seconds"] == pytest.approx(48 / 1000 + 6 / 500)  # the set's 48 + 6 images
    assert result["epoch_over_projection"] == pytest.approx(record["epoch_seconds"] / result["projected_epoch_seconds"])
    assert result["fixed_seconds"] == pytest.approx(result["process_seconds"] - record["epoch_seconds"])
    assert result["command"].startswith(
        f"accelerate launch --num_processes 1 --num_machines 1 --num_cpu_threads_per_process {torch.get_num_threads()} "
        "--mixed_precision no"
    )
    assert f"{recipe} --data.source {data} --model.pretrained false --train.epochs 1" in result["command"]
    assert json.loads(figures.read_text())["epoch_seconds"] == record["epoch_seconds"]
    assert f"measured / projected {result['epoch_over_projection']:.3f}" in capsys.readouterr().out
