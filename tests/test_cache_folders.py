"""A cache folder that cannot be written (a read-only HOME, HF_HOME, HF_DATASETS_CACHE or TINY_TRANSFORMERS_CACHE)
is named, with the variable that moves it, for every source that needs one: the zip (extracted once) and the layouts
datasets prepares (imagefolder, parquet). Run as a user the folder is read-only for: the tests' root user would write
anywhere, so it runs the command as nobody."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tiny_transformers.synthetic import make_imagefolder, make_parquet, make_stanford, make_stanford_zip

ROOT = Path(__file__).resolve().parents[1]
AS_NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"] if os.getuid() == 0 else []
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(AS_NOBODY) and shutil.which("setpriv") is None, reason="root without setpriv"),
]


@pytest.fixture(scope="module")
def world():
    """Data in every layout and a writable HOME, in a folder another user can read (pytest's tmp_path is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="tt-cache-folders-"))
    stanford = make_stanford(folder / "stanford")
    (folder / "zip").mkdir()
    sources = {
        "zip": make_stanford_zip(stanford, folder / "zip" / "tiny-imagenet-200.zip"),
        "imagefolder": make_imagefolder(stanford, folder / "imagefolder"),
        "parquet": make_parquet(stanford, folder / "parquet"),
    }
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield folder, sources
    shutil.rmtree(folder, ignore_errors=True)


def train(folder: Path, source: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    out = Path(tempfile.mkdtemp(dir=folder))
    out.chmod(0o777)  # the run folder itself is writable: only the cache is not
    args = ["train", "test_vit", "--model.pretrained", "false", "--data.source", str(source), "--data.num_workers", "0"]
    args += ["--train.output_dir", str(out / "run"), "--train.mixed_precision", "no", "--train.epochs", "1"]
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [*AS_NOBODY, sys.executable, "-m", "tiny_transformers.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=folder,
    )
    assert not (out / "run" / "checkpoints").exists() and not (out / "run" / "metrics.jsonl").exists()
    return done


def read_only(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    return folder


@pytest.mark.parametrize(
    ("layout", "variable", "named", "why", "default"),
    [
        ("zip", "HOME", ".cache/tiny_transformers", "the zip is extracted once", "TINY_TRANSFORMERS_CACHE"),
        ("zip", "TINY_TRANSFORMERS_CACHE", "", "the zip is extracted once", "TINY_TRANSFORMERS_CACHE"),
        ("imagefolder", "HOME", ".cache/huggingface/datasets", "datasets prepares the data once", "HF_DATASETS_CACHE"),
        ("parquet", "HF_HOME", "datasets", "datasets prepares the data once", "HF_DATASETS_CACHE"),
        ("parquet", "HF_DATASETS_CACHE", "", "datasets prepares the data once", "HF_DATASETS_CACHE"),
    ],
)
def test_a_read_only_cache_folder_is_named_with_the_variable_that_moves_it(
    world, layout, variable, named, why, default
):
    folder, sources = world
    home = folder / f"home-{layout}-{variable}"
    home.mkdir()
    home.chmod(0o777)
    env = {"HOME": str(home)}
    if variable == "HOME":
        read_only(home / ".cache")
        cache = home / named
    else:
        env[variable] = str(read_only(folder / f"ro-{layout}-{variable}"))
        cache = Path(env[variable]) / named if named else Path(env[variable])
    done = train(folder, sources[layout], env)
    assert done.returncode == 2, done.stderr[-2000:]
    error = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "Traceback" not in done.stderr
    assert error[0].startswith(f"error: The cache folder '{cache.resolve()}' cannot be written (Permission denied: ")
    assert f"it is where {why} for data.source '{sources[layout]}'; set {default}" in error[0]
    assert error[0].endswith(f"(it lies under HOME, '{home.resolve()}', by default)." if variable == "HOME" else ".")
