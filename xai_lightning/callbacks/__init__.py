"""Lightning callbacks: the SurgeryProbe and its counterfactual ground truth."""

from xai_lightning.callbacks.counterfactual import CounterfactualCheck
from xai_lightning.callbacks.epoch_timer import EpochTimer
from xai_lightning.callbacks.surgery_probe import SurgeryProbe

__all__ = ["SurgeryProbe", "CounterfactualCheck", "EpochTimer"]
