"""DigitWorldDataModule: digits whose look varies along nine families, with a shortcut planted on any of them.

The same digits, splits, folds, cache and loaders as ``ColorMNISTDataModule`` (a subclass), drawn by
``xai_lightning.data.world``: every image has a value of each family (``digit``, ``color``, ``background``,
``background_color``, ``thickness``, ``size``, ``position``, ``slant``, ``patch``). ``shortcut: <family>``
plants the bias the way ``color_mode: biased`` does for colours — class ``c`` gets its own value of the family
(``class_value``: spread over the values when there are as many values as classes or more, thin and thick
strokes for two classes; ``c mod V`` otherwise) in ``train``/``val``/``test`` with probability
``shortcut_strength``, or exactly ``shortcut_conflict_fraction`` of them get another class's — and every other
family is drawn at random,
independently; ``real_world`` and ``probe_set`` draw every family at random. Counterfactual edits re-render an
image with one family changed (``cf/<family>_flip_rate``; the digit edit draws another digit's strokes with
every other family kept).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from xai_lightning.data.backgrounds import N_PARAMS, draw_params
from xai_lightning.data.colorize import assign_colors, assign_conflicts
from xai_lightning.data.counterfactuals import other_value
from xai_lightning.data.datamodule import ColorDigits, ColorMNISTDataModule, check_planted_bias
from xai_lightning.data.sources import SPLITS
from xai_lightning.data.world import FAMILIES, VALUES, render

SHORTCUTS = ("none", *FAMILIES[1:])
WORLD = tuple(f for f in FAMILIES if f not in ("digit", "color"))  # the families this module adds


def class_value(labels: np.ndarray | torch.Tensor, classes: int, values: int):
    """The value of a shortcut family that class ``c`` gets: spread over the values when they are as many as
    the classes or more (two classes of a three-valued family: the first and the last value), else ``c mod V``."""
    if classes <= values:
        return labels * (values - 1) // max(classes - 1, 1)
    return labels % values


class WorldDigits(ColorDigits):
    """``ColorDigits`` drawn in the digit world; items add every family's value index."""

    def __init__(
        self, *args, families: dict[str, torch.Tensor], params: torch.Tensor, patch_px: torch.Tensor, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.families, self.params, self.patch_px = families, params, patch_px  # [N] each image's patch side

    def values(self, index: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        return {"color": self.color[index], **{f: v[index] for f, v in self.families.items()}}

    def render(
        self, index: torch.Tensor | slice, source: torch.Tensor | slice | None = None, **changed
    ) -> torch.Tensor:
        """Images [n, 3, S, S] of rows ``index``, with the strokes of rows ``source`` and ``changed`` family values
        (``color=...``, ``slant=...``) where given."""
        values = {**self.values(index), **changed}
        src = self.intensity[index if source is None else source]
        img = render(src, values, self.params[index], self.patch_px[index])
        from xai_lightning.data.loaders import resize

        return resize(img, self.image_size, self.interpolation)

    def images(self, index: torch.Tensor | slice) -> torch.Tensor:
        return self.render(index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**super().__getitem__(i), **{f: v[i] for f, v in self.families.items()}}


class DigitWorldDataModule(ColorMNISTDataModule):
    """Digits in the digit world (module docstring); every ``ColorMNISTDataModule`` option applies (``colors``
    are the world's six inks).

    Args:
        shortcut: the family whose value follows the class in train/val/test (``none``: every family random).
        shortcut_strength: probability that a sample has its class's value of the shortcut family.
        shortcut_conflict_fraction: instead, the exact fraction of samples with another class's value.
        patch_px: side of the corner patch in pixels (2, 4, ... 32 = the whole top-left corner region), or a
            list of sides: each image gets one of them at random (fixed for the image: its edits keep it).
    """

    cache_prefix = "digitworld"
    dataset_fields = (*ColorMNISTDataModule.dataset_fields, *WORLD, "params")
    counterfactual_names = ("digit", *FAMILIES[1:])

    def __init__(
        self,
        source: str = "synthetic",
        data_dir: str = "data",
        digits: Sequence[int] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
        shortcut: str = "none",
        shortcut_strength: float = 1.0,
        shortcut_conflict_fraction: float | None = None,
        patch_px: int | Sequence[int] = 4,
        label_mode: str = "digit",
        train_per_class: int = 500,
        test_per_class: int = 100,
        real_world_per_class: int = 100,
        probe_per_class: int = 100,
        num_folds: int = 5,
        fold: int = 0,
        image_size: int = 32,
        interpolation: str = "bilinear",
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_splits: Sequence[str] = ("val", "real_world", "probe_set"),
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        if shortcut not in SHORTCUTS:
            raise ValueError(f"unknown shortcut {shortcut!r}; allowed: {', '.join(SHORTCUTS)}")
        super().__init__(
            source=source,
            data_dir=data_dir,
            digits=digits,
            colors=list(VALUES["color"]),
            color_mode="random",  # colours are drawn with the other families (_generate)
            label_mode=label_mode,
            train_per_class=train_per_class,
            test_per_class=test_per_class,
            real_world_per_class=real_world_per_class,
            probe_per_class=probe_per_class,
            num_folds=num_folds,
            fold=fold,
            image_size=image_size,
            interpolation=interpolation,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            val_splits=val_splits,
            seed=seed,
            cache=cache,
        )
        if shortcut != "none":
            check_planted_bias(
                shortcut,
                list(VALUES[shortcut]),
                self.digits[: len(VALUES[shortcut])],  # fewer values than classes: classes share values (c mod V)
                "biased",
                ("biased",),
                shortcut_strength,
                shortcut_conflict_fraction,
                prefix="shortcut_",
            )
        sides = [int(patch_px)] if isinstance(patch_px, (int, float)) else [int(p) for p in patch_px]
        if not sides or not all(1 <= p <= 32 for p in sides):
            raise ValueError(f"patch_px={patch_px} must lie in [1, 32] (or be a list of such sides)")
        self.shortcut, self.shortcut_strength = shortcut, float(shortcut_strength)
        self.shortcut_conflict_fraction = (
            None if shortcut_conflict_fraction is None else float(shortcut_conflict_fraction)
        )
        self.patch_px = sides[0] if len(sides) == 1 else sides
        self.save_hyperparameters()

    @property
    def attributes(self) -> dict[str, list[str]]:
        return {"digit": self.class_names, **{f: list(VALUES[f]) for f in FAMILIES[1:]}}

    @property
    def attribute_keys(self) -> dict[str, str]:
        return {"digit": "digit_index", **{f: f for f in FAMILIES[1:]}}

    def cache_spec(self) -> dict:
        return {
            **super().cache_spec(),
            "world": 1,
            "shortcut": self.shortcut,
            "shortcut_strength": self.shortcut_strength,
            "shortcut_conflict_fraction": self.shortcut_conflict_fraction,
        }

    def _family(self, labels: np.ndarray, split: str, family: str) -> np.ndarray:
        rng = np.random.default_rng([self.seed, SPLITS.index(split), 80 + FAMILIES.index(family)])  # own stream
        k = len(VALUES[family])
        biased = family == self.shortcut and split in ("train", "test")
        own = class_value(labels, len(self.digits), k)
        if biased and self.shortcut_conflict_fraction is not None:
            return assign_conflicts(own, k, self.shortcut_conflict_fraction, rng)
        return assign_colors(own, k, "biased" if biased else "random", self.shortcut_strength, rng)

    def _generate(self) -> dict[str, np.ndarray]:
        arrays = super()._generate()
        for code, split in enumerate(SPLITS):
            labels = arrays[f"{split}.digit_index"]
            for family in ("color", *WORLD):
                arrays[f"{split}.{family}"] = self._family(labels, split, family)
            arrays[f"{split}.params"] = draw_params(len(labels), np.random.default_rng([self.seed, code, 79]))
        return arrays

    def make_dataset(self, t: dict[str, torch.Tensor], split: str, index: torch.Tensor | None = None) -> WorldDigits:
        parts = self.split_arrays(t, split, index)
        families = {f: parts.pop(f) for f in WORLD}
        params = parts.pop("params").reshape(-1, N_PARAMS)
        return WorldDigits(
            **parts,
            rgb=self.rgb,
            image_size=self.image_size,
            interpolation=self.interpolation,
            families=families,
            params=params,
            patch_px=self.patch_sides(t, split, index),
        )

    def patch_sides(self, t: dict[str, torch.Tensor], split: str, index: torch.Tensor | None) -> torch.Tensor:
        """[N] each image's patch side: ``patch_px``, or one of its sides drawn per image of the whole split (so a
        subset of rows keeps its images' sides)."""
        n = len(t[f"{split}.digit_index"])
        if isinstance(self.patch_px, int):
            sides = torch.full((n,), self.patch_px, dtype=torch.long)
        else:
            rng = np.random.default_rng([self.seed, SPLITS.index(split), 99])
            sides = torch.as_tensor(rng.choice(self.patch_px, size=n), dtype=torch.long)
        return sides if index is None else sides[index]

    def counterfactuals(
        self, split: str, batch: dict[str, torch.Tensor]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Family -> (the batch's images with that family changed to another value, mask of edited images)."""
        data: WorldDigits = self.datasets[split]
        index, digit = batch["index"].cpu(), batch["digit_index"].cpu()
        donor, found = self.donors(split, index)
        out = {"digit": (data.render(index, source=donor), found)}
        for family, value in data.values(index).items():
            new, has = other_value(value, digit, len(VALUES[family]))
            out[family] = (data.render(index, **{family: new}), has)
        return out


def families_of(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; the digit world has {', '.join(FAMILIES)}")
    return list(names)


__all__ = ["DigitWorldDataModule", "WorldDigits", "SHORTCUTS", "class_value"]
