"""Checkpoints written atomically (never a truncated ``best.ckpt``), read with errors that name the file."""

from __future__ import annotations

import errno
import os
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from xai_lightning.errors import CheckpointError
from xai_lightning.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the target folder and renames it into place: a full disk or a kill
    mid-write leaves the previous checkpoint intact and no partial file behind."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        try:
            atomic_write(str(path), lambda f: torch.save(checkpoint, f))
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise CheckpointError(
                    errno.ENOSPC,
                    f"no space left on the device of {os.path.dirname(os.path.abspath(path))} "
                    f"writing checkpoint {os.path.basename(str(path))}; free space or set another run directory",
                ) from None
            raise


def check_resumable(path: str) -> dict:
    """Loads a checkpoint given as ``--ckpt_path`` (tensors memory-mapped) and checks it is a Lightning one;
    one clear error naming the file otherwise."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
            "it may be truncated: pass a checkpoint this framework saved (e.g. <run>/checkpoints/last.ckpt)"
        ) from None
    if not isinstance(ckpt, dict) or "pytorch-lightning_version" not in ckpt:
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint (no 'pytorch-lightning_version'); --ckpt_path resumes a run "
            "from <run>/checkpoints/last.ckpt. To start from plain weights use --model.init_args.init_checkpoint"
        )
    return ckpt
