"""One probed epoch's verdict: every metric's effects side by side, the chosen one decides the outcome."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from xai_lightning.verdict.effects import Effect
from xai_lightning.verdict.outcome import NONE, UNDECIDED, Outcome, decide

# reliance: the decision level (what the predictions follow); the others read the features through surgery
VERDICTS = ("reliance", "share", "retention", "share_vs_init", "retention_vs_init", "separation_vs_init")
# how large an effect must be to count as reliance, per verdict (reliance is a rate of changed predictions;
# the others have no natural scale)
MIN_EFFECT = {"reliance": 0.1}


def default_min_effect(verdict: str) -> float:
    return MIN_EFFECT.get(verdict, 0.0)


@dataclass
class EffectFamily:
    """One verdict metric: its effect per concept, and the margin (effect a - effect b) with an interval."""

    effects: dict[str, Effect]
    margin: Callable[[str, str], Effect]


@dataclass
class ProbeSummary:
    concepts: list[str]
    captions: list[str]
    keys: list[str]
    verdict: str
    images: int
    metrics: dict[str, float]  # flat, logged as probe/<name>
    outcome: Outcome
    sim_mean: np.ndarray  # [L + 1, K] mean similarity per level and caption
    null_sim_mean: np.ndarray  # [K]
    sim_range: tuple[float, float]  # min / max cosine at level 0

    @property
    def dominant(self) -> str:
        """The concept with the largest effect ("none" when no effect is defined), decided or not."""
        return self.outcome.leaning or NONE

    @property
    def decided(self) -> bool:
        return self.outcome.decided


def effect_metrics(name: str, family: EffectFamily, outcome: Outcome) -> dict[str, float]:
    """One verdict metric's logged names: its effects, its own margin and whether it alone would decide."""
    out = {}
    for concept, e in family.effects.items():
        out[f"effect_{name}/{concept}"] = e.point
        out[f"effect_{name}_lo/{concept}"] = e.lo
        out[f"effect_{name}_hi/{concept}"] = e.hi
    if outcome.margin is not None:
        out[f"margin_{name}"], out[f"margin_{name}_lo"], out[f"margin_{name}_hi"] = (
            outcome.margin.point,
            outcome.margin.lo,
            outcome.margin.hi,
        )
    out[f"decided_{name}"] = float(outcome.decided)
    return out


def outcome_from_metrics(
    metrics: Mapping[str, float], concepts: list[str], verdict: str, min_effect: float | None = None, prefix: str = ""
) -> str:
    """A verdict metric's outcome (a concept, ``none`` or ``undecided``) read back from logged names
    (``prefix="probe/"`` for a run's metrics.csv): what ``summarize`` decided for it."""
    threshold = default_min_effect(verdict) if min_effect is None else float(min_effect)
    lows = {c: metrics.get(f"{prefix}effect_{verdict}_lo/{c}", float("nan")) for c in concepts}
    points = {c: metrics.get(f"{prefix}effect_{verdict}/{c}", float("nan")) for c in concepts}
    finite = {c: v for c, v in points.items() if np.isfinite(v)}
    if not finite or not any(lo > threshold for lo in lows.values()):
        return NONE
    if metrics.get(f"{prefix}decided_{verdict}") == 1.0:
        return max(finite, key=finite.get)
    return UNDECIDED


def verdict_metrics(concepts: list[str], family: EffectFamily, outcome: Outcome) -> dict[str, float]:
    """The chosen verdict's logged names: ``effect[_lo|_hi]/<c>``, ``margin[_lo|_hi]``, ``decided``,
    ``outcome/<c>`` (1 for the named concept), ``outcome/none``, ``outcome/undecided``."""
    out: dict[str, float] = {}
    for concept, e in family.effects.items():
        out[f"effect/{concept}"], out[f"effect_lo/{concept}"], out[f"effect_hi/{concept}"] = e.point, e.lo, e.hi
    if outcome.margin is not None:
        out["margin"], out["margin_lo"], out["margin_hi"] = outcome.margin.point, outcome.margin.lo, outcome.margin.hi
    out["decided"] = float(outcome.decided)
    for name in [*concepts, NONE, UNDECIDED]:
        out[f"outcome/{name}"] = float(outcome.name == name)
    return out


def summarize(
    concepts: list[str], families: Mapping[str, EffectFamily], verdict: str, min_effect: float | None = None
) -> tuple[dict[str, float], Outcome]:
    """Every family's effect metrics, and the chosen verdict's metrics and outcome."""
    if verdict not in families:
        raise ValueError(f"verdict {verdict!r} was not computed; available here: {', '.join(families)}")
    metrics: dict[str, float] = {}
    outcomes = {}
    for name, family in families.items():
        threshold = default_min_effect(name) if min_effect is None or name != verdict else float(min_effect)
        outcomes[name] = decide(family.effects, family.margin, threshold)
        metrics.update(effect_metrics(name, family, outcomes[name]))
    metrics.update(verdict_metrics(concepts, families[verdict], outcomes[verdict]))
    return metrics, outcomes[verdict]
