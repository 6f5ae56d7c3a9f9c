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


def _correlated_folder(root, n=400, conflict=0.05, seed=0) -> str:
    """Birds on their usual place for 95% of the images, no split column; image i is drawn with seed i, so a
    test can draw the same bird on the other place (the exact counterfactual)."""
    rows = []
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    flip = np.random.default_rng(seed).random(n) < conflict
    for i in range(n):
        kind = ("landbird", "waterbird")[i % 2]
        place = ("land", "water")[(i % 2) ^ int(flip[i])]
        path = os.path.join("images", f"{i:04d}.png")
        Image.fromarray(_bird(kind, place, np.random.default_rng(i))).save(os.path.join(root, path))
        rows.append({"img_filename": path, "y": kind, "place": place})
    with open(os.path.join(root, "metadata.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(root)


def test_a_balanced_probe_set_has_every_cell_and_blank_values_are_unknown(tmp_path, caplog):
    import logging

    root = _correlated_folder(tmp_path / "birds", n=200)
    with open(os.path.join(root, "metadata.csv")) as f:
        text = f.read().splitlines()
    text[5] = text[5].rsplit(",", 1)[0] + ","  # one blank place
    with open(os.path.join(root, "metadata.csv"), "w") as f:
        f.write("\n".join(text) + "\n")
    with caplog.at_level(logging.INFO, logger="xai_lightning.data.folder"):
        dm = _dm(root, split_column=None)
    assert dm.attributes["place"] == ["land", "water"] and int(dm.attr_index["place"][4]) == -1
    cell, _ = dm._cells()
    probe = cell[dm.split == "probe_set"]
    assert cell[4] == -1 and dm.split[4] != "probe_set"  # an unknown place is never probed
    assert np.bincount(probe).tolist() == [np.bincount(probe)[0]] * 4  # every class x place cell alike
    assert "probe_set cells (class x place): images" in caplog.text and "landbird / water:" in caplog.text
    random = _dm(root, split_column=None, probe_set="random")
    rcell = cell[random.split == "probe_set"]
    assert np.bincount(rcell, minlength=4)[[1, 2]].sum() < 0.15 * len(rcell)  # the draw keeps the correlation


def test_a_correlated_folder_run_from_a_config_gets_a_probe_set_that_answers(tmp_path, monkeypatch):
    """The user's path: PNGs and a CSV (95% of birds on their usual place, no split column), a config, `fit`.
    The balanced probe set's verdict against the exact counterfactual (each probe bird drawn on the other place
    and as the other bird), and what a random draw of the probe set gives."""
    import yaml

    from xai_lightning import discover
    from xai_lightning.cli import main

    root = _correlated_folder(tmp_path / "birds", n=800)
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "default_root_dir": str(tmp_path / "run"),
            "max_epochs": 3,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "num_sanity_val_steps": 0,
            "callbacks": [
                {
                    "class_path": "xai_lightning.callbacks.ConceptProbe",
                    "init_args": {"concepts": {"bird": "label", "place": "place"}},
                }
            ],
        },
        "model": {
            "class_path": "xai_lightning.models.ClassifierModule",
            "init_args": {"backbone": "simple_cnn", "lr": 0.003},
        },
        "data": {
            "class_path": "xai_lightning.data.ImageFolderAttributesDataModule",
            "init_args": {
                "root": root,
                "path_column": "img_filename",
                "label_column": "y",
                "attributes": ["place"],
                "split_column": None,
                "image_size": 32,
                "batch_size": 16,
            },
        },
    }
    cfg = tmp_path / "birds.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cli = main(["fit", "--config", str(cfg)])
    probe = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "ConceptProbe")
    dm, model = cli.datamodule, cli.model.eval()
    rows = np.flatnonzero(dm.split == "probe_set")
    flips = {}
    for concept in ("place", "bird"):
        pred, edited = [], []
        for i in rows:
            kind, place = ("landbird", "waterbird")[i % 2], dm.attributes["place"][int(dm.attr_index["place"][i])]
            other = {
                "place": (kind, "water" if place == "land" else "land"),
                "bird": (("waterbird" if kind == "landbird" else "landbird"), place),
            }
            for out, (k, p) in ((pred, (kind, place)), (edited, other[concept])):
                img = torch.from_numpy(_bird(k, p, np.random.default_rng(i))).permute(2, 0, 1).float()[None] / 255
                out.append(img)
        with torch.no_grad():
            to32 = lambda x: torch.nn.functional.interpolate(torch.cat(x), size=32, mode="bilinear", antialias=True)  # noqa: E731
            flips[concept] = float((model(to32(pred)).argmax(-1) != model(to32(edited)).argmax(-1)).float().mean())
    verdict = probe.last
    assert verdict.images == len(rows) and len(rows) >= 40
    for concept, flip in flips.items():
        e = verdict.effects[concept]
        assert e.lo - 0.05 <= flip <= e.hi + 0.05, (concept, flip, e)
    truth = max(flips, key=flips.get)
    assert verdict.outcome == truth or (verdict.outcome == "undecided" and flips[truth] < 0.5)
    # the old default: a random 20% of the images as the probe set keeps the 95/5 correlation
    random = ImageFolderAttributesDataModule(**{**config["data"]["init_args"], "probe_set": "random"})
    random.setup()
    batches = list(random.dataloader("probe_set"))
    old = discover(
        model,
        [b["image"] for b in batches],
        {c: torch.cat([b[k] for b in batches]).tolist() for c, k in (("bird", "label"), ("place", "place"))},
        targets=torch.cat([b["label"] for b in batches]).tolist(),
        value_names={"bird": random.class_names, "place": random.attributes["place"]},
    )
    assert not old.decided and old.reason == "too few images per cell"
    print(f"balanced ({verdict.images} images): {verdict.text()}; random draw ({old.images}): {old.text()}")
