"""CLIPModule: captions name colour, digit, both or neither; a training step and the zero-shot metrics."""

from __future__ import annotations

import random

import lightning as L
import pytest
import torch

from tests.helpers.modules import tiny_datamodule
from tests.helpers.tiny import TINY_CLIP_CFG
from xai_lightning.models import CLIPModule
from xai_lightning.surgery import DEFAULT_CONCEPTS


def test_captions_cover_every_kind_and_the_probe_templates():
    m = CLIPModule(model_cfg=TINY_CLIP_CFG, class_names=["5", "8"], color_names=["red", "green"])
    rng = random.Random(0)
    caps = {m.caption(5, "red", rng) for _ in range(400)}
    assert DEFAULT_CONCEPTS["shape"]["template"].format("5") in caps
    assert DEFAULT_CONCEPTS["color"]["template"].format("red") in caps
    assert any("red" in c and ("5" in c or "five" in c) for c in caps)  # both
    assert "a photo of a digit" in caps  # neither
    gray = {m.caption(8, None, rng) for _ in range(200)}
    assert not any(c in w for w in gray for c in ("red", "green", "None"))  # gray digits name no colour


def test_fit_logs_loss_and_zeroshot(tmp_path):
    L.seed_everything(0)
    dm = tiny_datamodule(str(tmp_path), color_mode="random", gray_fraction=0.2, val_splits=["val"])
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = CLIPModule(model_cfg=TINY_CLIP_CFG, num_classes=2, warmup_steps=2)
    trainer.fit(module, dm)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss_epoch"])
    probe = module.to_probe_clip()
    assert not any(p.requires_grad for p in probe.model.parameters())
    # the logged zero-shot accuracies equal the exported probe's, computed image by image elsewhere
    from xai_lightning.clip import zeroshot_accuracy

    direct = zeroshot_accuracy(probe.float(), dm.dataloader("val"), dm.class_names, dm.color_names)
    assert float(metrics["val/zeroshot_digit_acc"]) == pytest.approx(direct["digit_acc"], abs=1e-6)
    assert float(metrics["val/zeroshot_color_acc"]) == pytest.approx(direct["color_acc"], abs=1e-6)
