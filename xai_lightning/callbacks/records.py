"""``ProbeRecords``: one row per probe image (its index, the prediction, each concept's value, its class),
gathered over DDP ranks by torchmetrics (``dist_reduce_fx="cat"``), in index order and each image once."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

FIELDS = ("index", "pred", "target", "values")


class ProbeRecords(Metric):
    """Per-image records of one probed epoch; ``rows()`` holds every rank's, sorted by index, duplicates (a
    ``DistributedSampler`` pads its last round with repeats) dropped."""

    full_state_update = False

    def __init__(self, concepts: int) -> None:
        super().__init__()
        self.concepts = int(concepts)
        for name in FIELDS:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._seed_states()

    def _seed_states(self) -> None:
        # an empty row block on every rank: a rank that saw no probe batch still joins each gather
        self.update(
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, self.concepts, dtype=torch.long),
        )

    def reset(self) -> None:
        super().reset()
        self._seed_states()

    def update(self, index: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, values: torch.Tensor) -> None:
        """``index``, ``pred``, ``target`` [B] (target -1 unknown); ``values`` [B, concepts] (-1 unknown)."""
        if values.shape != (len(index), self.concepts):
            raise ValueError(f"values {tuple(values.shape)} do not fit {len(index)} images x {self.concepts} concepts")
        for name, t in zip(FIELDS, (index, pred, target, values)):
            getattr(self, name).append(t.detach().long().to(self.device))

    def compute(self) -> dict[str, torch.Tensor]:
        return {name: dim_zero_cat(getattr(self, name)) for name in FIELDS}

    def rows(self) -> dict[str, np.ndarray]:
        """Every rank's rows as numpy arrays, sorted by index, each index once."""
        out = {k: v.cpu().numpy() for k, v in self.compute().items()}
        _, first = np.unique(out["index"], return_index=True)  # sorted unique indices, first occurrence
        return {k: v[first] for k, v in out.items()}
