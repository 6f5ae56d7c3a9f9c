"""The CLI: every shipped config parses; links and bad keys."""

from __future__ import annotations

import glob
import os

import pytest

from xai_lightning.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
STANDALONE = [c for c in CONFIGS if os.sep + "trainer" + os.sep not in c]


def test_there_are_configs():
    assert any(c.endswith("quickstart.yaml") for c in CONFIGS)


@pytest.mark.parametrize("config", STANDALONE, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", config, "--print_config"])
    assert exit_.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path" in printed and "trainer:" in printed


@pytest.mark.parametrize(
    "overlay", [c for c in CONFIGS if os.sep + "trainer" + os.sep in c], ids=lambda p: os.path.relpath(p, ROOT)
)
def test_trainer_overlays_parse_on_top_of_the_quickstart(overlay, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(
            ["fit", "--config", os.path.join(ROOT, "configs", "quickstart.yaml"), "--config", overlay, "--print_config"]
        )
    assert exit_.value.code in (0, None)


def test_unknown_key_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "fit",
                "--config",
                os.path.join(ROOT, "configs", "quickstart.yaml"),
                "--model.init_args.learning_rate",
                "1",
            ]
        )
    assert exit_.value.code == 2
    assert "learning_rate" in capsys.readouterr().err


def test_fit_links_num_classes_and_saves_config(tmp_path):
    cli = main(
        [
            "fit",
            "--config",
            os.path.join(ROOT, "configs", "quickstart.yaml"),
            "--data.init_args.digits",
            "[1, 4, 7]",
            "--data.init_args.data_dir",
            str(tmp_path / "data"),
            "--data.init_args.train_per_class",
            "10",
            "--data.init_args.test_per_class",
            "4",
            "--data.init_args.real_world_per_class",
            "4",
            "--data.init_args.probe_per_class",
            "6",
            "--model.init_args.backbone",
            "resnet18",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "1",
            "--trainer.logger",
            "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir",
            str(tmp_path / "runs"),
            "--trainer.callbacks",
            "null",
            "--trainer.enable_checkpointing",
            "false",
        ]
    )
    assert cli.model.hparams.num_classes == 3
    assert os.path.isfile(os.path.join(cli.trainer.log_dir, "config.yaml"))
