"""Errors a user can fix: each carries one sentence naming the thing and the fix."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class TinyTransformersError(Exception):
    """Base class for problems with the user's input; the command line prints only its one sentence.

    One re-raised from a DataLoader worker (``type(error)(the worker's traceback)``) keeps the sentence as its
    message and the traceback in ``worker_traceback``.

    >>> str(DataError("Caught DataError in DataLoader worker process 1.\\nOriginal Traceback (most recent call "
    ...               "last):\\n  ...\\ntiny_transformers.errors.DataError: Cannot read image 'x.JPEG'."))
    "Cannot read image 'x.JPEG'."
    """

    every_process = False  # True: every process of a launch raised it (raised_on_every_process); one per host says it

    def __init__(self, *args: object) -> None:
        self.worker_traceback: str | None = None
        if args and isinstance(args[0], str) and "Original Traceback" in args[0]:
            self.worker_traceback, args = args[0], (clean_message(args[0]), *args[1:])
        super().__init__(*args)


@contextmanager
def raised_on_every_process() -> Iterator[None]:
    """Mark what is raised inside as raised by every process of a launch: the same checks of the same config and files,
    made before the process group exists; each host's first process says it, the others exit quietly.

    >>> with raised_on_every_process():  # doctest: +SKIP
    ...     validate(config)
    """
    try:
        yield
    except TinyTransformersError as error:
        error.every_process = True
        raise


class ConfigError(TinyTransformersError, ValueError):
    """A config value is invalid or inconsistent with the machine."""


class DataError(TinyTransformersError):
    """A data source is missing, in no known layout, or holds unusable files."""


class ModelError(TinyTransformersError):
    """A model name or weights file cannot be used."""


class CheckpointError(TinyTransformersError):
    """A training checkpoint cannot be resumed from."""


class PublishError(TinyTransformersError):
    """A run cannot be exported, or its push to the Hugging Face Hub failed (the message says how to retry)."""


class TrainingInterrupted(TinyTransformersError):
    """SIGTERM/SIGINT arrived; a checkpoint was written and the message says how to resume. ``exit_status`` is
    what the command line exits with."""

    def __init__(self, message: str, exit_status: int = 143) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class TrainingDiverged(TinyTransformersError):
    """The loss or the weights stopped being finite; nothing was exported and the last good checkpoint is kept."""


def clean_message(error: BaseException) -> str:
    """The user-facing sentence of ``error``; from a DataLoader worker's pasted traceback, its last line's."""
    text = str(error)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]  # the last line, less its "module.Error: "
    return text
