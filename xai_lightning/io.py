"""Atomic file writes: a temporary file in the target directory, then a rename (never half-written)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import IO


def atomic_write(path: str, write: Callable[[IO[bytes]], None], mode: int = 0o644) -> None:
    """Calls ``write(f)`` on a temporary binary file next to ``path`` and renames it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write to {folder!r} (not writable); choose another output directory")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def check_writable(path: str, what: str = "output directory") -> None:
    """Creates ``path`` if needed and proves it writable, or raises one clear error (before any long work)."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise PermissionError(
            f"cannot write to the {what} {path!r} ({type(err).__name__}: {err}); choose a writable location"
        ) from None


TRUST_ENV = "XAI_TRUST_PICKLE"  # os.pathsep-separated files the user trusts to run code when loaded


def trusted(path: str) -> bool:
    """Whether the user listed ``path`` in ``XAI_TRUST_PICKLE`` (the one way to let a file unpickle)."""
    listed = [p for p in os.environ.get(TRUST_ENV, "").split(os.pathsep) if p]
    return any(os.path.realpath(p) == os.path.realpath(path) for p in listed)


def load_file(path: str, what: str):
    """A file a user named (checkpoint, probe CLIP, surgery plan) as data: tensors, dicts, lists, strings and
    numbers only (``torch.load(weights_only=True)``). A file that needs pickle could run its own code when
    loaded, so it is refused with one line that names it and how to allow it, unless the user listed it in
    ``XAI_TRUST_PICKLE``."""
    import pickle

    import torch

    from xai_lightning.errors import CheckpointError

    if trusted(path):
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        needs = str(err).split("Unsupported global:")[-1].split(".")[0:3]
        raise CheckpointError(
            f"{what} {path!r} holds Python objects that only unpickling can rebuild ({'.'.join(needs).strip()}"
            f"...), and unpickling a file can run code from it; refused. If you trust this file, allow it with "
            f"{TRUST_ENV}={path}"
        ) from None
