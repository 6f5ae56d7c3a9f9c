"""ColorMNISTDataModule: coloured digits with a planted colour bias, a real-world shift and a probe set."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from xai_lightning.data.colorize import (
    COLOR_MODES,
    GRAY,
    ColorSpec,
    assign_colors,
    assign_conflicts,
    colorize,
    resolve_colors,
)
from xai_lightning.data.counterfactuals import color_counterfactual, shape_counterfactual, split_donors
from xai_lightning.data.loaders import EpochSeededSampler, SplitLoaders, resize
from xai_lightning.data.sources import SPLITS, Pool, check_source, load_splits, source_fingerprint
from xai_lightning.io import atomic_write

log = logging.getLogger(__name__)

_CACHE_VERSION = 2  # 2: digit_index stored beside the (possibly random) label
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")
VAL_SPLITS = ("val", "real_world", "probe_set", "test", "train")
LABEL_MODES = ("digit", "random")


class ColorDigits(Dataset):
    """Coloured digits; items are dicts ``image`` [3, S, S] float in [0, 1], ``label`` (the training target),
    ``digit`` (0-9), ``digit_index`` (the digit's position in the data module's ``digits``: equal to ``label``
    unless labels are random), ``color`` and ``index`` (position in the split: lets consumers hold out samples
    independently of batching)."""

    def __init__(
        self,
        intensity: torch.Tensor,  # [N, 28, 28] uint8
        digit: torch.Tensor,  # [N]
        label: torch.Tensor,  # [N] class index (the target)
        color: torch.Tensor,  # [N] palette index or GRAY
        rgb: torch.Tensor,  # [K, 3]
        image_size: int,
        interpolation: str = "bilinear",
        digit_index: torch.Tensor | None = None,  # [N] position of the digit in the class list (default: label)
    ) -> None:
        self.intensity, self.digit, self.label, self.color = intensity, digit, label, color
        self.digit_index = label if digit_index is None else digit_index
        self.rgb, self.image_size, self.interpolation = rgb, image_size, interpolation

    def __len__(self) -> int:
        return len(self.label)

    def images(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Final images for several indices at once: [n, 3, S, S]."""
        return resize(colorize(self.intensity[index], self.color[index], self.rgb), self.image_size, self.interpolation)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "image": self.images(slice(i, i + 1))[0],
            "label": self.label[i],
            "digit": self.digit[i],
            "digit_index": self.digit_index[i],
            "color": self.color[i],
            "index": torch.tensor(i),
        }


def _check_digits(digits: Sequence[int]) -> list[int]:
    digits = [int(d) for d in digits]
    bad = [d for d in digits if not 0 <= d <= 9]
    if bad or not digits:
        raise ValueError(f"digits {list(digits)}: each must be in 0-9 (got {bad or 'none'})")
    if len(set(digits)) != len(digits):
        raise ValueError(f"digits {digits} contain duplicates")
    if len(digits) < 2:
        raise ValueError(f"digits {digits}: give at least 2 digits (each digit is a class)")
    return digits


def check_planted_bias(
    attribute: str,
    values: list[str],
    digits: list[int],
    mode: str,
    modes: Sequence[str],
    strength: float,
    conflicts: float | None,
    prefix: str = "",
    noun: str | None = None,
    choices: Sequence[str] = (),
) -> None:
    """The options that plant a bias on one attribute (``color`` or ``background``): ``{attribute}_mode`` in
    ``modes``; ``biased`` needs a value per digit; ``{prefix}bias_strength`` and ``{prefix}conflict_fraction`` in
    [0, 1], the fraction only with ``biased`` and instead of a strength. One-line ValueErrors naming the values
    as ``noun`` (default: the attribute) and, if given, the ``choices`` there are."""
    noun = noun or attribute
    if mode not in modes:
        raise ValueError(f"unknown {attribute}_mode {mode!r}; allowed: {', '.join(modes)}")
    if mode == "biased" and len(values) < len(digits):
        raise ValueError(
            f"{attribute}_mode biased gives each digit its own {noun}, but {len(digits)} digits {digits} have "
            f"{len(values)} {noun}s {values} (digit {digits[len(values)]} would share {values[0]} with digit "
            f"{digits[0]}); give at least {len(digits)} {noun}s" + (f" (of {', '.join(choices)})" if choices else "")
        )
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"{prefix}bias_strength={strength} is outside [0, 1]")
    if conflicts is None:
        return
    if not 0.0 <= float(conflicts) <= 1.0:
        raise ValueError(f"{prefix}conflict_fraction={conflicts} is outside [0, 1]")
    if float(strength) != 1.0:
        raise ValueError(f"give either {prefix}bias_strength or {prefix}conflict_fraction, not both")
    if mode != "biased":
        raise ValueError(f"{prefix}conflict_fraction needs {attribute}_mode 'biased', got {mode!r}")


