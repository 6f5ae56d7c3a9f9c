"""Loaders shared by the data modules: a resumable per-epoch shuffle, the split loaders, and the resize."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler


class EpochSeededSampler(Sampler[int]):
    """A random permutation per epoch that depends only on (seed, epoch): a run resumed at epoch k sees the
    same order as an uninterrupted one (Lightning calls ``set_epoch`` before every epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(
            torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)).tolist()
        )

    def __len__(self) -> int:
        return self.n


def resize(img: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 3, size, size] in [0, 1] (unchanged when already that size)."""
    if img.shape[-1] == size:
        return img
    corners = {"align_corners": False} if interpolation in ("bilinear", "bicubic") else {}
    return F.interpolate(img, size=(size, size), mode=interpolation, **corners).clamp_(0.0, 1.0)


class SplitLoaders:
    """``train``/``val``/``test``/``predict`` dataloaders of a data module from ``self.datasets`` (split ->
    dataset), ``batch_size`` (train), ``eval_batch_size``, ``num_workers``, ``seed``, ``val_split_names`` and
    ``test_split_names``; the training split is shuffled by ``EpochSeededSampler``."""

    def dataloader(self, split: str, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        if not self.datasets:
            self.setup()
        if split not in self.datasets:
            raise ValueError(f"unknown or empty split {split!r}; available: {', '.join(self.datasets)}")
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size or (self.batch_size if split == "train" else self.eval_batch_size),
            sampler=EpochSeededSampler(len(self.datasets[split]), self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self.dataloader(s) for s in self.val_split_names]

    def test_dataloader(self) -> list[DataLoader]:
        return [self.dataloader(s) for s in self.test_split_names]

    def predict_dataloader(self) -> DataLoader:
        return self.dataloader("test")
