"""ImageFolderAttributesDataModule: real images in a folder, described by a CSV (the layout of Waterbirds' and
CelebA's metadata): one row per image with its path, its class label, attribute columns and optionally its
split. Any attribute column can be a probe concept::

    concepts:
      place: {attribute: place, captions: {land: "a photo of a bird on land.", water: "a photo of a bird on water."}}
      bird: {attribute: label, template: "a photo of a {}."}

The metadata is read and every file checked when the module is built, so a missing file, an unknown column
or a class without images is a one-line error before any training.

**The probe set must be able to answer.** The verdict compares images that differ in one concept and agree on
the class; on the training data's correlation (95% of waterbirds on water) it has almost no such pairs. Without
a split column the module therefore builds ``probe_set`` **group-balanced**: the same number of images in every
(class x attribute values) cell, drawn before anything else so they are never trained on, and logs the cell
table; the rest is split into train and val. Cells with few or no images are named (the verdict then says
``too few images per cell`` or ``confounded probe set`` rather than guessing). A blank attribute value is
unknown, not a value of its own.
"""

from __future__ import annotations

import csv
import itertools
import logging
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
PROBE_SETS = ("balanced", "random")
THIN_CELL = 5  # fewer probe images in a cell than this is named in the log

log = logging.getLogger(__name__)


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


def _split_of(rows: list[dict[str, str]], column: str | None, names: Mapping[str, str]) -> np.ndarray:
    """Split name per row from the CSV's split column (mapped through ``names``)."""
    out = [names.get(r[column], r[column]) for r in rows]
    bad = sorted({s for s in out if s not in SPLIT_NAMES})
    if bad:
        raise ConfigError(
            f"split column {column!r} has values {bad}; allowed: {', '.join(SPLIT_NAMES)} "
            "(map other codes with split_names, e.g. {'0': train, '1': val, '2': test})"
        )
    return np.asarray(out)


def random_splits(n: int, fractions: Mapping[str, float], seed: int) -> np.ndarray:
    """A seeded draw of a split per row with ``fractions``."""
    names_, probs = list(fractions), np.asarray(list(fractions.values()), dtype=np.float64)
    if (probs < 0).any() or abs(probs.sum() - 1.0) > 1e-6 or any(n not in SPLIT_NAMES for n in names_):
        raise ConfigError(f"split_fractions {dict(fractions)}: splits from {', '.join(SPLIT_NAMES)} summing to 1")
    return np.asarray(names_)[np.random.default_rng([seed, 31]).choice(len(names_), size=n, p=probs)]


def balanced_splits(cell: np.ndarray, n_cells: int, per_cell: int | None, fraction: float, seed: int):
    """(split per row, images per cell in the probe set). ``cell`` [n]: each row's (class x attributes) cell, -1
    where an attribute is unknown (never probed). The probe set takes ``per_cell`` images of every cell (default:
    as many as keep it within ``fraction`` of the rows and within the smallest non-empty cell), at random; of
    the other rows 75% train, 25% val."""
    rng = np.random.default_rng([seed, 37])
    sizes = np.bincount(cell[cell >= 0], minlength=n_cells)
    present = sizes[sizes > 0]
    if per_cell is None:
        per_cell = int(min(present.min() if len(present) else 0, fraction * len(cell) // max(n_cells, 1)))
    split = np.full(len(cell), "", dtype=object)
    for c in range(n_cells):
        rows = rng.permutation(np.flatnonzero(cell == c))
        split[rows[:per_cell]] = "probe_set"
    rest = np.flatnonzero(split == "")
    split[rest] = np.where(rng.random(len(rest)) < 0.75, "train", "val")
    return split.astype(str), int(per_cell)


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
            mapped by ``split_names``); None: the module splits (``probe_set``).
        probe_set: without a split column, ``balanced`` (the same number of images, ``probe_per_cell``, in every
            class x attribute-values cell, drawn first; the rest 75/25 train/val) or ``random`` (a seeded draw
            with ``split_fractions``, default 60/20/20 train/val/probe_set: the probe set then carries the data's
            correlation).
        probe_per_cell: images per cell of a balanced probe set (default: as many as fit in ``probe_fraction``
            of the data and in the smallest cell).
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
        probe_set: str = "balanced",
        probe_per_cell: int | None = None,
        probe_fraction: float = 0.2,
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
        if probe_set not in PROBE_SETS:
            raise ConfigError(f"unknown probe_set {probe_set!r}; allowed: {', '.join(PROBE_SETS)}")
        self.class_names = self._classes(rows, label_column, classes, csv_path)
        self.label = torch.tensor([self.class_names.index(r[label_column]) for r in rows])
        self._attributes = {a: sorted({r[a].strip() for r in rows} - {""}) for a in attributes}  # blank: unknown
        self.attr_index = {
            a: torch.tensor([v.index(r[a].strip()) if r[a].strip() else -1 for r in rows])
            for a, v in self._attributes.items()
        }
        if split_column is not None:
            self.split = _split_of(rows, split_column, dict(split_names or {}))
        elif probe_set == "random":
            fractions = split_fractions or {"train": 0.6, "val": 0.2, "probe_set": 0.2}
            self.split = random_splits(len(rows), fractions, seed)
        else:
            cell, n_cells = self._cells()
            self.split, per_cell = balanced_splits(cell, n_cells, probe_per_cell, probe_fraction, seed)
            log.info(f"ImageFolderAttributesDataModule: a balanced probe set, {per_cell} images per cell")
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
        if "probe_set" in self.split:
            for line in self.cell_table():
                (log.warning if line.startswith(("  empty", "  thin")) else log.info)(line)

    def _cells(self) -> tuple[np.ndarray, int]:
        """(each row's class x attribute-values cell index, -1 where an attribute is unknown; the number of
        cells)."""
        cell = self.label.numpy().astype(np.int64)
        known = np.ones(len(cell), dtype=bool)
        n = len(self.class_names)
        for a, values in self._attributes.items():
            index = self.attr_index[a].numpy()
            known &= index >= 0
            cell = cell * len(values) + np.maximum(index, 0)
            n *= len(values)
        return np.where(known, cell, -1), n

    def cell_table(self) -> list[str]:
        """The probe set's images per (class x attribute values) cell, with its thin and empty cells named."""
        cell, n = self._cells()
        probe = cell[(self.split == "probe_set") & (cell >= 0)]
        counts = np.bincount(probe, minlength=n)
        names = list(itertools.product(self.class_names, *self._attributes.values()))
        lines = [f"probe_set cells (class x {' x '.join(self._attributes) or 'no attributes'}): images"]
        lines += [f"  {' / '.join(cn)}: {int(k)}" for cn, k in zip(names, counts)]
        thin = [" / ".join(cn) for cn, k in zip(names, counts) if 0 < k < THIN_CELL]
        empty = [" / ".join(cn) for cn, k in zip(names, counts) if k == 0]
        if empty:
            lines.append(f"  empty cells (no pair can differ in that value alone there): {', '.join(empty)}")
        if thin:
            lines.append(f"  thin cells (< {THIN_CELL} images): {', '.join(thin)}")
        return lines

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
