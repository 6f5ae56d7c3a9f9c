"""Helpers the callbacks share: validation split lookup and RNG preservation."""

from __future__ import annotations

import contextlib
import random

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader


def split_index(trainer: L.Trainer, split: str | int, who: str) -> int:
    """Index of a validation dataloader named in the datamodule's ``val_split_names`` (or an index as is)."""
    if isinstance(split, int):
        return split
    names = list(getattr(trainer.datamodule, "val_split_names", []) or [])
    if split not in names:
        raise ValueError(
            f"{who}: split {split!r} is not a validation dataloader; "
            f"available: {', '.join(names) or 'none (the datamodule has no val_split_names)'}"
        )
    return names.index(split)


def val_loader(trainer: L.Trainer, index: int) -> DataLoader:
    loaders = trainer.val_dataloaders
    return (loaders if isinstance(loaders, (list, tuple)) else [loaders])[index]


@contextlib.contextmanager
def preserved_rng(device: torch.device):
    """Runs a block without disturbing any random state (torch CPU/CUDA, numpy, random): a callback's extra
    work (e.g. iterating a DataLoader, which draws a seed) must not change training."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=True):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)
