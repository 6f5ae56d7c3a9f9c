"""Failure-proofing: resume after a crash, broken activations, W&B dying mid-run, unwritable outputs."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from tests.callbacks.test_surgery_probe import _csv_metrics, _probe, clip_file  # noqa: F401
from tests.helpers.modules import TinyClassifier, tiny_datamodule
from xai_lightning.cli import main
from xai_lightning.loggers import WandbLogger
from xai_lightning.report import load_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CrashAtEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("killed")  # a crash / preemption in the middle of the run


def _fit(root, clip_path, extra_callbacks=(), ckpt_path=None, epochs=3):
    L.seed_everything(11)
    probe = _probe(clip_path)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=CSVLogger(str(root), name="run"),
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe, ModelCheckpoint(dirpath=str(root / "run" / "checkpoints"), save_last=True), *extra_callbacks],
    )
    model = TinyClassifier()
    trainer.fit(model, tiny_datamodule(str(root.parent / "data"), train_per_class=40), ckpt_path=ckpt_path)
    return trainer, probe


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, clip_file):  # noqa: F811
    full, full_probe = _fit(tmp_path / "full", clip_file)
    with pytest.raises(RuntimeError, match="killed"):
        _fit(tmp_path / "killed", clip_file, [CrashAtEpoch(2)])
    assert os.path.isfile(tmp_path / "killed" / "run" / "checkpoints" / "last.ckpt")
    resumed, probe = _fit(tmp_path / "killed", clip_file, ckpt_path="last")
    assert resumed.current_epoch == 3 and [h["epoch"] for h in probe.history] == [0, 1, 2]  # state was restored
    a, b = load_run(str(tmp_path / "full" / "run")), load_run(str(tmp_path / "killed" / "run"))
    assert sorted(b.epochs) == [0, 1, 2]  # the versions of the interrupted and the resumed run merge
    for key, value in a.final().items():
        if "seconds" not in key:
            assert b.final()[key] == pytest.approx(value, abs=1e-5), key
    for p_full, p_res in zip(
        full.lightning_module.state_dict().values(), resumed.lightning_module.state_dict().values()
    ):
        assert torch.allclose(p_full, p_res, atol=1e-6)


def test_nan_activations_skip_the_verdict_and_name_the_layer(tmp_path, clip_file):  # noqa: F811
    trainer = L.Trainer(
        accelerator="cpu",
        logger=CSVLogger(str(tmp_path), name="csv"),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_probe(clip_file)],
    )
    with pytest.warns(UserWarning, match=r"verdict skipped: non-finite activations in net\.conv2"):
        trainer.validate(TinyClassifier(nan_on_probe=True), tiny_datamodule(str(tmp_path / "data")))
    logged = _csv_metrics(tmp_path)
    assert logged["probe/skipped"] == 1.0
    assert not any(k.startswith("probe/effect") for k in logged)  # nothing made of garbage is logged


def test_wandb_failing_mid_run_does_not_stop_training(tmp_path, monkeypatch, clip_file):  # noqa: F811
    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb_logger = WandbLogger(save_dir=str(tmp_path))
    calls = {"n": 0}
    real_log = wandb_logger.experiment.log

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise ConnectionError("W&B backend went away")
        return real_log(*args, **kwargs)

    monkeypatch.setattr(wandb_logger.experiment, "log", flaky)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=[CSVLogger(str(tmp_path), name="csv"), wandb_logger],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        callbacks=[_probe(clip_file)],
    )
    with pytest.warns(UserWarning, match="W&B failed during .*W&B backend went away"):
        trainer.fit(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    assert trainer.current_epoch == 2 and wandb_logger.failed
    run = load_run(str(tmp_path / "csv"))
    assert sorted(run.epochs) == [0, 1] and "probe/effect/color" in run.epochs[1]  # CSV kept everything
    wandb_logger.experiment.finish()


def test_unwritable_output_dir_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="cannot write to the output directory .*a_file/runs"):
        main(
            [
                "fit",
                "--config",
                os.path.join(ROOT, "configs", "quickstart.yaml"),
                "--trainer.default_root_dir",
                str(blocker / "runs"),
                "--trainer.logger",
                "false",
                "--trainer.callbacks",
                "null",
                "--data.init_args.data_dir",
                str(tmp_path / "data"),
            ]
        )


def test_unwritable_probe_dir_fails_at_setup(tmp_path, clip_file):  # noqa: F811
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[_probe(clip_file, save_dir=str(blocker / "probe"))],
    )
    with pytest.raises(PermissionError, match="SurgeryProbe output directory"):
        trainer.validate(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))


def test_unknown_layer_through_the_callback_lists_available_names(tmp_path, clip_file):  # noqa: F811
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[_probe(clip_file, standalone_layers=["net.conv9"])],
    )
    with pytest.raises(ValueError, match=r"unknown layer 'net.conv9'.*net\.conv1"):
        trainer.validate(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
