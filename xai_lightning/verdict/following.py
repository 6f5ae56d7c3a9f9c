"""How many of a model's predictions follow a concept, read off a probe set (pure numpy, no Lightning).

For concept ``c`` with values ``a, b, ...``, images are grouped in *strata* of the variables that must be held
fixed (the class, and the listed concepts that co-vary with ``c`` in the probe set: ``xai_lightning.verdict.
strata``). Within a stratum ``s``, the predicted-class distributions of two values are compared by their total
variation distance::

    TV_s(a, b) = 1/2 sum_y |P(y | a, s) - P(y | b, s)|

TV is the share of predictions that *must* change when ``a`` is replaced by ``b`` (the coupling inequality):
it equals the counterfactual flip rate when the concept moves predictions one way (a red digit goes to class
0 rather than away from it) and is a lower bound otherwise. The effect averages ``TV_s(a, b)`` over strata and
value pairs with weights ``n_sa + n_sb`` (every image counted once per other value, as a counterfactual edit
to a random other value would):  the **share of predictions that follow the concept**.

**Small samples.** Plugging empirical frequencies into TV is biased upward (two samples of the same
distribution differ by chance: 10 classes and 3 images per cell give ~0.9 for a model that ignores the
concept). The estimate here is *cross-fitted*: the images of every (stratum, value) cell are dealt into
``FOLDS`` folds; for fold ``f`` the direction of each class (does ``a`` or ``b`` predict it more often?) is
learned from the stratum's other folds (a fold counts only where both cells have images there: a cell of one
image cannot be cross-fitted), smoothed by ``KAPPA`` pseudo-images toward the same value's predictions in
every other stratum (everything but the evaluated cell), and the evaluated difference is read on fold ``f``
alone::

    est_s(a, b) = mean_f 1/2 sum_y sign(q_f(y | a, s) - q_f(y | b, s)) (p_f(y | a, s) - p_f(y | b, s))

The selection never sees the images it is evaluated on, so a model whose predictions do not depend on ``c``
(given the strata) has expectation exactly 0, at any sample size; a model that does is underestimated where
its direction cannot be learned (the estimate is conservative, never inflated). The point estimate averages
``SPLITS`` random fold assignments.

**Interval.** Images are resampled (multinomial weights, shared by all concepts so that margins use the same
draws), folds are dealt again in every draw, duplicates stay in one fold. The cross-fitted estimate can only
err low (a direction learned wrong loses its class's difference) and the plug-in one only high (Jensen:
``E|p_a - p_b| >= |E(p_a - p_b)|``, class by class), so the 95% interval *brackets* the share: from the
cross-fitted estimate - 1.96 of its bootstrap standard deviations to the larger of the cross-fitted estimate
and the plug-in one less its bootstrap-estimated bias, + 1.96 of their SDs (``verdict.assess`` adds Wilson
bounds near 0 and 1). Where directions are learned well the two coincide; with many classes and thin cells the
upper end says how much the cross-fitted estimate may have lost. It covers the two things a rerun of the probe
changes: which images are scored and how they are dealt into folds.

**Null.** ``permutation_pvalue`` permutes the concept's values *within strata* (exact for "predictions do not
depend on c given the strata") and compares the plug-in TV with its permutation distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FOLDS = 5
KAPPA = 1.0  # pseudo-images of the other strata's direction that smooth each cell's own
SPLITS = 8  # fold assignments averaged by the point estimate
_CHUNK_ELEMENTS = 20_000_000  # bound on one vectorised [draws, folds, S, V, V, K] block


@dataclass(frozen=True)
class ConceptView:
    """The probe images usable for one concept: its value, their stratum and the prediction.

    ``rows`` are the images' positions in the whole probe set (bootstrap weights are drawn over it).
    """

    name: str
    value: np.ndarray  # [m] value index in [0, values)
    stratum: np.ndarray  # [m] dense stratum id in [0, strata)
    pred: np.ndarray  # [m] predicted class in [0, classes)
    rows: np.ndarray  # [m]
    values: int
    strata: int
    classes: int
    matched_on: tuple[str, ...] = ()

    @property
    def images(self) -> int:
        return len(self.value)

    @property
    def cell(self) -> np.ndarray:
        return self.stratum * self.values + self.value

    def cell_sizes(self) -> np.ndarray:
        """[S, V] images per (stratum, value) cell."""
        return np.bincount(self.cell, minlength=self.strata * self.values).reshape(self.strata, self.values)


# ---- the statistic ---------------------------------------------------------------------------------------
def _pair_weights(n: np.ndarray) -> np.ndarray:
    """[..., S, V] cell sizes -> [..., S, V, V] weights n_a + n_b of the pairs a < b with images on both sides."""
    v = n.shape[-1]
    upper = np.triu(np.ones((v, v), dtype=bool), 1)
    both = (n[..., :, None] > 0) & (n[..., None, :] > 0) & upper
    return np.where(both, n[..., :, None] + n[..., None, :], 0.0)


def _average(per_pair: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over [..., S, V, V] (NaN where no pair has weight)."""
    total = weights.sum((-3, -2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weights > 0, np.nan_to_num(per_pair) * weights, 0.0).sum((-3, -2, -1)) / total


def plugin_tv(counts: np.ndarray) -> np.ndarray:
    """Plug-in stratum-matched TV from counts [..., S, V, K] (biased upward in small cells: the null's statistic)."""
    n = counts.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = counts / n[..., None]
    tv = np.abs(p[..., :, None, :] - p[..., None, :, :]).sum(-1) / 2
    return _average(tv, _pair_weights(n))


def crossfit_tv(counts: np.ndarray, kappa: float = KAPPA) -> np.ndarray:
    """Cross-fitted stratum-matched TV from per-fold counts [..., F, S, V, K] (module docstring)."""
    total = counts.sum(-4, keepdims=True)  # [..., 1, S, V, K]
    other = total - counts  # the stratum's other folds
    pooled = total.sum(-3, keepdims=True) - counts  # every stratum, all folds, but the evaluated fold-cell
    n, m, pn = counts.sum(-1), other.sum(-1), pooled.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = counts / n[..., None]
        prior = np.nan_to_num(pooled / pn[..., None])
    q = (other + kappa * prior) / (m + kappa)[..., None]
    direction = np.sign(q[..., :, None, :] - q[..., None, :, :])  # [..., F, S, V, V, K]
    diff = np.nan_to_num(p[..., :, None, :] - p[..., None, :, :])
    term = (direction * diff).sum(-1) / 2  # [..., F, S, V, V]
    # folds where both cells have images to evaluate and, in the stratum's other folds, to learn from: a
    # direction learned from other strata alone would carry an interaction's other sign into this stratum
    fold_w = _pair_weights(np.where(m > 0, n, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_pair = (term * fold_w).sum(-4) / fold_w.sum(-4)
    return _average(per_pair, _pair_weights(total[..., 0, :, :, :].sum(-1)) * (fold_w.sum(-4) > 0))


# ---- folds and counts -------------------------------------------------------------------------------------
def deal_folds(cell: np.ndarray, rng: np.random.Generator, weights: np.ndarray | None = None) -> np.ndarray:
    """Fold of each image [..., m]: the images of each cell in random order, dealt round-robin from fold 0 (so a
    cell of two images fills folds 0 and 1). With bootstrap ``weights`` [B, m], images drawn 0 times are dealt
    last and duplicates share their image's fold."""
    shape = (1, len(cell)) if weights is None else weights.shape
    key = rng.random(shape) + (0.0 if weights is None else np.where(weights > 0, 0.0, 2.0))
    order = np.argsort(cell[None, :] * 4.0 + key, axis=1)  # cell-major, present images first
    sorted_cell = cell[order]
    pos = np.broadcast_to(np.arange(shape[1]), shape)
    first = np.ones(shape, dtype=bool)
    first[:, 1:] = sorted_cell[:, 1:] != sorted_cell[:, :-1]
    rank = pos - np.maximum.accumulate(np.where(first, pos, 0), axis=1)
    folds = np.empty(shape, dtype=np.int64)
    np.put_along_axis(folds, order, rank % FOLDS, axis=1)
    return folds[0] if weights is None else folds


def fold_counts(view: ConceptView, folds: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Counts [B, F, S, V, K] (B = 1 without weights) of (fold, stratum, value, prediction)."""
    folds = np.atleast_2d(folds)
    b = folds.shape[0]
    s, v, k = view.strata, view.values, view.classes
    idx = (((np.arange(b)[:, None] * FOLDS + folds) * s + view.stratum) * v + view.value) * k + view.pred
    w = None if weights is None else np.atleast_2d(weights).ravel()
    return np.bincount(idx.ravel(), weights=w, minlength=b * FOLDS * s * v * k).reshape(b, FOLDS, s, v, k)


def _chunk(view: ConceptView) -> int:
    per_draw = FOLDS * view.strata * view.values**2 * view.classes
    return max(1, _CHUNK_ELEMENTS // max(per_draw, 1))


# ---- estimate, bootstrap, null -----------------------------------------------------------------------------
def split_estimates(view: ConceptView, rng: np.random.Generator, splits: int = SPLITS) -> np.ndarray:
    """[splits] the cross-fitted share under ``splits`` random fold assignments (NaN when no pair exists)."""
    if not view.images:
        return np.full(splits, np.nan)
    folds = np.stack([deal_folds(view.cell, rng) for _ in range(splits)])
    return crossfit_tv(fold_counts(view, folds))


def point_estimate(view: ConceptView, rng: np.random.Generator, splits: int = SPLITS) -> float:
    """The cross-fitted share, averaged over ``splits`` fold assignments (NaN when no pair exists)."""
    return float(np.mean(split_estimates(view, rng, splits)))


def plugin_stats(view: ConceptView, values: np.ndarray) -> np.ndarray:
    """[P] the plug-in share with the concept's values given as [P, m] (or [m]): the observed values, or
    permutations of them."""
    values = np.atleast_2d(values)
    s, v, k = view.strata, view.values, view.classes
    idx = ((np.arange(len(values))[:, None] * s + view.stratum) * v + values) * k + view.pred
    counts = np.bincount(idx.ravel(), minlength=len(values) * s * v * k).reshape(len(values), s, v, k)
    return plugin_tv(counts.astype(np.float64))


def plugin_estimate(view: ConceptView) -> float:
    """The plug-in share (biased upward: the interval's upper end is anchored on it, and the permutation test
    compares it with its null; NaN when no pair exists)."""
    return float(plugin_stats(view, view.value)[0]) if view.images else float("nan")


def bootstrap_draws(view: ConceptView, weights: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """([B] cross-fitted, [B] plug-in) estimates on resampled probe sets; ``weights`` [B, n] are multiplicities
    over the whole probe set."""
    w = weights[:, view.rows].astype(np.float64)
    cross, plug = [], []
    for start in range(0, len(w), _chunk(view)):
        part = w[start : start + _chunk(view)]
        counts = fold_counts(view, deal_folds(view.cell, rng, part), part)
        cross.append(crossfit_tv(counts))
        plug.append(plugin_tv(counts.sum(1)))
    if not cross:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(cross), np.concatenate(plug)


def permute_within(stratum: np.ndarray, value: np.ndarray, rng: np.random.Generator, times: int) -> np.ndarray:
    """[times, m] the values shuffled among the images of each stratum."""
    base = np.argsort(stratum, kind="stable")
    order = np.argsort(stratum[None, :] + rng.random((times, len(stratum))), axis=1)
    out = np.empty((times, len(stratum)), dtype=value.dtype)
    np.put_along_axis(out, order, np.broadcast_to(value[base], out.shape), axis=1)
    return out


def permutation_pvalue(
    view: ConceptView, rng: np.random.Generator, permutations: int, observed: float | None = None
) -> float:
    """P(T* >= T) with T the plug-in TV (``observed``, computed when not given) and T* its value with the
    concept permuted within strata."""
    observed = plugin_estimate(view) if observed is None else observed
    if not np.isfinite(observed):
        return float("nan")
    step = max(1, _CHUNK_ELEMENTS // max(view.strata * view.values**2 * view.classes + view.images, 1))
    null = [
        plugin_stats(view, permute_within(view.stratum, view.value, rng, min(step, permutations - i)))
        for i in range(0, permutations, step)
    ]
    exceed = int((np.concatenate(null) >= observed - 1e-12).sum())
    return (1 + exceed) / (1 + permutations)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error over the concepts); NaN stays NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(len(p), np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
