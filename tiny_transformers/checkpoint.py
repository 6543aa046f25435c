"""Training checkpoints: ``output_dir/checkpoints/step_00001234/`` holds what ``accelerator.save_state`` writes (model,
optimizer, scaler, RNG, EMA; no scheduler: the lr is recomputed) plus ``trainer_state.json``, written last; written
into ``.tmp-step_...`` and renamed when complete, so a run killed mid-write leaves nothing that is loaded.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from . import hub as hub_io
from .config import FinetuneConfig, describe_differences, trajectory_differences
from .errors import CheckpointError
from .rundir import HUB_STAGING, RunDir, epoch_score, is_main_launch_process
from .runfiles import RunFileError, read_json, write_atomic, write_errno

STATE_FILE = "trainer_state.json"


class CorruptCheckpoint(CheckpointError):
    """A checkpoint whose trainer state cannot be read (a resume falls back to the previous one)."""


FORMAT_VERSION = 2  # bump when the checkpoint contents change incompatibly
READABLE_VERSIONS = (1, 2)  # 1 saved the torch scheduler too, which is ignored


class RunningLoss:
    """The training loss of the unfinished epoch (a float64 sum over its images, and their count), kept on the device
    and read only when needed: a read per step would let the GPU run dry. A non-finite step makes the sum non-finite,
    so one check per checkpoint or epoch catches it; :meth:`divergence` says where, for the message.

    >>> loss = RunningLoss()
    >>> loss.add(torch.tensor([1.0, 3.0]).sum(), images=2, step=0)
    >>> loss.mean()
    2.0
    >>> loss.add(torch.tensor(float("nan")), images=1, step=1)
    >>> loss.divergence()
    (1, 2.0)
    """

    def __init__(self, total: float = 0.0, images: int = 0, grad_norm_total: float = 0.0, grad_norms: int = 0) -> None:
        self.total = total  # summed losses already read from the device
        self.images = images
        self.grad_norm_total, self.grad_norms = grad_norm_total, grad_norms  # with optim.clip_grad: norms before it
        self._norms: torch.Tensor | None = None  # summed on the device, not yet in grad_norm_total
        self._pending: torch.Tensor | None = None  # summed on the device, not yet in total
        self._first_bad: torch.Tensor | None = None  # first optimizer step with a non-finite loss, or -1
        self._last_finite: torch.Tensor | None = None  # per-image mean of the last finite micro-batch, or NaN

    def add(self, loss_sum: torch.Tensor, images: int, step: int) -> None:
        """Add a micro-batch's summed loss (on the device, no sync); ``step`` is the optimizer step it belongs to."""
        loss = loss_sum.detach().double()
        if self._pending is None:
            self._pending = torch.zeros((), dtype=torch.float64, device=loss.device)
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self._last_finite = torch.full((), float("nan"), dtype=torch.float64, device=loss.device)
        self._pending += loss
        self.images += images
        finite = torch.isfinite(loss)
        self._first_bad = torch.where(~finite & (self._first_bad < 0), step, self._first_bad)
        self._last_finite = torch.where(finite, loss / max(images, 1), self._last_finite)

    def add_grad_norm(self, norm: torch.Tensor) -> None:
        """Add one update's gradient norm (before clipping), on the device."""
        self._norms = norm.detach().double() + (self._norms if self._norms is not None else 0.0)
        self.grad_norms += 1

    def mean_grad_norm(self) -> float | None:
        """The epoch's mean gradient norm before clipping, or None when no norm was recorded (clipping off)."""
        if self._norms is not None:
            self.grad_norm_total += self._norms.item()
            self._norms = None
        return self.grad_norm_total / self.grad_norms if self.grad_norms else None

    def divergence(self) -> tuple[int | None, float | None]:
        """(first optimizer step whose loss was not finite, last finite per-image loss) seen since the epoch began."""
        if self._first_bad is None:
            return None, None
        step, last = int(self._first_bad.item()), float(self._last_finite.item())
        return (step if step >= 0 else None), (last if math.isfinite(last) else None)

    def settle(self) -> None:
        """Move the device-side sum into :attr:`total` (one host-device sync)."""
        if self._pending is not None:
            self.total += self._pending.item()
            self._pending.zero_()

    def mean(self) -> float:
        self.settle()
        return self.total / max(self.images, 1)

    def peek_both(self) -> tuple[float, float | None]:
        """(mean loss, mean gradient norm or None) in one host-device read, leaving the device-side sums as they are
        (the logged numbers do not depend on how often anyone looked)."""
        parts = [t for t in (self._pending, self._norms) if t is not None]
        values = torch.stack([t.to(torch.float64) for t in parts]).tolist() if parts else []
        pending = values[0] if self._pending is not None else 0.0
        norms = values[-1] if self._norms is not None else 0.0
        loss = (self.total + pending) / max(self.images, 1)
        return loss, ((self.grad_norm_total + norms) / self.grad_norms if self.grad_norms else None)


