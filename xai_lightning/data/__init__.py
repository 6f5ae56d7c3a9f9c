"""Coloured digit data: sources, colouring and the ColorMNISTDataModule."""

from xai_lightning.data.colorize import GRAY, PALETTE, assign_colors, colorize, resolve_colors
from xai_lightning.data.datamodule import ColorDigits, ColorMNISTDataModule

__all__ = ["ColorMNISTDataModule", "ColorDigits", "GRAY", "PALETTE", "assign_colors", "colorize", "resolve_colors"]
