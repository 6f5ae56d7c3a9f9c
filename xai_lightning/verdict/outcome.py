"""The one place that decides a verdict: which concepts count, the outcome, and why it is undecided.

Per concept the verdict has an effect (the share of predictions that follow it) with a 95% interval, a
within-strata permutation p-value (Holm-adjusted over the concepts: the family-wise error is controlled) and
whether its cells were too thin for the interval to hold. With ``min_effect`` δ:

* a concept **counts** (``relies``) when its adjusted p-value is at most ``alpha`` **and** its interval lies
  above δ: the predictions depend on it (the null is rejected) and by enough to matter;
* the **outcome** names the concept with the largest effect when it counts, decides most predictions (its
  interval lies above ``MAJORITY``), its margin over the runner-up has an interval above 0, and every
  concept could be measured on cells that are not too thin (a thin concept's effect is conservative and its
  interval may not hold: it cannot be ranked). "The model decides by shape" must not be said of a model
  whose predictions follow shape one time in five: observationally, a model that follows a listed concept
  for a few images and something else for the rest cannot be told from one whose other predictions follow
  that concept in both directions at once (a non-monotone effect, which moves no class's share);
* ``none`` when every concept's interval lies below δ (the upper bound too: "relies on nothing" is claimed
  only where it was measured) and no concept's cells were too thin;
* else ``undecided``, with the first reason that applies: ``confounded probe set`` (a concept never varies
  alone, so it could not be measured), ``too few images per cell`` (thin cells: effects that cannot be
  ranked, intervals that may not hold), ``two concepts count`` (the leader is not separated from another
  concept that counts or may count), ``something unlisted decides`` (no listed concept decides most
  predictions, and images that agree on the class and every concept that counts still get different
  predictions: ``verdict.unexplained``; said where ``none`` or ``no concept decides most predictions`` would
  have been), ``no concept decides most predictions`` (concepts count, none for a majority),
  ``not enough evidence`` (an interval straddles δ).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from xai_lightning.verdict.effects import Effect

NONE, UNDECIDED = "none", "undecided"
RESERVED = (NONE, UNDECIDED)
MIN_EFFECT = 0.1  # a concept counts when at least this share of the predictions follows it (interval above)
MAJORITY = 0.5  # the outcome names a concept only when it decides more than this share (interval above)
ALPHA = 0.05  # family-wise error of "the predictions depend on the concept", over the concepts
CONFOUNDED, TWO_COUNT, NO_MAJORITY, TOO_FEW, UNLISTED, NO_EVIDENCE = (
    "confounded probe set",
    "two concepts count",
    "no concept decides most predictions",
    "too few images per cell",
    "something unlisted decides",
    "not enough evidence",
)
REASONS = (CONFOUNDED, TWO_COUNT, NO_MAJORITY, TOO_FEW, UNLISTED, NO_EVIDENCE)
REASON_KEYS = {  # the reasons in logged names: probe/undecided/<key>
    CONFOUNDED: "confounded",
    TWO_COUNT: "two_concepts_count",
    NO_MAJORITY: "no_majority",
    TOO_FEW: "too_few_images",
    UNLISTED: "unlisted",
    NO_EVIDENCE: "not_enough_evidence",
}


@dataclass(frozen=True)
class ConceptEvidence:
    """What the verdict knows of one concept."""

    effect: Effect
    p_value: float = float("nan")  # Holm-adjusted within-strata permutation p-value
    thin: bool = False  # too few images per cell for the interval to hold

    @property
    def measured(self) -> bool:
        return self.effect.finite()


@dataclass(frozen=True)
class Outcome:
    name: str  # a concept, "none" or "undecided"
    reason: str | None = None  # why undecided (one of REASONS)
    relies: tuple[str, ...] = ()  # every concept that counts, largest effect first
    leaning: str | None = None  # the concept with the largest effect (None when none was measured)
    runner_up: str | None = None
    margin: Effect | None = None  # leaning minus runner-up
    notes: dict[str, str] = field(default_factory=dict)  # concept -> what limited it (thin, unmeasured)

    @property
    def decided(self) -> bool:
        return self.name not in RESERVED

    def text(self) -> str:
        """One phrase for consoles and reports: ``color``, ``none``, ``undecided: two concepts count (leaning
        shape)``."""
        if self.name != UNDECIDED:
            return self.name
        lean = f" (leaning {self.leaning})" if self.leaning is not None else ""
        return f"{UNDECIDED}: {self.reason}{lean}"


def counts(e: ConceptEvidence, min_effect: float, alpha: float) -> bool:
    return e.measured and e.p_value <= alpha and e.effect.lo > min_effect


def _undecided_reason(
    evidence: Mapping[str, ConceptEvidence], relies: list[str], separated: bool, unlisted: bool
) -> str:
    if any(not e.measured for e in evidence.values()):
        return CONFOUNDED
    if any(e.thin for e in evidence.values()):
        return TOO_FEW
    if relies and not separated:
        return TWO_COUNT
    if unlisted:  # what decides the rest of the predictions is none of the listed concepts
        return UNLISTED
    return NO_MAJORITY if relies else NO_EVIDENCE


def decide(
    evidence: Mapping[str, ConceptEvidence],
    margin: Callable[[str, str], Effect],
    min_effect: float = MIN_EFFECT,
    alpha: float = ALPHA,
    unlisted: bool = False,
) -> Outcome:
    """The outcome (module docstring). ``margin(a, b)``: effect a minus effect b with its interval; ``unlisted``:
    predictions vary within cells of the class and the counted concepts (``verdict.unexplained``)."""
    measured = {c: e for c, e in evidence.items() if e.measured}
    ranked = sorted(measured, key=lambda c: measured[c].effect.point, reverse=True)
    relies = [c for c in ranked if counts(measured[c], min_effect, alpha)]
    top = ranked[0] if ranked else None
    runner = ranked[1] if len(ranked) > 1 else None
    gap = margin(top, runner) if runner is not None else None
    notes = {c: "too few images per cell" for c, e in evidence.items() if e.thin}
    notes.update({c: "not measured: it never varies alone" for c, e in evidence.items() if not e.measured})
    common = dict(relies=tuple(relies), leaning=top, runner_up=runner, margin=gap, notes=notes)
    complete = len(measured) == len(evidence)
    thin = any(e.thin for e in evidence.values())  # magnitudes that cannot be ranked or bounded
    separated = top in relies and (gap is None or gap.lo > 0)
    if complete and not thin and separated and measured[top].effect.lo > MAJORITY:
        return Outcome(top, **common)
    quiet = all(e.effect.hi < min_effect for e in measured.values())
    if complete and not relies and not thin and quiet and not unlisted:
        return Outcome(NONE, **common)
    return Outcome(UNDECIDED, _undecided_reason(evidence, relies, separated, unlisted), **common)
