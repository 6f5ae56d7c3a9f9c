"""Digit data: sources, colouring, backgrounds, and the data modules (colour-biased digits, digits over
background textures)."""

from xai_lightning.data.colorize import GRAY, PALETTE, assign_colors, colorize, resolve_colors
from xai_lightning.data.datamodule import ColorDigits, ColorMNISTDataModule
from xai_lightning.data.scenes import SceneDigits, SceneDigitsDataModule

__all__ = [
    "ColorMNISTDataModule",
    "ColorDigits",
    "SceneDigitsDataModule",
    "SceneDigits",
    "GRAY",
    "PALETTE",
    "assign_colors",
    "colorize",
    "resolve_colors",
]
