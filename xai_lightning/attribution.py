"""Pixel attributions (Captum) and the share of attribution that falls on colour.

Methods: ``gradcam`` (on a chosen layer, upsampled to the input), ``integrated_gradients`` (black
baseline), ``saliency`` (input gradient) and ``occlusion`` (one channel of one patch at a time, so that
channels stay separable). Captum is optional: ``pip install -e ".[attribution]"``.

**Colour share.** A pixel of a coloured digit is ``x = I * rgb`` (intensity times the digit's colour).
At every pixel the attribution vector over (R, G, B) is split into its component along the digit's
colour direction — what changing the *intensity*, i.e. the drawn shape, does — and the rest, which only a
change of *hue* produces. ``color_share`` = sum of the hue parts' norms / sum of both, over the digit's
pixels (on the black background there is no colour to decompose against):
about 0 for a model that sees only intensity (e.g. behind a grayscale pre-processor), large for one
that reads colour. (The attribution on "the digit's colour channel" alone cannot tell them apart: with
pure colours a grayscale pre-processor routes every gradient to exactly that channel.) Grad-CAM has no
channel axis: colour and shape occupy the same pixels, so it cannot separate them; for it (and all
methods) ``on_digit`` = share of attribution mass on the digit's pixels says *where* the model looks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("gradcam", "integrated_gradients", "saliency", "occlusion")
CHANNEL_METHODS = ("integrated_gradients", "saliency", "occlusion")  # attributions with an (R, G, B) axis


def require_captum():
    try:
        import captum  # noqa: F401
    except ImportError as err:
        raise ImportError('attributions need Captum: pip install -e ".[attribution]" (or pip install captum)') from err


def attribute(
    model: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    methods: Sequence[str] = METHODS,
    gradcam_layer: nn.Module | None = None,
    ig_steps: int = 16,
    occlusion_window: int = 6,
    occlusion_stride: int = 3,
) -> dict[str, torch.Tensor]:
    """Attributions of ``model(images)[target]``: ``{method: [B, 3, H, W]}`` ([B, 1, H, W] for Grad-CAM).

    Runs with gradients enabled even inside validation's inference mode; parameter gradients are untouched.
    """
    require_captum()
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown attribution methods {unknown}; allowed: {', '.join(METHODS)}")
    out: dict[str, torch.Tensor] = {}
    with torch.inference_mode(False), torch.enable_grad():
        x = images.detach().clone().float().requires_grad_(False)
        target = target.detach().clone()
        if "gradcam" in methods:
            if gradcam_layer is None:
                raise ValueError("gradcam needs gradcam_layer (e.g. the last conv stage)")
            cam = LayerGradCam(model, gradcam_layer).attribute(x, target=target, relu_attributions=True)
            out["gradcam"] = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        if "integrated_gradients" in methods:
            out["integrated_gradients"] = IntegratedGradients(model).attribute(
                x, baselines=torch.zeros_like(x), target=target, n_steps=ig_steps, internal_batch_size=len(x)
            )
        if "saliency" in methods:
            out["saliency"] = Saliency(model).attribute(x, target=target, abs=False)
        if "occlusion" in methods:
            out["occlusion"] = Occlusion(model).attribute(
                x,
                target=target,
                sliding_window_shapes=(1, occlusion_window, occlusion_window),
                strides=(1, occlusion_stride, occlusion_stride),
                baselines=0.0,
                perturbations_per_eval=64,
            )
    return {k: v.detach() for k, v in out.items()}


def color_direction(color: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """Unit colour direction per image [B, 3] (gray, index < 0: (1, 1, 1) / sqrt 3)."""
    table = torch.cat([rgb.float(), torch.ones(1, 3)]).to(color.device)
    d = table[torch.where(color < 0, torch.full_like(color, len(rgb)), color)]
    return F.normalize(d, dim=1)


def color_share(
    attr: torch.Tensor, color: torch.Tensor, rgb: torch.Tensor, images: torch.Tensor, threshold: float = 0.1
) -> torch.Tensor:
    """Per image [B]: hue part / (intensity part + hue part) of the attribution on the digit's pixels
    (intensity > ``threshold``; see module docstring); NaN where that part has no attribution at all."""
    d = color_direction(color, rgb).to(attr)[:, :, None, None]  # [B, 3, 1, 1]
    digit = (images.amax(dim=1) > threshold).to(attr)  # [B, H, W]
    along = (attr * d).sum(dim=1)  # [B, H, W]
    hue = (attr - along[:, None] * d).norm(dim=1)  # [B, H, W]
    hue_mass = (hue * digit).sum(dim=(1, 2))
    total = (along.abs() * digit).sum(dim=(1, 2)) + hue_mass
    return torch.where(total > 0, hue_mass / total.clamp_min(1e-30), torch.nan)


def channel_shares(attr: torch.Tensor) -> torch.Tensor:
    """[B, 3]: share of |attribution| per input channel."""
    mass = attr.abs().sum(dim=(2, 3))
    return mass / mass.sum(dim=1, keepdim=True).clamp_min(1e-30)


def on_digit(attr: torch.Tensor, images: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """[B]: share of |attribution| (summed over channels) on pixels where the digit is drawn."""
    heat = attr.abs().sum(dim=1)
    digit = (images.amax(dim=1) > threshold).to(heat)
    return (heat * digit).sum(dim=(1, 2)) / heat.sum(dim=(1, 2)).clamp_min(1e-30)