# trainer_state.json's names of the RunningLoss attributes it saves
_RUNNING = {
    "running_loss_sum": "total",
    "running_samples": "images",
    "running_grad_norm_sum": "grad_norm_total",
    "running_grad_norms": "grad_norms",
}


@dataclass
class TrainerState:
    """Where the run stands: the next (epoch, step) to run and what it has measured so far."""

    epoch: int = 0  # next epoch to run (0-based)
    step_in_epoch: int = 0  # next optimizer step within that epoch
    global_step: int = 0  # optimizer updates done
    best_top1: float = float("-inf")
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict of metrics per finished epoch
    loss: RunningLoss = field(default_factory=RunningLoss)  # training loss of the unfinished epoch
    data_sizes: list[int] | None = None  # [train, eval] images of the run's data (None: not recorded yet)
    # each process's [loss sum, images] of the unfinished epoch, gathered when saved: each trains on its own images
    loss_by_process: list[list[float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``trainer_state.json`` (the running loss read from the device first)."""
        self.loss.settle()
        self.loss.mean_grad_norm()  # settles the norms too
        names = ("epoch", "step_in_epoch", "global_step", "best_top1", "data_sizes", "loss_by_process")
        fields = {name: getattr(self, name) for name in names}
        return {**fields, "history": list(self.history), **{key: getattr(self.loss, a) for key, a in _RUNNING.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        """The state :meth:`to_dict` wrote; TypeError naming the field when one has the wrong type."""
        data = dict(data)
        ints = ("epoch", "step_in_epoch", "global_step", "running_samples", "running_grad_norms")
        numbers = ("best_top1", "running_loss_sum", "running_grad_norm_sum")
        types = {**dict.fromkeys(ints, int), **dict.fromkeys(numbers, (int, float)), "history": list}
        for name, kind in types.items():
            value = data.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise TypeError(f"{name} is {json.dumps(value)[:40]}, not a {getattr(kind, '__name__', 'number')}")
        if not all(isinstance(record, dict) for record in data.get("history", [])):
            raise TypeError("history holds something else than epoch records")
        # the gradient norms are absent from checkpoints written before clipping existed
        loss = RunningLoss(**{attribute: data.pop(key, 0) for key, attribute in _RUNNING.items()})
        return cls(**data, loss=loss)

    def check_data(self, train: int, eval_: int, source: str) -> None:
        """Record the data's split sizes on a fresh run; refuse a resume on data of other sizes (the schedule, the
        step to resume at and the epoch's images all count them: another set of images is another run)."""
        if self.data_sizes is not None and list(self.data_sizes) != [train, eval_]:
            was_train, was_eval = self.data_sizes
            raise CheckpointError(
                f"data.source '{source}' holds {train} train / {eval_} eval images and this run's checkpoint was "
                f"written on {was_train} / {was_eval}, so resuming would run another schedule on other images; the "
                "checkpoints are fine: resume with the data the run was trained on, or train on this data in a new "
                "train.output_dir."
            )
        self.data_sizes = [train, eval_]

    def finish_epoch(self, record: dict[str, Any]) -> bool:
        """Record a finished epoch's metrics and move to the next epoch; True when its top-1 is the best so far."""
        score = epoch_score(record)  # raw or EMA weights: best/ takes either
        improved = score > self.best_top1
        self.best_top1 = max(self.best_top1, score)
        self.history.append(record)
        self.epoch, self.step_in_epoch, self.loss = self.epoch + 1, 0, RunningLoss()
        return improved


def is_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` is a complete training checkpoint of this library (its trainer state written last)."""
    return (Path(folder) / STATE_FILE).is_file()


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    return sorted(p for p in RunDir(output_dir).checkpoints.glob("step_*") if is_checkpoint(p))  # none: no folder


def read_state(folder: Path) -> tuple[TrainerState, dict[str, Any]]:
    """(trainer state, saved config dict) of a checkpoint; CheckpointError if it is not one of ours."""
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(
            f"'{folder}' is not a tiny_transformers checkpoint (no {STATE_FILE}); point train.resume at a folder "
            "under <output_dir>/checkpoints/, or use 'auto'."
        )
    try:
        payload = read_json(state_file, fix="it cannot be resumed from")
        if not isinstance(payload.get("state"), dict) or not isinstance(payload.get("config"), dict):
            raise RunFileError(f"'{state_file}' lacks its state or config; it cannot be resumed from.")
    except RunFileError as error:  # missing, truncated, not JSON, or another shape
        raise CorruptCheckpoint(f"Checkpoint '{folder}' is corrupt: {error}") from error
    if payload.get("format_version") not in READABLE_VERSIONS:
        readable = " or ".join(map(str, READABLE_VERSIONS))
        raise CheckpointError(
            f"Checkpoint '{folder}' was written by an incompatible tiny_transformers (format "
            f"{payload.get('format_version')}, this version reads {readable}); resume it with the version that wrote "
            "it, or start afresh with --train.resume never and a new train.output_dir."
        )
    try:
        state = TrainerState.from_dict(payload["state"])
    except TypeError as error:  # a field of the wrong type falls back like a truncated file
        raise CorruptCheckpoint(f"Checkpoint '{folder}' is corrupt ({STATE_FILE}: {error}).") from error
    return state, payload["config"]


def checkpoint_labels(folder: Path) -> tuple[list[str], list[str]] | None:
    """(class ids, class names) a checkpoint records, or None (written before checkpoints carried them)."""
    labels = read_json(Path(folder) / STATE_FILE).get("labels")
    return (list(labels["class_ids"]), list(labels["class_names"])) if labels else None


def find_resume_checkpoint(config: FinetuneConfig, output_dir: Path) -> Path | None:
    """The checkpoint to resume from per ``train.resume`` (a Hub one downloaded first: :func:`checkpoint_from_hub`),
    checked to belong to this run's trajectory."""
    resume = config.train.resume
    if resume == "never":
        if list_checkpoints(output_dir):
            raise CheckpointError(
                f"train.output_dir '{output_dir}' already holds checkpoints of a run and train.resume is 'never'; "
                "choose a new train.output_dir, or resume with --train.resume auto."
            )
        return None
    if resume == "hub" or hub_io.hub_repo(resume) is not None:
        return checkpoint_from_hub(config, output_dir)
    if resume == "auto":
        folder, (state, saved_config) = _newest_readable(output_dir)
    else:
        folder = Path(resume).expanduser().resolve()
        if not folder.is_dir():
            raise CheckpointError(
                f"train.resume '{resume}' is not a folder; give a checkpoint folder, 'auto' or 'never'."
            )
        state, saved_config = read_state(folder)
    if folder is None:
        return None
    _refuse_unresumable(f"Checkpoint '{folder}'", state, saved_config, config)
    return folder


def _refuse_unresumable(name: str, state: TrainerState, saved_config: dict[str, Any], config: FinetuneConfig) -> None:
    """Refuse a checkpoint of another trajectory, or one past ``train.epochs`` (resuming it would report the shorter
    run's last epoch while ``last/`` and ``best/`` held weights trained further)."""
    differences = trajectory_differences(saved_config, config)
    if differences:
        raise CheckpointError(
            f"{name} was written with a different config ({', '.join(differences)}); resuming would "
            f"change the run ({describe_differences(saved_config, config, differences)}). Restore those values, or "
            "start afresh in a new train.output_dir."
        )
    epochs, reached = config.train.epochs, state.epoch + (state.step_in_epoch > 0)
    if reached > epochs:
        where = (
            f"step {state.step_in_epoch} of epoch {reached}" if state.step_in_epoch else f"the end of epoch {reached}"
        )
        raise CheckpointError(
            f"{name} has trained to {where}, past train.epochs {epochs}; resume with --train.epochs {reached} or "
            "more, or train the shorter run afresh in a new train.output_dir."
        )


def checkpoint_from_hub(config: FinetuneConfig, output_dir: Path) -> Path:
    """Download the ``last-checkpoint/`` that ``hub.strategy checkpoint`` pushed to the repo ``train.resume`` names
    (``hub``: ``hub.model_id``) into ``<output_dir>/checkpoints/step_XXXXXXXX/`` and return that folder; another
    trajectory's is refused before anything is put in place, a local complete one of the same step used as it is.

    Only the launch's main process downloads; the others return a placeholder that nothing reads before the process
    group exists (``train._resume`` then loads the main process's folder on every process).
    """
    repo_id = hub_io.resume_repo(config.train.resume, config.hub.model_id)
    root = RunDir(output_dir).checkpoints
    if not is_main_launch_process():
        return root / "from-hub"
    staging = root / HUB_STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        downloaded = hub_io.download_checkpoint(str(repo_id), staging)
        state, saved_config = read_state(downloaded)
        name = f"The Hub checkpoint 'hf-hub:{repo_id}' ({hub_io.CHECKPOINT_DIR}/, step {state.global_step})"
        _refuse_unresumable(name, state, saved_config, config)
        final = root / f"step_{state.global_step:08d}"
        if is_checkpoint(final):
            print(f"{name} is already here as {final}; resuming from it", flush=True)
        else:
            shutil.rmtree(final, ignore_errors=True)  # an incomplete folder of that step, if any
            os.replace(downloaded, final)
            print(f"downloaded {name} into {final}", flush=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _newest_readable(output_dir: Path) -> tuple[Path | None, tuple[TrainerState, dict[str, Any]]]:
    """The newest checkpoint whose trainer state can be read, with its state and config; corrupt ones are passed
    over aloud."""
    for folder in reversed(list_checkpoints(output_dir)):
        try:
            return folder, read_state(folder)
        except CorruptCheckpoint as error:
            print(f"warning: {error} Falling back to the previous checkpoint.", file=sys.stderr, flush=True)
    return None, (TrainerState(), {})


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: Path,
    state: TrainerState,
    config: FinetuneConfig,
    keep: int,
    labels: tuple[list[str], list[str]],
) -> Path:
    """Write a complete checkpoint atomically and keep the ``keep`` newest; call on every process. ``labels`` (class
    ids, names) go into it, so it can be evaluated wherever it is copied."""
    root = RunDir(output_dir).checkpoints
    final = root / f"step_{state.global_step:08d}"
    temporary = root / f".tmp-step_{state.global_step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)
    state.loss.settle()
    mine = torch.tensor([[state.loss.total, state.loss.images]], dtype=torch.float64, device=accelerator.device)
    state.loss_by_process = accelerator.gather(mine).tolist()
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            payload = {"format_version": FORMAT_VERSION, "state": state.to_dict(), "config": config.to_dict()}
            payload["labels"] = {"class_ids": list(labels[0]), "class_names": list(labels[1])}
            write_atomic(temporary / STATE_FILE, json.dumps(payload, indent=2))
    except (OSError, RuntimeError, RunFileError) as error:
        if write_errno(error) != errno.ENOSPC:
            raise
        shutil.rmtree(temporary, ignore_errors=True)
        previous = list_checkpoints(output_dir)
        raise CheckpointError(
            f"The disk holding {root} is full: writing checkpoint {final.name} failed ({str(error).strip()[:80]}); "
            + (f"the last complete checkpoint {previous[-1]} is intact" if previous else "no checkpoint was written")
            + "; free some space and run the same command again (train.resume auto continues from it)."
        ) from error
    if accelerator.is_main_process:
        if final.exists():  # the same step saved twice (epoch end right after a periodic save)
            shutil.rmtree(final)
        os.replace(temporary, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, folder: Path) -> TrainerState:
    """Restore model, optimizer, scaler, RNG and EMA from ``folder``; return the trainer state."""
    state, _ = read_state(folder)
    try:
        accelerator.load_state(str(folder))
    except Exception as error:  # noqa: BLE001 - any failure to read tensors means the same thing to the user
        raise CheckpointError(
            f"Checkpoint '{folder}' could not be loaded ({type(error).__name__}: {error}); delete it to fall back "
            "to the previous one, or start afresh in a new train.output_dir."
        ) from error
    shares, processes = state.loss_by_process, accelerator.num_processes
    if shares is not None:  # None: an older checkpoint, which holds the main process's share alone
        if len(shares) != processes:  # another process count: the main process carries the whole sum
            shares = [[sum(s[0] for s in shares), sum(s[1] for s in shares)]] + [[0.0, 0]] * (processes - 1)
        total, images = shares[accelerator.process_index]
        state.loss.total, state.loss.images = total, int(images)
    return state
