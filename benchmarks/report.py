"""The report: every figure measured, as text for people and as JSON for the record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _precision(autocast: str) -> str:
    return "fp32" if autocast == "no" else autocast


def format_report(results: dict[str, Any]) -> str:
    """The human-readable report: the machine, then every figure measured.

    >>> print(format_report({"machine": {"cpu": "X", "cpu_cores": 2}, "device": "cpu"}).splitlines()[0])
    machine: X, 2 cores (2 usable), torch n/a, device cpu
    """
    m = results["machine"]
    lines = [
        f"machine: {m.get('cpu')}, {m.get('cpu_cores')} cores "
        f"({m.get('cpu_cores_usable', m.get('cpu_cores'))} usable), "
        f"torch {m.get('torch', 'n/a')}, device {results.get('device')}"
        + (f", GPU {m['gpu']} ({m['gpu_memory_gib']} GiB)" if m.get("gpu") else ""),
    ]
    if m.get("date"):
        lines.append(
            f"date: {m['date']}; timm {m.get('timm')}, torchvision {m.get('torchvision')}, python {m.get('python')}"
        )
    if results.get("command"):
        lines.append(f"command: {results['command']}")
    for d in results.get("data_path", []):
        lines.append(
            f"\n1. data path, {d['num_workers']} worker(s), batch {d['batch_size']}, {d['native_size']} px JPEG "
            f"({d['jpeg_bytes_mean']} B) -> {d['image_size']} px float on {d['device']} (pin_memory {d['pin_memory']}):"
        )
        for measure, label in (("ready", "ready for the model"), ("loader_only", "loader output only")):
            r = d[measure]
            lines.append(
                f"   {label:<20} paper {_fmt(r['paper_images_per_s'])} img/s "
                f"({_fmt(r['paper_images_per_s_per_core'])}/core)"
                f" | library {_fmt(r['library_images_per_s'])} img/s ({_fmt(r['library_images_per_s_per_core'])}/core)"
                f" | ratio {_fmt(r['ratio'], 2)}x"
            )
        lines.append(
            f"   loader start-up (first batch): paper {d['ready']['paper_first_batch_s']:.3f} s, "
            f"library {d['ready']['library_first_batch_s']:.3f} s"
        )
    if "loop_overhead" in results:
        o = results["loop_overhead"]
        lines.append(
            f"\n2. loop overhead ({o['model']} at {o['image_size']} px, micro-batch {o['micro_batch']} x "
            f"{o['accumulation']} accumulation, CPU fp32, 1 thread, {o['num_workers']} workers, "
            f"progress bar {'on' if o['progress_bar'] else 'off'}):\n"
            f"   CPU time   finetune() {o['finetune_cpu_seconds_per_step'] * 1e3:.2f} ms/step | bare PyTorch loop "
            f"{o['bare_cpu_seconds_per_step'] * 1e3:.2f} ms/step | ratio {o['ratio']:.3f} "
            f"(per repeat {', '.join(f'{r:.3f}' for r in o['ratio_per_repeat'])})\n"
            f"   wall clock finetune() {o['finetune_wall_seconds_per_step'] * 1e3:.2f} ms/step | bare PyTorch loop "
            f"{o['bare_wall_seconds_per_step'] * 1e3:.2f} ms/step | ratio {o['ratio_wall']:.3f}"
        )
    for t in results.get("training", []):
        lines.append(f"\n3. training throughput: {t['model']} ({t['timm_name']})")
        inference = t.get("inference", {})
        if "error" in inference:
            lines.append(f"   inference: {inference['error']}")
        else:
            lines.append(
                f"   inference  micro-batch {inference['micro_batch']}, {inference['image_size']} px, "
                f"{inference['precision']}: "
                f"{_fmt(inference['images_per_s'])} img/s"
            )
        for mode in ("head", "full"):
            if mode not in t:
                continue
            r = t[mode]
            if "error" in r:
                lines.append(f"   {mode:<5} {r['error']}")
                continue
            oom = f" (out of memory at {r['out_of_memory_at']})" if r.get("out_of_memory_at") else ""
            mfu = f"{r['mfu'] * 100:.1f}% ({r['peak_flops_source']})" if r["mfu"] is not None else "n/a (no GPU)"
            peak = f"{r['peak_memory_gib']:.2f} GiB" if r["peak_memory_gib"] is not None else "n/a (no GPU)"
            lines.append(
                f"   {mode:<5}      micro-batch {r['micro_batch']}{oom}: {_fmt(r['images_per_s'])} img/s, "
                f"{r['flops_per_image'] / 1e9:.4g} GFLOP/img, {r['achieved_tflops']:.4g} TFLOP/s, MFU {mfu}, "
                f"peak memory {peak}, kept for backward {r['saved_for_backward_mib']:.4g} MiB/micro-batch"
            )
        if "head_over_inference" in t:
            lines.append(f"   head-mode training / inference throughput: {t['head_over_inference']:.3f}")
        if "projected_recipe_minutes" in t:
            lines.append(
                f"   projected 30-epoch head-mode recipe (100,000 train + 10,000 eval images an epoch): "
                f"{t['projected_recipe_minutes']:,.1f} min"
            )
        if "full_over_head_saved_memory" in t:
            lines.append(
                f"   activation memory kept for backward, full / head: {t['full_over_head_saved_memory']:,.0f}x"
            )
    projected = [t["projected_recipe_minutes"] for t in results.get("training", []) if "projected_recipe_minutes" in t]
    if len(projected) > 1:
        lines.append(
            f"\nprojected table, the {len(projected)} models above one after the other: {sum(projected):,.1f} min"
        )
    if results.get("head_options"):  # markdown, as the Speed options table of docs/benchmarks.md takes it
        lines += [
            "\nhead-mode options, each against its default in the same run (speedup > 1: faster):\n",
            "| model | option | img/s: option vs default | speedup | micro-batch | peak memory, GiB | first steps |",
            "|---|---|---|---|---|---|---|",
        ]
    agreements = []
    for e in results.get("head_options", []):
        if "error" in e:
            lines.append(f"| {e['model']} | {e['option']} | {e['error'].replace('|', '/')} | | | | |")
            continue
        memory = (
            f"{e['peak_memory_gib']:.2f} vs {e['baseline_peak_memory_gib']:.2f}"
            if e.get("peak_memory_gib") is not None
            else "n/a"
        )
        lines.append(
            f"| {e['model']} | {e['option']} | {_fmt(e['images_per_s'])} vs {_fmt(e['baseline_images_per_s'])} | "
            f"**{e['speedup']:.3f}** | {e['micro_batch']} vs {e['baseline_micro_batch']}, {e['precision']} | "
            f"{memory} | {e['warmup_seconds']:.1f} s |"
        )
        if "agreement" in e:  # model.backbone_dtype fp8's outputs against bf16's (options.fp8_agreement)
            agreements.append((e["model"], e["agreement"]))
    if agreements:
        lines += [
            "\nfp8 outputs against bf16's, the same weights and images:\n",
            "| model | images, weights | relative error: features | relative error: logits | top-1 agreement |",
            "|---|---|---|---|---|",
        ]
    for model, a in agreements:
        lines.append(
            f"| {model} | {a['error'].replace('|', '/')} | | | |"
            if "error" in a
            else f"| {model} | {a['images']}, {a['weights']} | {a['features_relative_error']:.4f} | "
            f"{a['logits_relative_error']:.4f} | {a['top1_agreement']:.3f} |"
        )
    for variant in results.get("recipes", []):
        # a markdown table, as issue 12 and docs/benchmarks.md show the paper's table: pasteable as it is printed
        lines += [
            f"\nrecipes as they run, {variant['variant'] or 'as written'}, every feature computed every time "
            "(train.cache_features false):\n",
            "| recipe | model | training: micro-batch x precision, img/s | evaluation: micro-batch x precision, img/s "
            "| 30 epochs: train + eval | GFLOP per image (fwd) | MFU: training / evaluation | at the datasheet peaks |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in variant["recipes"]:
            train, evaluation = r.get("train", {}), r.get("eval", {})
            error = r.get("error") or train.get("error") or evaluation.get("error")
            if error:
                lines.append(f"| {r['recipe']} | {error.replace('|', '/')} | | | | | | |")
                continue
            mfu = " / ".join("n/a" if x["mfu"] is None else f"{x['mfu'] * 100:.1f}%" for x in (train, evaluation))
            lines.append(
                f"| {r['recipe']} | {r['model']} | {train['micro_batch']} x {_precision(train['precision'])}: "
                f"{_fmt(train['images_per_s'])} | {evaluation['micro_batch']} x {r['eval_precision']}: "
                f"{_fmt(evaluation['images_per_s'])} | {_fmt(r['projected_minutes'])} min ({_fmt(r['train_minutes'])} "
                f"+ {_fmt(r['eval_minutes'])}) | {evaluation['flops_per_image'] / 1e9:.4g} | {mfu} | "
                f"{_fmt(r['minutes_at_peak']) + ' min' if 'minutes_at_peak' in r else 'n/a'} |"
            )
        measured = sum("projected_minutes" in r for r in variant["recipes"])
        at_peak = (
            f"; at the datasheet peaks {_fmt(variant['table_minutes_at_peak'])} min, "
            f"{variant['table_fraction_of_peak'] * 100:.1f}% of peak"
            if "table_minutes_at_peak" in variant
            else ""
        )
        lines.append(
            f"\n   projected table: {_fmt(variant['projected_table_minutes'])} min "
            f"({measured} of {len(variant['recipes'])} recipes measured){at_peak}"
        )
        lines += _cached_table(variant)
    if results.get("options"):
        lines.append("\noptions, each against the default in the same run (speedup > 1: faster):")
    for e in results.get("options", []):
        if "error" in e:
            lines.append(f"   {e['option']}: {e['error']}")
            continue
        where = (
            f"{e['model']}, full mode, micro-batch {e['micro_batch']}, first steps {e['warmup_seconds']:.1f} s"
            if "model" in e
            else f"{e['num_workers']} worker(s)"
        )
        lines.append(
            f"   {e['option']}: {_fmt(e['images_per_s'])} vs {_fmt(e['baseline_images_per_s'])} img/s, "
            f"speedup {e['speedup']:.3f} ({where})"
        )
    return "\n".join(lines)


def _minutes(projection: dict[str, Any], at_peak: bool = False) -> str:
    if at_peak:
        return f"{_fmt(projection['minutes_at_peak'])} min" if "minutes_at_peak" in projection else "n/a"
    return (
        f"{_fmt(projection['projected_minutes'])} min ({_fmt(projection['train_minutes'])} + "
        f"{_fmt(projection['eval_minutes'])})"
    )


def _cached_table(variant: dict[str, Any]) -> list[str]:
    """The variant's recipes with the feature cache and as linear probes (benchmarks/recipes.py), as markdown."""
    cached = [r for r in variant["recipes"] if "cached" in r]
    if not cached:
        return []
    lines = [
        f"\nthe same with the feature cache (train.cache_features true), and as linear probes (the ablation's probe "
        f"row), {variant['variant'] or 'as written'}; head-only passes counted from their FLOPs:\n",
        "| recipe | head GFLOP per image: training step / evaluation | train.cache_features false | with the cache: "
        "train + eval | at the datasheet peaks | probe: train + eval | probe at the datasheet peaks |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in cached:
        lines.append(
            f"| {r['recipe']} | {r['train']['head_flops_per_image'] / 1e9:.4g} / "
            f"{r['eval']['head_flops_per_image'] / 1e9:.4g} | {_fmt(r['projected_minutes'])} min | "
            f"{_minutes(r['cached'])} | {_minutes(r['cached'], True)} | {_minutes(r['probe'])} | "
            f"{_minutes(r['probe'], True)} |"
        )
    totals = []
    for kind, label in (("cached", "with the cache"), ("probe", "as probes")):
        entry = variant[kind]
        peak = (
            f", at the datasheet peaks {_fmt(entry['table_minutes_at_peak'])} min"
            if "table_minutes_at_peak" in entry
            else ""
        )
        totals.append(f"{label} {_fmt(entry['projected_table_minutes'])} min{peak}")
    lines.append(f"\n   projected table: {'; '.join(totals)} ({len(cached)} of {len(variant['recipes'])} recipes)")
    return lines


def write_json(path: str | Path | None, results: dict[str, Any] | list[Any]) -> None:
    """Write ``results`` to ``path`` (nothing when None), atomically: a reader never sees half a file."""
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".partial")
    partial.write_text(json.dumps(results, indent=2, default=str))
    partial.replace(target)  # a run killed mid-write keeps the previous complete file
