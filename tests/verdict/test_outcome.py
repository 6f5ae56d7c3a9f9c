"""The outcome rule: which concepts count, the outcome, and the reason when it is undecided."""

from __future__ import annotations

import pytest

from xai_lightning.verdict.effects import Effect
from xai_lightning.verdict.outcome import (
    CONFOUNDED,
    NO_EVIDENCE,
    NO_MAJORITY,
    TOO_FEW,
    TWO_COUNT,
    UNLISTED,
    ConceptEvidence,
    decide,
)


def _margin(evidence):
    def margin(a, b):
        ea, eb = evidence[a].effect, evidence[b].effect  # independent intervals, for the test only
        return Effect(ea.point - eb.point, ea.lo - eb.hi, ea.hi - eb.lo)

    return margin


def E(point, lo, hi, p=0.001, thin=False):  # noqa: N802 - reads like a table
    return ConceptEvidence(Effect(point, lo, hi), p, thin)


NAN = float("nan")


@pytest.mark.parametrize(
    "evidence, outcome, reason, relies",
    [
        ({"shape": E(0.9, 0.85, 0.95), "color": E(0.0, -0.02, 0.02, p=0.8)}, "shape", None, ("shape",)),
        ({"shape": E(0.02, -0.03, 0.07, p=0.4), "color": E(0.0, -0.02, 0.02, p=0.9)}, "none", None, ()),
        # a secondary shortcut: both count, shape leads by a decided margin
        ({"shape": E(0.7, 0.65, 0.75), "color": E(0.2, 0.15, 0.25)}, "shape", None, ("shape", "color")),
        # shape counts and leads, but decides only a fifth of the predictions: not named
        ({"shape": E(0.2, 0.15, 0.25), "color": E(0.0, -0.02, 0.02, p=0.9)}, "undecided", NO_MAJORITY, ("shape",)),
        # both count, margin not decided
        ({"shape": E(0.45, 0.35, 0.55), "color": E(0.4, 0.3, 0.5)}, "undecided", TWO_COUNT, ("shape", "color")),
        # above δ but the permutation test does not reject: does not count
        ({"shape": E(0.3, 0.15, 0.45, p=0.2), "color": E(0.0, -0.05, 0.05, p=0.9)}, "undecided", NO_EVIDENCE, ()),
        # significant but below δ: no concept counts, yet the interval reaches above δ
        ({"shape": E(0.08, 0.05, 0.11), "color": E(0.0, -0.02, 0.02, p=0.9)}, "undecided", NO_EVIDENCE, ()),
        # thin cells: never none, whatever the intervals
        (
            {"shape": E(0.02, -0.03, 0.07, p=0.4, thin=True), "color": E(0.0, -0.02, 0.02, p=0.9)},
            "undecided",
            TOO_FEW,
            (),
        ),
        # a thin concept cannot be ranked: no outcome names a leader beside it
        ({"shape": E(0.9, 0.85, 0.95), "color": E(0.3, 0.2, 0.4, thin=True)}, "undecided", TOO_FEW, ("shape", "color")),
        # a concept that was not measured: never none, never a named concept
        ({"shape": E(0.9, 0.85, 0.95), "color": E(NAN, NAN, NAN, p=NAN)}, "undecided", CONFOUNDED, ("shape",)),
        ({"shape": E(0.0, -0.01, 0.01, p=1.0), "color": E(NAN, NAN, NAN, p=NAN)}, "undecided", CONFOUNDED, ()),
    ],
)
def test_outcome_rule(evidence, outcome, reason, relies):
    got = decide(evidence, _margin(evidence), min_effect=0.1, alpha=0.05)
    assert (got.name, got.reason, got.relies) == (outcome, reason, relies)


def test_text_says_the_reason_and_the_leaning_concept():
    ev = {"shape": E(0.45, 0.35, 0.55), "color": E(0.4, 0.3, 0.5)}
    assert decide(ev, _margin(ev)).text() == "undecided: two concepts count (leaning shape)"
    ev = {"color": E(1.0, 1.0, 1.0), "shape": E(0.0, 0.0, 0.0, p=1.0)}
    out = decide(ev, _margin(ev))
    assert out.text() == "color" and out.decided


@pytest.mark.parametrize(
    "evidence, outcome, reason",
    [
        # nothing listed counts: 'something unlisted decides' where 'none' would have been said
        ({"shape": E(0.02, -0.03, 0.07, p=0.4), "color": E(0.0, -0.02, 0.02, p=0.9)}, "undecided", UNLISTED),
        # shape counts for half the predictions; the other half follow something unlisted
        ({"shape": E(0.5, 0.45, 0.55), "color": E(0.0, -0.02, 0.02, p=0.9)}, "undecided", UNLISTED),
        # two listed concepts that cannot be separated stay 'two concepts count'
        ({"shape": E(0.45, 0.35, 0.55), "color": E(0.4, 0.3, 0.5)}, "undecided", TWO_COUNT),
        # a concept that decides most predictions is named even if something unlisted decides the rest
        ({"shape": E(0.9, 0.85, 0.95), "color": E(0.0, -0.02, 0.02, p=0.9)}, "shape", None),
    ],
)
def test_something_unlisted_replaces_none_and_no_majority(evidence, outcome, reason):
    got = decide(evidence, _margin(evidence), min_effect=0.1, alpha=0.05, unlisted=True)
    assert (got.name, got.reason) == (outcome, reason)
