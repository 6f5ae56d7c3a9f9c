"""One quiet CPU ``Trainer`` for tests: no logger, progress bar, model summary or checkpoints unless a test
asks for them (keyword arguments override the defaults)."""

from __future__ import annotations

import lightning as L


def quiet_trainer(**overrides) -> L.Trainer:
    args = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    args.update(overrides)
    return L.Trainer(**args)


def csv_logger(root) -> L.pytorch.loggers.CSVLogger:
    """The tests' CSV logger: metrics under ``root/csv``."""
    return L.pytorch.loggers.CSVLogger(str(root), name="csv")
