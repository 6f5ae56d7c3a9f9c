"""The CLI: every shipped config parses; links and bad keys."""

from __future__ import annotations

import glob
import os

import pytest
import torch
import yaml

from tests.helpers.tiny import toy_fit_args
from xai_lightning.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
# a debiased config is an overlay on its biased twin: `fit --config BASE --config OVERLAY`
OVERLAYS = {
    "quickstart_debiased.yaml": "quickstart.yaml",
    "paper/debiased.yaml": "paper/biased.yaml",
    "paper/scale_offline_debiased.yaml": "paper/scale_offline.yaml",
    "scenes/debiased.yaml": "scenes/biased.yaml",
}
STANDALONE = [
    c
    for c in CONFIGS
    if os.sep + "trainer" + os.sep not in c and os.path.relpath(c, os.path.join(ROOT, "configs")) not in OVERLAYS
]


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


def _printed(capsys, *configs: str) -> dict:
    args = ["fit"]
    for config in configs:
        args += ["--config", os.path.join(ROOT, "configs", config)]
    with pytest.raises(SystemExit):
        main([*args, "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


def _leaves(tree, path=()) -> dict:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _leaves(sub, (*path, str(key))).items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _leaves(sub, (*path, str(i))).items()}
    return {path: tree}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_debiased_overlay_changes_its_own_keys_and_the_run_name_only(overlay, capsys):
    base = _leaves(_printed(capsys, OVERLAYS[overlay]))
    composed = _leaves(_printed(capsys, OVERLAYS[overlay], overlay))
    with open(os.path.join(ROOT, "configs", overlay)) as f:
        own = set(_leaves(yaml.safe_load(f)))
    changed = {path for path in base.keys() | composed.keys() if base.get(path) != composed.get(path)}
    renamed = {path for path in changed if "biased" in str(base.get(path)) and "debiased" in str(composed.get(path))}
    assert changed - renamed == own - {("run_name",)}
    assert composed[("run_name",)] == "debiased" and base[("run_name",)] == "biased"
    # every place that names the run follows it: the CSV logger (its version_N/checkpoints hold both checkpoint
    # files, so they follow it too) and the W&B job type
    names = {path[-1] for path in renamed}
    assert {"name", "job_type"} <= names and "dirpath" not in names, names


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
    three = ["--data.init_args.digits", "[1, 4, 7]", "--data.init_args.colors", "[red, green, blue]"]
    bare = ["--trainer.callbacks", "null", "--trainer.enable_checkpointing", "false"]
    cli = main(toy_fit_args(os.path.join(ROOT, "configs", "quickstart.yaml"), tmp_path) + three + bare)
    assert cli.model.hparams.num_classes == 3
    assert os.path.isfile(os.path.join(cli.trainer.log_dir, "config.yaml"))


def test_configs_keep_the_last_epoch_in_last_ckpt_even_when_val_acc_stops_improving(tmp_path):
    """Lightning's save_last follows top-k saves only; the configs' second checkpoint keeps the real last epoch."""
    import lightning as L
    import torch
    import yaml
    from torch.utils.data import DataLoader, TensorDataset

    class Flat(L.LightningModule):  # val/acc is 1.0 every epoch: no improvement after epoch 0
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            return self.w(batch[0]).pow(2).mean()

        def validation_step(self, batch, _):
            self.log("val/acc", 1.0)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    spec = yaml.safe_load(open(os.path.join(ROOT, "configs", "quickstart.yaml")))["trainer"]["callbacks"]
    callbacks = []
    for cb in spec:
        if cb["class_path"].endswith("ModelCheckpoint"):
            args = dict(cb["init_args"], dirpath=str(tmp_path))
            callbacks.append(L.pytorch.callbacks.ModelCheckpoint(**args))
    assert len(callbacks) == 2
    trainer = L.Trainer(max_epochs=3, callbacks=callbacks, logger=False, enable_progress_bar=False, accelerator="cpu")
    trainer.fit(Flat(), data, data)
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    best = torch.load(tmp_path / "best.ckpt", weights_only=False)
    assert last["epoch"] == 2 and best["epoch"] == 0
    assert sorted(os.listdir(tmp_path)) == ["best.ckpt", "last.ckpt"]


def test_quickstart_config_runs_the_probe_with_its_references(tmp_path, monkeypatch):
    """The shipped config end to end at toy sizes: the references are built from the CLI-instantiated model
    (whose hparams carry LightningCLI's private keys), and the outcome is logged."""
    monkeypatch.setenv("XAI_RUN_DIR", str(tmp_path / "runs"))
    cli = main(toy_fit_args(os.path.join(ROOT, "configs", "quickstart.yaml"), tmp_path))
    surgery = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "SurgeryProbe")
    assert surgery.reference_info.startswith("the weights at fit start + 3 re-initialisations by ClassifierModule")
    probe = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "ConceptProbe")
    assert probe.history[0]["outcome"] in ("shape", "color", "none") or "undecided" in probe.history[0]["outcome"]
    assert probe.history[0]["probe/decided"] in (0.0, 1.0) and probe.last.images == 40  # the whole probe set
    # the model summary counts a real forward's FLOPs (it printed "Total FLOPs: 0" without an example input)
    from lightning.pytorch.utilities.model_summary import ModelSummary
    from torch.utils.flop_counter import FlopCounterMode

    model = cli.model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert ModelSummary(model).total_flops == counter.get_total_flops() > 0


def test_scenes_config_probes_the_background_and_logs_its_counterfactual(tmp_path, monkeypatch):
    """configs/scenes/biased.yaml end to end at toy sizes: the scenes probe CLIP, three concepts, the alarm on
    the background and the background's counterfactual flip rate."""
    import csv

    monkeypatch.setenv("XAI_RUN_DIR", str(tmp_path / "runs"))
    cli = main(toy_fit_args(os.path.join(ROOT, "configs", "scenes", "biased.yaml"), tmp_path))
    probe = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "SurgeryProbe")
    assert probe.pipe.captions.names == ["shape", "color", "background"]
    assert probe.pipe.clip.name == "embedded:scenedigits"
    alarm = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "ConceptAlarm")
    assert alarm.spurious == ["background"]
    rows = list(csv.DictReader(open(os.path.join(cli.trainer.log_dir, "metrics.csv"))))
    logged = {k for r in rows for k, v in r.items() if v}
    assert {"cf/background_flip_rate", "probe/effect/background", "surgery/zeroshot_acc/background"} <= logged
    verdict = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "ConceptProbe")
    assert verdict.concepts == ["shape", "color", "background"]
