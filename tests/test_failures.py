"""Failure-proofing: resume after a crash, broken activations, W&B dying mid-run, unwritable outputs."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from tests.callbacks.test_surgery_probe import _csv_metrics, _probe, clip_file  # noqa: F401
from tests.helpers.modules import TinyClassifier, tiny_datamodule
from tests.helpers.tiny import TOY_CLI_ARGS
from tests.helpers.trainers import csv_logger, quiet_trainer
from xai_lightning.cli import XAILightningCLI, main
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
    trainer = quiet_trainer(
        max_epochs=epochs,
        logger=CSVLogger(str(root), name="run"),
        num_sanity_val_steps=0,
        enable_checkpointing=True,
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
    trainer = quiet_trainer(logger=csv_logger(tmp_path), callbacks=[_probe(clip_file)])
    with pytest.warns(UserWarning, match=r"epoch 0 skipped: non-finite activations in net\.conv2"):
        trainer.validate(TinyClassifier(nan_on_probe=True), tiny_datamodule(str(tmp_path / "data")))
    logged = _csv_metrics(tmp_path)
    assert logged["surgery/skipped"] == 1.0
    assert not any(k.startswith("surgery/effect") for k in logged)  # nothing made of garbage is logged


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
    trainer = quiet_trainer(
        max_epochs=2,
        logger=[csv_logger(tmp_path), wandb_logger],
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        callbacks=[_probe(clip_file)],
    )
    with pytest.warns(UserWarning, match="W&B failed during .*W&B backend went away"):
        trainer.fit(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    assert trainer.current_epoch == 2 and wandb_logger.failed
    run = load_run(str(tmp_path / "csv"))
    assert sorted(run.epochs) == [0, 1] and "surgery/effect_share/color" in run.epochs[1]  # CSV kept everything
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
    trainer = quiet_trainer(callbacks=[_probe(clip_file, save_dir=str(blocker / "probe"))])
    with pytest.raises(PermissionError, match="SurgeryProbe output directory"):
        trainer.validate(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))


def test_unknown_layer_through_the_callback_lists_available_names(tmp_path, clip_file):  # noqa: F811
    trainer = quiet_trainer(callbacks=[_probe(clip_file, standalone_layers=["net.conv9"])])
    with pytest.raises(ValueError, match=r"unknown layer 'net.conv9'.*net\.conv1"):
        trainer.validate(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))


TINY = TOY_CLI_ARGS


def _cli_error(capsys, *args) -> str:
    """Runs the CLI, expects the one-line user error (exit 2), returns it."""
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", os.path.join(ROOT, "configs", "quickstart.yaml"), *args])
    assert stop.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[-1] == "(set XAI_DEBUG=1 for the traceback)" and err[-2].startswith("error: ")
    return err[-2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.init_args.digits", "[12]"], "error: digits [12]: each must be in 0-9 (got [12])"),
        (["--data.init_args.digits", "[5]"], "error: digits [5]: give at least 2 digits"),
        (["--data.init_args.digits", "[1,4,7]"], "digit 7 would share red with digit 1); give at least 3 colours"),
        (["--data.init_args.bias_strength", "1.5"], "error: bias_strength=1.5 is outside [0, 1]"),
        (["--data.init_args.colors", "[red,mauve]"], "error: unknown color 'mauve'; allowed names: red, green"),
    ],
)
def test_bad_input_is_one_line_naming_the_option(tmp_path, capsys, args, message):
    assert message in _cli_error(capsys, "--data.init_args.data_dir", str(tmp_path), *args)


def test_an_error_raised_inside_a_logger_list_keeps_its_own_sentence(tmp_path, capsys, monkeypatch):
    """The quickstart's loggers are a list: jsonargparse wraps a logger constructor's error in its own
    ("Not a valid subclass of Logger. Got value: [...]"); the one line is the constructor's sentence."""
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("XAI_RUN_DIR", str(tmp_path / "runs"))
    line = _cli_error(capsys, "--data.init_args.data_dir", str(tmp_path), *TINY)
    assert line.startswith("error: WANDB_MODE=online, but not logged in to W&B: run `wandb login`"), line


def test_unreadable_or_foreign_checkpoints_are_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XAI_RUN_DIR", str(tmp_path / "runs"))
    foreign = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)
    assert f"{foreign} is not a Lightning checkpoint" in _cli_error(capsys, "--ckpt_path", str(foreign))
    real = tmp_path / "real.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": {"w": torch.zeros(1000)}}, real)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(real.read_bytes()[:700])
    assert f"{truncated} is not a readable checkpoint" in _cli_error(capsys, "--ckpt_path", str(truncated))
    bad_npz = tmp_path / "digits.npz"
    bad_npz.write_bytes(os.urandom(2000))
    msg = _cli_error(
        capsys,
        "--data.init_args.source",
        str(bad_npz),
        "--data.init_args.data_dir",
        str(tmp_path),
        *TINY,
    )
    assert f"{bad_npz} is not a readable .npz" in msg


