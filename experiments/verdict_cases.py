"""The cases where the earlier verdict failed, rerun on the current one (hand-built models, exact truth).

    python experiments/verdict_cases.py [--reps 20] [--seed-offset 5000] [--out cases.md]

Each case is a hand-built model (``xai_lightning.verdict.simulate``) on a probe design, drawn ``--reps`` times
with fresh seeds; the verdict is computed exactly as the ConceptProbe does (class labels given). Reported per
case: the concept's counterfactual flip rate (200,000 images of the design), the median effect and interval,
how often the interval covers the flip rate, how often the concept counts, and the outcomes:

* a partial colour shortcut followed by ~38% and ~25% of the predictions, 500 probe images (the earlier
  verdict read the square of the effect: ``none``);
* a colour shortcut of ~77% on a 20-image probe set (the earlier verdict said ``none`` with upper bounds of 0.5);
* a model that predicts at random, 10 classes x 10 colours, 100 to 1,000 images (the earlier bootstrap said
  ``undecided``: both lower bounds above δ);
* a digit reader on a 90/10 correlated and on a class-imbalanced probe set (a pooled baseline read colour);
* a model that sends red digits to class 0 and otherwise reads the digit (the alarm fired only on the top
  concept);
* a background shortcut nobody listed (only shape and colour are).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import numpy as np

from xai_lightning.verdict import assess
from xai_lightning.verdict.simulate import HandBuilt, ProbeDesign

CASES = [
    ("colour on 38% of predictions, 500 images", ProbeDesign(500), HandBuilt("mixture", "color", 0.4), "color"),
    ("colour on 25% of predictions, 500 images", ProbeDesign(500), HandBuilt("mixture", "color", 0.265), "color"),
    ("colour on 77% of predictions, 20 images", ProbeDesign(20), HandBuilt("mixture", "color", 0.81), "color"),
    *[
        (
            f"random predictor, 10 classes x 10 colours, {n} images",
            ProbeDesign(n, 10, 10, 4),
            HandBuilt("random"),
            "color",
        )
        for n in (100, 250, 1000)
    ],
    (
        "digit reader, 90/10 correlated colours, 1,000 images",
        ProbeDesign(1000, layout="correlated"),
        HandBuilt("shape"),
        "color",
    ),
    (
        "digit reader, half the images class 0 (4 classes), 1,000 images",
        ProbeDesign(1000, 4, 4, 3, "imbalanced"),
        HandBuilt("shape"),
        "color",
    ),
    *[
        (
            f"red digits -> class 0, the rest by digit, {k} classes, 1,000 images",
            ProbeDesign(1000, k, k, 2),
            HandBuilt("secondary", "color", 1.0),
            "color",
        )
        for k in (2, 10)
    ],
    (
        "background on 50% of predictions, not listed, 1,000 images",
        ProbeDesign(1000),
        HandBuilt("mixture", "background", 0.5),
        "color",
    ),
    (
        "background on every prediction, not listed, 1,000 images",
        ProbeDesign(1000),
        HandBuilt("mixture", "background", 1.0),
        "color",
    ),
]


def run_case(design: ProbeDesign, model: HandBuilt, concept: str, reps: int, seed0: int) -> dict:
    big = ProbeDesign(200_000, design.classes, design.colors, design.backgrounds, design.layout)
    truth = model.flip_rates(big.draw(np.random.default_rng(7)), big)[concept]
    listed = (
        ("shape", "color")
        if model.concept == "background" and model.kind == "mixture"
        else ("shape", "color", "background")
    )
    names = {c: [f"{c}{i}" for i in range(design.cards[c])] for c in listed}
    effects, covered, counts, outcomes = [], 0, 0, Counter()
    for rep in range(reps):
        v = design.draw(np.random.default_rng(seed0 + rep))
        pred = model.predict(v, design.classes)
        verdict = assess(
            pred,
            {c: v[f"observed_{c}"] for c in listed},
            names,
            targets=v["observed_shape"],
            classes=design.classes,
            seed=seed0 + rep,
        )
        e = verdict.effects[concept]
        effects.append((e.value, e.lo, e.hi))
        covered += bool(e.lo <= truth <= e.hi)
        counts += bool(e.relies)
        outcomes[verdict.outcome + (f": {verdict.reason}" if verdict.reason else "")] += 1
    med = np.nanmedian(np.asarray(effects, dtype=float), axis=0)
    return {"truth": truth, "median": med, "covered": covered, "counts": counts, "outcomes": outcomes, "reps": reps}


def markdown(rows: list[tuple[str, str, dict]]) -> str:
    lines = [
        "| case | concept | flip rate | median effect [lo, hi] | covered | counts | outcomes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, concept, r in rows:
        m, n = r["median"], r["reps"]
        outs = ", ".join(f"{k} {v}" for k, v in r["outcomes"].most_common())
        lines.append(
            f"| {name} | {concept} | {r['truth']:.3f} | {m[0]:+.3f} [{m[1]:+.3f}, {m[2]:+.3f}] | {r['covered']}/{n} "
            f"| {r['counts']}/{n} | {outs} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--seed-offset", type=int, default=5000)
    ap.add_argument("--out", default=None, help="also write the table here")
    args = ap.parse_args(argv)
    rows = []
    for i, (name, design, model, concept) in enumerate(CASES):
        rows.append((name, concept, run_case(design, model, concept, args.reps, args.seed_offset + 1000 * i)))
        print(f"[cases] {name}", file=sys.stderr, flush=True)
    text = markdown(rows)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
