"""Procedural background textures and their compositing under a digit (pure functions, no Lightning, no I/O).

A background is one of a small named set of textures (``BACKGROUNDS``), each drawn with its own random
period, phase and orientation per image, so that no fixed pixel pattern identifies it: only the texture's
kind does. Textures are gray, between ``LOW`` and ``HIGH``, so a digit's colour stays a separate concept,
and the digit is composited over them with its intensity as opacity:
``image = intensity * digit_rgb + (1 - intensity) * background``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

BACKGROUNDS = ("stripes", "dots", "checks", "waves")
NONE = -1  # background index of a plain black background
LOW, HIGH = 0.1, 0.55  # gray levels of a texture's dark and light parts
N_PARAMS = 4  # per image: period (pixels), phase, second phase, angle (radians)


def draw_params(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random texture parameters [n, 4] (float32): period 4-8 px, phases in [0, 1), angle in [0, pi)."""
    return np.stack(
        [rng.uniform(4.0, 8.0, n), rng.random(n), rng.random(n), rng.uniform(0.0, math.pi, n)], axis=1
    ).astype(np.float32)


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    y, x = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    return x[None], y[None]  # [1, S, S]


def _rotated(params: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = _grid(size)
    period, angle = params[:, 0, None, None], params[:, 3, None, None]
    u = (x * torch.cos(angle) + y * torch.sin(angle)) / period  # across the pattern, in periods
    v = (-x * torch.sin(angle) + y * torch.cos(angle)) / period  # along it
    return u, v, period


def stripes(params: torch.Tensor, size: int) -> torch.Tensor:
    """Straight hard-edged stripes at any angle (half a period light, half dark)."""
    u, _, _ = _rotated(params, size)
    return (torch.remainder(u + params[:, 1, None, None], 1.0) < 0.5).float()


def dots(params: torch.Tensor, size: int) -> torch.Tensor:
    """A grid of round dots (radius 0.35 period) on a dark ground."""
    u, v, _ = _rotated(params, size)
    du = torch.remainder(u + params[:, 1, None, None], 1.0) - 0.5
    dv = torch.remainder(v + params[:, 2, None, None], 1.0) - 0.5
    return (du**2 + dv**2 < 0.35**2).float()


def checks(params: torch.Tensor, size: int) -> torch.Tensor:
    """A checkerboard of squares one period wide."""
    u, v, _ = _rotated(params, size)
    iu = torch.floor(u + params[:, 1, None, None])
    iv = torch.floor(v + params[:, 2, None, None])
    return torch.remainder(iu + iv, 2.0)


def waves(params: torch.Tensor, size: int) -> torch.Tensor:
    """Smooth wavy lines: a sinusoid across the pattern whose phase bends along it."""
    u, v, _ = _rotated(params, size)
    bend = 0.35 * torch.sin(2 * math.pi * (v / 2.5 + params[:, 2, None, None]))
    return 0.5 + 0.5 * torch.sin(2 * math.pi * (u + bend + params[:, 1, None, None]))


TEXTURES = {"stripes": stripes, "dots": dots, "checks": checks, "waves": waves}


def check_backgrounds(names: list[str]) -> list[str]:
    names = [str(n) for n in names]
    unknown = [n for n in names if n not in TEXTURES]
    if unknown or not names:
        raise ValueError(f"backgrounds {names}: allowed names {', '.join(BACKGROUNDS)} (at least one)")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate background names in {names}")
    return names


def render(background: torch.Tensor, params: torch.Tensor, names: list[str], size: int) -> torch.Tensor:
    """Gray background images [N, S, S] in [LOW, HIGH] (0 where ``background`` is ``NONE``).

    Args:
        background: [N] index into ``names`` (``NONE`` for plain black).
        params: [N, 4] texture parameters (``draw_params``).
        names: the texture name of each index.
    """
    out = torch.zeros(len(background), size, size)
    for k, name in enumerate(names):
        rows = background == k
        if bool(rows.any()):
            out[rows] = LOW + (HIGH - LOW) * TEXTURES[name](params[rows].float(), size)
    return out


def composite(digits: torch.Tensor, intensity: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """A coloured digit over a gray background: [N, 3, S, S] from ``digits`` [N, 3, S, S] (the coloured digit
    on black), ``intensity`` [N, S, S] in [0, 1] (its opacity) and ``background`` [N, S, S]."""
    alpha = intensity[:, None]
    return digits + (1.0 - alpha) * background[:, None]
