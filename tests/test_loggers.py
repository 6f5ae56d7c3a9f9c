"""The W&B logger goes offline by itself without an account, and never needs the network."""

from __future__ import annotations

import glob
import os

from xai_lightning.loggers import WandbLogger, decide_wandb_mode


def test_offline_when_not_logged_in(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    mode, reason = decide_wandb_mode()
    assert mode == "offline" and "not logged in" in reason
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert decide_wandb_mode()[0] == "disabled"


def test_offline_run_writes_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=str(tmp_path), group="g", job_type="biased", tags=["t"])
    logger.log_metrics({"val/acc": 0.5}, step=0)
    logger.experiment.finish()
    runs = glob.glob(os.path.join(str(tmp_path), "wandb", "offline-run-*"))
    assert len(runs) == 1 and glob.glob(os.path.join(runs[0], "*.wandb"))
