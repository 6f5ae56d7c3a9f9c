"""The verdict, the surgery and the counterfactual check give the same numbers on 1 process and on 2 gloo
processes (ddp_spawn) for the same data."""

from __future__ import annotations

import math

import pytest
import torch

from tests.callbacks.test_surgery_probe import _csv_metrics, _trainer
from tests.helpers.modules import TinyClassifier, tiny_datamodule
from xai_lightning.callbacks import ConceptProbe, CounterfactualCheck, SurgeryProbe
from xai_lightning.surgery.holdout import holdout_mask


@pytest.mark.ddp
@pytest.mark.parametrize(
    "data",
    [
        {},  # 48 probe images, 24 per rank: nothing is padded
        # 45 probe images over 2 ranks: Lightning's sampler pads one rank with a duplicate of image 0
        {"digits": [1, 4, 7], "colors": ["red", "green", "blue"], "probe_per_class": 15},
    ],
)
def test_two_processes_give_the_single_process_numbers(tmp_path, data):
    """Uses the shipped probe CLIP: a random CLIP's caption similarities are near-ties, where float
    rounding of a different batch composition may flip an argmax. The references (3 re-initialisations
    under validate) are fitted and scored on every rank's own images and shared."""
    torch.manual_seed(0)
    model = TinyClassifier(num_classes=len(data.get("digits", [5, 8])))
    results = {}
    for devices, strategy in ((1, "auto"), (2, "ddp_spawn")):
        out = tmp_path / f"d{devices}"
        probe = SurgeryProbe(clip={"embedded": "colordigits"}, null_draws=3, bootstrap=200, max_score_samples=48)
        callbacks = [ConceptProbe(draws=100, permutations=100), probe, CounterfactualCheck()]
        trainer = _trainer(out, callbacks, devices=devices, strategy=strategy)
        trainer.validate(model, tiny_datamodule(str(tmp_path / "data"), **data))
        results[devices] = {
            k: v
            for k, v in _csv_metrics(out).items()
            if k.startswith(("probe/", "surgery/", "cf/")) and "seconds" not in k
        }
    n = len(data.get("digits", [5, 8])) * data.get("probe_per_class", 24)
    held_out = int(holdout_mask(torch.arange(n), fit=False).sum())
    assert results[1]["surgery/images"] == results[2]["surgery/images"] == held_out
    assert results[1]["probe/images"] == results[2]["probe/images"] == n  # the verdict scores the whole probe set
    assert results[1].keys() == results[2].keys()
    assert {"cf/color_flip_rate", "cf/shape_flip_rate"} <= results[1].keys()
    # measured on both (a rank's batches can hold one digit: the shape edit's donors come from the whole split)
    assert all(math.isfinite(results[d][f"cf/{c}_flip_rate"]) for d in (1, 2) for c in ("color", "shape"))
    for k, v in results[1].items():  # the verdict's exactly (the same records, the same seeds)
        assert results[2][k] == pytest.approx(v, abs=0 if k.startswith("probe/") else 1e-4, nan_ok=True), k
