"""Effects with intervals, and the paired comparison with a set of reference networks.

An ``Effect`` is a point estimate with a two-sided 95% interval. Two kinds of interval are built here:

* **Bootstrap** (``bootstrap_effect``): images resampled with replacement, drawn as multinomial counts over
  a histogram of per-image values (images with equal values are interchangeable), percentile interval.
* **Paired with references** (``paired_effect``). A metric ``o`` is measured per scored image ``i`` on the
  model (``o_M(i)``) and on ``R`` reference networks (``o_r(i)``: the run's starting weights and
  re-initialisations of its architecture). The effect is the mean paired difference in units ``u``::

      d_i = o_M(i) - (1/R) sum_r o_r(i),       E = mean_i d_i / u

  Two things change when the probe is rerun: the scored images, and which reference networks are drawn
  (and, for an untrained model, the model itself is just one more draw of its architecture). With
  ``v_img`` the sample variance of ``d_i`` over the ``n`` images and ``s2_net`` the variance across the
  references of their mean metric ``m_r = mean_i o_r(i)`` on the same images (``R - 1`` degrees of
  freedom)::

      V = v_img / n + s2_net * (1 + 1/R)

  The ``1/R`` is the reference mean's own spread; the ``1`` covers the model as one draw of its
  architecture (exact for an untrained model scored against references that exclude it, conservative for
  a trained one whose own start is among the references). The interval is ``E +- t_df sqrt(V) / u`` with
  Welch-Satterthwaite degrees of freedom
  ``df = V^2 / ((v_img/n)^2 / (n - 1) + (s2_net (1 + 1/R))^2 / (R - 1))``. With a single reference the
  between-network term cannot be estimated and is left out (``Effect.covers`` says so).
  Not covered: the sample of images the matching is fitted on (the same for model and references).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the normal 97.5% quantile


@dataclass(frozen=True)
class Effect:
    """A point estimate with its two-sided 95% interval; ``covers`` names the sources of variation the
    interval accounts for."""

    point: float
    lo: float
    hi: float
    covers: str = "images"

    @classmethod
    def undefined(cls, covers: str = "images") -> Effect:
        nan = float("nan")
        return cls(nan, nan, nan, covers)

    def finite(self) -> bool:
        return math.isfinite(self.point)


def t_quantile(df: float, q: float = 0.975) -> float:
    """Student's t quantile (the normal one for infinite degrees of freedom)."""
    from scipy import stats

    return float(stats.norm.ppf(q) if not math.isfinite(df) else stats.t.ppf(q, df))


def paired_effect(n: float, sum_d: float, sum_dd: float, ref_means: np.ndarray, unit: float = 1.0) -> Effect:
    """The paired comparison with reference networks (module docstring).

    Args:
        n: images with a defined difference; sum_d, sum_dd: sums of ``d_i`` and ``d_i^2`` over them.
        ref_means: [R] each reference's mean metric ``m_r`` over the same images.
        unit: the metric's unit (the effect is reported as ``E / unit``).
    """
    if n < 2 or not unit > 0:
        return Effect.undefined("images, reference networks")
    mean = sum_d / n
    v_img = max(sum_dd - n * mean * mean, 0.0) / (n - 1)
    var_img = v_img / n
    r = len(ref_means)
    if r >= 2:
        var_net = float(np.var(ref_means, ddof=1)) * (1.0 + 1.0 / r)
        covers = "images, reference networks"
    else:
        var_net, covers = 0.0, "images (one reference: the between-network spread is not estimated)"
    total = var_img + var_net
    denom = (var_img**2 / (n - 1) if var_img else 0.0) + (var_net**2 / (r - 1) if var_net else 0.0)
    df = total**2 / denom if denom > 0 else float("inf")
    half = t_quantile(df) * math.sqrt(total)
    return Effect(mean / unit, (mean - half) / unit, (mean + half) / unit, covers)


def bootstrap_effect(
    hist: np.ndarray, values: np.ndarray, draws: int, seed: list[int] | int
) -> tuple[Effect, np.ndarray]:
    """Mean of a per-image value given as a histogram (``hist[k]`` images have value ``values[k]``), with a
    percentile interval from ``draws`` multinomial resamples; also returns the resampled means [draws]."""
    total = float(hist.sum())
    if not total:
        return Effect.undefined(), np.full(draws, np.nan)
    rng = np.random.default_rng(seed)
    means = rng.multinomial(int(total), hist / total, size=draws) @ values / total
    lo, hi = np.percentile(means, [2.5, 97.5])
    return Effect(float(hist @ values / total), float(lo), float(hi)), means
