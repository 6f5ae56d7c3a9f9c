"""The share of same-cell image pairs predicted apart, and its interval with few cells."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from xai_lightning.verdict.unexplained import unexplained


def _pairs_by_hand(pred: np.ndarray, cell: np.ndarray) -> float:
    """Per cell the share of its image pairs with different predictions, averaged with weights the cell sizes."""
    shares, sizes = [], []
    for c in np.unique(cell):
        p = pred[cell == c]
        pairs = list(itertools.combinations(range(len(p)), 2))
        shares.append(np.mean([p[i] != p[j] for i, j in pairs]))
        sizes.append(len(p))
    return float(np.average(shares, weights=sizes))


def test_the_share_is_the_pairs_predicted_apart_within_class_and_counted_concepts():
    rng = np.random.default_rng(0)
    target, color = rng.integers(0, 3, 90), rng.integers(0, 2, 90)
    pred = np.where(rng.random(90) < 0.3, rng.integers(0, 3, 90), target)
    u = unexplained(pred, {"color": color}, ["color"], target)
    assert u.point == pytest.approx(_pairs_by_hand(pred, target * 2 + color), abs=1e-12)


def test_the_interval_holds_with_two_cells():
    """Two classes, nothing listed counts, a fifth of each class's predictions go the other way by something
    unlisted: the share is 2 x 0.2 x 0.8 = 0.32 in expectation. With two cells a cluster bootstrap has nothing to
    resample; the images' own noise keeps the interval honest."""
    truth, hits = 2 * 0.2 * 0.8, []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        target = np.repeat([0, 1], 100)
        pred = np.where(rng.random(200) < 0.2, 1 - target, target)
        u = unexplained(pred, {"color": rng.integers(0, 2, 200)}, [], target, draws=200, seed=seed)
        hits.append(u.lo <= truth <= u.hi)
    assert 0.9 <= np.mean(hits) <= 0.99
