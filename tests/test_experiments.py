"""The validation suite's scoring and table writer on a two-run fixture (no training)."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _suite():
    spec = importlib.util.spec_from_file_location(
        "validate_verdict", os.path.join(ROOT, "experiments", "validate_verdict.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["validate_verdict"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _epoch(cf_color, cf_shape, color, shape, decided, margin_lo=0.5):
    """Logged names of one probed epoch: reliance effects (point, lo, hi) per concept and whether it decided."""
    m = {"cf/color_flip_rate": cf_color, "cf/shape_flip_rate": cf_shape, "probe/images": 100.0, "real_world/acc": 0.5}
    for c, (p, lo, hi) in (("color", color), ("shape", shape)):
        m[f"probe/effect_reliance/{c}"], m[f"probe/effect_reliance_lo/{c}"] = p, lo
        m[f"probe/effect_reliance_hi/{c}"] = hi
    m["probe/decided_reliance"] = float(decided)
    m["probe/margin_reliance_lo"] = margin_lo
    return m


def test_suite_scores_every_epoch_against_the_truth_at_that_epoch_and_writes_the_table():
    suite = _suite()
    biased = {
        0: _epoch(0.05, 0.02, (0.02, 0.0, 0.05), (0.0, 0.0, 0.0), False),  # mixed truth: none
        1: _epoch(1.0, 0.0, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), True),  # color, right
        2: _epoch(0.9, 0.1, (0.2, 0.15, 0.3), (0.5, 0.4, 0.6), True),  # names shape: wrong
    }
    mixed = {0: _epoch(0.5, 0.45, (0.3, 0.2, 0.4), (0.25, 0.15, 0.35), False)}  # both above 0.1: undecided
    rows = suite.epoch_rows("biased", "graded", biased, {"conflict": 0.001})
    rows += suite.epoch_rows("mixed", "graded", mixed, {"conflict": 0.01})
    assert [r["outcome/reliance"] for r in rows] == ["none", "color", "shape", "undecided"]
    assert [r["truth"] for r in rows] == ["mixed", "color", "color", "mixed"]
    s = suite.score(rows, "reliance")
    assert s["epoch_agreement"] == {"hits": 1, "n": 2, "rate": 0.5}
    assert s["wrong_epochs"] == {"hits": 1, "n": 2, "rate": 0.5}
    assert s["wrong_runs"] == {"hits": 1, "n": 1, "rate": 1.0}  # the biased run's final epoch
    assert s["detection"]["hits"] == 0 and s["mixed_runs_ok"] == {"hits": 1, "n": 1, "rate": 1.0}
    assert s["named_on_mixed_epochs"]["hits"] == 0
    text = suite.markdown(rows, {"reliance": s}, ["# fixture"])
    assert "| biased | 3 | 0.900 / 0.100 | color | 0.500 | shape ✗ |" in text
    assert "| no epoch decided wrong (clear truth) | 1/2 (0.50) ✗ |" in text
    assert "- `biased`: 0: none, 1: color (color), 2: shape (color)" in text


@pytest.mark.parametrize("family", ["graded", "arch", "finetune", "real", "palette", "long", "null"])
def test_every_family_builds_its_scenarios(family):
    scenarios = _suite().scenarios("small", 100, "/data/digits.npz", [family])
    assert scenarios and all(s.seed >= 100 for s in scenarios)  # --seed-offset reaches every seed
    assert len({s.name for s in scenarios}) == len(scenarios)
