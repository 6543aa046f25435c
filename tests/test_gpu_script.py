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
    from benchmarks.end_to_end import parse_settings as end_to_end_settings
    from benchmarks.profile_forward import parse_args as profile_args

    commands, printed = run_gpu_sh(tmp_path)
    out = tmp_path / "out"
    programs = [c[1] if c[0] == "-m" else c[0] for c in commands]
    assert programs == [
        "benchmarks",
        "benchmarks.end_to_end",
        "benchmarks",
        "benchmarks/attention.py",
        "benchmarks/attention.py",
        "benchmarks.profile_forward",
        "benchmarks.profile_forward",
    ]
    recipes, end_to_end, options, attention, compiled, profile, profile_fast = commands
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
    assert [c[:2] for c in commands] == [["-m", "benchmarks"]]  # stage 1 only, cut after 15 s of its 60
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
    assert commands[0][:2] == ["-m", "benchmarks"] and len(commands) == 7


def test_gpu_sh_refuses_a_json_file_for_its_folder(tmp_path):
    """Its figures are several files: `bash benchmarks/gpu.sh gpu.json` (the old form) is one sentence, not a folder."""
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "gpu.json"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and not (ROOT / "gpu.json").exists()
    assert done.stderr == "benchmarks/gpu.sh: give a folder for its JSON files, not the file gpu.json\n"
