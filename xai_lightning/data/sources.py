"""Digit sources (MNIST, EMNIST, synthetic, ``.npz``) and the disjoint, stratified split selection."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping

import numpy as np

from xai_lightning.data.synthetic import generate_digits
from xai_lightning.errors import ConfigError

log = logging.getLogger(__name__)

NAMED_SOURCES = ("mnist", "emnist", "synthetic")
SPLITS = ("train", "test", "real_world", "probe_set")
_SPLIT_CODE = {name: i for i, name in enumerate(SPLITS)}

Pool = tuple[np.ndarray, np.ndarray]  # (uint8 images [N, H, W], int64 digits [N])


def check_source(source: str) -> str:
    if source in NAMED_SOURCES:
        return source
    if str(source).endswith(".npz"):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"source {source!r}: no such .npz file")
        return source
    raise ValueError(f"unknown source {source!r}; allowed: {', '.join(NAMED_SOURCES)} or a path to an .npz file")


def source_fingerprint(source: str) -> str:
    """What identifies the source's content in the cache key (file content hash for .npz)."""
    if source in NAMED_SOURCES:
        return source
    digest = hashlib.sha256()
    with open(source, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"npz:{digest.hexdigest()}"


def load_npz(path: str) -> Pool:
    try:
        data = np.load(path)
    except (ValueError, OSError, EOFError) as err:  # random bytes, a truncated zip, a pickle
        raise ConfigError(
            f"{path} is not a readable .npz ({type(err).__name__}); expected numpy's savez format with 'images' "
            "(N x 28 x 28 uint8) and 'labels' (N digits 0-9)"
        ) from None
    with data:
        missing = [k for k in ("images", "labels") if k not in data.files]
        if missing:
            raise ValueError(
                f"{path}: missing array(s) {missing}; an .npz source needs 'images' (N x H x W uint8) "
                f"and 'labels' (N digits 0-9); found {data.files}"
            )
        images, labels = data["images"], data["labels"].astype(np.int64).reshape(-1)
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels):
        raise ValueError(
            f"{path}: 'images' must be uint8 N x H x W with one label each; got {images.dtype} "
            f"{images.shape} and {labels.shape} labels"
        )
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: labels must be digits 0-9; found range {labels.min()}..{labels.max()}")
    return images, labels


def _download_error(name: str, root: str, err: Exception, urls: list[str]) -> RuntimeError:
    return RuntimeError(
        f"could not download {name} to {root!r} ({type(err).__name__}: {err}). "
        f"Tried: {', '.join(urls) or 'torchvision mirrors'}. "
        f"Offline alternatives: `--data.source synthetic` (procedural digits, no download), or "
        f"`--data.source /path/to/digits.npz` with 'images' (N x 28 x 28 uint8) and 'labels'; or copy the "
        f"torchvision {name} files into {root!r} on a machine with internet first."
    )


def load_torchvision(name: str, root: str, train: bool, download: bool = True) -> Pool:
    """MNIST or EMNIST (balanced 'mnist' split, transposed to MNIST orientation) from torchvision."""
    from torchvision import datasets

    try:
        if name == "mnist":
            ds = datasets.MNIST(root, train=train, download=download)
            images = ds.data.numpy()
        else:
            ds = datasets.EMNIST(root, split="mnist", train=train, download=download)
            images = ds.data.numpy().transpose(0, 2, 1)  # hflip + rot90 = transpose (EMNIST is stored transposed)
    except (RuntimeError, OSError, ValueError) as err:
        cls = datasets.MNIST if name == "mnist" else datasets.EMNIST
        mirrors = getattr(cls, "mirrors", None) or [getattr(cls, "url", "")]
        raise _download_error(name, root, err, [m for m in mirrors if m]) from err
    return np.ascontiguousarray(images, dtype=np.uint8), ds.targets.numpy().astype(np.int64)


def _take_stratified(
    pool: Pool, digits: list[int], wanted: Mapping[str, int], rng: np.random.Generator, what: str
) -> dict[str, Pool]:
    """Disjoint per-class samples for several splits from one pool, each split ordered by class interleaving."""
    images, labels = pool
    picks: dict[str, list[np.ndarray]] = {split: [] for split in wanted}
    for d in digits:
        idx = np.flatnonzero(labels == d)
        need = sum(wanted.values())
        if len(idx) < need:
            raise ValueError(
                f"{what} has {len(idx)} images of digit {d}, but the splits ask for {need} per class "
                f"({', '.join(f'{k}={v}' for k, v in wanted.items())}); lower the per-class sizes"
            )
        idx = rng.permutation(idx)
        start = 0
        for split, n in wanted.items():
            picks[split].append(idx[start : start + n])
            start += n
    out = {}
    for split, parts in picks.items():
        order = np.stack(parts, axis=1).reshape(-1) if parts and len(parts[0]) else np.zeros(0, dtype=np.int64)
        out[split] = (images[order], labels[order])
    return out


def load_splits(source: str, data_dir: str, digits: list[int], sizes: Mapping[str, int], seed: int) -> dict[str, Pool]:
    """Intensity images and digits for every split in ``SPLITS``; deterministic from ``seed``.

    ``sizes`` maps each split to its number of images per class. Development splits (train, real_world,
    probe_set) are disjoint; ``test`` comes from the source's test set where it has one.
    """
    rng = np.random.default_rng([seed, 7])
    if source == "synthetic":
        return {split: generate_digits(digits, sizes[split], seed=[seed, _SPLIT_CODE[split]]) for split in SPLITS}
    if source in ("mnist", "emnist"):
        root = os.path.join(data_dir, source)
        dev = load_torchvision(source, root, train=True)
        test = load_torchvision(source, root, train=False)
        out = _take_stratified(
            dev, digits, {s: sizes[s] for s in ("train", "real_world", "probe_set")}, rng, f"{source} train set"
        )
        out.update(_take_stratified(test, digits, {"test": sizes["test"]}, rng, f"{source} test set"))
        return out
    pool = load_npz(source)
    return _take_stratified(pool, digits, {s: sizes[s] for s in SPLITS}, rng, source)
