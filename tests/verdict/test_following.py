"""The share of predictions that follow a concept: the vectorised statistic against loops over images."""

from __future__ import annotations

import numpy as np
import pytest

from xai_lightning.verdict.following import (
    FOLDS,
    ConceptView,
    crossfit_tv,
    deal_folds,
    fold_counts,
    holm,
    permute_within,
    plugin_tv,
)


def _view(rng, n=120, strata=3, values=3, classes=4):
    stratum = rng.integers(0, strata, n)
    value = rng.integers(0, values, n)
    stratum[:2], value[:2] = strata, 0  # a stratum with a single image of one value and one of another
    value[1] = 1
    strata += 1
    pred = np.where(rng.random(n) < 0.5, value % classes, rng.integers(0, classes, n))
    return ConceptView("c", value, stratum, pred, np.arange(n), values, strata, classes)


def _loop_plugin(view):
    """Plug-in TV per (stratum, a < b) from per-image loops, weighted by n_a + n_b."""
    num = den = 0.0
    for s in range(view.strata):
        for a in range(view.values):
            for b in range(a + 1, view.values):
                ia = [i for i in range(view.images) if view.stratum[i] == s and view.value[i] == a]
                ib = [i for i in range(view.images) if view.stratum[i] == s and view.value[i] == b]
                if not ia or not ib:
                    continue
                tv = 0.5 * sum(
                    abs(np.mean([view.pred[i] == y for i in ia]) - np.mean([view.pred[i] == y for i in ib]))
                    for y in range(view.classes)
                )
                num += (len(ia) + len(ib)) * tv
                den += len(ia) + len(ib)
    return num / den


def _loop_crossfit(view, folds, kappa):
    """The cross-fitted TV spelled out image by image (the module docstring's formula)."""

    def share(idx, y):
        return np.mean([view.pred[i] == y for i in idx])

    num = den = 0.0
    for s in range(view.strata):
        for a in range(view.values):
            for b in range(a + 1, view.values):
                cell = {
                    v: [i for i in range(view.images) if view.stratum[i] == s and view.value[i] == v] for v in (a, b)
                }
                if not cell[a] or not cell[b]:
                    continue
                t_num = t_den = 0.0
                for f in range(FOLDS):
                    ev = {v: [i for i in cell[v] if folds[i] == f] for v in (a, b)}
                    learn = {v: [i for i in cell[v] if folds[i] != f] for v in (a, b)}
                    if not ev[a] or not ev[b] or not learn[a] or not learn[b]:
                        continue
                    q = {}
                    for v in (a, b):
                        sel = [i for i in cell[v] if folds[i] != f]
                        pool = [
                            i
                            for i in range(view.images)
                            if view.value[i] == v and not (view.stratum[i] == s and folds[i] == f)
                        ]
                        q[v] = [
                            (sum(view.pred[i] == y for i in sel) + kappa * (share(pool, y) if pool else 0.0))
                            / (len(sel) + kappa)
                            for y in range(view.classes)
                        ]
                    term = 0.5 * sum(
                        np.sign(q[a][y] - q[b][y]) * (share(ev[a], y) - share(ev[b], y)) for y in range(view.classes)
                    )
                    w = len(ev[a]) + len(ev[b])
                    t_num, t_den = t_num + w * term, t_den + w
                if t_den:
                    num += (len(cell[a]) + len(cell[b])) * t_num / t_den
                    den += len(cell[a]) + len(cell[b])
    return num / den


@pytest.mark.parametrize("seed", [0, 1])
def test_plugin_and_crossfit_equal_their_loops(seed):
    rng = np.random.default_rng(seed)
    view = _view(rng)
    counts = np.bincount(
        (view.stratum * view.values + view.value) * view.classes + view.pred,
        minlength=view.strata * view.values * view.classes,
    ).reshape(view.strata, view.values, view.classes)
    assert plugin_tv(counts.astype(float)) == pytest.approx(_loop_plugin(view), abs=1e-12)
    folds = deal_folds(view.cell, rng)
    for kappa in (0.0, 1.0):
        got = crossfit_tv(fold_counts(view, folds), kappa)[0]
        assert got == pytest.approx(_loop_crossfit(view, folds, kappa), abs=1e-12)


def test_folds_are_dealt_round_robin_within_cells_and_duplicates_share_one():
    rng = np.random.default_rng(0)
    cell = np.array([0] * 7 + [1] * 2 + [2])
    folds = deal_folds(cell, rng)
    for c, size in ((0, 7), (1, 2), (2, 1)):
        got = np.sort(folds[cell == c])
        assert got.tolist() == sorted(np.arange(size) % FOLDS)
    weights = np.array([[2, 0, 1, 1, 0, 0, 3, 1, 1, 1]])
    f = deal_folds(cell, rng, weights)[0]
    present = f[(cell == 0) & (weights[0] > 0)]
    assert sorted(present.tolist()) == [0, 1, 2, 3]  # four distinct drawn images of cell 0 fill folds 0..3


def test_permutation_keeps_each_stratum_multiset():
    rng = np.random.default_rng(1)
    stratum = rng.integers(0, 4, 50)
    value = rng.integers(0, 3, 50)
    perms = permute_within(stratum, value, rng, 20)
    for p in perms:
        for s in range(4):
            assert sorted(p[stratum == s]) == sorted(value[stratum == s])
    assert (perms != value).any()


def test_holm_matches_its_definition():
    p = [0.01, 0.04, 0.03, float("nan"), 0.5]
    # sorted finite: 0.01 (x4), 0.03 (x3), 0.04 (x2), 0.5 (x1), monotone
    assert holm(p)[[0, 2, 1, 4]].tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert np.isnan(holm(p)[3])


def test_crossfit_is_zero_in_expectation_where_predictions_ignore_the_concept():
    """Ten classes, ten strata, three images per cell, predictions at random: the plug-in reads ~0.8, the
    cross-fit ~0."""
    rng = np.random.default_rng(3)
    est, plug = [], []
    for _ in range(200):
        n, s, v, k = 300, 10, 10, 10
        view = ConceptView(
            "c", rng.integers(0, v, n), rng.integers(0, s, n), rng.integers(0, k, n), np.arange(n), v, s, k
        )
        est.append(crossfit_tv(fold_counts(view, deal_folds(view.cell, rng)))[0])
        counts = np.bincount(view.cell * k + view.pred, minlength=s * v * k).reshape(s, v, k)
        plug.append(plugin_tv(counts.astype(float)))
    assert np.mean(plug) > 0.6
    assert abs(np.mean(est)) < 3 * np.std(est) / np.sqrt(len(est))
