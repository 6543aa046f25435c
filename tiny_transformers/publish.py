"""Sharing a finished run: a timm-compatible folder with a model card (:data:`EXPORT_FILES`), exported locally or
pushed to the Hub, after training or during it (:class:`BackgroundPublisher`); docs/publishing.md says what goes
where, and when, and each function below the rule it keeps."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from . import hub as hub_io
from .card import model_card, weights_folder
from .checkpoint import list_checkpoints
from .config import HubConfig
from .errors import ConfigError, PublishError, TinyTransformersError, clean_message
from .push_staging import link_tree, new_staging, owned_name, remove_abandoned, remove_dead_owners
from .report import plot_training_curves
from .rundir import (
    CONFIG_FILE,
    CURVES_FILE,
    EXPORT_MARKER,
    MARKER_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    RunDir,
    RunSummary,
    is_main_launch_process,
    read_run,
)
from .runfiles import RunFileError, read_json, write_atomic, writing
from .validation import validate_hub

EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, "README.md", CURVES_FILE, METRICS_FILE)
_CHECKPOINT_FILES = f"{hub_io.CHECKPOINT_DIR}/*"
_RERUN = "run the training command again (it resumes from the newest checkpoint and writes {}/ anew), or restore it"


def export_run(output_dir: str | Path, hub: HubConfig | None = None, folder: str | Path | None = None) -> Path:
    """Write the timm-compatible folder of a run (:data:`EXPORT_FILES`), by default ``<output_dir>/export``, and
    return it; nothing is uploaded, and a folder holding anything but a previous export is refused.

    >>> export_run("outputs/run", HubConfig(model_id="me/vit-l-tiny-imagenet"))  # doctest: +SKIP
    PosixPath('/home/me/outputs/run/export')
    """
    return _export(read_run(output_dir), hub or HubConfig(), folder)


def _export(run: RunSummary, hub: HubConfig, folder: str | Path | None, checked: bool = False) -> Path:
    """``checked``: the weights are known finite (training checks them before it writes best/ and last/), so they
    are not read: a background push runs no torch op, which slows training (docs/benchmarks.md, Hub pushes)."""
    validate_hub(hub)
    source = weights_folder(run, hub.weights)
    target = Path(folder).expanduser().resolve() if folder else run.folder.export
    own = (run.output_dir, run.folder.weights("best"), run.folder.weights("last"))
    if target in own or run.folder.checkpoints in (target, *target.parents):
        raise PublishError(f"Cannot export into '{target}', which holds the run itself; choose another folder.")
    _check_replaceable(target)
    if not checked:
        read_json(source / CONFIG_FILE, fix=_RERUN.format(source.name))  # the card reads it
        _check_finite(source / WEIGHTS_FILE)
    # built beside the target and swapped in whole: a kill keeps the previous export; the next removes what it left
    leftovers = re.escape(f".{target.name}.") + "(?:tmp|old)-"
    if remove_dead_owners(target.parent, leftovers):
        print(f"removed what an export killed mid-write left beside {target}", flush=True)
    staging, previous = (target.parent / owned_name(f".{target.name}.{kind}-") for kind in ("tmp", "old"))
    try:
        staging.mkdir(parents=True)
    except OSError as error:
        raise PublishError(
            f"Cannot write the export to '{target}' ({error.strerror or error}); choose a folder you can write to "
            "with --to."
        ) from error
    try:
        for name, origin in ((WEIGHTS_FILE, source), (CONFIG_FILE, source), (METRICS_FILE, run.output_dir)):
            with writing(target / name):
                shutil.copyfile(origin / name, staging / name)
        plot_training_curves(run.history, staging / CURVES_FILE, config=run.config)
        model_card(run, hub).save(staging / "README.md")
        if not _is_run_export(target):  # a run's own export/ is known without a mark
            write_atomic(staging / EXPORT_MARKER, json.dumps({"run": str(run.output_dir)}))
        if target.exists():
            target.rename(previous)  # the two renames are the only moment without a complete export in place
        try:
            staging.rename(target)
        except OSError:
            previous.rename(target)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)
    return target


def _is_run_export(target: Path) -> bool:
    """Whether ``target`` is a run folder's own ``export/`` (that run's to replace, no mark needed)."""
    run = RunDir(target.parent)
    return target == run.export and ((run.root / MARKER_FILE).is_file() or run.checkpoints.is_dir())


def _check_replaceable(target: Path) -> None:
    """Refuse a target holding anything ``export`` did not write: its mark says it did, or it is a run's own
    ``export/`` holding nothing but :data:`EXPORT_FILES`."""
    if not target.exists():
        return
    present = sorted(p.name for p in target.iterdir()) if target.is_dir() else [target.name]
    ours = (target / EXPORT_MARKER).is_file() or (_is_run_export(target) and set(present) <= set(EXPORT_FILES))
    foreign = [name for name in present if name not in (*EXPORT_FILES, EXPORT_MARKER)] if ours else present
    if foreign:
        raise PublishError(
            f"'{target}' already holds files that export did not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); export into a new or empty folder, or move them away first."
        )


def _check_finite(weights: Path) -> None:
    """Weights with NaN or inf (a diverged run) are never exported or pushed: they would publish a broken model."""
    try:
        tensors = load_file(weights)
    except (OSError, SafetensorError) as error:  # truncated, or not safetensors at all
        raise RunFileError(
            f"'{weights}' is truncated or not a safetensors file ({error}); {_RERUN.format(weights.parent.name)}."
        ) from error
    broken = [name for name, tensor in tensors.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if broken:
        raise PublishError(
            f"'{weights}' holds non-finite values in {len(broken)} tensor(s) (e.g. {broken[0]}), the weights of a "
            "diverged run; nothing was exported or pushed. Train again with a lower optim.lr."
        )


def retry_command(output_dir: str | Path, hub: HubConfig) -> str:
    """The command that pushes ``output_dir`` again with the same settings.

    >>> retry_command("outputs/run", HubConfig(model_id="me/vit", private=True))
    'tiny-transformers push outputs/run --hub.model_id me/vit --hub.private true'
    """
    model_id = hub.model_id or "YOUR-USER/MODEL-NAME"
    parts = ["tiny-transformers push", shlex.quote(str(output_dir)), "--hub.model_id", model_id]
    if hub.private:
        parts += ["--hub.private", "true"]
    if hub.weights != "last":
        parts += ["--hub.weights", hub.weights]
    if hub.license != HubConfig().license:
        parts += ["--hub.license", shlex.quote(hub.license)]
    if hub.strategy == "checkpoint":
        parts += ["--hub.strategy", "checkpoint"]
    return " ".join(parts)


def commit_message(run: RunSummary, hub: HubConfig) -> str:
    """What the Hub commit says: model, epochs done and the published epoch's numbers.

    >>> from tiny_transformers.config import FinetuneConfig
    >>> run = RunSummary(Path("out"), FinetuneConfig(), [{"epoch": 1, "top1": 80.0, "top5": 95.5}], ["a"], ["ant"])
    >>> commit_message(run, HubConfig())
    'tiny_transformers: vit_l after epoch 1/30, top-1 80.00%, top-5 95.50% (last weights)'
    """
    record = run.record_for(hub.weights)
    return (
        f"tiny_transformers: {run.config.model.name} after epoch {len(run.history)}/{run.config.train.epochs}, "
        f"top-1 {record['top1']:.2f}%, top-5 {record['top5']:.2f}% ({hub.weights} weights)"
    )


def push_run(
    output_dir: str | Path, hub: HubConfig, folder: str | Path | None = None, message: str | None = None
) -> str:
    """Export ``output_dir`` (:func:`export_run`) and upload :data:`EXPORT_FILES` (and with ``hub.strategy
    checkpoint`` the newest checkpoint as ``last-checkpoint/``) to ``hub.model_id``, created when missing; returns
    the commit URL. A failure raises :class:`PublishError` with the cause and the retry command.

    >>> push_run("outputs/run", HubConfig(model_id="me/vit-l-tiny-imagenet"))  # doctest: +SKIP
    'https://huggingface.co/me/vit-l-tiny-imagenet/commit/3f2c...'
    """
    if not hub.model_id:
        raise ConfigError("Pushing needs hub.model_id; add --hub.model_id your-user/model-name.")
    run = read_run(output_dir)
    checkpoint = _newest_checkpoint(run.output_dir) if hub.strategy == "checkpoint" else None
    return _push(run, hub, folder, message, run.output_dir, checkpoint)


def _newest_checkpoint(output_dir: Path) -> Path:
    """The checkpoint ``hub.strategy checkpoint`` sends; :class:`PublishError` when the run holds none."""
    newest = (list_checkpoints(output_dir) or [None])[-1]
    if newest is None:
        raise PublishError(
            f"hub.strategy checkpoint pushes the newest training checkpoint and '{output_dir}' holds none; "
            "push without it (--hub.strategy end)."
        )
    return newest


def _push(
    run: RunSummary,
    hub: HubConfig,
    folder: str | Path | None,
    message: str | None,
    output_dir: Path,
    checkpoint: Path | None,
    checked: bool = False,
) -> str:
    """Export ``run`` into ``folder`` and upload it, with ``checkpoint`` as last-checkpoint/ when given; errors name
    ``output_dir`` (``run`` may be a snapshot of it). ``checked``: as for :func:`_export`."""
    exported = _export(run, hub, folder, checked)
    message = message or commit_message(run, hub)
    upload, files, delete = exported, EXPORT_FILES, ()
    if checkpoint is not None:  # one folder, one commit: the export and the checkpoint, linked (not copied) there
        upload = new_staging(output_dir, "upload")
        link_tree(exported, upload)
        link_tree(checkpoint, upload / hub_io.CHECKPOINT_DIR)
        files, delete = (*EXPORT_FILES, _CHECKPOINT_FILES), (_CHECKPOINT_FILES,)
    try:  # only the export's files (and the checkpoint's): nothing else is sent, whatever the folder holds
        return _upload(upload, hub, files, delete, message, output_dir)
    finally:
        if upload != exported:
            shutil.rmtree(upload, ignore_errors=True)


def _upload(
    folder: Path, hub: HubConfig, files: tuple[str, ...], delete: tuple[str, ...], message: str, output_dir: Path
) -> str:
    """One commit of ``files`` of ``folder``; a failure raises :class:`PublishError` with its cause and the retry."""
    try:
        return hub_io.upload_folder(folder, str(hub.model_id), hub.private, message, files, delete)
    except Exception as error:  # noqa: BLE001 - network, auth and HTTP errors all end the same way for the user
        raise PublishError(
            f"Pushing '{output_dir}' to the Hub as '{hub.model_id}' failed: "
            f"{hub_io.explain(error, str(hub.model_id))}. Nothing local was lost (the run's files are in "
            f"place); retry with: {retry_command(output_dir, hub)}"
        ) from error


def _failed(output_dir: str | Path, hub: HubConfig, error: Exception) -> str:
    """Print a failed push's warning, the error and the retry command, and return it."""
    if isinstance(error, TinyTransformersError):
        text = clean_message(error)
    else:
        text = f"Exporting or pushing '{output_dir}' failed ({type(error).__name__}: {error})."
    if "tiny-transformers push" not in text:
        text += f" The run's files are intact; push them later with: {retry_command(output_dir, hub)}"
    print(f"warning: {text}", file=sys.stderr, flush=True)
    return f"warning: {text}"


