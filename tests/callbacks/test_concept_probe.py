"""ConceptProbe: the verdict for any classifier, from the validation pass alone."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models import VisionTransformer

from tests.callbacks.test_surgery_probe import _csv_metrics, _trainer
from tests.helpers.modules import TinyClassifier, tiny_datamodule
from xai_lightning import discover, names
from xai_lightning.callbacks import ConceptAlarm, ConceptProbe
from xai_lightning.verdict import REASON_KEYS


class ColourReader(L.LightningModule):
    """Predicts the class from the image's dominant colour channel (red -> 0, else 1): it follows colour and
    ignores the digit, exactly. Its validation_step returns nothing: the probe must run the forward itself."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.scale = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mass = x.sum(dim=(2, 3))  # [B, 3]
        red = mass[:, 0] - mass[:, 1:].amax(dim=1)
        return torch.stack([red, -red], dim=1) * self.scale

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch["image"]), batch["label"]) * 0.0 + self.scale * 0.0

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class TinyViT(L.LightningModule):
    """A user's own module: a torchvision VisionTransformer whose validation_step returns the loss."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = VisionTransformer(
            image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=num_classes
        )

    def forward(self, x):
        return self.net(x)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return F.cross_entropy(self(batch["image"]), batch["label"])


def test_logs_exactly_the_documented_keys(tmp_path):
    probe = ConceptProbe(concepts={"shape": "digit", "color": "color"}, draws=50, permutations=50)
    _trainer(tmp_path, [probe]).validate(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    logged = {k: v for k, v in _csv_metrics(tmp_path).items() if k.startswith("probe/")}
    expected = names.probe_keys(["shape", "color"], list(REASON_KEYS.values()))
    assert sorted(logged) == sorted(expected)
    assert logged["probe/images"] == 48  # the whole probe set: nothing is held out
    assert sum(logged[f"probe/outcome/{o}"] for o in ("shape", "color", "none", "undecided")) == 1.0
    assert all(math.isfinite(logged[k]) for k in logged if "margin" not in k)


def test_the_callback_computes_what_discover_computes_on_the_same_images(tmp_path):
    """An independent path: the model run by ``discover`` over the probe split in a notebook."""
    torch.manual_seed(0)
    model, dm = TinyClassifier().eval(), tiny_datamodule(str(tmp_path / "data"))
    probe = ConceptProbe(concepts={"shape": "digit", "color": "color"}, draws=80, permutations=80)
    _trainer(tmp_path, [probe]).validate(model, dm)
    dm.setup()
    batches = list(dm.dataloader("probe_set"))
    labels = {
        "shape": torch.cat([b["digit_index"] for b in batches]).tolist(),
        "color": torch.cat([b["color"] for b in batches]).tolist(),
    }
    direct = discover(
        model,
        [b["image"] for b in batches],
        labels,
        targets=torch.cat([b["label"] for b in batches]).tolist(),
        value_names={"shape": dm.attributes["digit"], "color": dm.attributes["color"]},
        classes=dm.class_names,
        draws=80,
        permutations=80,
    )
    assert probe.last.text() == direct.text()
    for c in ("shape", "color"):
        got, want = probe.last.effects[c], direct.effects[c]
        assert (got.value, got.lo, got.hi, got.p_value) == (want.value, want.lo, want.hi, want.p_value)


def test_a_model_that_reads_colour_is_named_colour_and_the_alarm_fires(tmp_path):
    probe = ConceptProbe(concepts={"shape": "digit", "color": "color"}, draws=100, permutations=100)
    alarm = ConceptAlarm(spurious=["color"])
    _trainer(tmp_path, [probe, alarm], max_epochs=1, limit_train_batches=1).fit(
        ColourReader(), tiny_datamodule(str(tmp_path / "data"))
    )
    assert probe.last.outcome == "color" and probe.last.relies == ("color",)
    assert probe.last.effects["color"].value == pytest.approx(1.0)
    assert probe.last.effects["color"].value_classes == {"red": "5", "green": "8"}
    assert alarm.fired == {"color": 0}
    # the verdict in words, on disk for the report: the file holds what the callback decided
    import glob
    import json

    from xai_lightning.report import load_run, markdown

    (path,) = glob.glob(str(tmp_path / "**" / "concepts" / "epoch_000.json"), recursive=True)
    saved = json.load(open(path))
    assert saved["outcome"] == "color" and saved["effects"]["color"]["value_classes"] == {"red": "5", "green": "8"}
    lo = probe.last.effects["color"].lo
    assert saved["sentences"][0] == f"100% of the predictions follow color [{lo:.0%}, 100%]: red -> 5, green -> 8."
    run_dir = path.split("/concepts/")[0]
    assert saved["sentences"][0] in markdown([load_run(run_dir, "colour reader")])


def test_a_users_vit_module_is_probed_with_its_own_forward(tmp_path):
    """validation_step returns a loss: the probe runs the forward itself; concepts default to the attributes."""
    torch.manual_seed(1)
    model, dm = TinyViT(num_classes=2), tiny_datamodule(str(tmp_path / "data"))
    probe = ConceptProbe(draws=50, permutations=50)
    _trainer(tmp_path, [probe]).validate(model, dm)
    assert probe.concepts == ["digit", "color"] and probe.last.images == 48
    dm.setup()
    batches = list(dm.dataloader("probe_set"))
    direct = discover(
        model,
        [b["image"] for b in batches],
        {c: torch.cat([b[k] for b in batches]).tolist() for c, k in (("digit", "digit_index"), ("color", "color"))},
        targets=torch.cat([b["label"] for b in batches]).tolist(),
        value_names={c: dm.attributes[c] for c in ("digit", "color")},
        classes=dm.class_names,
        draws=50,
        permutations=50,
    )
    assert {c: e.value for c, e in probe.last.effects.items()} == {c: e.value for c, e in direct.effects.items()}


def test_sanity_check_and_unprobed_epochs_log_nothing(tmp_path):
    probe = ConceptProbe(every_n_epochs=2, draws=20, permutations=20)
    _trainer(tmp_path, [probe], max_epochs=2, limit_train_batches=1, num_sanity_val_steps=2).fit(
        TinyClassifier(), tiny_datamodule(str(tmp_path / "data"))
    )
    assert [h["epoch"] for h in probe.history] == [1]


def test_bad_arguments_and_data_modules_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="allowed: default, all"):
        ConceptProbe(log="everything")
    with pytest.raises(ValueError, match="'none' is reserved"):
        ConceptProbe(concepts={"none": "digit"})
    with pytest.raises(ValueError, match="unknown attribute 'texture'; the data module has: digit, color"):
        _trainer(tmp_path, [ConceptProbe(concepts={"t": "texture"})]).validate(
            TinyClassifier(), tiny_datamodule(str(tmp_path / "data"))
        )

    class Bare(L.LightningDataModule):
        def val_dataloader(self):
            return torch.utils.data.DataLoader([{"image": torch.zeros(3, 32, 32), "label": 0}])

    with pytest.raises(ValueError, match="needs a data module with val_split_names, class_names, attributes"):
        _trainer(tmp_path, [ConceptProbe()]).validate(TinyClassifier(), Bare())


def test_log_all_adds_p_values_and_cell_sizes(tmp_path):
    probe = ConceptProbe(draws=20, permutations=20, log="all")
    _trainer(tmp_path, [probe]).validate(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    logged = _csv_metrics(tmp_path)
    for c in ("digit", "color"):
        assert 0 < logged[f"probe/p_value/{c}"] <= 1 and logged[f"probe/cell_median/{c}"] > 0
    assert np.isfinite(logged["probe/thin/color"])


def test_concepts_read_from_captions_are_read_once_and_checked_against_labels(tmp_path):
    """read='both': the data module's digit label, the colour read by a probe CLIP from two captions per value.
    A random tiny CLIP reads garbage: the plumbing is what is tested (every image read once across epochs, the
    readings in the verdict, the zero-shot accuracy against the labels logged)."""
    from tests.helpers.tiny import TINY_CLIP_CFG, tiny_clip
    from xai_lightning.clip import save_probe_clip

    clip_path = str(tmp_path / "clip.pt")
    save_probe_clip(clip_path, tiny_clip(seed=2), TINY_CLIP_CFG, half=False)
    vocab = {"color": {"red": ["a red digit", "a digit in red"], "green": ["a green digit", "a digit in green"]}}
    probe = ConceptProbe(
        concepts={"digit": "digit"},
        read="both",
        vocabulary=vocab,
        clip={"checkpoint": clip_path},
        min_confidence=0.0,
        draws=30,
        permutations=30,
    )
    dm = tiny_datamodule(str(tmp_path / "data"))
    _trainer(tmp_path, [probe], max_epochs=2, limit_train_batches=1).fit(TinyClassifier(), dm)
    assert probe.concepts == ["digit", "color"] and probe.read_concepts == ["color"]
    assert len(probe._read_cache) == 48  # read once, reused at the second epoch
    from xai_lightning.clip import load_clip
    from xai_lightning.clip.vocabulary import caption_labels, load_vocabulary

    batches = list(dm.dataloader("probe_set"))
    direct = caption_labels(
        load_clip({"checkpoint": clip_path}), [b["image"] for b in batches], load_vocabulary(vocab), 0.0
    )
    index = torch.cat([b["index"] for b in batches]).tolist()
    assert [int(probe._read_cache[i][0]) for i in index] == direct.values["color"].tolist()
    truth = torch.cat([b["color"] for b in batches]).numpy()
    logged = _csv_metrics(tmp_path)
    assert logged["probe/zeroshot_acc/color"] == pytest.approx(direct.accuracy("color", truth))
