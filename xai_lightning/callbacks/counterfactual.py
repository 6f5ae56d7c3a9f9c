"""CounterfactualCheck: ground truth for what a model relies on, next to the probe.

For the images of one validation split (default ``probe_set``, where the concepts vary independently), the
model predicts again after controlled edits that change one concept each (the data module's
``counterfactuals``; ``xai_lightning.data.counterfactuals``): colour (the same digit in another colour),
shape (another digit in this colour) and, for scenes, background (the same digit over another texture).

Logged every epoch: ``cf/<concept>_flip_rate`` = fraction of predictions that change (``cf/color_flip_rate``,
``cf/shape_flip_rate``, ``cf/background_flip_rate``; NaN, with a warning, when no image of the split could be
edited for a concept: unknown, not "no flips"). A colour-reliant model flips on colour edits; a shape-reliant
one on shape edits. The edits are deterministic (no random state is consumed), so training is unaffected.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from xai_lightning.callbacks.common import log_reduced, owned, predictions, split_index
from xai_lightning.data.protocol import require
from xai_lightning.names import FLIP_RATE
from xai_lightning.ratio import SumRatio


class CounterfactualCheck(Callback):
    """Logs ``cf/<concept>_flip_rate`` for every edit the data module offers, on a validation split.

    Args:
        split: validation dataloader name (in the datamodule's ``val_split_names``) or index.
        every_n_epochs: as the probe.
    """

    def __init__(self, split: str | int = "probe_set", every_n_epochs: int = 1) -> None:
        super().__init__()
        if int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs} must be >= 1")
        self.split, self.every_n_epochs = split, int(every_n_epochs)
        self.index: int | None = None
        self.last: dict[str, float] = {}

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = require(trainer.datamodule, "CounterfactualCheck", editable=True)
        self.index = split_index(trainer, self.split, "CounterfactualCheck")
        self.names = list(dm.counterfactual_names)
        self.split_name = dm.val_split_names[self.index]

    def _on(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and (
            trainer.state.fn == "validate" or (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # flips / edited images per concept, summed over ranks by torchmetrics
        self.rates = {name: SumRatio().to(pl_module.device) for name in self.names}

    @override
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx != self.index or not self._on(trainer):
            return
        pred = predictions(outputs, batch, pl_module)
        edits = trainer.datamodule.counterfactuals(self.split_name, batch)
        mine = owned(trainer, self.index, batch["index"]).to(pred.device)  # DDP padding: each image once
        for name in self.names:
            edited, applies = edits[name]
            applies = applies.to(pred.device) & mine
            flips = (pl_module(edited.to(pred.device)).argmax(-1) != pred) & applies
            self.rates[name].update(flips.sum(), applies.sum())

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._on(trainer):
            return
        self.last = {FLIP_RATE.format(c=name): float(rate.value()) for name, rate in self.rates.items()}
        unmeasured = [name for name in self.names if math.isnan(self.last[FLIP_RATE.format(c=name)])]  # all ranks
        if unmeasured:  # no edit applied to any image: the rate is unknown (NaN), not "no flips" (0)
            rank_zero_warn(
                f"CounterfactualCheck: no image of split {self.split_name!r} could be edited for "
                f"{', '.join(unmeasured)}; their flip rates are NaN (unknown) this epoch"
            )
        log_reduced(pl_module, self.last)  # already reduced over ranks
