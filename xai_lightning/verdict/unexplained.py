"""What the listed concepts do not explain: how often two probe images that agree on the class and on every
concept that counts still get different predictions (pure numpy).

Within each cell of (class x the values of the concepts that count), the share of image pairs whose
predictions differ (the cell's Gini impurity of the predicted classes, counted without replacement), averaged
over cells with weights their image counts. A model that follows only listed concepts leaves only its own
noise there (a digit reader that is right 97% of the time: ~0.06); a model that follows something nobody
listed — a corner mark, the stroke thickness — splits every cell by it (~0.5 for a two-valued concept). The
interval resamples cells (a cluster bootstrap: duplicated images would agree by construction). The verdict
flags it when the interval lies above ``UNEXPLAINED``: the vocabulary misses what the decisions follow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from xai_lightning.verdict.effects import Effect
from xai_lightning.verdict.strata import CLASS, class_variable, stratum_ids

UNEXPLAINED = 0.2  # share of same-cell pairs with different predictions beyond which something unlisted decides


def _cell_terms(pred: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell with two images or more: (n_c, share of its pairs whose predictions differ)."""
    k = int(pred.max()) + 1
    cells = int(cell.max()) + 1
    counts = np.bincount(cell * k + pred, minlength=cells * k).reshape(cells, k).astype(np.float64)
    n = counts.sum(1)
    keep = n >= 2
    same = (counts[keep] * (counts[keep] - 1)).sum(1) / (n[keep] * (n[keep] - 1))
    return n[keep], 1.0 - same


def unexplained(
    pred: np.ndarray,
    values: Mapping[str, np.ndarray],
    counted: Sequence[str],
    targets: np.ndarray | None,
    draws: int = 400,
    seed: int = 0,
) -> Effect:
    """The share of same-cell pairs with different predictions (module docstring), with its 95% interval."""
    columns = [values[c] for c in counted]
    cls = class_variable(values, targets)
    if cls is not None and cls not in counted:
        columns.append(targets if cls == CLASS else values[cls])
    cell, known = stratum_ids(columns, len(pred))
    if not known.any():
        return Effect.undefined("cells")
    n, share = _cell_terms(pred[known], np.unique(cell[known], return_inverse=True)[1])
    if not len(n):
        return Effect.undefined("cells")
    point = float(np.average(share, weights=n))
    rng = np.random.default_rng([seed, 11])
    pick = rng.integers(0, len(n), size=(draws, len(n)))
    boot = (n[pick] * share[pick]).sum(1) / n[pick].sum(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return Effect(point, float(lo), float(hi), "cells")
