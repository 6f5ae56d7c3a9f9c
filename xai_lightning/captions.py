"""The caption templates the probe and the probe CLIP's training share (no dependencies)."""

from __future__ import annotations

DEFAULT_CONCEPTS: dict[str, dict] = {
    "shape": {"attribute": "digit", "template": "a photo of a digit with the value {}."},
    "color": {"attribute": "color", "template": "a photo of a {} digit."},
}
