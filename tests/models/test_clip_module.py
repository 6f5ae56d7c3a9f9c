"""CLIPModule: captions name colour, digit, both or neither; a training step and the zero-shot metrics."""

from __future__ import annotations

import random

import lightning as L
import pytest
import torch

from tests.helpers.modules import tiny_datamodule
from tests.helpers.tiny import TINY_CLIP_CFG
from tests.helpers.trainers import quiet_trainer
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
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=3)
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
    # no backgrounds on these digits: no background metric, nothing logged for it
    assert "val/zeroshot_background_acc" not in metrics and set(module.zeroshot) == {"digit", "color"}


def test_scene_captions_name_backgrounds_and_the_vocabulary_covers_every_drawn_caption():
    from xai_lightning.clip.zeroshot import BACKGROUND_TEMPLATE
    from xai_lightning.models.clip_module import all_captions

    m = CLIPModule(model_cfg=TINY_CLIP_CFG, class_names=["5", "8"], color_names=["red", "green"])
    rng = random.Random(0)
    drawn = {m.caption(d, c, rng, b) for _ in range(300) for d in (5, 8) for c in ("red", None) for b in ("dots", None)}
    assert BACKGROUND_TEMPLATE.format("dots") in drawn  # the probe's background concept is a training caption
    assert not any("None" in c for c in drawn)
    assert drawn <= all_captions(["5", "8"], ["red", "green"], ["stripes", "dots"])
    # without backgrounds the captions are drawn exactly as before scenes existed (same random stream)
    a, b = random.Random(1), random.Random(1)
    assert [m.caption(5, "red", a) for _ in range(50)] == [m.caption(5, "red", b, None) for _ in range(50)]


def test_scenes_fit_logs_background_zeroshot_equal_to_the_exported_probes(tmp_path):
    from xai_lightning.clip import zeroshot_accuracy
    from xai_lightning.data import SceneDigitsDataModule

    L.seed_everything(0)
    dm = SceneDigitsDataModule(
        data_dir=str(tmp_path),
        train_per_class=20,
        test_per_class=2,
        real_world_per_class=2,
        probe_per_class=2,
        image_size=32,
        batch_size=8,
        background_mode="random",
        val_splits=["val"],
    )
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2)
    module = CLIPModule(model_cfg=TINY_CLIP_CFG, num_classes=2, warmup_steps=2)
    trainer.fit(module, dm)
    direct = zeroshot_accuracy(
        module.to_probe_clip().float(),
        dm.dataloader("val"),
        dm.class_names,
        dm.color_names,
        background_names=dm.background_names,
    )
    logged = float(trainer.callback_metrics["val/zeroshot_background_acc"])
    assert logged == pytest.approx(direct["background_acc"], abs=1e-6)


def test_a_probe_file_keeping_only_caption_tokens_encodes_those_captions_exactly(tmp_path):
    import os

    from tests.helpers.tiny import tiny_clip
    from xai_lightning.clip import load_clip, save_probe_clip
    from xai_lightning.models.clip_module import all_captions

    clip = tiny_clip(seed=2)
    captions = sorted(all_captions(["5", "8"], ["red", "green"], ["stripes", "dots"]))
    rows = sorted(set(clip.tokenizer(captions).flatten().tolist()))
    full, small = str(tmp_path / "full.pt"), str(tmp_path / "small.pt")
    save_probe_clip(full, clip, TINY_CLIP_CFG, half=False)
    save_probe_clip(small, clip, TINY_CLIP_CFG, half=False, token_rows=rows)
    assert os.path.getsize(small) < 0.5 * os.path.getsize(full)
    again = load_clip(small)
    with torch.no_grad():
        assert torch.equal(clip.encode_text(captions), again.encode_text(captions))
        x = torch.rand(2, 3, 32, 32)
        assert torch.equal(clip.encode_image(clip.preprocess(x)), again.encode_image(again.preprocess(x)))
