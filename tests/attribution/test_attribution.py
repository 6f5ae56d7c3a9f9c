"""Attribution colour shares on hand-built models whose answer is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xai_lightning.attribution import attribute, channel_shares, color_share, on_digit
from xai_lightning.data import colorize
from xai_lightning.models.backbones import to_grayscale

pytest.importorskip("captum")
RGB = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


class Reads(nn.Module):
    """A 2-class 'model': logits = (w * f(x)).sum over pixels, with f a fixed view of the input."""

    def __init__(self, view):
        super().__init__()
        self.view = view
        self.conv = nn.Conv2d(3, 2, 1)  # a layer for Grad-CAM
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()

    def forward(self, x):
        v = self.view(x)  # [B, 1, H, W]
        feat = self.conv(x) + torch.cat([v, -v], dim=1)
        return feat.mean(dim=(2, 3))


def _digits(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    intensity = torch.zeros(n, size, size)
    intensity[:, 4:12, 6:10] = torch.rand(n, 8, 4, generator=g) * 0.5 + 0.5  # a bar: the 'digit'
    color = torch.arange(n) % 2  # red, green, red, ...
    return colorize(intensity, color, RGB), color


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency", "occlusion"])
def test_a_model_reading_only_red_puts_everything_on_red(method):
    images, color = _digits()
    model = Reads(lambda x: x[:, :1])
    attr = attribute(model, images, torch.zeros(len(images), dtype=torch.long), [method])[method]
    red = color == 0
    assert torch.allclose(channel_shares(attr[red])[:, 0], torch.ones(int(red.sum())), atol=1e-4)
    if method == "saliency":  # on green digits the red channel still decides (a gradient, not a product)
        assert torch.allclose(channel_shares(attr[~red])[:, 0], torch.ones(int((~red).sum())), atol=1e-4)
        # ... and there it is all hue: only turning the digit red would move the output
        share = color_share(attr[~red], color[~red], RGB, images[~red])
        assert torch.allclose(share, torch.ones(int((~red).sum())), atol=1e-4)


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency", "occlusion"])
def test_grayscale_model_has_no_colour_share(method):
    images, color = _digits()
    gray = Reads(lambda x: to_grayscale(x)[:, :1] + 0.1)  # the debiasing pre-processor: intensity only
    attr = attribute(gray, images, torch.zeros(len(images), dtype=torch.long), [method])[method]
    # the channel max splits its gradient over the tied channels of the black background: that part is
    # not colour, and the share (measured on the digit's pixels) must not count it
    assert color_share(attr, color, RGB, images).max() < 1e-4
    if method == "saliency":
        assert on_digit(attr, images).max() < 0.5  # most saliency mass is on the background here


def test_hue_reading_model_closed_form_shares():
    """A model reading green - red: its gradient (-1, 1, 0) is half along a red digit's colour, half hue, so
    saliency gives 0.5. IG and occlusion with a black baseline multiply by / remove the input, so a channel
    that is empty in the image (green on a red digit) gets no attribution: their colour share is 0 by
    construction on pure-colour digits. (The README's method table reports this limit.)"""
    images, color = _digits()
    hue = Reads(lambda x: x[:, 1:2] - x[:, :1])
    attrs = attribute(
        hue, images, torch.zeros(len(images), dtype=torch.long), ["saliency", "integrated_gradients", "occlusion"]
    )
    share = color_share(attrs["saliency"], color, RGB, images)
    assert torch.allclose(share, torch.full((len(images),), 0.5), atol=1e-4)
    for method in ("integrated_gradients", "occlusion"):
        assert color_share(attrs[method], color, RGB, images).max() < 1e-4


def test_gradcam_has_no_channel_axis_and_looks_at_the_digit():
    images, _ = _digits()
    model = Reads(lambda x: x.amax(dim=1, keepdim=True))
    with torch.no_grad():
        model.conv.weight[0, :, 0, 0] = 1.0
    attr = attribute(model, images, torch.zeros(len(images), dtype=torch.long), ["gradcam"], model.conv)["gradcam"]
    assert attr.shape == (len(images), 1, 16, 16)
    assert on_digit(attr, images).min() > 0.9
