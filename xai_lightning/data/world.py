"""The digit world: digits whose look varies along nine independent families, and the renderer that draws them.

Families (``FAMILIES``) and their values (``VALUES``): the **digit** (the class), the ink **color**, the
**background** texture, the **background_color**, the stroke **thickness**, the **size**, the horizontal
**position**, the **slant** and a small coloured corner **patch** (SpuCoMNIST's hard case). Every image has
one value of each; ``render`` draws it at 32 px from a 28 x 28 intensity map (synthetic strokes or real
handwriting), so a counterfactual edit re-renders the same image with one family changed and everything
else (the strokes, the texture's period and angle) kept.

Rendering order: thickness (a morphological filter of the strokes), then one affine map for size, slant and
position onto the canvas, then the ink colour, then the background (texture or plain, tinted by its colour)
under the strokes, then the patch in the top-left corner.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xai_lightning.data.backgrounds import HIGH, LOW, N_PARAMS, TEXTURES

SIZE = 32
FAMILIES = ("digit", "color", "background", "background_color", "thickness", "size", "position", "slant", "patch")
VALUES: dict[str, tuple[str, ...]] = {
    "color": ("red", "green", "blue", "yellow", "cyan", "magenta"),
    "background": ("plain", "stripes", "dots", "checks"),
    "background_color": ("black", "gray", "navy", "brown"),
    "thickness": ("thin", "regular", "thick"),
    "size": ("small", "large"),
    "position": ("left", "center", "right"),
    "slant": ("left", "upright", "right"),
    "patch": ("none", "patch"),
}
INK = {
    "red": (1.0, 0.1, 0.1),
    "green": (0.1, 0.9, 0.1),
    "blue": (0.25, 0.35, 1.0),
    "yellow": (1.0, 0.9, 0.1),
    "cyan": (0.1, 0.9, 0.9),
    "magenta": (0.95, 0.15, 0.9),
}
GROUND = {"black": (0.35, 0.35, 0.35), "gray": (1.0, 1.0, 1.0), "navy": (0.25, 0.3, 1.0), "brown": (0.9, 0.55, 0.25)}
PATCH_RGB = (1.0, 0.55, 0.0)  # orange: a colour no ink has
SCALE = {"small": 0.62, "large": 1.0}
SHIFT = {"left": -0.3, "center": 0.0, "right": 0.3}  # in half-canvas units (grid coordinates)
SHEAR = {"left": 0.35, "upright": 0.0, "right": -0.35}  # x_out = x_in + shear * y_out, y down: "right" tops lean right


def _thickness(intensity: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """[N, 28, 28] in [0, 1]: thin = the bright core of the strokes (their soft edges cut away), thick = a 3 x 3
    dilation, regular = as drawn."""
    x = intensity[:, None]
    thin = ((x - 0.55) / 0.45).clamp(0.0, 1.0)
    thin = torch.where(thin.amax(dim=(2, 3), keepdim=True) > 0.5, thin, x)  # never erase a faint digit
    thick = F.max_pool2d(x, 3, stride=1, padding=1)
    v = value.view(-1, 1, 1, 1)
    return torch.where(v == 0, thin, torch.where(v == 2, thick, x))[:, 0]


def _affine(size: torch.Tensor, position: torch.Tensor, slant: torch.Tensor) -> torch.Tensor:
    """[N, 2, 3] maps from output grid to input grid (``F.affine_grid``): scale, shear, shift."""
    scale = torch.tensor([SCALE[v] for v in VALUES["size"]])[size]
    shift = torch.tensor([SHIFT[v] for v in VALUES["position"]])[position]
    shear = torch.tensor([SHEAR[v] for v in VALUES["slant"]])[slant]
    theta = torch.zeros(len(size), 2, 3)
    # output -> input: x_in = (x_out - shift - shear * y_out) / scale, y_in = y_out / scale
    theta[:, 0, 0] = 1.0 / scale
    theta[:, 0, 1] = -shear / scale
    theta[:, 0, 2] = -shift / scale
    theta[:, 1, 1] = 1.0 / scale
    return theta


def _ground(background: torch.Tensor, tint: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """[N, 3, S, S]: a texture (or a plain gray) tinted by the background colour."""
    gray = torch.full((len(background), SIZE, SIZE), (LOW + HIGH) / 2)
    for k, name in enumerate(VALUES["background"]):
        rows = background == k
        if name != "plain" and bool(rows.any()):
            gray[rows] = LOW + (HIGH - LOW) * TEXTURES[name](params[rows].float(), SIZE)
    rgb = torch.tensor([GROUND[v] for v in VALUES["background_color"]])[tint]  # [N, 3]
    return gray[:, None] * rgb[:, :, None, None]


def render(
    intensity: torch.Tensor, values: dict[str, torch.Tensor], params: torch.Tensor, patch_px: int | torch.Tensor = 4
):
    """Images [N, 3, 32, 32] in [0, 1].

    Args:
        intensity: [N, 28, 28] uint8 or float strokes (MNIST-like, white on black).
        values: family -> [N] value index (every family of ``VALUES``).
        params: [N, N_PARAMS] texture parameters (``backgrounds.draw_params``).
        patch_px: side of the corner patch (``SIZE`` fills the whole background's corner region: a full patch),
            or [N] one side per image.
    """
    x = intensity.float()
    x = x / 255.0 if x.max() > 1.0 else x
    x = _thickness(x, values["thickness"].long())
    grid = F.affine_grid(
        _affine(values["size"].long(), values["position"].long(), values["slant"].long()),
        (len(x), 1, SIZE, SIZE),
        align_corners=False,
    )
    alpha = F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
    alpha = alpha.clamp(0.0, 1.0)
    ink = torch.tensor([INK[v] for v in VALUES["color"]])[values["color"].long()]  # [N, 3]
    img = alpha[:, None] * ink[:, :, None, None]
    img = img + (1.0 - alpha[:, None]) * _ground(values["background"].long(), values["background_color"].long(), params)
    side = torch.as_tensor(patch_px).long().expand(len(x))[:, None, None]
    pos = torch.arange(SIZE)
    where = (values["patch"].long() == 1)[:, None, None] & (pos[None, :, None] < side) & (pos[None, None, :] < side)
    img = torch.where(where[:, None], torch.tensor(PATCH_RGB).view(1, 3, 1, 1), img)
    return img.clamp_(0.0, 1.0)


__all__ = ["FAMILIES", "VALUES", "SIZE", "N_PARAMS", "render"]
