"""Counterfactual edits of a batch: the same image with one concept changed (pure functions, no Lightning).

Each edit returns ``(edited images, mask)``, the mask marking the images that could be edited. A model's
flip rate under an edit (how often its prediction changes) is the ground truth of how much it relies on
that concept (``CounterfactualCheck``). The edits are deterministic: no random state is consumed.

* colour: the same digit in another palette colour, ``(c + 1 + digit mod (K - 1)) mod K`` (never the same
  colour; gray digits are skipped);
* shape: the next image of the split (in split order, cyclically) with a different digit, drawn in this
  image's colour (and, for scenes, over this image's background): the same donor whatever the batching or
  the number of DDP ranks;
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


def split_donors(digit: torch.Tensor) -> torch.Tensor:
    """For each position of a split, the next position (cyclically, in split order) with a different digit;
    -1 where the split holds one digit only. A property of the split, not of how it is batched or sharded
    over DDP ranks (a batch of one rank may hold a single digit)."""
    n = len(digit)
    change = torch.nonzero(digit.roll(-1) != digit).flatten()  # j: digit[j + 1] differs from digit[j]
    if n == 0 or len(change) == 0:
        return torch.full((n,), -1, dtype=torch.long)
    # the first change point at or after i (wrapping around): digits i..j equal digit[i], and j + 1 differs
    at = torch.searchsorted(change, torch.arange(n))
    j = torch.where(at < len(change), change[at.clamp_max(len(change) - 1)], change[0])
    return (j + 1) % n


def color_counterfactual(
    images: torch.Tensor, color: torch.Tensor, digit: torch.Tensor, rgb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits on black: (recoloured images, mask of images that have a colour to change)."""
    new, colored = other_value(color, digit, len(rgb))
    if not bool(colored.any()):
        return images, colored
    return colorize(images.amax(dim=1), new, rgb.to(images)), colored


def shape_counterfactual(
    images: torch.Tensor, color: torch.Tensor, donor_images: torch.Tensor, found: torch.Tensor, rgb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits on black: (each donor's digit in this image's colour, ``found``). ``donor_images``: the images of
    ``split_donors`` (the same where ``found`` is False)."""
    return colorize(donor_images.amax(dim=1).to(images), color, rgb.to(images)), found.to(images.device)
