"""The run's ``.hub-push/``: what a Hub push in flight sends, one folder per push named after its process, and the
removal of what a process that died mid-upload left (also for the export's temporary folders).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import socket
from pathlib import Path

from .rundir import RunDir, process_alive

_names = itertools.count()


def owned_name(prefix: str) -> str:
    """A new name ``<prefix><pid>-<n>-<host>`` (e.g. ``snapshot-4121-0-gpu-node-7``), which tells
    :func:`remove_dead_owners` the process that owns it."""
    return f"{prefix}{os.getpid()}-{next(_names)}-{socket.gethostname()}"


def remove_dead_owners(parent: Path, prefix: str) -> list[Path]:
    """Remove the folders under ``parent`` named by :func:`owned_name` (``prefix``: a regular expression) of this
    host's processes that no longer run (``RunLock``'s rule); returns them, e.g. ``[outputs/.export.tmp-4121-0-h]``
    for ``prefix`` ``re.escape(".export.tmp-")``."""
    try:
        children = sorted(Path(parent).iterdir())
    except OSError:  # nothing there
        return []
    removed, host = [], socket.gethostname()
    for child in children:
        owner = re.fullmatch(rf"{prefix}(\d+)-\d+-(.+)", child.name)
        if owner and owner.group(2) == host and not process_alive(int(owner.group(1))):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def new_staging(output_dir: Path, kind: str) -> Path:
    """A new empty folder under the run's ``.hub-push/`` (same file system: hard links work), e.g.
    ``outputs/run/.hub-push/snapshot-4121-0-gpu-node-7``, after removing what dead processes left there."""
    remove_abandoned(output_dir, remove_empty=False)  # another thread may be making its folder here right now
    folder = RunDir(Path(output_dir)).push_staging / owned_name(f"{kind}-")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def remove_abandoned(output_dir: str | Path, remove_empty: bool = True) -> list[Path]:
    """Remove, and say so, what pushes left under the run's ``.hub-push/`` when their process ended mid-upload (a
    snapshot holds a copy of the weights), with ``remove_empty`` that folder too when empty; returns what it removed."""
    staging = RunDir(Path(output_dir)).push_staging
    removed = remove_dead_owners(staging, "[a-z]+-")
    if removed:
        pids = sorted({folder.name.split("-")[1] for folder in removed})
        print(
            f"removed {len(removed)} folder{'s' * (len(removed) > 1)} under {staging} that a push left when its "
            f"process (pid {', '.join(pids)}) ended mid-upload",
            flush=True,
        )
    if remove_empty:
        with contextlib.suppress(OSError):
            staging.rmdir()  # only when empty: a `push` command or another run's push may be using it
    return removed


def link_tree(source: Path, target: Path) -> None:
    """``target`` with the files of ``source`` hard-linked (copied where links fail): instant, and kept when the
    source is deleted (a pruned checkpoint). Only for files replaced whole, never rewritten in place (checkpoints,
    the export), e.g. ``link_tree(run / "checkpoints/step_00000300", upload / "last-checkpoint")``."""
    for file in sorted(p for p in Path(source).rglob("*") if p.is_file()):
        destination = target / file.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(file, destination)
        except OSError:
            shutil.copy2(file, destination)
