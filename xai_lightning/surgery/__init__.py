"""Network surgery, pure PyTorch (no Lightning): usable on any CNN and any CLIP in a notebook.

Layer discovery and hooks (``layers``), exact single-pass matching statistics (``moments``), matching
(``matching``), the activation transplant (``transplant``), concepts/captions (``concepts``), caption
scoring with a null control and reference networks (``scoring``) and the end-to-end ``SurgeryPipeline``.
Its effects describe what the features carry; the verdict (what the decisions follow) is
``xai_lightning.verdict`` and knows no surgery.
"""

from xai_lightning.captions import DEFAULT_CONCEPTS
from xai_lightning.resize import resize_antialiased
from xai_lightning.surgery.concepts import CaptionSet, resolve_concepts
from xai_lightning.surgery.layers import PRESETS, capture, count_forward_hooks, forward_hooks, resolve_layers
from xai_lightning.surgery.matching import METHODS, Matching, layer_summaries, match, random_matching
from xai_lightning.surgery.moments import SCORES, CrossMoments, matching_scores, near_constant
from xai_lightning.surgery.pipeline import (
    ClipLike,
    ReferenceOutcomes,
    SurgeryPipeline,
    check_options,
    reference_models,
)
from xai_lightning.surgery.scoring import METRICS, VIEWS, ProbeCounts, SurgerySummary, image_outcomes
from xai_lightning.surgery.transplant import (
    StandardizedMaps,
    SurgeryPlan,
    build_plan,
    resize_maps,
    select_swaps,
    transplant,
)

__all__ = [
    "DEFAULT_CONCEPTS",
    "CaptionSet",
    "resolve_concepts",
    "PRESETS",
    "capture",
    "count_forward_hooks",
    "forward_hooks",
    "resolve_layers",
    "METHODS",
    "Matching",
    "layer_summaries",
    "match",
    "random_matching",
    "SCORES",
    "CrossMoments",
    "matching_scores",
    "near_constant",
    "ClipLike",
    "ReferenceOutcomes",
    "SurgeryPipeline",
    "check_options",
    "reference_models",
    "METRICS",
    "VIEWS",
    "ProbeCounts",
    "SurgerySummary",
    "image_outcomes",
    "StandardizedMaps",
    "SurgeryPlan",
    "build_plan",
    "resize_antialiased",
    "resize_maps",
    "select_swaps",
    "transplant",
]