def _check_sizes(sizes: dict[str, int], num_folds: int, fold: int) -> None:
    for split, n in sizes.items():
        if int(n) < 0:
            raise ValueError(f"{split} size per class must be >= 0, got {n}")
    if num_folds < 2 or not 0 <= fold < num_folds:
        raise ValueError(f"fold={fold}, num_folds={num_folds}: need num_folds >= 2 and 0 <= fold < num_folds")
    if sizes["train"] and sizes["train"] < num_folds:
        raise ValueError(f"train_per_class={sizes['train']} is smaller than num_folds={num_folds}")


def _check_loading(interpolation: str, val_splits: Sequence[str], image_size: int) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; allowed: {', '.join(INTERPOLATIONS)}")
    unknown = [s for s in val_splits if s not in VAL_SPLITS]
    if unknown or not val_splits:
        raise ValueError(f"val_splits {list(val_splits)}: allowed entries {', '.join(VAL_SPLITS)}")
    if image_size < 8:
        raise ValueError(f"image_size={image_size} is too small (>= 8)")


class ColorMNISTDataModule(SplitLoaders, L.LightningDataModule):
    """Colour-biased digits (docs/data.md).

    Splits: ``train`` / ``val`` (fold ``fold`` of ``num_folds`` of the development training data) with
    ``color_mode``; ``test`` with ``color_mode``; ``real_world`` (deployment: colours always random);
    ``probe_set`` (development digits disjoint from train, colours random so colour and shape vary
    independently: the data the SurgeryProbe fits and scores on).

    Args:
        source: ``synthetic`` (procedural digits, offline), ``mnist``, ``emnist`` (torchvision download
            into ``data_dir``), or a path to an ``.npz`` with ``images`` (N x 28 x 28 uint8) and ``labels``.
        digits: classes, any subset of 0-9; the class index is the position in this list.
        colors: palette names (``red``, ``green``, ...) or ``{name: [r, g, b]}``.
        color_mode: ``biased`` | ``random`` | ``grayscale`` for train/val/test.
        bias_strength: probability that a ``biased`` sample has its class's colour (else random).
        conflict_fraction: instead of ``bias_strength``, the exact fraction of ``biased`` train and test samples
            whose colour is another class's (seeded; e.g. 0.001 - 0.05). A few conflicting digits decide
            how much a model relies on colour: the graded-reliance knob of the validation suite.
        label_mode: ``digit`` (the label is the digit's class) | ``random`` (every split's labels drawn
            uniformly at random, independently of digit and colour, seeded and fixed per image: a model trains
            and changes its features but can rely on neither concept; colours still follow the digit under
            ``biased``). The probe reads the digit from ``digit_index``, never from ``label``.
        gray_fraction: probability that a randomly coloured sample is gray instead.
        train_per_class, test_per_class, real_world_per_class, probe_per_class: split sizes per class
            (``train`` includes the validation fold).
        image_size: side of the square images in batches.
        val_splits: the validation dataloaders, in order (``fit`` validates on all of them).
    """

    def __init__(
        self,
        source: str = "synthetic",
        data_dir: str = "data",
        digits: Sequence[int] = (5, 8),
        colors: Sequence[ColorSpec] = ("red", "green"),
        color_mode: str = "biased",
        bias_strength: float = 1.0,
        conflict_fraction: float | None = None,
        label_mode: str = "digit",
        gray_fraction: float = 0.0,
        train_per_class: int = 5000,
        test_per_class: int = 1000,
        real_world_per_class: int = 1000,
        probe_per_class: int = 500,
        num_folds: int = 5,
        fold: int = 0,
        image_size: int = 224,
        interpolation: str = "bilinear",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_splits: Sequence[str] = ("val", "real_world", "probe_set"),
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        super().__init__()
        self.source = check_source(source)
        self.digits = _check_digits(digits)
        self.color_names, rgb = resolve_colors(list(colors))
        self.rgb = torch.from_numpy(rgb)
        check_planted_bias(
            "color",
            self.color_names,
            self.digits,
            color_mode,
            COLOR_MODES,
            bias_strength,
            conflict_fraction,
            noun="colour",
        )
        if not 0.0 <= float(gray_fraction) <= 1.0:
            raise ValueError(f"gray_fraction={gray_fraction} is outside [0, 1]")
        if label_mode not in LABEL_MODES:
            raise ValueError(f"unknown label_mode {label_mode!r}; allowed: {', '.join(LABEL_MODES)}")
        self.conflict_fraction = None if conflict_fraction is None else float(conflict_fraction)
        self.label_mode = label_mode
        sizes = {
            "train": train_per_class,
            "test": test_per_class,
            "real_world": real_world_per_class,
            "probe_set": probe_per_class,
        }
        _check_sizes(sizes, num_folds, fold)
        _check_loading(interpolation, val_splits, image_size)
        self.color_mode, self.bias_strength, self.gray_fraction = color_mode, float(bias_strength), float(gray_fraction)
        self.sizes = {k: int(v) for k, v in sizes.items()}
        self.num_folds, self.fold = num_folds, fold
        self.image_size, self.interpolation = int(image_size), interpolation
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_split_names = list(val_splits)
        self.test_split_names = ["test", "real_world"]
        self.seed, self.cache, self.data_dir = int(seed), cache, data_dir
        self.datasets: dict[str, ColorDigits] = {}
        self._donors: dict[str, torch.Tensor] = {}  # split -> split_donors of its digits
        self.save_hyperparameters()

    # ---- names other components link to -------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.digits)

    @property
    def class_names(self) -> list[str]:
        return [str(d) for d in self.digits]

    @property
    def attributes(self) -> dict[str, list[str]]:
        """Attribute name -> value names; a batch's ``attribute_keys[a]`` entry indexes into them."""
        return {"digit": self.class_names, "color": self.color_names}

    attribute_keys = {"digit": "digit_index", "color": "color"}

    # ---- counterfactual edits (CounterfactualCheck) ---------------------------------------------
    counterfactual_names = ("color", "shape")

    def counterfactuals(
        self, split: str, batch: dict[str, torch.Tensor]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Concept -> (the batch's images with that concept changed, mask of images that could be edited)."""
        digit, rgb = batch["digit_index"], self.rgb.float()
        donor, found = self.donors(split, batch["index"])
        donor_images = self.datasets[split].images(donor)
        return {
            "color": color_counterfactual(batch["image"], batch["color"], digit, rgb),
            "shape": shape_counterfactual(batch["image"], batch["color"], donor_images, found, rgb),
        }

    def donors(self, split: str, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(donor position in the split of each image at ``index``, mask of images that have one): the shape
        edit's donors, ``split_donors`` of the whole split (computed once per split); an image without one is
        its own donor."""
        if split not in self._donors:
            self._donors[split] = split_donors(self.datasets[split].digit_index)
        index = index.cpu()
        donor = self._donors[split][index]
        return torch.where(donor >= 0, donor, index), donor >= 0

    # ---- generation and cache -----------------------------------------------------------------
    def cache_spec(self) -> dict:
        """Everything the generated arrays depend on (subclasses add their own options)."""
        return {
            "version": _CACHE_VERSION,
            "source": source_fingerprint(self.source),
            "digits": self.digits,
            "rgb": self.rgb.tolist(),
            "color_mode": self.color_mode,
            "bias_strength": self.bias_strength,
            "conflict_fraction": self.conflict_fraction,
            "label_mode": self.label_mode,
            "gray_fraction": self.gray_fraction,
            "sizes": self.sizes,
            "seed": self.seed,
        }

    cache_prefix = "colordigits"

    def cache_key(self) -> str:
        return hashlib.sha256(json.dumps(self.cache_spec(), sort_keys=True).encode()).hexdigest()[:20]

    def cache_path(self) -> str:
        return os.path.join(self.data_dir, "cache", f"{self.cache_prefix}_{self.cache_key()}.npz")

    def _generate(self) -> dict[str, np.ndarray]:
        pools: dict[str, Pool] = load_splits(self.source, self.data_dir, self.digits, self.sizes, self.seed)
        arrays: dict[str, np.ndarray] = {}
        for code, split in enumerate(SPLITS):
            images, digits = pools[split]
            class_of = np.full(10, -1, dtype=np.int64)
            class_of[self.digits] = np.arange(len(self.digits))
            labels = class_of[digits]  # class index = position in self.digits
            mode = self.color_mode if split in ("train", "test") else "random"
            rng = np.random.default_rng([self.seed, code, 99])
            if mode == "biased" and self.conflict_fraction is not None:
                colors = assign_conflicts(labels, len(self.color_names), self.conflict_fraction, rng)
            else:
                colors = assign_colors(labels, len(self.color_names), mode, self.bias_strength, rng, self.gray_fraction)
            targets = labels
            if self.label_mode == "random":  # own stream: the digits and colours are those of label_mode digit
                targets = np.random.default_rng([self.seed, code, 123]).integers(0, len(self.digits), len(labels))
            arrays.update(
                {
                    f"{split}.intensity": images,
                    f"{split}.digit": digits,
                    f"{split}.label": targets,
                    f"{split}.digit_index": labels,
                    f"{split}.color": colors,
                }
            )
        return arrays

    def _load_or_generate(self, write: bool) -> dict[str, np.ndarray]:
        path = self.cache_path()
        if self.cache and os.path.isfile(path):
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        arrays = self._generate()
        if self.cache and write:
            atomic_write(path, lambda f: np.savez(f, **arrays))  # readers never see a half-written cache
        return arrays

    def prepare_data(self) -> None:
        self._load_or_generate(write=True)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.color_mode == "biased":
            pairs = ", ".join(
                f"{d} -> {self.color_names[i % len(self.color_names)]}" for i, d in enumerate(self.digits)
            )
            log.info(f"ColorMNISTDataModule: biased colours (train/val/test): {pairs}")
        arrays = self._load_or_generate(write=True)
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        val_mask = self.fold_mask(t["train.digit_index"].numpy())
        self.datasets = {
            "train": self.make_dataset(t, "train", torch.from_numpy(np.flatnonzero(~val_mask))),
            "val": self.make_dataset(t, "train", torch.from_numpy(np.flatnonzero(val_mask))),
            "test": self.make_dataset(t, "test"),
            "real_world": self.make_dataset(t, "real_world"),
            "probe_set": self.make_dataset(t, "probe_set"),
        }

    dataset_fields = ("intensity", "digit", "label", "color", "digit_index")

    def split_arrays(self, t: dict[str, torch.Tensor], split: str, index: torch.Tensor | None) -> dict:
        parts = {k: t[f"{split}.{k}"] for k in self.dataset_fields}
        return parts if index is None else {k: v[index] for k, v in parts.items()}

    def make_dataset(self, t: dict[str, torch.Tensor], split: str, index: torch.Tensor | None = None) -> ColorDigits:
        """The dataset of one split (rows ``index`` of its arrays, all by default)."""
        parts = self.split_arrays(t, split, index)
        return ColorDigits(**parts, rgb=self.rgb, image_size=self.image_size, interpolation=self.interpolation)

    def fold_mask(self, labels: np.ndarray) -> np.ndarray:
        """Boolean [N] mask of the validation fold: stratified, fold j of each class's seeded permutation."""
        rng = np.random.default_rng([self.seed, 5])
        fold_of = np.empty(len(labels), dtype=np.int64)
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            fold_of[idx] = np.arange(len(idx)) % self.num_folds
        return fold_of == self.fold


__all__ = ["ColorMNISTDataModule", "ColorDigits", "GRAY", "EpochSeededSampler"]
