"""The counterfactual ground truth in one word, for scoring a verdict against it.

``CounterfactualCheck`` measures, on the probe set, how often the model's prediction changes when only the
colour of a digit changes (``cf/color_flip_rate``) and when only its shape does (``cf/shape_flip_rate``). The
ground truth is *clear* when one rate exceeds the other by at least ``CLEAR`` (0.2): that concept is the
one the model relies on; otherwise it is ``mixed`` (both, or neither).
"""

from __future__ import annotations

import math

CLEAR = 0.2
MIXED = "mixed"


def counterfactual_truth(color_flip: float, shape_flip: float, clear: float = CLEAR) -> str:
    """``color``, ``shape`` or ``mixed``."""
    if not (math.isfinite(color_flip) and math.isfinite(shape_flip)):
        return MIXED
    if color_flip - shape_flip >= clear:
        return "color"
    if shape_flip - color_flip >= clear:
        return "shape"
    return MIXED
