"""SceneDigitsDataModule: digits over textured backgrounds, with a planted background bias (the second shortcut).

The same digits, splits, colours and options as ``ColorMNISTDataModule`` (it is a subclass: the digits, the
colours, the folds, the cache and the loaders are that module's), plus a background per image: one texture of
``backgrounds`` (``xai_lightning.data.backgrounds``) with its own random period, phase and angle.
``background_mode`` plants the bias the way ``color_mode`` does: ``biased`` (class ``c`` gets texture
``c mod B`` with probability ``background_bias_strength``, or with exactly ``background_conflict_fraction``
conflicts), ``random`` or ``none`` (black) for train/val/test; ``real_world`` and ``probe_set`` always get
random textures, independent of the digit and its colour.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from xai_lightning.data.backgrounds import BACKGROUNDS, N_PARAMS, check_backgrounds, composite, draw_params, render
from xai_lightning.data.colorize import assign_colors, assign_conflicts, colorize
from xai_lightning.data.counterfactuals import other_value
from xai_lightning.data.datamodule import ColorDigits, ColorMNISTDataModule, check_planted_bias
from xai_lightning.data.loaders import resize
from xai_lightning.data.sources import SPLITS

BACKGROUND_MODES = ("biased", "random", "none")
RAW = 28  # side at which digits and textures are composed (then resized like the colour digits)


class SceneDigits(ColorDigits):
    """``ColorDigits`` over textured backgrounds; items add ``background`` (texture index, -1 for black)."""

    def __init__(
        self,
        *args,
        background: torch.Tensor,  # [N] texture index or -1
        bg_params: torch.Tensor,  # [N, 4] texture parameters
        background_names: Sequence[str],
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.background, self.bg_params, self.background_names = background, bg_params, list(background_names)

    def render(
        self,
        index: torch.Tensor | slice,
        source: torch.Tensor | slice | None = None,
        color: torch.Tensor | None = None,
        background: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images [n, 3, S, S] of rows ``index``, optionally with the digit strokes of rows ``source``, other
        colours or other backgrounds (the counterfactual edits)."""
        intensity = self.intensity[index if source is None else source].float() / 255.0
        color = self.color[index] if color is None else color
        background = self.background[index] if background is None else background
        digits = colorize(intensity, color, self.rgb)
        img = composite(digits, intensity, render(background, self.bg_params[index], self.background_names, RAW))
        return resize(img, self.image_size, self.interpolation)

    def images(self, index: torch.Tensor | slice) -> torch.Tensor:
        return self.render(index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**super().__getitem__(i), "background": self.background[i]}


class SceneDigitsDataModule(ColorMNISTDataModule):
    """Digits over textured backgrounds (docs/data.md). Every ``ColorMNISTDataModule`` option applies
    (``color_mode`` defaults to ``random`` here: the planted bias is the background's).

    Args:
        backgrounds: texture names (``stripes``, ``dots``, ``checks``, ``waves``).
        background_mode: ``biased`` | ``random`` | ``none`` for train/val/test.
        background_bias_strength: probability that a ``biased`` sample has its class's texture.
        background_conflict_fraction: instead, the exact fraction of ``biased`` samples with another class's
            texture (the graded knob, as ``conflict_fraction`` for colours).
    """

    cache_prefix = "scenedigits"
    dataset_fields = (*ColorMNISTDataModule.dataset_fields, "background", "bg_params")
    attribute_keys = {**ColorMNISTDataModule.attribute_keys, "background": "background"}
    counterfactual_names = ("color", "shape", "background")

    def __init__(
        self,
        *args,
        backgrounds: Sequence[str] = BACKGROUNDS,
        background_mode: str = "biased",
        background_bias_strength: float = 1.0,
        background_conflict_fraction: float | None = None,
        color_mode: str = "random",
        **kwargs,
    ) -> None:
        super().__init__(*args, color_mode=color_mode, **kwargs)
        self.background_names = check_backgrounds(list(backgrounds))
        check_planted_bias(
            "background",
            self.background_names,
            self.digits,
            background_mode,
            BACKGROUND_MODES,
            background_bias_strength,
            background_conflict_fraction,
            prefix="background_",
            choices=BACKGROUNDS,
        )
        self.background_mode = background_mode
        self.background_bias_strength = float(background_bias_strength)
        self.background_conflict_fraction = (
            None if background_conflict_fraction is None else float(background_conflict_fraction)
        )

    @property
    def attributes(self) -> dict[str, list[str]]:
        return {**super().attributes, "background": self.background_names}

    def cache_spec(self) -> dict:
        return {
            **super().cache_spec(),
            "backgrounds": self.background_names,
            "background_mode": self.background_mode,
            "background_bias_strength": self.background_bias_strength,
            "background_conflict_fraction": self.background_conflict_fraction,
        }

    def _backgrounds(self, labels: np.ndarray, split: str) -> np.ndarray:
        rng = np.random.default_rng([self.seed, SPLITS.index(split), 77])  # own stream: digits/colours unchanged
        mode = self.background_mode if split in ("train", "test") else "random"
        k = len(self.background_names)
        if mode == "biased" and self.background_conflict_fraction is not None:
            return assign_conflicts(labels, k, self.background_conflict_fraction, rng)
        return assign_colors(labels, k, "grayscale" if mode == "none" else mode, self.background_bias_strength, rng)

    def _generate(self) -> dict[str, np.ndarray]:
        arrays = super()._generate()
        for code, split in enumerate(SPLITS):
            labels = arrays[f"{split}.digit_index"]
            arrays[f"{split}.background"] = self._backgrounds(labels, split)
            params_rng = np.random.default_rng([self.seed, code, 78])
            arrays[f"{split}.bg_params"] = draw_params(len(labels), params_rng).reshape(-1, N_PARAMS)
        return arrays

    def make_dataset(self, t: dict[str, torch.Tensor], split: str, index: torch.Tensor | None = None) -> SceneDigits:
        parts = self.split_arrays(t, split, index)
        return SceneDigits(
            **parts,
            rgb=self.rgb,
            image_size=self.image_size,
            interpolation=self.interpolation,
            background_names=self.background_names,
        )

    def counterfactuals(
        self, split: str, batch: dict[str, torch.Tensor]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Re-rendered from the split's arrays (a digit cannot be lifted off its background in pixels)."""
        data: SceneDigits = self.datasets[split]
        index, digit = batch["index"].cpu(), batch["digit_index"].cpu()
        color, background = data.color[index], data.background[index]
        new_color, has_color = other_value(color, digit, len(self.rgb))
        new_bg, has_bg = other_value(background, digit, len(self.background_names))
        donor, found = self.donors(split, index)
        return {
            "color": (data.render(index, color=new_color), has_color),
            "shape": (data.render(index, source=donor), found),
            "background": (data.render(index, background=new_bg), has_bg),
        }


__all__ = ["SceneDigitsDataModule", "SceneDigits", "BACKGROUND_MODES"]
