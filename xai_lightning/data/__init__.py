"""Data: digit sources, colouring, backgrounds, and the data modules (colour-biased digits, digits over
background textures, image folders described by a CSV)."""

from xai_lightning.data.colorize import GRAY, PALETTE, assign_colors, colorize, resolve_colors
from xai_lightning.data.datamodule import ColorDigits, ColorMNISTDataModule
from xai_lightning.data.digitworld import DigitWorldDataModule, WorldDigits
from xai_lightning.data.folder import ImageFolderAttributesDataModule
from xai_lightning.data.scenes import SceneDigits, SceneDigitsDataModule

__all__ = [
    "ColorMNISTDataModule",
    "DigitWorldDataModule",
    "WorldDigits",
    "ColorDigits",
    "SceneDigitsDataModule",
    "SceneDigits",
    "ImageFolderAttributesDataModule",
    "GRAY",
    "PALETTE",
    "assign_colors",
    "colorize",
    "resolve_colors",
]
