"""The counterfactual ground truth in one word: the concept whose flip rate leads every other by CLEAR."""

from __future__ import annotations

import math

from xai_lightning.verdict import CLEAR, MIXED, counterfactual_truth, rates_of, truth_from_rates


def test_a_concept_is_clear_only_when_it_leads_every_other_by_clear():
    assert counterfactual_truth(1.0, 0.0) == "color" and counterfactual_truth(0.1, 0.9) == "shape"
    assert counterfactual_truth(0.5, 0.5 - CLEAR / 2) == MIXED
    assert truth_from_rates({"color": 0.0, "shape": 0.1, "background": 0.95}) == "background"
    assert truth_from_rates({"color": 0.0, "shape": 0.8, "background": 0.9}) == MIXED  # two concepts matter
    assert truth_from_rates({"color": math.nan, "shape": 0.9}) == MIXED
    assert truth_from_rates({"shape": 0.9}) == MIXED  # nothing to compare with


def test_rates_are_read_from_logged_names():
    logged = {"cf/color_flip_rate": 0.1, "cf/background_flip_rate": 0.7, "val/acc": 1.0, "cf/other": 3.0}
    assert rates_of(logged) == {"color": 0.1, "background": 0.7}
