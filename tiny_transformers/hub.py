"""Talking to the Hugging Face Hub: offline mode, Hub ids, downloading a model, uploading a folder, and what a
failed call means in words. Everything the library sends to or fetches from the Hub goes through here; the token
is huggingface_hub's own (``HF_TOKEN`` or ``hf auth login``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token, snapshot_download
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import validate_repo_id

from .errors import CheckpointError, ModelError

LOGIN_HINT = "set HF_TOKEN or run `hf auth login` (`huggingface-cli login` in older huggingface_hub)"
_DOWNLOAD_FILES = ["config.json", "model.safetensors", "pytorch_model.bin"]  # a timm save_for_hf folder
CHECKPOINT_DIR = "last-checkpoint"  # the repo folder of the training checkpoint that hub.strategy checkpoint pushes
HUB_PREFIX = "hf-hub:"  # timm's spelling of a Hub location, which every option naming a model or checkpoint accepts


def hub_repo(location: str | Path) -> str | None:
    """The repo id of an ``hf-hub:owner/name`` location, or None when ``location`` is not one (a local path).

    >>> hub_repo("hf-hub:me/vit"), hub_repo("outputs/run")
    ('me/vit', None)
    """
    text = str(location)
    return text[len(HUB_PREFIX) :] if text.startswith(HUB_PREFIX) else None


def resume_repo(resume: str, model_id: str | None) -> str | None:
    """The Hub repo ``train.resume`` names (``hf-hub:owner/name``, or ``hub`` for ``model_id``: ``hub.model_id``), or
    None for a local checkpoint, ``auto`` or ``never``.

    >>> resume_repo("hf-hub:me/run", None), resume_repo("hub", "me/other"), resume_repo("auto", "me/other")
    ('me/run', 'me/other', None)
    """
    return model_id if resume == "hub" else hub_repo(resume)


def is_repo_id(text: str) -> bool:
    """Whether ``text`` is an ``owner/name`` model id as huggingface_hub's ``validate_repo_id`` accepts it.

    >>> is_repo_id("me/vit-l.v2"), is_repo_id("vit"), is_repo_id("me/not a repo"), is_repo_id("me/a--b")
    (True, False, False, False)
    """
    try:
        validate_repo_id(text)
    except hf_errors.HFValidationError:
        return False
    return text.count("/") == 1


def offline() -> bool:
    """Whether Hugging Face's offline mode is on (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE``), also when set
    after huggingface_hub read them at import (a notebook, a test).

    >>> import os; os.environ["HF_HUB_OFFLINE"] = "1"; offline()
    True
    """
    flags = (os.environ.get(name, "").strip().lower() for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(flag in ("1", "true", "yes", "on") for flag in flags)


def is_hub_id(text: str) -> bool:
    """Whether ``text`` names a repo on the Hub (``owner/name`` or a bare ``name``) rather than a local path: a valid
    repo id that does not exist on disk, look like a path (``./``, ``~``, ``.zip``, ``a/b/c``, a file suffix after its
    slash) or start with a local folder (``data/nope`` where ``data/`` exists: a missing path, not a Hub id).

    >>> is_hub_id("zh-plus/tiny-imagenet"), is_hub_id("./tiny-imagenet-200"), is_hub_id("data/a/b"), is_hub_id("x.zip")
    (True, False, False, False)
    >>> import os, tempfile; here = os.getcwd(); os.chdir(tempfile.mkdtemp()); os.mkdir("data")
    >>> is_hub_id("data/nope"), is_hub_id("owner/name"), is_hub_id("~/name"), is_hub_id("/data")
    (False, True, False, False)
    >>> os.chdir(here)
    """
    if not text or text.startswith((".", "/", "~")) or text.lower().endswith((".zip", ".parquet")):
        return False
    if Path(text).expanduser().exists() or text.count("/") > 1 or (os.sep != "/" and os.sep in text):
        return False
    if "/" in text and (Path(text).suffix or Path(text.split("/")[0]).is_dir()):
        return False
    try:
        validate_repo_id(text)
    except hf_errors.HFValidationError:
        return False
    return True


def upload_folder(
    folder: Path, repo_id: str, private: bool, message: str, files: Sequence[str], delete: Sequence[str] = ()
) -> str:
    """Create ``repo_id`` when missing (``private``) and upload the ``files`` of ``folder`` (names or patterns) in one
    atomic commit that also deletes the repo's files matching ``delete`` and not uploaded again; returns the commit
    URL (``https://huggingface.co/me/vit/commit/3f2c...``). Errors are huggingface_hub's own (:func:`explain`).
    (hf_xet splits a folder of over 256 files into several commits; these hold about fifteen.)
    """
    api = HfApi()
    api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message=message,
        allow_patterns=list(files),
        delete_patterns=list(delete) or None,
    )
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")


def _status(error: BaseException) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


def explain(error: BaseException, repo_id: str) -> str:
    """The cause of a failed Hub call on ``repo_id``, in words a user can act on."""
    owner = repo_id.split("/")[0]
    status = _status(error)
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if isinstance(error, hf_errors.OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so nothing can be uploaded (unset it first)"
    if isinstance(error, hf_errors.LocalTokenNotFoundError) or (status == 401 and get_token() is None):
        return f"no Hugging Face token was found; {LOGIN_HINT}"
    if status == 401:
        return f"the Hub rejected the token (401 Unauthorized); log in again with a valid token: {LOGIN_HINT}"
    if status == 403:
        return f"the token may not write to '{owner}' (403 Forbidden); use a token with write access to it"
    if isinstance(error, hf_errors.RepositoryNotFoundError) or status == 404:
        return f"the owner '{owner}' or the repo was not found, or the token cannot see it ({first_line})"
    if status is not None:
        return f"the Hub answered {status} ({first_line})"
    if isinstance(error, OSError) or any(word in type(error).__name__.lower() for word in ("connect", "timeout")):
        return f"the Hub could not be reached ({first_line})"
    return f"{type(error).__name__}: {first_line}"


def download_model(location: str) -> Path:
    """The local folder (Hugging Face cache) of ``hf-hub:owner/name``: its config.json and weights only (offline
    when already cached).

    >>> download_model("hf-hub:me/vit-l-tiny-imagenet")  # doctest: +SKIP
    PosixPath('/home/me/.cache/huggingface/hub/models--me--vit-l-tiny-imagenet/snapshots/3f2c...')
    """
    repo_id = hub_repo(location) or location
    try:
        return Path(snapshot_download(repo_id, repo_type="model", allow_patterns=_DOWNLOAD_FILES))
    except hf_errors.HFValidationError as error:
        raise ModelError(
            f"model.checkpoint '{location}' is not a Hub model id; write it as hf-hub:owner/name."
        ) from error
    except Exception as error:  # noqa: BLE001 - offline, not found, no access: each gets its own sentence below
        local = "pass a local folder written by `tiny-transformers export`"
        if isinstance(error, hf_errors.LocalEntryNotFoundError) or offline():
            reason = "HF_HUB_OFFLINE is set" if offline() else "the Hub cannot be reached"
            why = (
                f"is not in the local Hugging Face cache and {reason}; connect (and unset HF_HUB_OFFLINE) to download "
                f"it, or {local}"
            )
        elif isinstance(error, hf_errors.RepositoryNotFoundError) or _status(error) in (401, 403, 404):
            why = f"was not found on the Hub, or is private and needs a token; check the id, or {LOGIN_HINT}"
        else:
            why = f"could not be downloaded ({explain(error, repo_id)}); retry, or {local}"
        raise ModelError(f"model.checkpoint '{location}' {why}.") from error


def download_checkpoint(repo_id: str, into: Path) -> Path:
    """Download the :data:`CHECKPOINT_DIR` folder of ``repo_id`` (``hub.strategy checkpoint``'s) into ``into`` and
    return it; :class:`CheckpointError` with the cause in words.

    >>> download_checkpoint("me/vit-l-tiny-imagenet", Path("outputs/run/checkpoints/.tmp-hub"))  # doctest: +SKIP
    PosixPath('outputs/run/checkpoints/.tmp-hub/last-checkpoint')
    """
    location = f"{HUB_PREFIX}{repo_id}"
    try:
        snapshot_download(repo_id, repo_type="model", allow_patterns=[f"{CHECKPOINT_DIR}/*"], local_dir=str(into))
    except Exception as error:  # noqa: BLE001 - offline, not found, no access: each gets its own sentence below
        if isinstance(error, hf_errors.RepositoryNotFoundError) or _status(error) in (401, 403, 404):
            why = f"the repo was not found, or is private and needs a token; check the id, or {LOGIN_HINT}"
        elif isinstance(error, hf_errors.LocalEntryNotFoundError) or offline():
            why = "HF_HUB_OFFLINE is set; unset it" if offline() else "the Hub cannot be reached; connect"
            why += " and run again, or resume from a local checkpoint folder"
        else:
            why = f"{explain(error, repo_id)}; run again, or resume from a local checkpoint folder"
        raise CheckpointError(
            f"train.resume '{location}': its {CHECKPOINT_DIR}/ could not be downloaded: {why}."
        ) from error
    folder = into / CHECKPOINT_DIR
    if not folder.is_dir() or not any(folder.iterdir()):
        raise CheckpointError(
            f"train.resume '{location}': the repo holds no {CHECKPOINT_DIR}/ folder; it is pushed by runs with "
            "--hub.push true --hub.strategy checkpoint."
        )
    return folder
