"""Real architectures at real shapes (random weights: nothing downloads): the surgery into open_clip's RN50 and
ViT-B-32 towers at 224 px, and the verdict on a torchvision ViT classifier at 224 px, each one probed
validation epoch end to end."""

from __future__ import annotations

import math
import time

import pytest
import torch

from tests.callbacks.test_surgery_probe import _csv_metrics, _trainer
from tests.helpers.modules import TinyClassifier, tiny_datamodule
from xai_lightning.callbacks import ConceptProbe, SurgeryProbe
from xai_lightning.models import ClassifierModule


@pytest.mark.parametrize("tower, stages", [("RN50", 4), ("ViT-B-32", 4)])
def test_the_surgery_into_an_open_clip_tower_at_224_px(tmp_path, tower, stages):
    torch.manual_seed(0)
    probe = SurgeryProbe(
        clip={"model": tower}, reference="none", null_draws=1, bootstrap=100, max_score_samples=20, holdout=False
    )
    dm = tiny_datamodule(str(tmp_path / "data"), image_size=224, probe_per_class=10, eval_batch_size=20)
    t0 = time.perf_counter()
    _trainer(tmp_path, [probe]).validate(TinyClassifier(), dm)
    seconds = time.perf_counter() - t0
    logged = _csv_metrics(tmp_path)
    assert probe.pipe.clip.image_size == 224 and len(probe.pipe.clip_layers) == stages
    assert all(n.startswith("visual.") for n in probe.pipe.clip_layers)  # the image tower, never the text one
    assert logged["surgery/images"] == 20 and math.isfinite(logged["surgery/effect_share/color"])
    print(f"{tower} at 224 px: one probed epoch {seconds:.1f} s")


def test_the_verdict_on_a_torchvision_vit_at_224_px(tmp_path):
    torch.manual_seed(0)
    dm = tiny_datamodule(str(tmp_path / "data"), image_size=224, probe_per_class=12, eval_batch_size=12)
    probe = ConceptProbe(concepts={"shape": "digit", "color": "color"}, draws=50, permutations=50)
    _trainer(tmp_path, [probe]).validate(ClassifierModule(num_classes=2, backbone="vit_b_16"), dm)
    assert probe.last.images == 24 and set(probe.last.effects) == {"shape", "color"}
