"""xai_lightning: which concept a vision model's decisions follow, while it trains, with CLIP to name concepts
in words and network surgery to show what its features carry.

``discover(model, images, labels, targets)``: the verdict in a notebook (``xai_lightning.verdict``).
"""

from xai_lightning.verdict import discover

__version__ = "0.1.0"
__all__ = ["discover"]
