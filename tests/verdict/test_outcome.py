"""The three outcomes: a concept, none, undecided."""

from __future__ import annotations

import pytest

from xai_lightning.verdict import Effect, decide


def _margin(effects):
    def margin(a, b):
        ea, eb = effects[a], effects[b]  # independent intervals, for the test only
        return Effect(ea.point - eb.point, ea.lo - eb.hi, ea.hi - eb.lo)

    return margin


@pytest.mark.parametrize(
    "effects, min_effect, outcome, text",
    [
        ({"shape": Effect(0.6, 0.5, 0.7), "color": Effect(0.0, -0.1, 0.1)}, 0.0, "shape", "shape"),
        ({"shape": Effect(-0.05, -0.2, -0.01), "color": Effect(-0.1, -0.2, -0.05)}, 0.0, "none", "none"),
        (
            {"shape": Effect(0.3, 0.05, 0.6), "color": Effect(0.2, 0.1, 0.3)},
            0.0,
            "undecided",
            "undecided (leaning shape)",
        ),
        # decided above 0 but not above the minimum effect: none
        ({"shape": Effect(0.08, 0.02, 0.14), "color": Effect(0.0, 0.0, 0.0)}, 0.1, "none", "none"),
        ({"shape": Effect(0.3, 0.2, 0.4), "color": Effect(0.0, 0.0, 0.0)}, 0.1, "shape", "shape"),
        # the leading effect undecided, another above the minimum: undecided, not that other one
        (
            {"shape": Effect(0.5, -0.5, 1.5), "color": Effect(0.3, 0.2, 0.4)},
            0.0,
            "undecided",
            "undecided (leaning shape)",
        ),
    ],
)
def test_outcome_rule(effects, min_effect, outcome, text):
    out = decide(effects, _margin(effects), min_effect)
    assert out.name == outcome
    assert out.text() == text
    assert out.decided == (outcome not in ("none", "undecided"))


def test_an_unmeasurable_effect_is_never_none():
    """On a confounded probe set no pair differs in one concept alone: nothing is measured, so the outcome
    cannot claim that the model relies on nothing."""
    nan = float("nan")
    out = decide({"shape": Effect(nan, nan, nan)}, lambda a, b: None)
    assert out.name == "undecided" and out.leaning is None and out.text() == "undecided"
    small = Effect(0.01, -0.02, 0.04)
    partly = decide({"shape": small, "color": Effect(nan, nan, nan)}, lambda a, b: None)
    assert partly.name == "undecided" and partly.leaning == "shape"
    assert decide({"shape": small, "color": small}, lambda a, b: Effect(0.0, -0.01, 0.01)).name == "none"
