"""Shared fixtures: tiny Tiny-ImageNet look-alikes on disk, in every layout the loader accepts.

The environment is set before anything imports ``datasets``/``huggingface_hub`` (they read it at import):
the Hub is offline and every cache lives in a per-session temporary folder, so tests never read or write
the user's caches.

One Stanford folder is the ground truth; the zip, imagefolder, save_to_disk and parquet variants copy its
image files byte for byte, so every layout must load to exactly the same (label, image) pairs. The makers
live in ``tiny_transformers.synthetic`` (shared with the benchmark and the demo); here are the fixtures.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

# The fast tier runs on every core with pytest-xdist (`-n 2`, CONTRIBUTING.md): each worker computes on its share
# of the cores, as a process launched by `accelerate launch` does, instead of all of them fighting over every core
# (engine.usable_cores would import torch, which must not load before the thread count is set).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="tiny-transformers-tests-"))
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["HF_HOME"] = str(_SESSION_DIR / "hf")
os.environ["HF_DATASETS_CACHE"] = str(_SESSION_DIR / "hf" / "datasets")
os.environ["TINY_TRANSFORMERS_CACHE"] = str(_SESSION_DIR / "tiny_transformers")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402  (after the environment on purpose)

from tiny_transformers.synthetic import (  # noqa: E402
    make_hf_splits,
    make_imagefolder,
    make_parquet,
    make_saved,
    make_stanford,
    make_stanford_zip,
    stanford_records,
)


@pytest.fixture(scope="session")
def stanford_factory() -> Callable[..., Path]:
    """:func:`make_stanford` itself, for tests that need their own (mutable) copy under ``tmp_path``."""
    return make_stanford


@pytest.fixture(scope="session")
def data_tools() -> SimpleNamespace:
    """The layout builders of ``tiny_transformers.synthetic``, as the tests have always reached them:
    ``make_stanford``, ``stanford_records``, ``make_stanford_zip``, ``make_imagefolder``, ``make_hf_splits``,
    ``make_saved``, ``make_parquet``."""
    return SimpleNamespace(
        make_stanford=make_stanford,
        stanford_records=stanford_records,
        make_stanford_zip=make_stanford_zip,
        make_imagefolder=make_imagefolder,
        make_hf_splits=make_hf_splits,
        make_saved=make_saved,
        make_parquet=make_parquet,
    )


@pytest.fixture(scope="session")
def stanford_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-class Stanford folder (6 train, 3 val images per class, 64x64); treat it as read-only."""
    return make_stanford(tmp_path_factory.mktemp("stanford"))


@pytest.fixture(scope="session")
def stanford_zip(stanford_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny-imagenet-200.zip`` of :func:`stanford_dir` (the folder nested one level inside)."""
    return make_stanford_zip(stanford_dir, tmp_path_factory.mktemp("zip") / "tiny-imagenet-200.zip")


@pytest.fixture(scope="session")
def imagefolder_dir(stanford_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images as an imagefolder tree: ``train/<wnid>/``, ``val/<wnid>/``."""
    return make_imagefolder(stanford_dir, tmp_path_factory.mktemp("imagefolder"))


@pytest.fixture(scope="session")
def saved_dir(stanford_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images as a ``save_to_disk`` DatasetDict (train, valid)."""
    return make_saved(stanford_dir, tmp_path_factory.mktemp("saved") / "dataset")


@pytest.fixture(scope="session")
def parquet_dir(stanford_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images as zh-plus-style parquet files under ``data/``."""
    return make_parquet(stanford_dir, tmp_path_factory.mktemp("parquet"))


@pytest.fixture
def fp8_on_this_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``model.backbone_dtype fp8`` on this CPU: torchao refuses fp8 without a GPU of compute capability 8.9, but
    torch has CPU kernels for the scaled fp8 product it calls (``torch._scaled_mm``), so this lifts torchao's one
    hardware check and the library's own (``backbone.fp8_unavailable``); the fp8 arithmetic is torchao's and torch's."""
    pytest.importorskip("torchao", reason="model.backbone_dtype fp8 needs torchao (the test extra installs it)")
    from torchao.quantization import quant_api

    from tiny_transformers import backbone

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    monkeypatch.setattr(backbone, "fp8_unavailable", lambda: None)


@pytest.fixture
def bf16_process() -> Iterator[None]:
    """Accelerate fixes the autocast precision once per process and the other tests' runs use 'no': these runs
    start from a fresh Accelerate state, and leave one behind, as a new process would."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`--dist loadgroup` keeps an `xdist_group` on one worker by the "@group" suffix xdist 3.8 gives a test's id
    through ``item._nodeid``, which pytest 9.2 no longer reads (its id is ``item._id``; pytest-xdist#1386): without
    this each marked test went to either worker. No effect once xdist sets the suffix itself."""
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers under --dist loadgroup
        return
    from _pytest.nodeid import coerce_node_id

    for item in items:
        groups = {
            str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")
        }
        if groups and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(sorted(groups))}")
