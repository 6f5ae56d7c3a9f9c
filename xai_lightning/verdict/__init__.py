"""The verdict (pure numpy / PyTorch, no Lightning): effects with intervals, decision reliance, outcomes.

``effects``: ``Effect`` (point + 95% interval) and the paired comparison with reference networks;
``reliance``: how much the model's predictions depend on each concept on the probe set; ``outcome``: the
three outcomes (a concept, ``none``, ``undecided``); ``summary``: every metric side by side and the chosen
verdict's outcome.
"""

from xai_lightning.verdict.effects import Effect, bootstrap_effect, paired_effect, t_quantile
from xai_lightning.verdict.outcome import NONE, RESERVED, UNDECIDED, Outcome, decide
from xai_lightning.verdict.reliance import DecisionTable, RelianceEffects, reliance
from xai_lightning.verdict.summary import (
    MIN_EFFECT,
    VERDICTS,
    EffectFamily,
    ProbeSummary,
    default_min_effect,
    outcome_from_metrics,
    summarize,
)
from xai_lightning.verdict.truth import CLEAR, MIXED, counterfactual_truth, rates_of, truth_from_rates

__all__ = [
    "Effect",
    "bootstrap_effect",
    "paired_effect",
    "t_quantile",
    "NONE",
    "RESERVED",
    "UNDECIDED",
    "Outcome",
    "decide",
    "DecisionTable",
    "RelianceEffects",
    "reliance",
    "MIN_EFFECT",
    "VERDICTS",
    "EffectFamily",
    "ProbeSummary",
    "default_min_effect",
    "outcome_from_metrics",
    "summarize",
    "CLEAR",
    "MIXED",
    "counterfactual_truth",
    "rates_of",
    "truth_from_rates",
]
