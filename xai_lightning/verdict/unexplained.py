"""What the listed concepts do not explain: how often two probe images that agree on the class and on every
concept that counts still get different predictions (pure numpy).

Within each cell of (class x the values of the concepts that count), the share of image pairs whose
predictions differ (the cell's Gini impurity of the predicted classes, counted without replacement), averaged
over cells with weights their image counts. A model that follows only listed concepts leaves only its own
noise there (a digit reader that is right 97% of the time: ~0.06); a model that follows something nobody
listed — a corner mark, the stroke thickness — splits every cell by it (~0.5 for a two-valued concept).

The interval is the share +- 1.96 standard deviations, the larger of two estimates of its spread: resampling
cells (a cluster bootstrap: resampling images would pair duplicates that agree by construction), right with
many cells; and the images' own sampling noise within each cell (the delta-method variance of a Gini impurity,
``4 / n (sum p^3 - (sum p^2)^2)``, weighted as the cells are), right with few — with two cells a cluster
bootstrap has nothing to resample. The verdict flags it when the interval lies above ``UNEXPLAINED``: the
vocabulary misses what the decisions follow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from xai_lightning.verdict.effects import Z95, Effect
from xai_lightning.verdict.strata import CLASS, class_variable, stratum_ids

UNEXPLAINED = 0.2  # share of same-cell pairs with different predictions beyond which something unlisted decides


def _cell_terms(pred: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell with two images or more: (n_c, share of its pairs whose predictions differ, that share's
    sampling variance)."""
    k = int(pred.max()) + 1
    cells = int(cell.max()) + 1
    counts = np.bincount(cell * k + pred, minlength=cells * k).reshape(cells, k).astype(np.float64)
    n = counts.sum(1)
    keep = n >= 2
    counts, n = counts[keep], n[keep]
    same = (counts * (counts - 1)).sum(1) / (n * (n - 1))
    p = counts / n[:, None]
    var = 4.0 / n * np.maximum((p**3).sum(1) - ((p**2).sum(1)) ** 2, 0.0)
    return n, 1.0 - same, var


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
    n, share, var = _cell_terms(pred[known], np.unique(cell[known], return_inverse=True)[1])
    if not len(n):
        return Effect.undefined("cells")
    point = float(np.average(share, weights=n))
    rng = np.random.default_rng([seed, 11])
    pick = rng.integers(0, len(n), size=(draws, len(n)))
    boot = (n[pick] * share[pick]).sum(1) / n[pick].sum(1)
    within = float((n**2 * var).sum() / n.sum() ** 2)
    sd = float(np.sqrt(max(np.var(boot, ddof=1) if len(n) > 1 else 0.0, within)))
    return Effect(point, max(point - Z95 * sd, 0.0), min(point + Z95 * sd, 1.0), "cells, images")
