"""SceneDigitsDataModule: textures, compositing, the planted background bias, counterfactual edits, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers.trainers import quiet_trainer
from xai_lightning.data import ColorMNISTDataModule, SceneDigitsDataModule, colorize
from xai_lightning.data.backgrounds import BACKGROUNDS, HIGH, LOW, draw_params, render

SMALL = dict(train_per_class=40, test_per_class=10, real_world_per_class=30, probe_per_class=40, image_size=28)


def test_textures_are_gray_within_their_levels_and_differ_by_kind_and_by_draw():
    params = torch.from_numpy(draw_params(8, np.random.default_rng(0)))
    for k, name in enumerate(BACKGROUNDS):
        tex = render(torch.full((8,), k), params, list(BACKGROUNDS), 28)
        assert tex.min() >= LOW - 1e-6 and tex.max() <= HIGH + 1e-6
        light = (tex > (LOW + HIGH) / 2).float().mean()
        assert 0.1 < light < 0.9, f"{name}: a texture is light and dark in parts ({light:.2f})"
        assert not torch.equal(tex[0], tex[1]), f"{name}: each image draws its own period/phase/angle"
    same = torch.zeros(2, dtype=torch.long)
    assert torch.equal(render(same, params[:2], ["stripes"], 28)[0], render(same[:1], params[:1], ["stripes"], 28)[0])
    assert render(torch.tensor([-1]), params[:1], list(BACKGROUNDS), 28).abs().max() == 0  # -1: plain black


def test_digits_and_colours_are_the_colour_modules_and_the_digit_is_composited_over_the_texture(tmp_path):
    scenes = SceneDigitsDataModule(data_dir=str(tmp_path / "s"), color_mode="biased", **SMALL)
    colours = ColorMNISTDataModule(data_dir=str(tmp_path / "c"), color_mode="biased", **SMALL)
    scenes.setup()
    colours.setup()
    for split in ("train", "probe_set"):
        a, b = scenes.datasets[split], colours.datasets[split]
        for key in ("intensity", "digit", "label", "color", "digit_index"):
            assert torch.equal(getattr(a, key), getattr(b, key)), f"{split}.{key}"
    data = scenes.datasets["probe_set"]
    img, plain = data.images(slice(0, 40)), colours.datasets["probe_set"].images(slice(0, 40))
    bg = render(data.background[:40], data.bg_params[:40], scenes.background_names, 28)
    alpha = data.intensity[:40].float()[:, None] / 255.0
    assert torch.allclose(img, plain + (1 - alpha) * bg[:, None], atol=1e-6)  # a * rgb + (1 - a) * background
    opaque = alpha.expand_as(img) == 1.0
    assert torch.equal(img[opaque], plain[opaque])


def test_biased_backgrounds_follow_the_class_and_probe_backgrounds_are_independent(tmp_path):
    dm = SceneDigitsDataModule(
        data_dir=str(tmp_path), background_bias_strength=0.75, **{**SMALL, "train_per_class": 400}
    )
    dm.setup()
    train = dm.datasets["train"]
    follows = (train.background == train.digit_index % len(BACKGROUNDS)).float().mean()
    assert 0.75 < follows < 0.87  # 0.75 + 0.25 / 4 = 0.8125
    probe = dm.datasets["probe_set"]
    table = np.zeros((2, len(BACKGROUNDS)))
    np.add.at(table, (probe.digit_index.numpy(), probe.background.numpy()), 1)
    assert table.min() >= 3 and table.sum() == 80  # every (digit, background) pair occurs
    assert dm.attributes["background"] == list(BACKGROUNDS)
    assert next(iter(dm.dataloader("probe_set", batch_size=4)))["background"].shape == (4,)


def test_background_conflict_fraction_is_exact_and_none_mode_is_black(tmp_path):
    dm = SceneDigitsDataModule(
        data_dir=str(tmp_path), background_conflict_fraction=0.05, **{**SMALL, "train_per_class": 200}
    )
    dm.setup()
    arrays = dm._load_or_generate(write=False)
    for split in ("train", "test"):
        labels, bg = arrays[f"{split}.digit_index"], arrays[f"{split}.background"]
        assert int((bg != labels % len(BACKGROUNDS)).sum()) == round(0.05 * len(labels))
    black = SceneDigitsDataModule(data_dir=str(tmp_path / "b"), background_mode="none", **SMALL)
    black.setup()
    assert (black.datasets["train"].background == -1).all()
    assert (black.datasets["real_world"].background >= 0).all()  # deployment scenes always have backgrounds


def test_counterfactual_edits_change_one_concept_each(tmp_path):
    dm = SceneDigitsDataModule(data_dir=str(tmp_path), **SMALL)
    dm.setup()
    batch = next(iter(dm.dataloader("probe_set", batch_size=16)))
    data, idx = dm.datasets["probe_set"], batch["index"]
    edits = dm.counterfactuals("probe_set", batch)
    bg_img, ok = edits["background"]
    assert ok.all()
    new_bg = (batch["background"] + 1 + batch["digit_index"] % 3) % 4
    assert (new_bg != batch["background"]).all()
    alpha = data.intensity[idx].float()[:, None].expand_as(bg_img) / 255.0
    assert torch.equal(bg_img[alpha == 1], batch["image"][alpha == 1])  # the digit is untouched
    assert not torch.equal(bg_img[alpha == 0], batch["image"][alpha == 0])  # its background is not
    col_img, ok = edits["color"]
    expect = colorize(data.intensity[idx], 1 - batch["color"], dm.rgb)  # 2 colours: the other one
    assert ok.all() and torch.equal(col_img[alpha == 1], expect[alpha == 1])
    shape_img, found = edits["shape"]
    assert found.all()
    strokes = (shape_img - render(batch["background"], data.bg_params[idx], dm.background_names, 28)[:, None]).abs()
    donor_alpha = (strokes.amax(1) > 0.6).float()
    assert (donor_alpha.sum((1, 2)) > 0).all() and not torch.equal(shape_img, batch["image"])


def _colour_classifier(images: torch.Tensor) -> torch.Tensor:
    """Predicts class 0 for red, 1 for green (the texture is gray, so it cannot tip the balance)."""
    red, green = images[:, 0].sum((1, 2)), images[:, 1].sum((1, 2))
    return torch.stack([red - green, green - red], dim=1)


@pytest.mark.parametrize("module", [SceneDigitsDataModule, ColorMNISTDataModule])
def test_counterfactual_check_logs_every_concepts_flip_rate_against_a_known_model(tmp_path, module):
    """A model that reads colour alone: colour edits flip every prediction, shape and background edits none."""
    from xai_lightning.callbacks import CounterfactualCheck
    from xai_lightning.models import ClassifierModule

    class ByColour(ClassifierModule):
        def forward(self, x):
            return _colour_classifier(x) + 0 * self.net(x).sum()

    dm = module(data_dir=str(tmp_path), val_splits=["probe_set"], eval_batch_size=20, **SMALL)
    check = CounterfactualCheck(split="probe_set")
    trainer = quiet_trainer(callbacks=[check])
    trainer.validate(ByColour(backbone="simple_cnn", num_classes=2), datamodule=dm, verbose=False)
    expected = {"cf/color_flip_rate": 1.0, "cf/shape_flip_rate": 0.0, "cf/background_flip_rate": 0.0}
    assert check.last == {f"cf/{name}_flip_rate": expected[f"cf/{name}_flip_rate"] for name in dm.counterfactual_names}


def test_a_concept_no_image_could_be_edited_for_has_an_unknown_flip_rate(tmp_path, monkeypatch):
    """When no image of the split could be edited for a concept, its flip rate is NaN with a warning: unknown,
    not the 0 of a model that never flips."""
    from xai_lightning.callbacks import CounterfactualCheck
    from xai_lightning.models import ClassifierModule

    class ByColour(ClassifierModule):
        def forward(self, x):
            return _colour_classifier(x) + 0 * self.net(x).sum()

    dm = ColorMNISTDataModule(data_dir=str(tmp_path), val_splits=["probe_set"], eval_batch_size=20, **SMALL)
    edits = dm.counterfactuals

    def no_shape_edit(split, batch):
        out = edits(split, batch)
        out["shape"] = (out["shape"][0], torch.zeros_like(out["shape"][1]))  # no image has a donor
        return out

    monkeypatch.setattr(dm, "counterfactuals", no_shape_edit)
    check = CounterfactualCheck(split="probe_set")
    trainer = quiet_trainer(callbacks=[check])
    with pytest.warns(UserWarning, match="could be edited for shape; their flip rates are NaN"):
        trainer.validate(ByColour(backbone="simple_cnn", num_classes=2), datamodule=dm, verbose=False)
    assert check.last["cf/color_flip_rate"] == 1.0 and math.isnan(check.last["cf/shape_flip_rate"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backgrounds": ["stripes", "clouds"]}, "allowed names stripes, dots, checks, waves"),
        ({"backgrounds": ["stripes"]}, "give at least 2 backgrounds \\(of stripes, dots"),
        ({"background_mode": "sometimes"}, "unknown background_mode"),
        ({"background_bias_strength": 1.5}, "outside [0, 1]"),
        ({"background_conflict_fraction": 0.1, "background_mode": "random"}, "needs background_mode 'biased'"),
    ],
)
def test_bad_background_options_say_what_is_allowed(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SceneDigitsDataModule(data_dir=str(tmp_path), **kwargs)


def test_hyperparameters_hold_the_scene_options_and_the_colour_modules(tmp_path):
    """One save_hyperparameters() (the parent's) records the subclass's own arguments too: a checkpoint can
    rebuild the datamodule."""
    dm = SceneDigitsDataModule(
        data_dir=str(tmp_path), backgrounds=["dots", "waves"], background_mode="random", color_mode="biased", **SMALL
    )
    assert dm.hparams["backgrounds"] == ["dots", "waves"] and dm.hparams["background_mode"] == "random"
    assert dm.hparams["color_mode"] == "biased" and dm.hparams["train_per_class"] == SMALL["train_per_class"]
    rebuilt = SceneDigitsDataModule(**dm.hparams)
    assert rebuilt.background_names == ["dots", "waves"] and rebuilt.color_mode == "biased"
