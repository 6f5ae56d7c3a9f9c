"""Counterfactual edits of a batch: the same image with one concept changed (pure functions, no Lightning).

Each edit returns ``(edited images, mask)``, the mask marking the images that could be edited. A model's
flip rate under an edit (how often its prediction changes) is the ground truth of how much it relies on
that concept (``CounterfactualCheck``). The edits are deterministic: no random state is consumed.

* colour: the same digit in another palette colour, ``(c + 1 + digit mod (K - 1)) mod K`` (never the same
  colour; gray digits are skipped);
* shape: the next image in the batch with a different digit, drawn in this image's colour (and, for
  scenes, over this image's background);
* background: the same digit over another texture, ``(b + 1 + digit mod (B - 1)) mod B``.
"""

from __future__ import annotations

import torch

from xai_lightning.data.colorize import colorize


def other_value(value: torch.Tensor, digit: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(another value index, mask of entries that have one): known values (>= 0) of a ``k``-valued concept."""
    known = value >= 0
    if k < 2:
        return value, torch.zeros_like(known)
    return torch.where(known, (value + 1 + digit % (k - 1)) % k, value), known


def donors(digit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image, the next one in the batch (cyclically) with a different digit; and whether one exists."""
    b = len(digit)
    donor = torch.arange(b, device=digit.device)
    found = torch.zeros(b, dtype=torch.bool, device=digit.device)
    for shift in range(1, b):
        j = (torch.arange(b, device=digit.device) + shift) % b
        take = ~found & (digit[j] != digit)
        donor = torch.where(take, j, donor)
        found |= take
        if bool(found.all()):
            break
    return donor, found


def color_counterfactual(
    images: torch.Tensor, color: torch.Tensor, digit: torch.Tensor, rgb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits on black: (recoloured images, mask of images that have a colour to change)."""
    new, colored = other_value(color, digit, len(rgb))
    if not bool(colored.any()):
        return images, colored
    return colorize(images.amax(dim=1), new, rgb.to(images)), colored


def shape_counterfactual(
    images: torch.Tensor, color: torch.Tensor, digit: torch.Tensor, rgb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits on black: (another digit in this colour, mask of images that found a donor in the batch)."""
    donor, found = donors(digit)
    return colorize(images.amax(dim=1)[donor], color, rgb.to(images)), found
