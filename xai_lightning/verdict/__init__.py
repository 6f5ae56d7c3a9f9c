"""The verdict (pure numpy / PyTorch, no Lightning): which concept a model's decisions follow.

``discover(model, images, labels, targets)`` runs a model on a probe set and returns a ``Verdict``;
``assess(pred, values, value_names, targets)`` does the same from predictions. Inside: ``following`` (the
share of predictions that follow a concept: cross-fitted, stratum-matched total variation, its bootstrap
interval and within-strata permutation null), ``strata`` (what each concept is matched on), ``outcome`` (the
one rule that decides: which concepts count, the outcome, the reason), ``simulate`` (hand-built models of
exactly known reliance), ``truth`` (the counterfactual ground truth in one word), ``effects`` (intervals the
surgery's diagnostics use).
"""

from xai_lightning.verdict.assess import ConceptEffect, Verdict, assess
from xai_lightning.verdict.discover import discover, encode, predict
from xai_lightning.verdict.effects import Effect, bootstrap_effect, paired_effect, t_quantile
from xai_lightning.verdict.outcome import (
    ALPHA,
    MIN_EFFECT,
    NONE,
    REASON_KEYS,
    REASONS,
    RESERVED,
    UNDECIDED,
    ConceptEvidence,
    Outcome,
    decide,
)
from xai_lightning.verdict.truth import CLEAR, MIXED, counterfactual_truth, rates_of, truth_from_rates

__all__ = [
    "ConceptEffect",
    "Verdict",
    "assess",
    "discover",
    "encode",
    "predict",
    "Effect",
    "bootstrap_effect",
    "paired_effect",
    "t_quantile",
    "ALPHA",
    "MIN_EFFECT",
    "NONE",
    "REASON_KEYS",
    "REASONS",
    "RESERVED",
    "UNDECIDED",
    "ConceptEvidence",
    "Outcome",
    "decide",
    "CLEAR",
    "MIXED",
    "counterfactual_truth",
    "rates_of",
    "truth_from_rates",
]
