"""ImageFolderAttributesDataModule: real images in a folder, described by a CSV (the layout of Waterbirds' and
CelebA's metadata): one row per image with its path, its class label, attribute columns and optionally its
split. Any attribute column can be a probe concept::

    concepts:
      place: {attribute: place, captions: {land: "a photo of a bird on land.", water: "a photo of a bird on water."}}
      bird: {attribute: label, template: "a photo of a {}."}

The metadata is read and every file checked when the module is built, so a missing file, an unknown column
or a class without images is a one-line error before any training.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from xai_lightning.data.loaders import SplitLoaders
from xai_lightning.errors import ConfigError

SPLIT_NAMES = ("train", "val", "test", "real_world", "probe_set")
RESERVED = ("image", "label", "index")


def read_metadata(path: str) -> list[dict[str, str]]:
    if not os.path.isfile(path):
        raise ConfigError(f"metadata {path!r}: no such CSV file (one row per image: path, label, attributes)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ConfigError(f"metadata {path!r} has no rows")
    return rows


def _check_columns(path: str, columns: Sequence[str], wanted: Mapping[str, str]) -> None:
    for role, column in wanted.items():
        if column not in columns:
            raise ConfigError(f"metadata {path!r}: no {role} column {column!r}; its columns are {', '.join(columns)}")
        if role.startswith("attribute") and column in RESERVED:
            raise ConfigError(
                f"attribute column {column!r} clashes with a batch key ({', '.join(RESERVED)}); rename it"
            )


def _check_files(root: str, paths: Sequence[str]) -> None:
    missing = [p for p in paths if not os.path.isfile(os.path.join(root, p))]
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(paths)} images listed in the metadata are not under {root!r}: "
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
        )


def _split_of(rows: list[dict[str, str]], column: str | None, names: Mapping[str, str], fractions, seed: int):
    """Split name per row: from the CSV's split column (mapped through ``names``), or a seeded draw."""
    if column is not None:
        out = [names.get(r[column], r[column]) for r in rows]
        bad = sorted({s for s in out if s not in SPLIT_NAMES})
        if bad:
            raise ConfigError(
                f"split column {column!r} has values {bad}; allowed: {', '.join(SPLIT_NAMES)} "
                "(map other codes with split_names, e.g. {'0': train, '1': val, '2': test})"
            )
        return np.asarray(out)
    names_, probs = list(fractions), np.asarray(list(fractions.values()), dtype=np.float64)
    if (probs < 0).any() or abs(probs.sum() - 1.0) > 1e-6 or any(n not in SPLIT_NAMES for n in names_):
        raise ConfigError(f"split_fractions {dict(fractions)}: splits from {', '.join(SPLIT_NAMES)} summing to 1")
    return np.asarray(names_)[np.random.default_rng([seed, 31]).choice(len(names_), size=len(rows), p=probs)]


class AttributeImages(Dataset):
    """Images read from files; items ``image`` [3, S, S] in [0, 1], ``label``, ``index`` and every attribute."""

    def __init__(
        self, root: str, paths: Sequence[str], label: torch.Tensor, attrs: Mapping[str, torch.Tensor], size: int
    ):
        self.root, self.paths, self.label, self.attrs, self.size = root, list(paths), label, dict(attrs), int(size)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> torch.Tensor:
        from PIL import Image

        path = os.path.join(self.root, self.paths[i])
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        except OSError as err:
            raise ConfigError(f"image {path!r} cannot be read ({err})") from None
        img = torch.from_numpy(arr).permute(2, 0, 1)[None]
        img = F.interpolate(img, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return img[0].clamp_(0.0, 1.0)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"image": self.load(i), "label": self.label[i], "index": torch.tensor(i)}
        return {**item, **{k: v[i] for k, v in self.attrs.items()}}


