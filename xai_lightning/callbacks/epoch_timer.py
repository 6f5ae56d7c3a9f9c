"""EpochTimer: wall time of each epoch's training and validation phases.

Logged per epoch: ``time/train_epoch_seconds`` (first training batch to the start of validation) and
``time/val_epoch_seconds`` (validation including every callback's epoch-end work, e.g. the probe).
"""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class EpochTimer(Callback):
    def __init__(self) -> None:
        super().__init__()
        self._train_start = self._val_start = None
        self._train_seconds = None

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_start, self._train_seconds, self._val_start = time.perf_counter(), None, None

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._val_start = time.perf_counter()
        if self._train_start is not None and self._train_seconds is None:
            self._train_seconds = self._val_start - self._train_start

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        train = self._train_seconds if self._train_seconds is not None else now - self._train_start
        metrics = {"time/train_epoch_seconds": train}
        if self._val_start is not None:
            metrics["time/val_epoch_seconds"] = now - self._val_start
        pl_module.log_dict(metrics)
