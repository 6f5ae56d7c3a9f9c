"""CounterfactualCheck: ground truth for what a model relies on, next to the probe.

For the images of one validation split (default ``probe_set``, where colour and digit vary
independently), the model predicts again after a controlled edit:

* colour edit: the same digit in another palette colour (``(c + 1 + digit mod (K - 1)) mod K``, so
  never the same colour; gray digits are skipped);
* shape edit: the next image in the batch with a different digit, drawn in this image's colour.

Logged every epoch: ``cf/color_flip_rate`` and ``cf/shape_flip_rate`` = fraction of predictions that
change. A colour-reliant model flips on colour edits; a shape-reliant one on shape edits. The edits
are deterministic (no random state is consumed), so training is unaffected.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from xai_lightning.callbacks.common import split_index
from xai_lightning.data.colorize import colorize


def color_counterfactual(
    images: torch.Tensor, color: torch.Tensor, digit: torch.Tensor, rgb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(edited images, mask of images that have a colour to change); ``digit`` [B] is the digit's class index."""
    k = len(rgb)
    colored = color >= 0
    if k < 2:
        return images, torch.zeros_like(colored)
    new = torch.where(colored, (color + 1 + digit % (k - 1)) % k, color)
    return colorize(images.amax(dim=1), new, rgb.to(images)), colored


def shape_counterfactual(
    images: torch.Tensor, color: torch.Tensor, digit: torch.Tensor, rgb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(edited images, mask of images that found a donor of another digit in the batch)."""
    b = len(digit)
    donor = torch.arange(b, device=digit.device)
    found = torch.zeros(b, dtype=torch.bool, device=digit.device)
    for shift in range(1, b):
        j = (torch.arange(b, device=digit.device) + shift) % b
        take = ~found & (digit[j] != digit)
        donor = torch.where(take, j, donor)
        found |= take
        if bool(found.all()):
            break
    return colorize(images.amax(dim=1)[donor], color, rgb.to(images)), found


class CounterfactualCheck(Callback):
    """Logs ``cf/color_flip_rate`` and ``cf/shape_flip_rate`` on a validation split.

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
        dm = trainer.datamodule
        self.index = split_index(trainer, self.split, "CounterfactualCheck")
        if not hasattr(dm, "rgb"):
            raise ValueError("CounterfactualCheck needs a datamodule with a colour palette `rgb` [K, 3]")
        self.rgb = dm.rgb.float()

    def _on(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and (
            trainer.state.fn == "validate" or (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.counts = torch.zeros(4, dtype=torch.float64, device=pl_module.device)

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
        images, color = batch["image"], batch["color"]
        digit = batch.get("digit_index", batch["label"])  # labels may be random (label_mode random)
        pred = pl_module(images).argmax(-1)
        x_color, ok_color = color_counterfactual(images, color, digit, self.rgb)
        x_shape, ok_shape = shape_counterfactual(images, color, digit, self.rgb)
        flip_color = (pl_module(x_color).argmax(-1) != pred) & ok_color
        flip_shape = (pl_module(x_shape).argmax(-1) != pred) & ok_shape
        self.counts += torch.stack([flip_color.sum(), ok_color.sum(), flip_shape.sum(), ok_shape.sum()]).double()

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._on(trainer):
            return
        c = trainer.strategy.reduce(self.counts, reduce_op="sum")
        self.last = {
            "cf/color_flip_rate": float(c[0] / c[1].clamp_min(1)),
            "cf/shape_flip_rate": float(c[2] / c[3].clamp_min(1)),
        }
        pl_module.log_dict(self.last, sync_dist=False)