class ImageFolderAttributesDataModule(SplitLoaders, L.LightningDataModule):
    """Images under ``root`` listed in a CSV with labels, attributes and splits (module docstring).

    Args:
        root: folder the CSV's paths are relative to.
        metadata: the CSV (relative to ``root`` unless absolute).
        path_column, label_column: the image path and the class columns.
        attributes: attribute columns the probe may name (values are the column's distinct strings, sorted).
        classes: class values in order (default: the label column's distinct values, sorted); each needs images.
        split_column: the split of each row (``train``/``val``/``test``/``real_world``/``probe_set``, or codes
            mapped by ``split_names``); None: a seeded draw with ``split_fractions``.
        val_splits: the validation dataloaders (the probe fits and scores on ``probe_set``).
    """

    def __init__(
        self,
        root: str,
        metadata: str = "metadata.csv",
        path_column: str = "path",
        label_column: str = "label",
        attributes: Sequence[str] = (),
        classes: Sequence[str] | None = None,
        split_column: str | None = "split",
        split_names: Mapping[str, str] | None = None,
        split_fractions: Mapping[str, float] | None = None,
        image_size: int = 224,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_splits: Sequence[str] = ("val", "probe_set"),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = root
        csv_path = metadata if os.path.isabs(metadata) else os.path.join(root, metadata)
        rows = read_metadata(csv_path)
        wanted = {"path": path_column, "label": label_column, **{f"attribute {a}": a for a in attributes}}
        if split_column is not None:
            wanted["split"] = split_column
        _check_columns(csv_path, list(rows[0]), wanted)
        self.paths = [r[path_column] for r in rows]
        _check_files(root, self.paths)
        self.class_names = self._classes(rows, label_column, classes, csv_path)
        self.label = torch.tensor([self.class_names.index(r[label_column]) for r in rows])
        self._attributes = {a: sorted({r[a] for r in rows}) for a in attributes}
        self.attr_index = {a: torch.tensor([v.index(r[a]) for r in rows]) for a, v in self._attributes.items()}
        fractions = split_fractions or {"train": 0.6, "val": 0.2, "probe_set": 0.2}
        self.split = _split_of(rows, split_column, dict(split_names or {}), fractions, seed)
        self.val_split_names = list(val_splits)
        empty = [s for s in ["train", *self.val_split_names] if not (self.split == s).any()]
        if empty:
            raise ConfigError(
                f"no images in split(s) {empty} of {csv_path!r} (splits there: {sorted(set(self.split))})"
            )
        self.test_split_names = [s for s in ("test", "real_world") if (self.split == s).any()]
        self.image_size, self.batch_size = int(image_size), int(batch_size)
        self.eval_batch_size, self.num_workers, self.seed = eval_batch_size or batch_size, num_workers, int(seed)
        self.datasets: dict[str, AttributeImages] = {}

    @staticmethod
    def _classes(rows, column: str, classes: Sequence[str] | None, csv_path: str) -> list[str]:
        present = sorted({r[column] for r in rows})
        if classes is None:
            names = present
        else:
            names = [str(c) for c in classes]
            unknown, empty = sorted(set(present) - set(names)), [c for c in names if c not in present]
            if unknown:
                raise ConfigError(f"{csv_path!r}: label values {unknown} are not among classes {names}")
            if empty:
                raise ConfigError(f"{csv_path!r}: classes {empty} have no images")
        if len(names) < 2:
            raise ConfigError(f"{csv_path!r}: label column {column!r} has {len(names)} class(es) {names}; need 2+")
        return names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def attributes(self) -> dict[str, list[str]]:
        return {"label": self.class_names, **self._attributes}

    @property
    def attribute_keys(self) -> dict[str, str]:
        return {a: a for a in self.attributes}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for name in SPLIT_NAMES:
            rows = np.flatnonzero(self.split == name)
            if len(rows):
                idx = torch.from_numpy(rows)
                self.datasets[name] = AttributeImages(
                    self.root,
                    [self.paths[i] for i in rows],
                    self.label[idx],
                    {a: v[idx] for a, v in self.attr_index.items()},
                    self.image_size,
                )


__all__ = ["ImageFolderAttributesDataModule", "AttributeImages"]
