"""The counterfactual ground truth in one word, for scoring a verdict against it.

``CounterfactualCheck`` measures, on the probe set, how often the model's prediction changes when only the
colour of a digit changes (``cf/color_flip_rate``) and when only its shape does (``cf/shape_flip_rate``). The
ground truth is *clear* when one rate exceeds the other by at least ``CLEAR`` (0.2): that concept is the
one the model relies on; otherwise it is ``mixed`` (both, or neither). With more concepts (scenes add
``cf/background_flip_rate``) the clear one must exceed every other by ``CLEAR``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

CLEAR = 0.2
MIXED = "mixed"


def truth_from_rates(rates: Mapping[str, float], clear: float = CLEAR) -> str:
    """The concept whose counterfactual flip rate exceeds every other concept's by at least ``clear``, else
    ``mixed`` (also when a rate is missing or not finite). ``rates``: concept -> flip rate."""
    if len(rates) < 2 or not all(math.isfinite(r) for r in rates.values()):
        return MIXED
    top, *rest = sorted(rates, key=rates.get, reverse=True)
    return top if all(rates[top] - rates[c] >= clear for c in rest) else MIXED


def rates_of(metrics: Mapping[str, float]) -> dict[str, float]:
    """Concept -> flip rate from logged ``cf/<concept>_flip_rate`` metrics."""
    return {
        k[3 : -len("_flip_rate")]: float(v)
        for k, v in metrics.items()
        if k.startswith("cf/") and k.endswith("_flip_rate")
    }


def counterfactual_truth(color_flip: float, shape_flip: float, clear: float = CLEAR) -> str:
    """``color``, ``shape`` or ``mixed``."""
    return truth_from_rates({"color": color_flip, "shape": shape_flip}, clear)
