"""ImageFolderAttributesDataModule on a small generated folder (PNG files and a CSV written here)."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.trainers import quiet_trainer
from xai_lightning.data import ImageFolderAttributesDataModule
from xai_lightning.errors import ConfigError

PLACES = {"land": (150, 110, 60), "water": (40, 90, 200)}


def _bird(kind: str, place: str, rng: np.random.Generator) -> np.ndarray:
    """A 40 px scene: a white disc (landbird) or square (waterbird) over a land- or water-coloured ground."""
    img = np.empty((40, 40, 3), dtype=np.uint8)
    img[:] = np.asarray(PLACES[place]) + rng.integers(-20, 21, size=(40, 40, 3))
    y, x = np.mgrid[:40, :40]
    cy, cx = rng.integers(14, 26, size=2)
    mask = (y - cy) ** 2 + (x - cx) ** 2 < 64 if kind == "landbird" else (abs(y - cy) < 7) & (abs(x - cx) < 7)
    img[mask] = 240
    return img


def make_folder(root, n_per_split=24, split_codes=None, seed=0) -> str:
    """Train/val: every landbird on land, every waterbird on water; probe_set: places at random."""
    rng = np.random.default_rng(seed)
    rows = []
    for split in ("train", "val", "probe_set"):
        for i in range(n_per_split):
            kind = ("landbird", "waterbird")[i % 2]
            place = ("land", "water")[i % 2] if split != "probe_set" else ("land", "water")[(i // 2) % 2]
            path = os.path.join("images", split, f"{i:03d}.png")
            os.makedirs(os.path.join(root, "images", split), exist_ok=True)
            Image.fromarray(_bird(kind, place, rng)).save(os.path.join(root, path))
            code = split_codes[split] if split_codes else split
            rows.append({"img_filename": path, "y": kind, "place": place, "split": code})
    with open(os.path.join(root, "metadata.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(root)


def _dm(root, **kw) -> ImageFolderAttributesDataModule:
    args = dict(path_column="img_filename", label_column="y", attributes=["place"], image_size=32, batch_size=8)
    return ImageFolderAttributesDataModule(root, **{**args, **kw})


def test_images_labels_attributes_and_splits_come_from_the_csv(tmp_path):
    dm = _dm(make_folder(tmp_path))
    assert dm.num_classes == 2 and dm.class_names == ["landbird", "waterbird"]
    assert dm.attributes == {"label": ["landbird", "waterbird"], "place": ["land", "water"]}
    dm.setup()
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 24, "val": 24, "probe_set": 24}
    batch = next(iter(dm.dataloader("probe_set")))
    assert batch["image"].shape == (8, 3, 32, 32) and 0 <= batch["image"].min() and batch["image"].max() <= 1
    blue_ground = batch["image"][:, 2, :4, :4].mean((1, 2)) > batch["image"][:, 0, :4, :4].mean((1, 2))
    assert torch.equal(blue_ground, batch["place"] == 1)  # the pixels show the CSV's place
    assert batch["label"].tolist() == [0, 1] * 4


def test_split_codes_are_mapped_and_absent_splits_are_drawn_by_seed(tmp_path):
    root = make_folder(tmp_path / "a", split_codes={"train": "0", "val": "1", "probe_set": "2"})
    with pytest.raises(ConfigError, match=r"split column 'split' has values \['0', '1', '2'\]"):
        _dm(root)
    dm = _dm(root, split_names={"0": "train", "1": "val", "2": "probe_set"})
    assert sorted(set(dm.split)) == ["probe_set", "train", "val"]
    drawn = _dm(root, split_column=None, seed=3)
    assert np.array_equal(drawn.split, _dm(root, split_column=None, seed=3).split)
    assert not np.array_equal(drawn.split, _dm(root, split_column=None, seed=4).split)


@pytest.mark.parametrize(
    "change, kw, message",
    [
        ("delete_file", {}, "1 of 72 images listed in the metadata are not under"),
        (None, {"attributes": ["habitat"]}, "no attribute habitat column 'habitat'; its columns are img_filename"),
        (None, {"label_column": "species"}, "no label column 'species'"),
        (None, {"classes": ["landbird", "waterbird", "seabird"]}, r"classes \['seabird'\] have no images"),
        (None, {"classes": ["landbird"]}, r"label values \['waterbird'\] are not among classes"),
        (None, {"val_splits": ["val", "real_world"]}, r"no images in split\(s\) \['real_world'\]"),
        ("no_csv", {}, "no such CSV file"),
    ],
)
def test_bad_folders_are_one_line_errors(tmp_path, change, kw, message):
    root = make_folder(tmp_path)
    if change == "delete_file":
        os.remove(os.path.join(root, "images", "val", "005.png"))
    if change == "no_csv":
        os.remove(os.path.join(root, "metadata.csv"))
    with pytest.raises(ConfigError, match=message):
        _dm(root, **kw)


def test_the_probe_names_the_place_a_model_decides_by(tmp_path):
    """A model that reads the ground's colour (blue -> waterbird): the verdict is `place`, from CSV columns."""
    from xai_lightning.callbacks import ConceptProbe
    from xai_lightning.models import ClassifierModule

    class ByGround(ClassifierModule):
        def forward(self, x):
            ground = x[:, 2, :4, :4].mean((1, 2)) - x[:, 0, :4, :4].mean((1, 2))
            return torch.stack([-ground, ground], 1) + 0 * super().forward(x).sum()

    root = make_folder(tmp_path / "birds", n_per_split=48)
    probe = ConceptProbe(concepts={"bird": "label", "place": "place"}, draws=100, permutations=100)
    trainer = quiet_trainer(callbacks=[probe], default_root_dir=str(tmp_path))
    trainer.validate(ByGround(backbone="simple_cnn", num_classes=2), datamodule=_dm(root), verbose=False)
    assert probe.last.outcome == "place" and probe.last.relies == ("place",)
    assert probe.last.effects["place"].value == pytest.approx(1.0)
    assert probe.last.effects["bird"].value == pytest.approx(0.0, abs=0.1)
