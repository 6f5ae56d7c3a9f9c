"""Models: the standalone classifier and the probe CLIPs' trainers (digits and colours; the digit world)."""

from xai_lightning.models.classifier import ClassifierModule
from xai_lightning.models.clip_module import CLIPModule
from xai_lightning.models.world_clip import WorldCLIPModule

__all__ = ["ClassifierModule", "CLIPModule", "WorldCLIPModule"]
