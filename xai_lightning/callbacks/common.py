"""Helpers the callbacks share: validation split lookup, the batches a validation pass really ran, the
samples a DDP rank owns, a validation batch's predictions, and logging values already reduced over ranks."""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch.utils.data import DataLoader, DistributedSampler


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


def val_batches(trainer: L.Trainer, index: int) -> Iterator[Any]:
    """The batches of validation dataloader ``index`` that a validation pass runs (``limit_val_batches``
    included), in order: what a callback iterates again must be what validation saw."""
    loader = val_loader(trainer, index)
    counts = trainer.num_val_batches
    limit = counts[index] if isinstance(counts, (list, tuple)) and index < len(counts) else None
    batches = iter(loader)
    return itertools.islice(batches, int(limit)) if limit is not None and limit != float("inf") else batches


def owned(trainer: L.Trainer, index: int, sample_index: torch.Tensor) -> torch.Tensor:
    """Bool mask of the batch's samples this rank owns. Under DDP, Lightning's unshuffled
    ``DistributedSampler`` deals sample ``i`` to rank ``i mod world`` and pads the last round with the first
    samples again; counting only ``i mod world == rank`` counts every sample exactly once (1 and N processes
    see the same set). Valid when ``sample_index`` is the sample's position in the dataset."""
    keep = torch.ones_like(sample_index, dtype=torch.bool)
    if trainer.world_size == 1:
        return keep
    sampler = getattr(val_loader(trainer, index), "sampler", None)
    if isinstance(sampler, DistributedSampler) and not sampler.shuffle:
        return sample_index.long() % trainer.world_size == trainer.global_rank
    return keep


def log_reduced(pl_module: L.LightningModule, metrics: Mapping[str, float]) -> None:
    """Logs epoch-level values that every rank already holds reduced (from one packed collective): no
    ``sync_dist`` collective per value, and none of Lightning's "use sync_dist=True" recommendations for them
    under DDP (one per value and epoch; it is emitted when the epoch's metrics are collected, so a filter on
    these exact names is installed, once per name)."""
    for name in metrics:
        message = rf"It is recommended to use `self\.log\({re.escape(repr(name))}"
        warnings.filterwarnings("ignore", message=message, category=PossibleUserWarning)
    pl_module.log_dict(dict(metrics), sync_dist=False)


def predictions(outputs: Any, batch: Mapping[str, Any], pl_module: L.LightningModule) -> torch.Tensor:
    """Predicted classes [B] of a validation batch: from the class scores ``validation_step`` returned (no
    second forward), else by one forward of ``batch["image"]``, which must return class scores [B, classes]."""
    n = len(batch["image"])
    if isinstance(outputs, torch.Tensor) and outputs.ndim == 2 and outputs.shape[0] == n:
        return outputs.argmax(-1)
    with torch.no_grad():
        scores = pl_module(batch["image"])
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2 or scores.shape[0] != n:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"the model's forward must return class scores [batch, classes]; it returned {shape}")
    return scores.argmax(-1)
