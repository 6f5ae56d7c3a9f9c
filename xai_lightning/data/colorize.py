"""Pure functions that colour digits and draw colour assignments (no Lightning, no I/O).

Colouring puts the digit's intensity into the colour's RGB: pure red = intensity in channel 0 only.
Every palette colour has its largest component equal to 1, so ``image.amax(channel)`` recovers the
intensity exactly (this is what the grayscale pre-processor uses). Gray = the intensity in all three
channels, built from the intensity itself, never a luminance conversion of a coloured image (that
would leak colour: 0.299 I for red vs 0.587 I for green; docs/paper.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

GRAY = -1  # colour index of a gray (uncoloured) digit

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "orange": (1.0, 0.5, 0.0),
    "white": (1.0, 1.0, 1.0),
    "purple": (0.5, 0.0, 1.0),
    "pink": (1.0, 0.4, 0.7),
}

COLOR_MODES = ("biased", "random", "grayscale")

ColorSpec = str | Mapping[str, Sequence[float]]


def resolve_colors(colors: Sequence[ColorSpec]) -> tuple[list[str], np.ndarray]:
    """Colour names and an RGB table [K, 3] from names (``"red"``) or ``{name: [r, g, b]}`` entries."""
    if len(colors) == 0:
        raise ValueError(f"colors is empty; give at least one of {sorted(PALETTE)} or a {{name: [r, g, b]}} entry")
    names, rgb = [], []
    for entry in colors:
        if isinstance(entry, str):
            if entry not in PALETTE:
                raise ValueError(
                    f"unknown color {entry!r}; allowed names: {', '.join(PALETTE)} (or {{name: [r, g, b]}})"
                )
            names.append(entry)
            rgb.append(PALETTE[entry])
        elif isinstance(entry, Mapping) and len(entry) == 1:
            ((name, value),) = entry.items()
            value = tuple(float(v) for v in value)
            if len(value) != 3 or min(value) < 0 or max(value) != 1.0:
                raise ValueError(
                    f"color {name!r}={list(value)}: give 3 components in [0, 1] with the largest equal to 1 "
                    "(the intensity must be recoverable as the channel maximum)"
                )
            names.append(str(name))
            rgb.append(value)
        else:
            raise ValueError(f"bad color entry {entry!r}; use a name ({', '.join(PALETTE)}) or {{name: [r, g, b]}}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate color names in {names}")
    return names, np.asarray(rgb, dtype=np.float32)


def assign_colors(
    labels: np.ndarray,
    num_colors: int,
    mode: str,
    bias_strength: float,
    rng: np.random.Generator,
    gray_fraction: float = 0.0,
) -> np.ndarray:
    """Colour index per sample (``GRAY`` for gray).

    Args:
        labels: class indices [N].
        num_colors: palette size K.
        mode: ``biased``: class c gets colour c mod K with probability ``bias_strength``, else a uniformly
            random palette colour; ``random``: uniform, independent of the class; ``grayscale``: all gray.
        bias_strength: in [0, 1], used by ``biased``.
        gray_fraction: in ``random`` mode, the probability that a sample is gray instead.
    """
    if mode not in COLOR_MODES:
        raise ValueError(f"unknown color_mode {mode!r}; allowed: {', '.join(COLOR_MODES)}")
    n = len(labels)
    if mode == "grayscale":
        return np.full(n, GRAY, dtype=np.int64)
    random_colors = rng.integers(0, num_colors, size=n)
    if mode == "random":
        gray = rng.random(n) < gray_fraction
        return np.where(gray, GRAY, random_colors).astype(np.int64)
    follows = rng.random(n) < bias_strength
    return np.where(follows, labels % num_colors, random_colors).astype(np.int64)


def assign_conflicts(labels: np.ndarray, num_colors: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Biased colours with an exact number of conflicts: ``round(fraction * N)`` samples, chosen by a seeded
    permutation, get a colour other than their class's (uniform among the others); the rest get their class's
    colour ``c mod K``. The graded-reliance knob: unlike ``bias_strength`` (a coin per sample), the count of
    conflicting samples is fixed, so a small fraction (0.1% - 5%) means the same thing on every seed."""
    if num_colors < 2:
        raise ValueError("conflict_fraction needs at least 2 colours")
    n = len(labels)
    colors = (labels % num_colors).astype(np.int64)
    chosen = rng.permutation(n)[: int(round(fraction * n))]
    shift = rng.integers(1, num_colors, size=len(chosen))  # another colour, uniformly
    colors[chosen] = (colors[chosen] + shift) % num_colors
    return colors


def colorize(intensity: torch.Tensor, color: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """Coloured images from intensities.

    Args:
        intensity: [N, H, W] float in [0, 1] (or uint8, scaled by 1/255).
        color: [N] colour index, ``GRAY`` (-1) for gray.
        rgb: [K, 3] palette.

    Returns:
        [N, 3, H, W] float in [0, 1].
    """
    if intensity.dtype == torch.uint8:
        intensity = intensity.float() / 255.0
    gray = color < 0
    table = torch.cat(
        [rgb.to(intensity), torch.ones(1, 3, dtype=intensity.dtype, device=intensity.device)]
    )  # last row: gray
    idx = torch.where(gray, torch.full_like(color, len(rgb)), color)
    return intensity[:, None] * table[idx][:, :, None, None]  # [N, 3, H, W]
