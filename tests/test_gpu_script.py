"""benchmarks/gpu.sh, the one command a GPU session runs, checked on a CPU: its stages run in order, each writes its
own JSON file, every command it runs is one its program accepts, and the shared deadline cuts a stage that overruns
and skips the rest. The measurements themselves are the benchmarks' own (tests/test_benchmark.py); here a stand-in
interpreter (PYTHON=...) records each command instead of running it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # every test here starts processes
ROOT = Path(__file__).resolve().parent.parent

# The stand-in for python3: `-c` checks (CUDA, imports) pass; anything else is recorded as one JSON line, and a command
# containing $FAKE_SLOW sleeps for a minute.
FAKE_PYTHON = f"""#!{sys.executable}
import json, os, sys, time
if sys.argv[1] == "-c":
    sys.exit(0)
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_SLOW") and os.environ["FAKE_SLOW"] in sys.argv:
    time.sleep(60)
"""


def run_gpu_sh(tmp_path: Path, **env: str) -> tuple[list[list[str]], str]:
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "commands.jsonl"
    # no wheels unless a test gives some: the checkout's own .whl/ (benchmarks/gpu_wheels.sh) must not matter here
    environment = {**os.environ, "PYTHON": str(fake), "FAKE_LOG": str(log), "GPU_SH_WHEELS": str(tmp_path / "none")}
    environment.update(env)
    done = subprocess.run(
        ["bash", "benchmarks/gpu.sh", str(tmp_path / "out")], cwd=ROOT, env=environment, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    commands = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return commands, done.stdout


def test_gpu_sh_runs_every_stage_in_order_with_commands_its_programs_accept(tmp_path):
    from benchmarks import parse_settings
    from benchmarks.attention import parse_args as attention_args
    from benchmarks.cuda_smoke import parse_settings as smoke_settings
    from benchmarks.end_to_end import parse_settings as end_to_end_settings
    from benchmarks.profile_forward import parse_args as profile_args

    commands, printed = run_gpu_sh(tmp_path)
    out = tmp_path / "out"
    programs = [c[1] if c[0] == "-m" else c[0] for c in commands]
    assert programs == [
        "benchmarks.cuda_smoke",
        "benchmarks",
        "benchmarks.end_to_end",
        "benchmarks",
        "benchmarks/attention.py",
        "benchmarks/attention.py",
        "benchmarks.profile_forward",
        "benchmarks.profile_forward",
    ]
    smoke, recipes, end_to_end, options, attention, compiled, profile, profile_fast = commands
    # the CUDA smoke stage first: every check, on the GPU, none started after 45 s (the stage is cut at 60)
    checks = smoke_settings(smoke[2:])
    assert (checks.device, checks.checks, checks.json) == ("cuda", (), str(out / "gpu-smoke.json"))
    assert checks.seconds <= 60 and "gpu.sh: 0 CUDA smoke (up to 60 s)" in printed
    settings = parse_settings(recipes[2:])
    assert settings.sections == ("recipes",) and settings.json == str(out / "gpu.json")
    assert settings.recipes == (
        "recipes/vit_l.py",
        "recipes/cait_s36.py",
        "recipes/deit_b_distilled.py",
        "recipes/swin_l.py",
    )
    assert settings.recipe_variants[0] == ""  # the recipes as written come first
    assert "cait_s36:model.fast_attention=true" in settings.recipe_variants[1].split()
    e2e = end_to_end_settings(end_to_end[2:])
    assert (e2e.recipe, e2e.projection, e2e.json) == (
        "recipes/deit_b_distilled.py",
        str(out / "gpu.json"),
        str(out / "gpu-end-to-end.json"),
    )
    assert (e2e.classes, e2e.train_per_class, e2e.val_per_class) == (200, 500, 50)  # Tiny ImageNet's size
    head = parse_settings(options[2:])
    assert head.sections == ("head_options",) and head.model == ("vit_l", "cait_s36", "deit_b_distilled", "swin_l")
    assert not head.no_compile and head.json == str(out / "gpu-options.json")
    eager, compiled = attention_args(attention[1:]), attention_args(compiled[1:])
    assert (eager.compile, compiled.compile, eager.device) == (False, True, "cuda")
    assert eager.json == compiled.json == out / "gpu-attention.json"
    timms, fast = profile_args(profile[2:]), profile_args(profile_fast[2:])
    assert (timms.fast_attention, fast.fast_attention) == (False, True) and timms.json != fast.json
    assert "gpu.sh: done in" in printed and "skipped" not in printed


def test_gpu_sh_cuts_an_overrunning_stage_at_the_deadline_and_skips_the_rest(tmp_path):
    commands, printed = run_gpu_sh(tmp_path, GPU_SH_SECONDS="30", FAKE_SLOW="recipes")
    # the smoke stage, then stage 1 only, cut after 15 s of its 60
    assert [c[:2] for c in commands] == [["-m", "benchmarks.cuda_smoke"], ["-m", "benchmarks"]]
    assert "gpu.sh: 1 recipes ended with status 124" in printed
    for stage in ("2 end-to-end epoch", "3 head-mode options", "4 attention", "5 profile"):
        assert f"gpu.sh: {stage} skipped: the deadline has passed" in printed
    assert "gpu.sh: done in" in printed


@pytest.mark.parametrize("wheels", [False, True])
def test_gpu_sh_installs_carried_wheels_only_when_there_are_some(tmp_path, wheels):
    """With a wheel folder (benchmarks/gpu_wheels.sh's .whl/), the first command is pip installing exactly those."""
    folder = tmp_path / "wheels"
    if wheels:
        folder.mkdir()
        (folder / "x-1.0-py3-none-any.whl").write_bytes(b"")
    commands, _ = run_gpu_sh(tmp_path, GPU_SH_WHEELS=str(folder))
    if wheels:
        install = commands.pop(0)
        assert install[:4] == ["-m", "pip", "install", "-q"] and install[-1] == f"{folder}/x-1.0-py3-none-any.whl"
        assert "--no-index" in install and "--no-deps" in install
    assert commands[0][:2] == ["-m", "benchmarks.cuda_smoke"] and len(commands) == 8


def test_gpu_sh_refuses_a_json_file_for_its_folder(tmp_path):
    """Its figures are several files: `bash benchmarks/gpu.sh gpu.json` (the old form) is one sentence, not a folder."""
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "gpu.json"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and not (ROOT / "gpu.json").exists()
    assert done.stderr == "benchmarks/gpu.sh: give a folder for its JSON files, not the file gpu.json\n"


# benchmarks/cuda_smoke.py, the smoke stage, on this CPU: the same checks with --device cpu


@pytest.fixture
def smoke(tmp_path, bf16_process):
    """``python -m benchmarks.cuda_smoke --device cpu ... --json PATH`` in this process: (rows, JSON, printed)."""
    import contextlib
    import io

    from benchmarks.cuda_smoke import main

    def run(*args: str):
        printed, path = io.StringIO(), tmp_path / "smoke.json"
        with contextlib.redirect_stdout(printed):
            rows = main(["--device", "cpu", "--json", str(path), *args])
        return rows, json.loads(path.read_text()) if path.exists() else None, printed.getvalue()

    return run


def test_the_smoke_stage_prints_one_row_per_check_and_writes_them(smoke):
    """Four of the checks on the CPU: the exact preprocessing (the CPU against itself: 0), fp16 (a skip row saying
    why: CUDA only), the bf16 backbone (bitwise autocast's) and the feature cache (a tiny probe run cached and not:
    the same metrics and weights); the table is the rows, in the checks' order, and the JSON holds the same."""
    from benchmarks.cuda_smoke import TABLE_HEAD, table_row

    rows, written, printed = smoke("--checks", "feature_cache", "fp16_step", "preprocess", "backbone_bf16")
    assert [(row["name"], row["status"]) for row in rows] == [
        ("preprocess", "pass"),
        ("fp16_step", "skip"),
        ("backbone_bf16", "pass"),
        ("feature_cache", "pass"),
    ]
    assert rows[0]["detail"].startswith("uint8 resize: max 0 level(s), 0.00e+00 of pixels")
    assert rows[1]["detail"] == "fp16 autocast and its gradient scaler need CUDA (the runs here are fp32)"
    assert rows[2]["detail"].endswith("layers in bf16: logits bitwise equal to bf16 autocast's")
    assert rows[3]["detail"].startswith("metrics and weights bitwise equal (2 epochs: top-1 ")
    assert written == {"device": "cpu", "rows": rows}
    lines = printed.splitlines()
    assert "\n".join(lines[:2]) == TABLE_HEAD and lines[2:6] == [table_row(row) for row in rows]
    assert lines[-1] == "cuda smoke: 4 of 4 passed or skipped"


def test_a_failing_check_is_a_row_and_the_next_check_still_runs(smoke, monkeypatch):
    from benchmarks import cuda_smoke

    def broken(smoke):
        raise ValueError("resize on this device: no kernel")

    monkeypatch.setitem(cuda_smoke.CHECKS, "preprocess", ("data.preprocess official: device against CPU", broken))
    rows, written, printed = smoke("--checks", "preprocess", "backbone_fp8")
    assert [(row["status"], row["detail"]) for row in rows] == [
        ("fail", "ValueError: resize on this device: no kernel"),
        ("skip", "fp8 runs on a GPU only"),
    ]
    assert "| data.preprocess official: device against CPU | fail | ValueError: resize on" in printed
    assert printed.splitlines()[-1] == "cuda smoke: 1 of 2 passed or skipped; failed: preprocess"


def test_a_failed_set_up_fails_every_check_in_its_row(smoke, monkeypatch):
    from benchmarks import cuda_smoke

    def no_data(self, device, root):
        raise OSError("No space left on device")

    monkeypatch.setattr(cuda_smoke.Smoke, "__init__", no_data)
    rows, written, _ = smoke("--checks", "preprocess", "resume")
    assert [(row["name"], row["status"], row["detail"]) for row in written["rows"]] == [
        ("preprocess", "fail", "set-up: OSError: No space left on device"),
        ("resume", "fail", "set-up: OSError: No space left on device"),
    ]


def test_checks_not_started_in_time_are_skip_rows(smoke):
    rows, written, _ = smoke("--seconds", "0", "--checks", "preprocess", "compile")
    assert [(row["name"], row["status"], row["detail"]) for row in rows] == [
        ("preprocess", "skip", "not started: --seconds ran out"),
        ("compile", "skip", "not started: --seconds ran out"),
    ]


def test_without_cuda_the_smoke_stage_says_so_and_runs_nothing(smoke):
    from benchmarks.cuda_smoke import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the stage runs")
    printed = subprocess.run(
        [sys.executable, "-m", "benchmarks.cuda_smoke", "--json", "unused.json"], cwd=ROOT, capture_output=True,
        text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert printed.returncode == 0 and not (ROOT / "unused.json").exists()
    assert printed.stdout == "benchmarks.cuda_smoke: no CUDA GPU visible to torch; no check run\n"
    assert main([]) == []


@pytest.mark.slow
def test_the_smoke_stage_kills_a_run_and_resumes_it_bitwise_on_the_cpu(smoke):
    """The SIGKILL check (a run in another process killed after its 4th update, resumed here) and the fp32
    evaluation, both against the same uninterrupted run."""
    rows, _, _ = smoke("--checks", "fp32_evaluation", "resume")
    assert [(row["name"], row["status"]) for row in rows] == [("fp32_evaluation", "pass"), ("resume", "pass")], rows
    assert rows[0]["detail"].startswith("equal, bitwise (in training: loss ")
    assert rows[1]["detail"] == (
        "killed (SIGKILL) after step_00000004, resumed: metrics and weights bitwise the uninterrupted run's"
    )
