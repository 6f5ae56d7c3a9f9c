"""SumRatio: a ratio of sums (not a mean of per-batch ratios), NaN with nothing counted."""

from __future__ import annotations

import math
import warnings

import torch

from xai_lightning.ratio import SumRatio


def test_pools_counts_across_updates_and_resets():
    r = SumRatio()
    r.update(torch.tensor(1), torch.tensor(4))  # 1 of 4
    r.update(9, 10)  # 9 of 10
    assert float(r.compute()) == 10 / 14  # the mean of the two batch ratios would be 0.575
    r.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # value() on nothing counted: NaN, quietly
        assert math.isnan(float(r.value()))
    r.update(torch.tensor([True, False, True]).sum(), 3)
    assert float(r.compute()) == 2 / 3
