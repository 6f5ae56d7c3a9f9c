"""``discover``'s inputs: class labels given by name or by index read the same."""

from __future__ import annotations

import pytest
import torch

from xai_lightning import discover


class RedIsClassOne(torch.nn.Module):
    """Class 1 where the red channel is brighter than the green one: a pure colour reader."""

    def forward(self, x):
        red = x[:, 0].mean((1, 2)) - x[:, 1].mean((1, 2))
        return torch.stack([-red, red], 1)


def _probe():
    g = torch.Generator().manual_seed(0)
    red = torch.rand(80, generator=g) < 0.5
    images = torch.rand(80, 3, 4, 4, generator=g) * 0.1
    images[red, 0] += 0.5
    images[~red, 1] += 0.5
    digit = (torch.rand(80, generator=g) < 0.5).long()
    return images, ["red" if r else "green" for r in red], digit.tolist()


def test_class_labels_by_name_read_as_their_indices():
    images, colour, digit = _probe()
    names = ["five", "eight"]
    kw = {"labels": {"color": colour, "digit": [names[d] for d in digit]}, "classes": names, "draws": 60}
    by_index = discover(RedIsClassOne(), images, targets=digit, **kw)
    by_name = discover(RedIsClassOne(), images, targets=[names[d] for d in digit], **kw)
    assert by_name.outcome == by_index.outcome == "color"
    assert by_name.effects["color"].value == by_index.effects["color"].value == 1.0
    as_text = discover(RedIsClassOne(), images, targets=[str(d) for d in digit], **{**kw, "classes": 2})
    assert as_text.effects["color"].value == by_index.effects["color"].value


def test_a_class_named_like_a_number_is_read_by_its_name():
    """Classes named "5" and "8": the label "8" is class 1, not class index 8 (which stood for no class, and
    failed where a concept names every class and takes its value from the label)."""
    images, colour, digit = _probe()
    names = ["5", "8"]
    labels = {"color": colour, "digit": [names[d] for d in digit]}
    by_name = discover(RedIsClassOne(), images, labels, targets=[names[d] for d in digit], classes=names, draws=60)
    by_index = discover(RedIsClassOne(), images, labels, targets=digit, classes=names, draws=60)
    assert by_name.outcome == by_index.outcome == "color"
    assert {c: e.value for c, e in by_name.effects.items()} == {c: e.value for c, e in by_index.effects.items()}


def test_a_class_label_that_is_neither_an_index_nor_a_name_is_a_one_line_error():
    images, colour, digit = _probe()
    with pytest.raises(ValueError, match=r"targets: 'seven' is not one of \['five', 'eight'\]"):
        discover(RedIsClassOne(), images, {"color": colour}, targets=["seven"] * 80, classes=["five", "eight"])
    with pytest.raises(ValueError, match=r"targets: 'five' is not a class index \(or pass classes=\[names\]\)"):
        discover(RedIsClassOne(), images, {"color": colour}, targets=["five"] * 80)
