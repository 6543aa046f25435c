"""How the library writes and reads the small files of a run folder (rundir.py names them and says what to do
about each): whole or not at all, and a damaged file or a failed write as one sentence naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import TinyTransformersError


class RunFileError(TinyTransformersError):
    """A run folder's file cannot be read (missing, damaged, foreign) or written; the message names it and the fix."""


_WRITE_FIXES = {
    errno.ENOSPC: "free some space on that disk",
    errno.EDQUOT: "free some of your disk quota",
    errno.EROFS: "make that file system writable, or choose a folder on a writable one",
    errno.EACCES: "fix that folder's permissions, or choose a folder you can write to",
    errno.EPERM: "fix that folder's permissions, or choose a folder you can write to",
}


def write_errno(error: BaseException) -> int | None:
    """The errno of a failed write, also when torch or safetensors wrapped it in their own error.

    >>> write_errno(RuntimeError("No space left on device (os error 28)")) == errno.ENOSPC
    True
    """
    if isinstance(error, RunFileError) and error.__cause__ is not None:
        return write_errno(error.__cause__)
    if isinstance(getattr(error, "errno", None), int):
        return error.errno  # type: ignore[attr-defined]
    if found := re.search(r"os error (\d+)", str(error)):  # safetensors: "... (os error 28)"
        return int(found.group(1))
    # torch's serializer: "file write failed", "unexpected pos" when the disk filled up under it
    text = str(error)
    return errno.ENOSPC if any(t in text for t in ("No space left", "file write failed", "unexpected pos")) else None


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a full disk or a read-only folder met while writing ``path`` into one sentence (the file, the cause, the
    fix); any other error passes through.

    >>> with writing("out/last/model.safetensors"):  # doctest: +ELLIPSIS
    ...     raise OSError(errno.ENOSPC, "No space left")
    Traceback (most recent call last):
    tiny_transformers.runfiles.RunFileError: Writing 'out/last/model.safetensors' failed: No space left on device ...
    """
    try:
        yield
    except Exception as error:  # noqa: BLE001 - OSError, safetensors' and torch's errors carry the same errno
        code = write_errno(error)
        if code not in _WRITE_FIXES:
            raise
        raise RunFileError(
            f"Writing '{path}' failed: {os.strerror(code)} ({errno.errorcode[code]}); {_WRITE_FIXES[code]}, then run "
            "the same command again (what was written before is intact)."
        ) from error


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` whole or not at all (a temporary file in the same folder, then ``os.replace``),
    e.g. ``write_atomic(folder / "notes.json", "{}")``; returns ``path``."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with writing(path):
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())  # the bytes reach the disk before the name points at them
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_json(path: str | Path, kind: type = dict, fix: str = "restore it from a copy") -> Any:
    """The JSON value of the file ``path``, checked to be a ``kind``; a missing, empty, truncated or foreign file
    is :class:`RunFileError` naming it and ``fix``.

    >>> read_json(Path("nowhere/labels.json"))
    Traceback (most recent call last):
    ...
    tiny_transformers.runfiles.RunFileError: 'nowhere/labels.json' is missing; restore it from a copy.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        value = json.loads(text)
    except FileNotFoundError:
        problem = "is missing"
    except (OSError, UnicodeDecodeError) as error:  # UnicodeDecodeError is a ValueError: caught first
        problem = f"cannot be read ({getattr(error, 'strerror', None) or error})"
    except ValueError as error:
        problem = "is empty" if not text.strip() else f"is truncated or not valid JSON ({error})"
    else:
        if isinstance(value, kind):
            return value
        problem = f"holds a JSON {_json_type(type(value))} where a JSON {_json_type(kind)} belongs"
    raise RunFileError(f"'{path}' {problem}; {fix}.")


def _json_type(kind: type) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(kind, "number")
