"""The three outcomes of a verdict: a concept, ``none`` or ``undecided``.

With every concept's effect and its 95% interval, and ``min_effect`` (how large an effect must be to count
as reliance; 0 for effects without a natural scale):

* ``<concept>``: the concept with the largest effect has its interval above ``min_effect`` **and** its
  margin over the runner-up has an interval above 0;
* ``none``: no concept's interval lies above ``min_effect`` (the model relies on none of them);
* ``undecided``: otherwise (some concept counts, but which one dominates is not decided), and whenever a
  concept's effect cannot be measured (no interval at all: ``none`` would be a claim about it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from xai_lightning.verdict.effects import Effect

NONE, UNDECIDED = "none", "undecided"
RESERVED = (NONE, UNDECIDED)


@dataclass(frozen=True)
class Outcome:
    name: str  # a concept, "none" or "undecided"
    leaning: str | None  # the concept with the largest effect (None when no effect is finite)
    runner_up: str | None
    margin: Effect | None  # leaning minus runner-up

    @property
    def decided(self) -> bool:
        return self.name not in RESERVED

    def text(self) -> str:
        """One phrase for consoles and reports: ``color``, ``none`` or ``undecided (leaning shape)``."""
        if self.name == UNDECIDED and self.leaning is not None:
            return f"{UNDECIDED} (leaning {self.leaning})"
        return self.name


def decide(effects: Mapping[str, Effect], margin: Callable[[str, str], Effect], min_effect: float = 0.0) -> Outcome:
    """The outcome from per-concept effects and a function giving the margin (effect a - effect b) of two
    concepts with its interval."""
    finite = {c: e for c, e in effects.items() if e.finite()}
    if not finite:  # nothing measurable (e.g. a confounded probe set: no pair differs in one concept alone)
        return Outcome(UNDECIDED, None, None, None)
    ranked = sorted(finite, key=lambda c: finite[c].point, reverse=True)
    top = ranked[0]
    runner = ranked[1] if len(ranked) > 1 else None
    gap = margin(top, runner) if runner is not None else None
    if not any(e.lo > min_effect for e in finite.values()):
        # "none" is a claim about every concept: an unmeasurable one leaves it open
        return Outcome(NONE if len(finite) == len(effects) else UNDECIDED, top, runner, gap)
    if finite[top].lo > min_effect and (gap is None or gap.lo > 0):
        return Outcome(top, top, runner, gap)
    return Outcome(UNDECIDED, top, runner, gap)
