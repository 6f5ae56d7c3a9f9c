"""``SumRatio``: a ratio of two sums (hits / images, flips / edited images), reduced over DDP ranks by
torchmetrics (``dist_reduce_fx="sum"``) instead of by hand."""

from __future__ import annotations

import warnings

import torch
from torchmetrics import Metric


class SumRatio(Metric):
    """sum(numerator) / sum(denominator) over every update (and rank); NaN while the denominator is 0."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("numerator", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("denominator", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, numerator: torch.Tensor | float, denominator: torch.Tensor | float) -> None:
        self.numerator += torch.as_tensor(numerator, dtype=torch.float64, device=self.numerator.device).sum()
        self.denominator += torch.as_tensor(denominator, dtype=torch.float64, device=self.denominator.device).sum()

    def value(self) -> torch.Tensor:
        """``compute()`` (reduced over ranks) without torchmetrics' warning for a rank that counted nothing
        this epoch (e.g. a split it saw no batch of): its zero counts are the right contribution."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method")
            return self.compute()

    def compute(self) -> torch.Tensor:
        if self.denominator == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.numerator.device)
        return self.numerator / self.denominator