def test_resuming_with_another_model_is_refused(tmp_path, capsys):
    ckpt = tmp_path / "last.ckpt"
    hparams = {"_class_path": "xai_lightning.models.ClassifierModule", "backbone": "resnet50", "num_classes": 2}
    torch.save({"pytorch-lightning_version": "2.6.0", "hyper_parameters": hparams, "state_dict": {}}, ckpt)
    msg = _cli_error(capsys, "--ckpt_path", str(ckpt), "--model.init_args.backbone", "resnet18")
    assert "holds a model with backbone='resnet50', the command asks for 'resnet18'" in msg


def test_a_probe_clip_checkpoint_resumes_with_its_saved_config(tmp_path, monkeypatch):
    """The probe CLIPs save their resolved config and vocabulary (no ``_class_path``): ``--ckpt_path`` reads
    them with the configured class (LightningCLI alone read them as a bare LightningModule and refused)."""
    from xai_lightning.models import WorldCLIPModule

    config = os.path.join(ROOT, "configs", "probe_clip_world.yaml")
    with open(config) as f:
        saved = WorldCLIPModule(**yaml.safe_load(f)["model"]["init_args"])
    ckpt = tmp_path / "last.ckpt"
    state = {"pytorch-lightning_version": "2.6.0", "hyper_parameters": dict(saved.hparams), "state_dict": {}}
    torch.save(state, ckpt)
    monkeypatch.setattr(XAILightningCLI, "_run_subcommand", lambda self, sub: None)  # parse and build, no fit
    cli = main(["fit", "--config", config, "--ckpt_path", str(ckpt), "--trainer.logger", "false"])
    assert isinstance(cli.model, WorldCLIPModule)
    assert dict(cli.model.hparams) == dict(saved.hparams)
    assert cli.model.vocabulary.families == saved.vocabulary.families


def test_a_second_fit_becomes_the_next_version_and_the_report_reads_the_newest(tmp_path, monkeypatch):
    """Lightning's convention: a rerun into the same folder logs version_1 (checkpoints inside it), the report
    reads the newest version and says which; --ckpt_path last resumes the newest version's last checkpoint."""
    from xai_lightning.cli import main

    monkeypatch.setenv("XAI_RUN_DIR", str(tmp_path / "runs"))
    args = ["fit", "--config", os.path.join(ROOT, "configs", "quickstart.yaml"), "--data.init_args.data_dir"]
    args += [str(tmp_path / "data"), *TINY, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"]
    args += ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir"]
    args += [str(tmp_path / "runs"), "--trainer.logger.name", "biased"]
    for _ in range(2):
        main(args)
    run = tmp_path / "runs" / "biased"
    assert sorted(os.listdir(run)) == ["version_0", "version_1"]
    assert os.path.isfile(run / "version_1" / "checkpoints" / "last.ckpt")
    assert load_run(str(run)).versions == ["version_1"]
    resumed = main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert resumed.trainer.ckpt_path == str(run / "version_1" / "checkpoints" / "last.ckpt")
    assert load_run(str(run)).versions == ["version_1", "version_2"] and sorted(load_run(str(run)).epochs) == [0, 1]


def test_a_full_disk_leaves_the_old_checkpoint_and_says_which_folder(tmp_path, monkeypatch):
    import errno

    from xai_lightning.checkpoint_io import AtomicCheckpointIO
    from xai_lightning.errors import CheckpointError

    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "best.ckpt"
    io.save_checkpoint({"epoch": 0}, path)
    before = path.read_bytes()

    def full(obj, f, *args, **kwargs):
        f.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=f"no space left on the device of {tmp_path / 'ckpts'}"):
        io.save_checkpoint({"epoch": 1}, path)
    assert path.read_bytes() == before and os.listdir(tmp_path / "ckpts") == ["best.ckpt"]  # nothing half-written


def test_sigterm_exits_143_after_checkpointing_the_last_epoch(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, XAI_RUN_DIR=str(tmp_path / "runs"), WANDB_MODE="disabled", PYTHONPATH=ROOT)
    cmd = [
        sys.executable,
        "-m",
        "xai_lightning",
        "fit",
        "--config",
        os.path.join(ROOT, "configs", "quickstart.yaml"),
        "--data.init_args.data_dir",
        str(tmp_path / "data"),
        *TINY,
        "--trainer.max_epochs",
        "3",
        "--trainer.callbacks+=tests.helpers.modules.SelfTerminate",
    ]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 143, done.stderr[-2000:]
    assert "terminated (SIGTERM)" in done.stderr
    last = torch.load(tmp_path / "runs" / "biased" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0  # the completed epoch before the signal
