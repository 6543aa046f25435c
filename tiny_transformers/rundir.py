"""The run folder (``train.output_dir``): the one module that knows where a run keeps each file (README.md's
"Outputs" lists them; no other module spells their names), and reads, writes and locks them, through runfiles.py
(written whole or not at all, a damaged file one sentence naming it and the fix)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from .config import FinetuneConfig, trajectory_differences
from .errors import ConfigError, PublishError, TinyTransformersError
from .runfiles import RunFileError, read_json, write_atomic

CONFIG_FILE = "config.json"  # the run's config in its folder; timm's model config in a weights folder
WEIGHTS_FILE = "model.safetensors"
LABELS_FILE = "labels.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
LAST_DIR = "last"
EXPORT_DIR = "export"
ADAPTER_DIR = "adapter"  # in best/ and last/ of a lora run: the adapter alone (lora.save_adapter)
CURVES_FILE = "training_curves.png"
GRID_FILE = "predictions.png"
RESULTS_FILE = "results.md"
TRACKERS_FILE = "trackers.json"  # the W&B run id a resumed run continues
PER_CLASS_FILE = "per_class_accuracy.csv"  # written by `evaluate` into the working directory unless --output
LOCK_FILE = ".lock"  # {"host", "pid", "started"} of the run that holds the folder
MARKER_FILE = ".tiny_transformers_run"  # written when a run starts: this folder is a run folder
HUB_STAGING = ".tmp-hub"  # in checkpoints/: a Hub checkpoint being downloaded (checkpoint.checkpoint_from_hub)
WRITE_PROBE = ".write-test-"  # + pid: the main process checks that it can write the run folder (_make_folder)
EXPORT_MARKER = ".tiny_transformers_export"  # in a folder `export` wrote (never uploaded): it may replace it
FINISHED_FILE = "finished.json"  # {"epochs": N}: written last, after last/, the report and metrics.jsonl
PUSH_STAGING_DIR = ".hub-push"  # snapshots and upload folders of Hub pushes (push_staging.py)


def json_line(record: dict[str, Any]) -> str:
    """``record`` as one line of valid JSON: a number that is not finite (NaN, inf) becomes ``null``.

    >>> json_line({"top1": float("nan"), "epoch": 1})
    '{"top1": null, "epoch": 1}'
    """
    finite = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(finite, allow_nan=False)


# what to do about a damaged file, by name; a run's config, labels and metrics are written anew by a resumed run
_REWRITTEN = "restore it from a copy, or delete it and run the training command again (it resumes from the newest "
_FIXES = {
    CONFIG_FILE: _REWRITTEN + "checkpoint and writes config.json anew)",
    LABELS_FILE: _REWRITTEN + "checkpoint and writes labels.json anew)",
    METRICS_FILE: _REWRITTEN + "checkpoint and writes metrics.jsonl anew from it)",
    TRACKERS_FILE: "delete it (the next run starts a new W&B run instead of continuing the old one)",
    FINISHED_FILE: "delete it and run the training command again (it resumes and finishes the run)",
}


def _in_root(name: str) -> property:
    """A :class:`RunDir` property: the path of ``name`` in the run folder."""
    return property(lambda self: self.root / name, doc=f"``{name}`` in the run folder.")


@dataclass(frozen=True)
class RunDir:
    """The paths of one run folder, and its small files read and written in one place.

    >>> run = RunDir(Path("outputs/vit_l"))
    >>> run.metrics.as_posix(), run.weights("best").as_posix()
    ('outputs/vit_l/metrics.jsonl', 'outputs/vit_l/best')
    """

    root: Path
    config = _in_root(CONFIG_FILE)
    labels = _in_root(LABELS_FILE)
    metrics = _in_root(METRICS_FILE)
    checkpoints = _in_root(CHECKPOINTS_DIR)
    export = _in_root(EXPORT_DIR)
    push_staging = _in_root(PUSH_STAGING_DIR)

    def weights(self, which: Literal["best", "last"]) -> Path:
        """``best/`` (the epoch of highest top-1) or ``last/`` (the final epoch)."""
        return self.root / (BEST_DIR if which == "best" else LAST_DIR)

    def adapter(self, which: Literal["best", "last"]) -> Path:
        """lora mode's adapter alone (peft's ``save_pretrained``), inside ``best/`` or ``last/``."""
        return self.weights(which) / ADAPTER_DIR

    def file(self, name: str) -> Path:
        """A file of the report (:data:`CURVES_FILE`, :data:`GRID_FILE`, :data:`RESULTS_FILE`) in this folder."""
        return self.root / name

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> RunDir:
        """The run folder a checkpoint (``<run>/checkpoints/step_...``) belongs to."""
        return cls(Path(checkpoint).parent.parent)

    def write_start(
        self, config: FinetuneConfig, class_ids: Sequence[str], class_names: Sequence[str], source_kind: str = ""
    ) -> None:
        """``config.json`` and ``labels.json`` (with the data's ``source_kind``), written when a run starts (main
        process only); a finished run that goes on is unfinished again until :meth:`write_finished`."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / FINISHED_FILE).unlink(missing_ok=True)
        write_atomic(self.root / MARKER_FILE, json.dumps({"tiny_transformers_run": 1}))  # see claim()
        write_atomic(self.config, config.to_json())
        labels = {"class_ids": list(class_ids), "class_names": list(class_names), "source_kind": source_kind}
        write_atomic(self.labels, json.dumps(labels))

    def write_metrics(self, history: Sequence[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` from the run's history (restored with each checkpoint), atomically: a run
        killed after logging an epoch but before checkpointing it logs that epoch once, not twice, on resume."""
        write_atomic(self.metrics, "".join(json_line(record) + "\n" for record in history))

    def write_finished(self, history: Sequence[dict[str, Any]]) -> None:
        """Mark the run finished, after every other output: ``metrics.jsonl`` rewritten from the history ``last/``
        was saved with, then ``finished.json`` (a run without it is resumed, by the training command or ``ablate``)."""
        self.write_metrics(history)
        write_atomic(self.root / FINISHED_FILE, json.dumps({"epochs": len(history)}))

    def finished_epochs(self) -> int | None:
        """The epochs of the finished run in this folder, or None when it has not finished (no ``finished.json``).

        >>> RunDir(Path("nowhere")).finished_epochs() is None
        True
        """
        marker = self.root / FINISHED_FILE
        if not marker.is_file():
            return None
        epochs = read_json(marker, fix=_FIXES[FINISHED_FILE]).get("epochs")
        if not isinstance(epochs, int):
            raise RunFileError(f"'{marker}' does not say how many epochs the run finished; {_FIXES[FINISHED_FILE]}.")
        return epochs

    def trajectory_changes(self, config: FinetuneConfig) -> list[str]:
        """The fields in which ``config`` would train another trajectory than the one ``config.json`` records;
        ``['config.json (unreadable)']`` when it is damaged (a run must not be mistaken for this one's).

        >>> RunDir(Path("nowhere")).trajectory_changes(FinetuneConfig())
        ['config.json (unreadable)']
        """
        try:
            return trajectory_differences(read_json(self.config), config)
        except (RunFileError, AttributeError):  # damaged, or sections that are not objects
            return ["config.json (unreadable)"]

    def tracker_init_kwargs(self, resumed_at: int | None) -> dict[str, dict[str, Any]]:
        """Accelerate ``init_kwargs`` that make a resumed run continue its tracker runs: W&B's run id, kept in
        ``trackers.json``; TensorBoard's ``purge_step``, which drops the steps logged after the last checkpoint."""
        trackers = self.root / TRACKERS_FILE
        ids = read_json(trackers, fix=_FIXES[TRACKERS_FILE]) if trackers.is_file() else {}
        if not isinstance(ids.get("wandb_id"), str):
            ids["wandb_id"] = uuid.uuid4().hex[:8]
            write_atomic(trackers, json.dumps(ids))
        kwargs: dict[str, dict[str, Any]] = {"wandb": {"id": ids["wandb_id"], "resume": "allow"}}
        if resumed_at is not None:
            kwargs["tensorboard"] = {"purge_step": resumed_at + 1}  # steps after the checkpoint were never kept
        return kwargs

    def read_config(self) -> FinetuneConfig:
        """The run's ``config.json``; :class:`RunFileError` when it is damaged or not a run's config."""
        try:
            return FinetuneConfig.from_dict(read_json(self.config, fix=_FIXES[CONFIG_FILE]))
        except (TypeError, ValueError, AttributeError) as error:
            raise RunFileError(
                f"'{self.config}' is not a tiny_transformers run config ({error}); {_FIXES[CONFIG_FILE]}."
            ) from error

    def read_labels(self) -> tuple[list[str], list[str]] | None:
        """(class ids, class names) of the run, or None when it has no ``labels.json``."""
        if not self.labels.is_file():
            return None
        labels = read_json(self.labels, fix=_FIXES[LABELS_FILE])
        ids, names = labels.get("class_ids"), labels.get("class_names")
        if not (isinstance(ids, list) and isinstance(names, list) and len(ids) == len(names)):
            raise RunFileError(
                f"'{self.labels}' does not hold equally long lists class_ids and class_names; {_FIXES[LABELS_FILE]}."
            )
        return [str(i) for i in ids], [str(n) for n in names]

    def read_metrics(self) -> list[dict[str, Any]]:
        """One dict per finished epoch; :class:`RunFileError` naming the line when one is damaged."""
        try:
            lines = self.metrics.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise RunFileError(
                f"'{self.metrics}' {'is missing' if isinstance(error, FileNotFoundError) else 'cannot be read'}; "
                f"{_FIXES[METRICS_FILE]}."
            ) from error
        history = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int) or "top1" not in record:
                raise RunFileError(
                    f"'{self.metrics}' line {number} is not an epoch's record (truncated or edited); "
                    f"{_FIXES[METRICS_FILE]}."
                )
            history.append(record)
        return history


@dataclass(frozen=True)
class RunSummary:
    """A run as its output directory records it: config, per-epoch metrics and class names."""

    output_dir: Path
    config: FinetuneConfig
    history: list[dict[str, Any]]  # metrics.jsonl, one dict per finished epoch
    class_ids: list[str]
    class_names: list[str]
    source_kind: str | None = None  # labels.json's kind of data.source (data.SOURCE_KINDS); None: not recorded

    @property
    def folder(self) -> RunDir:
        return RunDir(self.output_dir)

    def record_for(self, weights: Literal["last", "best"]) -> dict[str, Any]:
        """The metrics of the weights in ``last/`` or ``best/`` (:func:`saved_scores`)."""
        return saved_scores(best_record(self.history) if weights == "best" else self.history[-1], weights)


@dataclass
class EpochRecord:
    """One finished epoch: a line of ``metrics.jsonl`` and of ``TrainerState.history``. Scores in percent, losses
    on the eval split; the EMA's and the gradient norm's only with an EMA and with clipping.

    >>> EpochRecord(1, 3, 1.2, 1.1, 50.0, 90.0, 1e-3, 9.5).as_dict()["eval_loss"]
    1.1
    """

    epoch: int
    step: int  # optimizer updates done
    train_loss: float  # the epoch's mean over every process's images
    eval_loss: float
    top1: float
    top5: float
    lr: float
    epoch_seconds: float
    ema_top1: float | None = None
    ema_top5: float | None = None
    ema_loss: float | None = None
    grad_norm: float | None = None  # mean before clipping

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def ema_is_better(record: dict[str, Any]) -> bool:
    """The one rule for an epoch's ``best/`` candidate: its EMA weights when they scored a higher top-1 than its raw
    weights (ties go to the raw weights), else the raw ones.

    >>> ema_is_better({"top1": 50.0, "ema_top1": 51.0}), ema_is_better({"top1": 50.0, "ema_top1": 50.0})
    (True, False)
    """
    ema = record.get("ema_top1")
    return ema is not None and (record["top1"] is None or ema > record["top1"])


def saved_scores(record: dict[str, Any], folder: Literal["last", "best"]) -> dict[str, Any]:
    """An epoch's record with the scores of the weights ``folder`` holds, and which (``weights``: ``ema``, ``raw``, or
    None without an EMA): with an EMA, ``last/`` holds the EMA and ``best/`` the better (:func:`ema_is_better`).

    >>> record = {"top1": 50.0, "top5": 80.0, "eval_loss": 1.0, "ema_top1": 49.0, "ema_top5": 79.0, "ema_loss": 1.1}
    >>> [(r["top1"], r["weights"]) for r in (saved_scores(record, "last"), saved_scores(record, "best"))]
    [(49.0, 'ema'), (50.0, 'raw')]
    >>> saved_scores({"top1": 50.0, "top5": 80.0, "eval_loss": 1.0}, "last")["weights"] is None
    True
    """
    if "ema_top1" not in record:
        return {**record, "weights": None}
    if folder == "last" or ema_is_better(record):
        ema = {"top1": record["ema_top1"], "top5": record["ema_top5"], "eval_loss": record["ema_loss"]}
        return {**record, **ema, "weights": "ema"}
    return {**record, "weights": "raw"}


def epoch_score(record: dict[str, Any]) -> float:
    """The top-1 of the weights an epoch would put in ``best/`` (:func:`ema_is_better` decides which).

    >>> epoch_score({"top1": 50.0, "ema_top1": 51.0})
    51.0
    """
    score = record["ema_top1"] if ema_is_better(record) else record["top1"]
    return float("-inf") if score is None else score  # a NaN epoch (written as null) is never the best


def best_record(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The first epoch with the highest top-1, as ``finetune`` chooses ``best/``.

    >>> best_record([{"epoch": 1, "top1": 50.0}, {"epoch": 2, "top1": 60.0}, {"epoch": 3, "top1": 60.0}])["epoch"]
    2
    """
    return max(history, key=epoch_score)  # max() keeps the first of equal keys


def read_run(output_dir: str | Path) -> RunSummary:
    """Read ``config.json``, ``metrics.jsonl`` and ``labels.json`` of a run's output directory.

    >>> read_run("outputs/run").history[-1]["top1"]  # doctest: +SKIP
    86.5
    """
    run = RunDir(Path(output_dir).expanduser().resolve())
    missing = [path.name for path in (run.config, run.metrics, run.labels) if not path.is_file()]
    if missing:
        raise PublishError(
            f"'{run.root}' is not the output directory of a finished run (no {', '.join(missing)}); give the "
            "train.output_dir of a run that trained at least one epoch."
        )
    history = run.read_metrics()
    if not history:
        raise PublishError(f"'{run.metrics}' is empty; train at least one epoch before exporting or pushing.")
    class_ids, class_names = run.read_labels()
    source_kind = read_json(run.labels, fix=_FIXES[LABELS_FILE]).get("source_kind") or None
    return RunSummary(run.root, run.read_config(), history, class_ids, class_names, source_kind)


class RunFolderBusy(TinyTransformersError):
    """Another run holds the output folder."""


_RESULTS = (BEST_DIR, LAST_DIR, EXPORT_DIR, METRICS_FILE, RESULTS_FILE)  # what a finished epoch leaves


def is_main_launch_process() -> bool:
    """Whether this is the launch's first process (global rank 0), known before any process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


class RunLock:
    """The run folder held by one run for its whole life: ``filelock`` locks ``.lock`` (released by the kernel however
    the process dies), which names the holder for the refusal. Taking over a dead holder's file is said aloud.
    Used as ``with RunLock(RunDir(Path("outputs/vit_l"))): ...`` around the whole run."""

    def __init__(self, folder: RunDir, enabled: bool = True) -> None:
        self.folder, self.enabled, self.created = folder, enabled, False
        self.path = folder.root / LOCK_FILE
        self.mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.lock = FileLock(self.path, timeout=0)  # never waits: a held folder is refused at once

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        self.created = not self.folder.root.exists()
        _make_folder(self.folder.root)
        existed = self.path.exists()  # filelock makes an empty one when there is none
        try:
            self.lock.acquire()
        except Timeout:
            self._refuse(self._written_holder())
        left = self._holder() if existed else {}  # what a previous holder left: None when empty or unreadable
        said = "whose contents are unreadable (a run killed while it took the folder)" if left is None else ""
        if left and left.get("host") == self.mine["host"]:  # we hold the flock: its own pid is an earlier process
            if left.get("pid") == self.mine["pid"] or not process_alive(left.get("pid")):
                said = f"left by process {left.get('pid')} (started {left.get('started')}), which no longer runs"
        if left and not said:
            # flock is local to each host on some network file systems: another host's entry is trusted, as is a
            # live process of this host (a run of a version that did not lock with flock)
            self.lock.release()
            self._refuse(left)
        if said:
            print(f"warning: taking over {self.path}, {said}.", file=sys.stderr, flush=True)
        # written in place, not with write_atomic: a renamed file would be another inode, not the locked one; a kill
        # mid-write leaves it unreadable, and the next run takes it over aloud
        self.path.write_text(json.dumps(self.mine))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled and self.lock.is_locked:
            self.path.unlink(missing_ok=True)  # while still held: filelock retries a waiter that got the old inode
            self.lock.release()
            if self.created and not any(self.folder.root.iterdir()):
                self.folder.root.rmdir()  # a run refused before it wrote anything leaves no trace

    def _refuse(self, holder: dict[str, Any]) -> None:
        if holder.get("pid") == self.mine["pid"] and holder.get("host") == self.mine["host"]:
            raise RunFolderBusy(f"train.output_dir '{self.folder.root}' is already used by this process.")
        raise RunFolderBusy(
            f"train.output_dir '{self.folder.root}' is in use by another run (host {holder.get('host', '?')}, "
            f"pid {holder.get('pid', '?')}, started {holder.get('started', '?')}); wait for it to finish or "
            f"choose another train.output_dir (delete {self.path} only if that run is gone)."
        )

    def _written_holder(self) -> dict[str, Any]:
        """The holder's entry, waited for up to a second: a run that has just taken the lock writes it just after."""
        deadline = time.monotonic() + 1.0
        while not (holder := self._holder()) and time.monotonic() < deadline:
            time.sleep(0.01)
        return holder or {}

    def _holder(self) -> dict[str, Any] | None:
        """The holder the lock file names; None when it is empty or unreadable."""
        try:
            return read_json(self.path)
        except RunFileError:
            return None


def process_alive(pid: Any) -> bool:
    """Whether process ``pid`` runs on this host (under any user).

    >>> process_alive(os.getpid()), process_alive(-1)
    (True, False)
    """
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as error:  # PermissionError: it exists, under another user
        return isinstance(error, PermissionError)
    return True


def _make_folder(root: Path) -> None:
    """Create the run folder, or say in one sentence why it cannot be one."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"train.output_dir '{root}' is a file, not a folder; choose a folder for the run's outputs.")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f"{WRITE_PROBE}{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"train.output_dir '{root}' cannot be written ({error.strerror or error}); choose a folder you can write "
            "to, or fix its permissions."
        ) from error


def _made_first(path: Path) -> bool:
    """Whether ``path`` in a run folder is what the launch's main process makes while the others claim it: the lock, its
    write probe, a Hub checkpoint's download (``checkpoints/`` holding only that, until it is renamed into a
    ``step_`` folder, which marks the run as ours)."""
    if path.name == LOCK_FILE or path.name.startswith(WRITE_PROBE):
        return True
    return path.name == CHECKPOINTS_DIR and path.is_dir() and {p.name for p in path.iterdir()} <= {HUB_STAGING}


def claim(folder: RunDir, config: FinetuneConfig, resuming: bool) -> None:
    """Refuse a folder this run must not write into: one no run made (no marker of :meth:`RunDir.write_start`, no
    checkpoint), or a fresh start over another run's results (they would mix with the new run's)."""
    root = folder.root
    present = sorted(p.name for p in root.iterdir() if not _made_first(p)) if root.is_dir() else []
    ours = (root / MARKER_FILE).is_file() or any(folder.checkpoints.glob("step_*/trainer_state.json"))
    if present and not ours:
        raise ConfigError(
            f"train.output_dir '{root}' holds files that no tiny_transformers run wrote ({', '.join(present[:3])}"
            f"{', ...' if len(present) > 3 else ''}); train into a new or empty folder so nothing is overwritten."
        )
    results = [name for name in _RESULTS if (root / name).exists()]
    if ours and results and not resuming and folder.config.is_file():
        changed = folder.trajectory_changes(config)
        if changed:
            raise ConfigError(
                f"train.output_dir '{root}' holds the results of another run ({', '.join(results)}; its config "
                f"differs in {', '.join(changed[:4])}) and no checkpoint to resume; choose a new train.output_dir, "
                "or move those results away first."
            )