@dataclass
class PushResult:
    """The outcome of one push of :class:`BackgroundPublisher`, as printed."""

    number: int  # 1 for the first push asked for, then 2, ...
    epochs: int  # epochs the run had finished when the push was asked for
    url: str | None  # the commit URL; None when the push failed, or a newer push replaced it before it started
    message: str  # the line printed: the URL, the error with the retry command, or why it was skipped


@dataclass
class _Snapshot:
    number: int
    folder: Path  # a copy of the run's small files and published weights (a run folder of its own)
    epochs: int
    checkpoint: Path | None  # the checkpoint's files, hard-linked into folder/last-checkpoint
    # only last-checkpoint/ is sent: no finished epoch to publish yet (preempted early, a Hub-resumed run's folder)
    checkpoint_only: bool = False
    checkpoint_name: str = ""  # the checkpoint's folder in the run, e.g. step_00000300

    def __str__(self) -> str:
        if self.checkpoint_only:
            return f"the push of checkpoint {self.checkpoint_name}"
        if self.checkpoint is not None:
            return f"the push after epoch {self.epochs} (checkpoint {self.checkpoint_name})"
        return f"the push after epoch {self.epochs}"


class BackgroundPublisher(contextlib.AbstractContextManager):
    """Pushes during training without stopping it: one upload in flight, the newest pending push replacing an older
    one; a failed push never raises and never touches the run's files (docs/publishing.md, Background pushes).

    >>> with BackgroundPublisher("outputs/run", HubConfig(push=True, model_id="me/vit")) as pushes:  # doctest: +SKIP
    ...     pushes.submit()  # after an epoch: the snapshot is taken now, the upload runs in the background
    pushed to https://huggingface.co/me/vit (https://huggingface.co/me/vit/commit/3f2c...)
    """

    def __init__(self, output_dir: str | Path, hub: HubConfig) -> None:
        self.output_dir, self.hub = Path(output_dir).expanduser().resolve(), hub
        self.results: list[PushResult] = []
        self._pending: _Snapshot | None = None
        self._uploading: _Snapshot | None = None  # the push in flight
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None  # the worker, while there is a push to send
        self._submitted = 0

    def __exit__(self, *exc: object) -> None:
        self.wait()

    def submit(self, checkpoint: Path | None = None) -> None:
        """Push the run as it is now, in the background. With ``hub.strategy checkpoint`` the training checkpoint
        ``checkpoint`` (default: the newest) goes to ``last-checkpoint/``. Call on the main process only."""
        self._submitted += 1
        try:
            snapshot = self._snapshot(self._submitted, checkpoint)
        except Exception as error:  # noqa: BLE001 - a push never fails the run
            line = _failed(self.output_dir, self.hub, error)
            self._record(PushResult(self._submitted, _epochs_done(self.output_dir), None, line))
            return
        with self._lock:
            replaced, self._pending = self._pending, snapshot
            if self._thread is None:
                # a daemon thread, not run_as_future's executor, which the interpreter joins at exit (preemption)
                self._thread = threading.Thread(target=self._work, name="hub-push", daemon=True)
                self._thread.start()
        if replaced is not None:
            shutil.rmtree(replaced.folder, ignore_errors=True)
            line = f"note: {replaced} was skipped: {snapshot} replaced it while an upload was in flight"
            print(line, flush=True)
            self._record(PushResult(replaced.number, replaced.epochs, None, line))

    def wait(self, timeout: float | None = None) -> list[PushResult]:
        """Let the upload in flight and the pending push end, for at most ``timeout`` seconds (None: no limit); every
        push's result so far, oldest first. A push still running at the timeout is left behind, and reported."""
        with self._lock:
            thread, busy = self._thread, [s for s in (self._uploading, self._pending) if s is not None]
        if thread is not None:
            if busy:
                limit = "" if timeout is None else f" (at most {timeout:.0f} s: train.preempt_seconds)"
                print(f"waiting for {busy[-1]} to finish{limit}", flush=True)
            thread.join(timeout)
            with self._lock:
                left = [s for s in (self._uploading, self._pending) if s is not None] if thread.is_alive() else []
                dropped = self._pending if left else None
                if left:  # given up: the upload in flight ends on its own or dies with the process; nothing follows
                    self._thread, self._pending = None, None
            if dropped is not None:
                shutil.rmtree(dropped.folder, ignore_errors=True)
            for snapshot in left:
                line = (
                    f"warning: {snapshot} did not end within train.preempt_seconds; exiting without it. The "
                    f"run's files are intact; push them later with: {retry_command(self.output_dir, self.hub)}"
                )
                print(line, file=sys.stderr, flush=True)
                self._record(PushResult(snapshot.number, snapshot.epochs, None, line))
        if is_main_launch_process():  # one process sweeps what dead pushes left, and .hub-push/ itself when empty
            remove_abandoned(self.output_dir)
        return sorted(self.results, key=lambda result: result.number)

    def _snapshot(self, number: int, checkpoint: Path | None) -> _Snapshot:
        """What the push sends, under the run's .hub-push/: the weights copied (the next epoch rewrites them), the
        checkpoint hard-linked (never rewritten)."""
        source, folder = RunDir(self.output_dir), new_staging(self.output_dir, "snapshot")
        published = source.weights(self.hub.weights)
        checkpoint_only = self.hub.strategy == "checkpoint" and not (source.metrics.is_file() and published.is_dir())
        try:
            target = RunDir(folder)
            if not checkpoint_only:
                for name in ("config", "labels", "metrics"):
                    shutil.copyfile(getattr(source, name), getattr(target, name))
                if published.is_dir():
                    shutil.copytree(published, target.weights(self.hub.weights))
            linked = None
            if self.hub.strategy == "checkpoint":
                checkpoint = checkpoint or _newest_checkpoint(self.output_dir)
                linked = folder / hub_io.CHECKPOINT_DIR
                link_tree(checkpoint, linked)
            epochs = _epochs_done(self.output_dir) if checkpoint_only else len(target.read_metrics())
            return _Snapshot(number, folder, epochs, linked, checkpoint_only, checkpoint.name if checkpoint else "")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _work(self) -> None:
        """Send the pending push, then the one submitted meanwhile, and so on; end when none is left, or when
        :meth:`wait` gave up on this thread."""
        while True:
            with self._lock:
                if self._thread is not threading.current_thread() or self._pending is None:
                    if self._thread is threading.current_thread():
                        self._thread = None  # the next submit starts a new worker
                    return
                snapshot, self._pending = self._pending, None
                self._uploading = snapshot
            try:
                url = self._send(snapshot)
                line = f"pushed to https://huggingface.co/{self.hub.model_id} ({url})"
                print(line, flush=True)
            except Exception as error:  # noqa: BLE001 - a push never fails the run
                url, line = None, _failed(self.output_dir, self.hub, error)
            finally:
                shutil.rmtree(snapshot.folder, ignore_errors=True)
                with self._lock:
                    if self._uploading is snapshot:
                        self._uploading = None
            self._record(PushResult(snapshot.number, snapshot.epochs, url, line))

    def _send(self, snapshot: _Snapshot) -> str:
        """Export the snapshot into the run's export/ (only this thread writes it during training) and upload it."""
        if snapshot.checkpoint_only:
            message = (
                f"tiny_transformers: training checkpoint {snapshot.checkpoint_name} (no finished epoch to publish)"
            )
            return _upload(
                snapshot.folder, self.hub, (_CHECKPOINT_FILES,), (_CHECKPOINT_FILES,), message, self.output_dir
            )
        export = RunDir(self.output_dir).export
        run = read_run(snapshot.folder)  # weights checked finite by the training loop before it exported them
        return _push(run, self.hub, export, None, self.output_dir, snapshot.checkpoint, checked=True)

    def _record(self, result: PushResult) -> None:
        with self._lock:
            self.results.append(result)


def _epochs_done(output_dir: Path) -> int:
    try:
        return len(RunDir(output_dir).read_metrics())
    except RunFileError:  # no metrics.jsonl yet (a resumed run's fresh folder), or unreadable
        return 0


def push_warnings(output_dir: str | Path, hub: HubConfig) -> list[str]:
    """Problems that will make the push after training fail, told before training starts (not hours later).

    >>> push_warnings("outputs/run", HubConfig())
    []
    """
    if not hub.push:
        return []
    if hub_io.offline():
        why = "HF_HUB_OFFLINE is set, so the push will fail; unset it before training ends"
    elif hub_io.get_token() is None:  # huggingface_hub's: HF_TOKEN or the stored login
        why = f"no Hugging Face token was found, so the push will fail; {hub_io.LOGIN_HINT}"
    else:
        return []
    later = f"the run's files will be kept; push them later with: {retry_command(output_dir, hub)}"
    return [f"hub.push is on but {why}, or {later}"]
