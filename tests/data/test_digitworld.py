"""DigitWorldDataModule: nine independent families, a shortcut on any of them, an edit per family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xai_lightning.data import DigitWorldDataModule
from xai_lightning.data.digitworld import class_value
from xai_lightning.data.world import FAMILIES, VALUES, render


def _dm(tmp_path, **kw) -> DigitWorldDataModule:
    args = dict(source="synthetic", data_dir=str(tmp_path), digits=[1, 4, 7], train_per_class=60)
    args.update(test_per_class=10, real_world_per_class=10, probe_per_class=40, batch_size=16, seed=2)
    args.update(kw)
    dm = DigitWorldDataModule(**args)
    dm.setup()
    return dm


@pytest.mark.parametrize("shortcut", ["thickness", "patch", "color"])
def test_the_shortcut_family_follows_the_class_in_training_and_nowhere_else(tmp_path, shortcut):
    dm = _dm(tmp_path, shortcut=shortcut)
    train, probe = dm.datasets["train"], dm.datasets["probe_set"]
    k = len(VALUES[shortcut])
    own = class_value(train.label, 3, k)  # strength 1: every class its own value
    assert torch.equal(train.values(slice(None))[shortcut], own) and len(set(own.tolist())) == min(3, k)
    for family in FAMILIES[1:]:
        if family != shortcut:  # every other family drawn independently of the class
            assert not torch.equal(train.values(slice(None))[family], train.label % len(VALUES[family]))
        # the probe set: every family at random
        assert not torch.equal(probe.values(slice(None))[family], probe.label % len(VALUES[family]))


def test_each_edit_changes_its_family_alone(tmp_path):
    dm = _dm(tmp_path)
    data = dm.datasets["probe_set"]
    batch = next(iter(dm.dataloader("probe_set")))
    edits = dm.counterfactuals("probe_set", batch)
    assert sorted(edits) == sorted(FAMILIES) and dm.counterfactual_names == ("digit", *FAMILIES[1:])
    index = batch["index"]
    values = data.values(index)
    for family, (edited, applies) in edits.items():
        assert bool(applies.all())
        if family == "digit":
            donor, _ = dm.donors("probe_set", index)
            expected = render(data.intensity[donor], values, data.params[index], dm.patch_px)
            assert (data.digit_index[donor] != data.digit_index[index]).all()
        else:
            changed = dict(values)
            k = len(VALUES[family])
            changed[family] = (values[family] + 1 + batch["digit_index"] % (k - 1)) % k
            assert (changed[family] != values[family]).all()
            expected = render(data.intensity[index], changed, data.params[index], dm.patch_px)
        assert torch.allclose(edited, expected, atol=1e-6), family
        assert (edited - batch["image"]).abs().amax(dim=(1, 2, 3)).min() > 0.01, family  # every image changed


def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown shortcut 'texture'; allowed: none, color, background"):
        DigitWorldDataModule(shortcut="texture")
    with pytest.raises(ValueError, match="patch_px=0"):
        DigitWorldDataModule(patch_px=0)
    dm = _dm(tmp_path, shortcut="size", shortcut_conflict_fraction=0.1)
    train = dm.datasets["train"]
    conflicts = (train.values(slice(None))["size"] != class_value(train.label, 3, 2)).float().mean()
    assert float(conflicts) == pytest.approx(0.1, abs=0.02)
    assert np.isclose(len(dm.attributes), 9)


def test_slant_names_follow_the_lean_of_the_top_of_the_strokes():
    """'right' draws a digit whose top leans right (as italics do), 'left' the mirror image: measured as the
    ink's horizontal centre in the top and the bottom half of a vertical bar."""
    import torch.nn.functional as F

    from xai_lightning.data.world import _affine

    bar = torch.zeros(1, 1, 28, 28)
    bar[..., 4:24, 13:15] = 1.0
    columns = torch.arange(28).float()

    def lean(slant: str) -> float:
        v = torch.tensor([VALUES["slant"].index(slant)])
        size, centre = torch.tensor([VALUES["size"].index("large")]), torch.tensor([VALUES["position"].index("center")])
        out = F.grid_sample(
            bar, F.affine_grid(_affine(size, centre, v), (1, 1, 28, 28), align_corners=False), align_corners=False
        )[0, 0]
        top, bottom = out[:14], out[14:]
        return float((top.sum(0) * columns).sum() / top.sum() - (bottom.sum(0) * columns).sum() / bottom.sum())

    assert lean("right") > 2.0 and lean("left") < -2.0 and abs(lean("upright")) < 0.1


def test_patch_sides_drawn_per_image_are_kept_by_the_edits(tmp_path):
    """patch_px: [2, 4]: each image's corner patch has one of the two sides (counted in orange pixels against
    the same image without a patch), the same side in every edit of it."""
    dm = _dm(tmp_path, patch_px=[2, 4])
    data = dm.datasets["probe_set"]
    index = torch.arange(len(data))
    on = data.render(index, patch=torch.ones(len(data), dtype=torch.long))
    off = data.render(index, patch=torch.zeros(len(data), dtype=torch.long))
    painted = ((on - off).abs().amax(1) > 1e-6).sum((1, 2))  # pixels the patch changed
    assert set(painted.tolist()) <= {4, 16} and {4, 16} <= set(painted.tolist())  # 2 x 2 or 4 x 4, both present
    assert torch.equal(painted, data.patch_px.square())
    recolored = data.render(index, patch=torch.ones(len(data), dtype=torch.long), color=(data.color + 1) % 6)
    assert torch.equal(((recolored - off).abs().amax(1) > 1e-6)[:, :4, :4].sum((1, 2)), painted)
    with pytest.raises(ValueError, match=r"patch_px=\[2, 0\]"):
        DigitWorldDataModule(patch_px=[2, 0])
