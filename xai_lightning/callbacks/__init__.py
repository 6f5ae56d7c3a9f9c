"""Lightning callbacks: the ConceptProbe (the verdict), the SurgeryProbe (what the features carry), the
counterfactual ground truth, the concept alarm, attribution baselines, timing.

``AttributionProbe`` needs Captum (``pip install -e ".[attribution]"``) and is imported on first use.
"""

from xai_lightning.callbacks.concept_alarm import ConceptAlarm
from xai_lightning.callbacks.concept_probe import ConceptProbe
from xai_lightning.callbacks.counterfactual import CounterfactualCheck
from xai_lightning.callbacks.epoch_timer import EpochTimer
from xai_lightning.callbacks.surgery_probe import SurgeryProbe

__all__ = ["ConceptProbe", "SurgeryProbe", "ConceptAlarm", "CounterfactualCheck", "EpochTimer", "AttributionProbe"]


def __getattr__(name: str):
    if name == "AttributionProbe":  # lazy: keeps Captum optional for everything else
        from xai_lightning.callbacks.attribution_probe import AttributionProbe

        return AttributionProbe
    raise AttributeError(name)
