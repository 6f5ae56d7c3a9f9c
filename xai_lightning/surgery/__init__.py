"""Network surgery, pure PyTorch (no Lightning): usable on any CNN and any CLIP in a notebook.

Layer discovery and hooks (``layers``), exact single-pass matching statistics (``moments``), matching
(``matching``), the activation transplant (``transplant``), concepts/captions (``concepts``), caption
scoring with a null control (``scoring``) and the end-to-end ``SurgeryPipeline``.
"""

from xai_lightning.surgery.concepts import DEFAULT_CONCEPTS, CaptionSet, resolve_concepts
from xai_lightning.surgery.layers import PRESETS, capture, count_forward_hooks, forward_hooks, resolve_layers
from xai_lightning.surgery.matching import METHODS, Matching, layer_summaries, match, random_matching
from xai_lightning.surgery.moments import SCORES, CrossMoments, matching_scores, near_constant
from xai_lightning.surgery.pipeline import Baseline, ClipLike, SurgeryPipeline, check_options, random_init_copy
from xai_lightning.surgery.scoring import METRICS, VERDICTS, VIEWS, ProbeCounts, ProbeSummary
from xai_lightning.surgery.transplant import (
    StandardizedMaps,
    SurgeryPlan,
    build_plan,
    resize_antialiased,
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
    "Baseline",
    "ClipLike",
    "SurgeryPipeline",
    "check_options",
    "random_init_copy",
    "METRICS",
    "VERDICTS",
    "VIEWS",
    "ProbeCounts",
    "ProbeSummary",
    "StandardizedMaps",
    "SurgeryPlan",
    "build_plan",
    "resize_antialiased",
    "resize_maps",
    "select_swaps",
    "transplant",
]
