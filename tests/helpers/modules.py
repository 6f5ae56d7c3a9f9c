"""A tiny LightningModule with ClassifierModule's conventions (dict batches, forward on images)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from tests.helpers.tiny import TinyCNN
from xai_lightning.data import ColorMNISTDataModule


class TinyClassifier(L.LightningModule):
    def __init__(
        self, num_classes: int = 2, fail_on_probe_batch: int | None = None, nan_on_probe: bool = False
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # the probe rebuilds the architecture from these for its references
        self.net = TinyCNN(num_classes)
        self.fail_on_probe_batch = fail_on_probe_batch
        self.nan_on_probe = nan_on_probe
        self._poison = False
        self.net.conv2.register_forward_hook(self._maybe_poison)  # a layer that breaks on probe batches on request

    def _maybe_poison(self, module, inputs, output):
        return output * float("nan") if self._poison else output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch["image"]), batch["label"])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if self.fail_on_probe_batch is not None and dataloader_idx == 2 and batch_idx == self.fail_on_probe_batch:
            raise RuntimeError("boom in validation")
        self._poison = self.nan_on_probe and dataloader_idx == 2
        acc = (self(batch["image"]).argmax(-1) == batch["label"]).float().mean()
        self.log("val/acc", acc, add_dataloader_idx=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def tiny_datamodule(data_dir: str, **kw) -> ColorMNISTDataModule:
    args = dict(
        source="synthetic",
        data_dir=data_dir,
        train_per_class=20,
        test_per_class=8,
        real_world_per_class=8,
        probe_per_class=24,
        image_size=32,
        batch_size=16,
        eval_batch_size=12,
        seed=3,
    )
    args.update(kw)
    return ColorMNISTDataModule(**args)


class SelfTerminate(L.Callback):
    """Sends this process SIGTERM when epoch ``at_epoch`` starts (what a preempted job receives)."""

    def __init__(self, at_epoch: int = 1) -> None:
        self.at_epoch = at_epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.at_epoch:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
