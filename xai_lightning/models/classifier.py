"""ClassifierModule: the standalone model whose concepts the probe reads (training and retraining)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from xai_lightning.io import load_file
from xai_lightning.models.backbones import (
    INPUT_TRANSFORMS,
    build_backbone,
    head_name,
    resolve_normalization,
    to_grayscale,
)

log = logging.getLogger(__name__)
OPTIMIZERS = ("adam", "adamw", "sgd")
DEFAULT_SPLIT = {"validate": "val", "test": "test"}  # names of a datamodule's loaders when it names none


class ClassifierModule(L.LightningModule):
    """A torchvision CNN trained on dict batches (``image`` in [0, 1], ``label``).

    Normalization and the optional grayscale pre-processor run inside ``forward``, so a deployed model
    applies the same debiasing as in training.

    Logged keys: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``,
    and ``<split>/loss``, ``<split>/acc`` per evaluation dataloader, named by the datamodule's
    ``val_split_names`` / ``test_split_names`` (else ``val``, ``val_1``, ... and ``test``, ``test_1``, ...);
    ``val/acc_best`` when a loader is named ``val``.

    Args:
        num_classes: linked from the datamodule by the CLI.
        backbone: ``simple_cnn`` or any torchvision classification model (``resnet50``, ``resnet18``,
            ``mobilenet_v3_small``, ``efficientnet_b0``, ...); its last layer is replaced for ``num_classes``.
        weights: torchvision weights (``IMAGENET1K_V2``) or ``None`` (random init, offline).
        normalization: ``imagenet`` | ``clip`` | ``none`` | ``[[mean x3], [std x3]]``.
        input_transform: ``none`` | ``grayscale`` (debiasing pre-processor).
        init_checkpoint: Lightning checkpoint to start from (retraining a biased model).
    """

    def __init__(
        self,
        num_classes: int = 2,
        backbone: str = "resnet50",
        weights: str | None = None,
        normalization: str | Sequence[Sequence[float]] = "imagenet",
        input_transform: str = "none",
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        init_checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        if input_transform not in INPUT_TRANSFORMS:
            raise ValueError(f"unknown input_transform {input_transform!r}; allowed: {', '.join(INPUT_TRANSFORMS)}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: need at least 2 classes")
        if init_checkpoint is not None and not os.path.isfile(init_checkpoint):
            raise FileNotFoundError(f"init_checkpoint {init_checkpoint!r} does not exist")
        self.save_hyperparameters()
        self.net = build_backbone(backbone, num_classes, weights)
        mean, std = resolve_normalization(normalization)
        self.register_buffer("norm_mean", mean, persistent=False)
        self.register_buffer("norm_std", std, persistent=False)
        self.input_transform = input_transform
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.train_loss = MeanMetric()
        # one accuracy and loss per evaluation split, created for the datamodule's split names (setup, or the
        # first batch of a split); keys are prefixed: nn.ModuleDict refuses "train" (it would shadow Module.train)
        self.eval_acc = nn.ModuleDict()
        self.eval_loss = nn.ModuleDict()
        self.val_acc_best = MaxMetric()
        if init_checkpoint is not None:
            self._load_init_checkpoint(init_checkpoint)

    def _load_init_checkpoint(self, path: str) -> None:
        """Loads every ``net.*`` weight; a head of another size (pretrained on other classes) stays fresh."""
        state = load_file(path, "init_checkpoint")
        state = state.get("state_dict", state)
        net_state = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
        if not net_state:
            raise ValueError(f"init_checkpoint {path!r} holds no 'net.*' weights of a ClassifierModule")
        own = self.net.state_dict()
        head = head_name(self.net)
        resized = [k for k, v in net_state.items() if k in own and own[k].shape != v.shape]
        if any(not k.startswith(f"{head}.") for k in resized):
            raise ValueError(
                f"init_checkpoint {path!r} does not fit backbone {self.hparams.backbone!r}: "
                f"shapes differ outside the head ({head}) at {[k for k in resized if not k.startswith(head)][:5]}"
            )
        missing, unexpected = self.net.load_state_dict(
            {k: v for k, v in net_state.items() if k not in resized}, strict=False
        )
        missing = [k for k in missing if k not in resized]
        if missing or unexpected:
            raise ValueError(
                f"init_checkpoint {path!r} does not fit backbone {self.hparams.backbone!r}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        note = f" (head {head} re-initialised for {self.hparams.num_classes} classes)" if resized else ""
        rank_zero_info(f"ClassifierModule: initialised from {path}{note}")

    @override
    def setup(self, stage: str) -> None:
        size = getattr(getattr(self.trainer, "datamodule", None), "image_size", None)
        if size:  # lets Lightning's model summary count a forward's FLOPs (one image, eval mode, no grad)
            self.example_input_array = torch.zeros(1, 3, int(size), int(size))
        for split in self._split_names("validate") + self._split_names("test"):
            self._split_metrics(split)

    def _split_metrics(self, split: str) -> tuple[MulticlassAccuracy, MeanMetric]:
        key = f"on_{split}"
        if key not in self.eval_acc:
            device = self.norm_mean.device
            self.eval_acc[key] = MulticlassAccuracy(self.hparams.num_classes, average="micro").to(device)
            self.eval_loss[key] = MeanMetric().to(device)
        return self.eval_acc[key], self.eval_loss[key]

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] from images [B, 3, H, W] in [0, 1]."""
        if self.input_transform == "grayscale":
            x = to_grayscale(x)
        return self.net((x - self.norm_mean) / self.norm_std)

    def _split_names(self, stage: str) -> list[str]:
        """The datamodule's names of the ``validate``/``test`` loaders (empty when it names none)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return list(getattr(dm, "test_split_names" if stage == "test" else "val_split_names", None) or [])

    def _split_name(self, stage: str, dataloader_idx: int) -> str:
        names = self._split_names(stage)
        if dataloader_idx < len(names):
            return names[dataloader_idx]
        return DEFAULT_SPLIT[stage] + (f"_{dataloader_idx}" if dataloader_idx else "")

    @override
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        self.train_loss(loss)
        self.train_acc(logits, batch["label"])
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], dataloader_idx: int, stage: str) -> torch.Tensor:
        split = self._split_name(stage, dataloader_idx)
        acc, mean_loss = self._split_metrics(split)
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        mean_loss(loss)
        acc(logits, batch["label"])
        kw = dict(on_step=False, on_epoch=True, add_dataloader_idx=False)
        self.log(f"{split}/acc", acc, prog_bar=dataloader_idx < 2, **kw)  # the first two on the bar
        self.log(f"{split}/loss", mean_loss, **kw)
        return logits

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._eval_step(batch, dataloader_idx, "validate")

    @override
    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._eval_step(batch, dataloader_idx, "test")

    @override
    def predict_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, torch.Tensor]:
        probs = self(batch["image"]).softmax(-1)
        return {"probs": probs, "pred": probs.argmax(-1), "label": batch["label"]}

    @override
    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # forget the sanity check

    @override
    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or "on_val" not in self.eval_acc:
            return
        self.val_acc_best(self.eval_acc["on_val"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
        cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        return cls(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
