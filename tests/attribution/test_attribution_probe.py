"""AttributionProbe: logged keys, heatmaps in the run dir, and a clear error without Captum."""

from __future__ import annotations

import builtins
import math
import os

import lightning as L
import pytest
import torch

from tests.callbacks.test_surgery_probe import _csv_metrics
from tests.helpers.modules import TinyClassifier, tiny_datamodule
from tests.helpers.trainers import csv_logger, quiet_trainer

pytest.importorskip("captum")


def test_logs_shares_and_writes_heatmaps(tmp_path):
    from xai_lightning.callbacks import AttributionProbe

    L.seed_everything(0)
    probe = AttributionProbe(gradcam_layer="net.conv3", num_images=16, num_heatmaps=3, ig_steps=4)
    trainer = quiet_trainer(logger=csv_logger(tmp_path), callbacks=[probe])
    model = TinyClassifier()
    trainer.validate(model, tiny_datamodule(str(tmp_path / "data")))
    logged = _csv_metrics(tmp_path)
    # the logged shares equal the pure functions applied to the same 16 probe images (the callback adds no math)
    from xai_lightning.attribution import attribute, color_share, on_digit

    dm = tiny_datamodule(str(tmp_path / "data"))
    dm.setup()
    model.eval()
    batch = next(iter(dm.dataloader("probe_set", batch_size=16)))
    images, color = batch["image"], batch["color"]
    with torch.no_grad():
        pred = model(images).argmax(-1)
    attrs = attribute(
        model,
        images,
        pred,
        ("gradcam", "integrated_gradients", "saliency", "occlusion"),
        model.get_submodule("net.conv3"),
        4,
        probe.occlusion_window,
        probe.occlusion_stride,
    )
    for method, attr in attrs.items():
        assert logged[f"attr/{method}/on_digit"] == pytest.approx(float(on_digit(attr, images).mean()), abs=2e-4)
        if method != "gradcam":
            share = color_share(attr, color, dm.rgb.float(), images)
            expected = float(share[torch.isfinite(share)].mean())
            assert logged[f"attr/{method}/color_share"] == pytest.approx(expected, abs=2e-4), (
                method
            )  # float32, other batching
    assert "attr/gradcam/color_share" not in logged  # no channel axis: it cannot separate colour from shape
    assert math.isfinite(logged["attr/seconds"])
    assert os.listdir(tmp_path / "csv" / "version_0" / "attr") == ["heatmaps_epoch000.png"]


def test_missing_captum_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_captum(name, *args, **kwargs):
        if name.startswith("captum"):
            raise ImportError("No module named 'captum'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_captum)
    from xai_lightning.callbacks.attribution_probe import AttributionProbe

    with pytest.raises(ImportError, match=r'pip install -e "\.\[attribution\]"'):
        AttributionProbe()
