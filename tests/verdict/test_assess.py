"""The verdict on hand-built models whose reliance is known exactly (xai_lightning.verdict.simulate)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from xai_lightning.verdict.assess import assess
from xai_lightning.verdict.simulate import HandBuilt, ProbeDesign


def _verdict(design, model, seed, concepts=("shape", "color"), targets=True, **kw):
    v = design.draw(np.random.default_rng(seed))
    pred = model.predict(v, design.classes)
    values = {c: v[f"observed_{c}"] for c in concepts}
    names = {c: [f"{c}{i}" for i in range(design.cards[c])] for c in concepts}
    tgt = v["observed_shape"] if targets else None
    kw.setdefault("draws", 200)
    kw.setdefault("permutations", 200)
    return assess(pred, values, names, targets=tgt, classes=design.classes, seed=seed, **kw), model.flip_rates(
        v, design
    )


def test_a_partial_shortcut_reads_its_share_of_predictions_not_its_square():
    """38% of the predictions follow colour: the effect is ~0.36 (0.38 x 0.95 noise-free), and colour counts."""
    design = ProbeDesign(images=500)
    verdict, truth = _verdict(design, HandBuilt("mixture", strength=0.38), seed=0)
    color = verdict.effects["color"]
    assert color.value == pytest.approx(truth["color"], abs=0.05)
    assert color.lo < truth["color"] < color.hi
    assert "color" in verdict.relies


def test_a_random_predictor_with_ten_classes_is_never_decided():
    design = ProbeDesign(images=250, classes=10, colors=10)
    for seed in range(5):
        verdict, _ = _verdict(design, HandBuilt("random"), seed=seed)
        assert not verdict.relies and verdict.outcome != "color" and verdict.outcome != "shape"


def test_twenty_images_do_not_claim_none():
    """A 77% partial shortcut on 20 images: the interval reaches above δ, so the answer is not `none`."""
    design = ProbeDesign(images=20)
    verdict, _ = _verdict(design, HandBuilt("mixture", strength=0.8), seed=1)
    assert verdict.outcome != "none"
    assert verdict.effects["color"].hi > 0.1


def test_a_shape_model_on_a_correlated_probe_set_is_not_named_colour_when_colour_is_listed_alone():
    """90% of the digits in their own colour, only colour listed, the class labels given: matched on the class."""
    design = ProbeDesign(images=1000, classes=2, colors=2, layout="correlated")
    verdict, truth = _verdict(design, HandBuilt("shape"), seed=2, concepts=("color",))
    assert truth["color"] == 0.0
    assert verdict.effects["color"].matched_on == ("class",)
    assert "color" not in verdict.relies and verdict.outcome != "color"
    unmatched, _ = _verdict(design, HandBuilt("shape"), seed=2, concepts=("color",), targets=False)
    assert unmatched.effects["color"].value > 0.5  # what matching on the class prevents


def test_a_secondary_shortcut_counts_although_the_digit_leads():
    """Every red digit goes to class 0, the rest follow the digit: shape leads, colour counts too."""
    design = ProbeDesign(images=2000, classes=10, colors=10)
    verdict, truth = _verdict(design, HandBuilt("secondary"), seed=3)
    assert verdict.outcome == "shape"
    assert verdict.relies == ("shape", "color")
    assert verdict.effects["color"].value == pytest.approx(truth["color"], abs=0.05)
    assert verdict.effects["color"].value_classes["color0"] == "0"


def test_a_model_that_follows_nothing_reads_none_and_one_that_follows_colour_reads_colour():
    design = ProbeDesign(images=600)
    constant, _ = _verdict(design, HandBuilt("constant"), seed=4)
    assert constant.outcome == "none" and constant.effects["color"].hi < 0.1
    colour, _ = _verdict(design, HandBuilt("mixture", strength=1.0, noise=0.0), seed=4)
    assert colour.outcome == "color" and colour.effects["color"].value == pytest.approx(1.0)
    assert colour.effects["shape"].value == pytest.approx(0.0, abs=0.02)


def test_missing_labels_and_class_imbalance_leave_the_effect_on_target():
    for layout in ("missing", "imbalanced"):
        design = ProbeDesign(images=1500, classes=4, colors=4, layout=layout)
        verdict, truth = _verdict(design, HandBuilt("mixture", strength=0.5), seed=5)
        assert verdict.effects["color"].value == pytest.approx(truth["color"], abs=0.05), layout
        assert verdict.outcome == "shape" or "color" in verdict.relies


def test_a_concept_that_never_varies_alone_makes_the_outcome_undecided():
    """Every red digit is a 5 (a confounded split): colour cannot be measured apart from shape."""
    digit = np.repeat([0, 1], 50)
    verdict = assess(
        digit.copy(),
        {"shape": digit, "color": digit},
        {"shape": ["5", "8"], "color": ["r", "g"]},
        targets=digit,
        draws=50,
        permutations=50,
    )
    assert verdict.outcome == "undecided" and verdict.reason == "confounded probe set"


def test_interval_covers_the_flip_rate_of_a_partial_shortcut():
    """Coverage over 60 probe sets of 400 images (a simulation; the full grid is experiments/validate_verdict.py)."""
    design, model = ProbeDesign(images=400, classes=4, colors=4), HandBuilt("mixture", strength=0.3)
    big = design.__class__(images=200_000, classes=4, colors=4).draw(np.random.default_rng(99))
    truth = model.flip_rates(big, design)["color"]
    hits = []
    for seed in range(60):
        verdict, _ = _verdict(design, model, seed=100 + seed, draws=150, permutations=20)
        e = verdict.effects["color"]
        hits.append(e.lo <= truth <= e.hi)
    assert 0.85 <= np.mean(hits) <= 1.0


@pytest.mark.parametrize("bad", [{"color": np.array([0, 2, 1])}, {"color": np.array([0, -2, 1])}])
def test_values_outside_their_names_are_one_line_errors(bad):
    with pytest.raises(ValueError, match="outside"):
        assess(np.array([0, 1, 0]), bad, {"color": ["red", "green"]})


@pytest.mark.parametrize(
    ("pred", "color", "classes", "message"),
    [
        ([0, 1, 0], [0.0, np.nan, 1.0], None, "concept 'color': indices must be whole numbers, got nan"),
        ([0.0, 1.5, 0.0], [0, 1, 1], None, "pred: indices must be whole numbers, got 1.5"),
        ([0, 1, 0], ["red", "green", "red"], None, "concept 'color': indices must be integers"),
        ([0, 4, 1], [0, 1, 1], 2, "predicted class 4 outside the 2 classes given"),
        ([], [], None, "empty probe set"),
    ],
)
def test_inputs_that_would_be_truncated_or_crash_inside_are_one_line_errors(pred, color, classes, message):
    """A fractional class or a NaN label was cast to an integer (1.5 -> class 1, NaN -> a huge negative index);
    a prediction beyond the classes given or an empty probe set failed deep inside with a reshape error."""
    with pytest.raises(ValueError, match=re.escape(message)):
        assess(np.array(pred), {"color": np.array(color)}, {"color": ["red", "green"]}, classes=classes)


def test_whole_numbers_given_as_floats_are_accepted_as_indices():
    pred = np.array([0, 1] * 20)
    as_float = assess(pred.astype(float), {"color": pred.astype(float)}, {"color": ["red", "green"]}, draws=50)
    as_int = assess(pred, {"color": pred}, {"color": ["red", "green"]}, draws=50)
    assert as_float.effects["color"].value == as_int.effects["color"].value == 1.0


def test_a_shortcut_nobody_listed_is_flagged_not_read_as_none():
    """Half the predictions follow the background, which is not listed: the listed concepts read ~0, yet images
    that agree on them and on the class are predicted apart: 'something unlisted decides', not 'none'."""
    design = ProbeDesign(images=1000)
    hidden, _ = _verdict(design, HandBuilt("mixture", "background", 0.5), seed=7, concepts=("color",))
    assert hidden.unexplained.lo > 0.2 and hidden.unlisted
    assert hidden.outcome == "undecided" and hidden.reason == "something unlisted decides"
    listed, _ = _verdict(design, HandBuilt("mixture", "color", 1.0), seed=7, concepts=("color",))
    assert listed.outcome == "color" and listed.unexplained.hi < 0.2  # colour decides: its cells agree
    # the same pairs counted by hand: same class (no listed concept counts), different predictions
    v = design.draw(np.random.default_rng(7))
    pred = HandBuilt("mixture", "background", 0.5).predict(v, 2)
    num = den = 0
    for cell in set(v["shape"].tolist()):
        idx = [i for i in range(len(pred)) if v["shape"][i] == cell]
        pairs = [(i, j) for a, i in enumerate(idx) for j in idx[a + 1 :]]
        num += len(idx) * sum(pred[i] != pred[j] for i, j in pairs) / len(pairs)
        den += len(idx)
    assert hidden.unexplained.point == pytest.approx(num / den, abs=1e-9)


def test_a_misread_class_concept_is_the_class_when_the_class_names_are_given():
    """Captions read the digit with 5% misreadings (into digits that are no class): without class names it never
    varies alone within a class, so the outcome stays undecided; with them it is the class, and the verdict is the
    one the exact digit labels give."""
    design = ProbeDesign(images=600)
    v = design.draw(np.random.default_rng(3))
    pred = HandBuilt("mixture", "color", 1.0).predict(v, 2)
    exact = v["observed_shape"]
    rng = np.random.default_rng(4)
    read = np.where(rng.random(len(exact)) < 0.05, rng.integers(2, 10, len(exact)), exact)  # digits 0..9
    names = {"digit": [str(i) for i in range(10)], "color": ["red", "green"]}
    kw = dict(targets=exact, draws=100, permutations=100, seed=0)
    by_labels = assess(pred, {"digit": exact, "color": v["observed_color"]}, names, classes=["0", "1"], **kw)
    by_reading = assess(pred, {"digit": read, "color": v["observed_color"]}, names, classes=["0", "1"], **kw)
    unnamed = assess(pred, {"digit": read, "color": v["observed_color"]}, names, classes=2, **kw)
    assert by_labels.outcome == "color" and by_reading.outcome == "color"
    assert by_reading.effects["color"].value == by_labels.effects["color"].value
    assert unnamed.outcome == "undecided"


def _tv_by_hand(dist: np.ndarray) -> float:
    """Mean total variation over the value pairs of [V, K] predicted-class distributions (balanced values)."""
    v = len(dist)
    pairs = [(a, b) for a in range(v) for b in range(a + 1, v)]
    return float(np.mean([0.5 * np.abs(dist[a] - dist[b]).sum() for a, b in pairs]))


def test_the_interval_brackets_a_diffuse_effect_that_the_crossfitted_estimate_underreads():
    """Ten classes, ten values, 40 images per value, each value moving many classes a little (as a trained
    network's confusions do): directions learned from 32 images are often wrong, so the cross-fitted estimate
    reads low; the interval's upper end (the plug-in estimate, which can only read high) still covers."""
    rng = np.random.default_rng(5)
    dist = rng.dirichlet(np.full(10, 0.7), size=10) * 0.5 + np.eye(10) * 0.5  # half follows the value
    truth = _tv_by_hand(dist)
    points, hits = [], []
    for seed in range(30):
        r = np.random.default_rng(100 + seed)
        value = np.repeat(np.arange(10), 40)
        pred = np.array([r.choice(10, p=dist[v]) for v in value])
        e = assess(
            pred, {"c": value}, {"c": [f"v{i}" for i in range(10)]}, classes=10, draws=150, permutations=20, seed=seed
        ).effects["c"]
        points.append(e.value)
        hits.append(e.lo <= truth <= e.hi)
    assert np.mean(points) < truth - 0.02  # the cross-fitted estimate is conservative here...
    assert np.mean(hits) >= 0.9  # ...and the interval still holds the truth


def _zero_of(trials: float) -> float:
    """Wilson's 95% upper bound for 0 successes in ``trials`` (the rule of three, about 3.84 / trials)."""
    z2 = 1.959963984540054**2
    return z2 / (trials + z2)


def _informative_by_hand(targets: np.ndarray, color: np.ndarray) -> float:
    """Per class, the harmonic mean of the two colours' images, summed: 2 n_red n_green / n."""
    out = 0.0
    for k in np.unique(targets):
        a, b = np.sum((targets == k) & (color == 0)), np.sum((targets == k) & (color == 1))
        out += 2 * a * b / (a + b) if min(a, b) >= 2 else 0.0
    return out


def test_no_prediction_following_the_concept_still_leaves_an_upper_bound():
    """Predictions fixed by the class: every resample reads exactly 0, yet 0 of ~n/2 is not proof of 0 (rule of
    three: Wilson's upper bound for 0 successes in ~200 trials)."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 400)
    color = rng.integers(0, 2, 400)
    e = assess(
        targets, {"color": color}, {"color": ["red", "green"]}, targets=targets, classes=2, draws=100, permutations=20
    ).effects["color"]
    assert e.value == 0.0
    trials = _informative_by_hand(targets, color)
    assert 190 < trials <= 200
    assert e.lo <= 0.0 and e.hi == pytest.approx(_zero_of(trials), rel=1e-6)


def test_on_a_correlated_probe_set_the_floor_counts_the_images_off_the_diagonal():
    """90% of the images have their class's colour: a colour effect is read from the other tenth, so 0 flips
    among 100 images bounds the share by Wilson's bound for 0 of ~18 trials (0.18), not of 50 (0.07) — the
    trained 100-image correlated cell where colours moving 12-15% of predictions read 0 [0, 0.07]."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        targets = rng.integers(0, 2, 100)
        color = np.where(rng.random(100) < 0.9, targets, rng.integers(0, 2, 100))
        e = assess(
            targets,
            {"color": color},
            {"color": ["red", "green"]},
            targets=targets,
            classes=2,
            draws=100,
            permutations=20,
        ).effects["color"]
        trials = _informative_by_hand(targets, color)
        assert 0 < trials < 20
        assert e.value == 0.0 and e.hi == pytest.approx(_zero_of(trials), rel=1e-6)
        assert e.hi > 0.15


def test_the_upper_end_of_pure_noise_sits_below_the_noise_of_the_plugin():
    """A random predictor, 10 classes, a 10-valued concept, 20 images per value: the truth is 0; the plug-in
    estimate reads the noise of 20-image class distributions (computed here by hand, ~0.37). The upper end
    takes the plug-in less its bootstrap-estimated bias: it still holds 0 and lies well below that noise."""
    names = {"c": [f"v{i}" for i in range(10)]}
    uppers, noise = [], []
    for seed in range(6):
        r = np.random.default_rng(300 + seed)
        value, pred = np.repeat(np.arange(10), 20), r.integers(0, 10, 200)
        dist = np.stack([np.bincount(pred[value == a], minlength=10) / 20 for a in range(10)])
        noise.append(_tv_by_hand(dist))
        e = assess(pred, {"c": value}, names, classes=10, draws=200, permutations=20, seed=seed).effects["c"]
        assert e.lo <= 0.0 <= e.hi
        uppers.append(e.hi)
    assert np.mean(noise) > 0.3
    assert np.mean(uppers) < np.mean(noise) - 0.05
