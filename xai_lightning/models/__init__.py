"""Models: the standalone classifier and the probe CLIP trainer."""

from xai_lightning.models.classifier import ClassifierModule

__all__ = ["ClassifierModule"]
from xai_lightning.models.clip_module import CLIPModule  # noqa: E402

__all__ += ["CLIPModule"]
