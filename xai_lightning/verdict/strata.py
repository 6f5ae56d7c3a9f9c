"""Which variables a concept's effect is matched on (pure numpy).

A concept's effect compares images that differ in the concept and agree on the *strata*:

* the **class**: the images' class labels when they are known, unless a listed concept already is the
  class (the digit, when classes are digits: that concept is then the class variable). On a probe set whose
  colours go with the class, a model that reads the digit would otherwise seem to follow colour;
* every other listed concept that may **confound** this one: associated with it in the probe set (bias-corrected
  Cramér's V of at least ``ASSOCIATED``) strongly (``STRONG``), or enough that the bias it could bring, V times
  the share of predictions that follow it (``screen``: the verdict's estimate matched on the class alone), reaches
  ``tolerance``. Left unmatched, a concept Z shifts the comparison of this concept's values by at most
  about V x its own effect; matching on every weakly associated concept would only thin the cells (concepts read
  off images by captions are weakly associated by their misreadings: a texture makes strokes look thinner);
* the other listed concepts, fewest values first, as long as the comparisons keep ``SPARE_CELL`` images or
  more on their smaller side (``pair_cell``; 5, the verdict's thin-cell limit). They are not confounders, but
  a model that follows one of them varies within every unmatched cell, and where the two interact the share
  pooled over the unmatched concept is only a lower bound of the share within its strata (the total
  variation of two mixtures is at most the mixture of the total variations), which is what an edit of the
  concept alone changes. Matching down to 5 images per side costs the cross-fitted estimate a little more
  (its directions are learned from fewer images); its interval's upper end allows for that (``following``).

A concept left out is averaged over: a concept that pushes predictions the same way in every stratum has
the same effect either way (docs/verdict.md: interactions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

ASSOCIATED = 0.1
STRONG = 0.5  # an association this strong is matched whether or not the predictions follow the other concept
SPARE_CELL = 5  # images on the smaller side of a typical comparison that an optional stratifier must leave
CLASS = "class"  # the name of the images' class labels as a stratification variable


def cramers_v(x: np.ndarray, y: np.ndarray) -> float:
    """Bias-corrected Cramér's V (Bergsma 2013) of two label arrays (values >= 0); 0 when either is constant."""
    if len(x) < 2:
        return 0.0
    _, xi = np.unique(x, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    r, k, n = xi.max() + 1, yi.max() + 1, len(x)
    if r < 2 or k < 2:
        return 0.0
    table = np.bincount(xi * k + yi, minlength=r * k).reshape(r, k).astype(np.float64)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    phi2 = float(((table - expected) ** 2 / expected).sum()) / n
    phi2c = max(0.0, phi2 - (k - 1) * (r - 1) / (n - 1))
    rc, kc = r - (r - 1) ** 2 / (n - 1), k - (k - 1) ** 2 / (n - 1)
    denom = min(kc - 1, rc - 1)
    return float(np.sqrt(phi2c / denom)) if denom > 0 else 0.0


def determines(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether ``y`` is a function of ``x`` on the images where both are known (each value of x has one y)."""
    both = (x >= 0) & (y >= 0)
    if not both.any():
        return False
    pairs = np.unique(np.stack([x[both], y[both]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1]


def class_variable(values: Mapping[str, np.ndarray], targets: np.ndarray | None) -> str | None:
    """The variable that stands for the class: a listed concept that determines the class labels, else
    ``CLASS`` (the labels themselves), else None (no labels given)."""
    if targets is None or not (targets >= 0).any():
        return None
    for name, v in values.items():
        if determines(v, targets):
            return name
    return CLASS


def pair_cell(own: np.ndarray, columns: Sequence[np.ndarray]) -> float:
    """The typical smaller side of a comparison: over the pairs of values that meet in a stratum (strata: the
    joint values of ``columns``), the median of min(n_a, n_b) weighted by n_a + n_b (0 without any pair).
    A median over cells would hide the thin side of a correlated probe set (45 red 5s beside 5 red 8s)."""
    sid, known = stratum_ids(columns, len(own))
    known &= own >= 0
    if not known.any():
        return 0.0
    card = int(own[known].max()) + 1
    sizes = np.bincount(sid[known] * card + own[known], minlength=(int(sid.max()) + 1) * card)
    return weighted_pair_median(sizes.reshape(-1, card))


def weighted_pair_median(sizes: np.ndarray) -> float:
    """``pair_cell`` of a [strata, values] table of cell sizes."""
    a, b = np.triu_indices(sizes.shape[1], 1)
    lo, w = np.minimum(sizes[:, a], sizes[:, b]).ravel(), (sizes[:, a] + sizes[:, b]).ravel()
    keep = lo > 0
    if not keep.any():
        return 0.0
    order = np.argsort(lo[keep])
    cum = np.cumsum(w[keep][order])
    return float(lo[keep][order][np.searchsorted(cum, cum[-1] / 2)])


def class_strata(concept: str, values: Mapping[str, np.ndarray], targets: np.ndarray | None) -> list[str]:
    """``[the class variable]``, or ``[]`` when there is none or the concept is (or determines) the class."""
    cls = class_variable(values, targets)
    if cls is None or cls == concept or (cls == CLASS and determines(values[concept], targets)):
        return []
    return [cls]


def matched_on(
    concept: str,
    values: Mapping[str, np.ndarray],
    targets: np.ndarray | None,
    screen: Mapping[str, float] | None = None,
    tolerance: float = 0.0,
) -> list[str]:
    """The variables ``concept``'s effect is matched on (module docstring): the class variable, the
    associated concepts that may confound it (every associated one when ``screen`` is None), then the others
    while the cells stay full enough."""
    out = class_strata(concept, values, targets)
    cls = class_variable(values, targets)
    own = values[concept]
    rest = []
    for name, other in values.items():
        if name in (concept, cls):
            continue
        both = (own >= 0) & (other >= 0)
        v = cramers_v(own[both], other[both])
        bias = v * max(screen.get(name, np.inf), 0.0) if screen is not None else np.inf
        confounder = v >= STRONG or (v >= ASSOCIATED and not bias < tolerance)
        (out if confounder else rest).append(name)
    column = {**values, CLASS: targets}
    for name in sorted(rest, key=lambda c: len(np.unique(values[c][values[c] >= 0]))):
        if pair_cell(own, [column[v] for v in [*out, name]]) >= SPARE_CELL:
            out.append(name)
    return out


def stratum_ids(columns: Sequence[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(dense stratum id [n], known [n]) of the joint values of ``columns`` (-1 = unknown excludes the image)."""
    known = np.ones(n, dtype=bool)
    key = np.zeros(n, dtype=np.int64)
    for col in columns:
        known &= col >= 0
        key = key * (int(col.max()) + 2 if len(col) else 1) + np.maximum(col, 0)
    ids = np.zeros(n, dtype=np.int64)
    if known.any():
        ids[known] = np.unique(key[known], return_inverse=True)[1]
    return ids, known
