"""The verdict outside the validation grid: hand-built models and probe sets the grid does not hold.

    python experiments/verdict_beyond.py [--reps 40] [--seed-offset 950000] [--out beyond.md] [--only NAME ...]

The grid (``validate_verdict.py``) varies classes, probe size and layout for one family of models. These cases
vary what it holds fixed: a colour effect whose sign flips with the background (an interaction with opposite
signs), three concepts each deciding part of the predictions, eight colours for two classes, a rare colour
that decides, a binary colour with ten classes, a colour that goes with the background (not the class) while
the background decides, predictions skewed to one class, no class labels, a random predictor over thin cells,
and a 90/10 correlated 10 x 10 design. Every model predicts 5% of the images at random; the truth is each
concept's counterfactual flip rate (every other value, everything else kept) on 200,000 images of the design.

Judged as the grid's targets, read at the cases' resolution (fixed before the first run on these seeds):
per (case, concept), the coverage of the intervals not flagged thin is not below 0.90 beyond its binomial noise
(Clopper-Pearson at family-wise 95% over the pairs); the median effect is within ±0.05 + 2 standard errors of
the flip rate (probe sets not flagged thin); no concept with a flip rate below δ = 0.1 counts; no decided
outcome is wrong (a named concept moves at least δ and no listed concept's flip rate exceeds its own by 0.2).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from xai_lightning.io import atomic_write_text
from xai_lightning.verdict import MIN_EFFECT, assess
from xai_lightning.verdict.simulate import flip_rates, with_noise

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verdict_lab import clopper_pearson, median_within  # noqa: E402 - the helpers beside this script

Values = dict[str, np.ndarray]


def _noisy(v: Values, k: int, pred: np.ndarray, noise: float = 0.05) -> np.ndarray:
    return with_noise(v, k, pred, noise)


MODELS: dict[str, Callable[[Values, int], np.ndarray]] = {
    # half the images by colour, the class the colour + background points to: red -> 0 on one background, 1 on
    # the other (an interaction whose sign flips); the rest by digit
    "sign_flip": lambda v, k: _noisy(v, k, np.where(v["u1"] < 0.5, (v["color"] + v["background"]) % k, v["shape"])),
    "three_way": lambda v, k: _noisy(
        v, k, np.where(v["u1"] < 0.3, v["color"] % k, np.where(v["u1"] < 0.5, v["background"] % k, v["shape"]))
    ),
    "color_50": lambda v, k: _noisy(v, k, np.where(v["u1"] < 0.5, v["color"] % k, v["shape"])),
    "color_25": lambda v, k: _noisy(v, k, np.where(v["u1"] < 0.25, v["color"] % k, v["shape"])),
    "red_to_0": lambda v, k: _noisy(v, k, np.where(v["color"] == 0, 0, v["shape"])),
    "red_to_0_half": lambda v, k: _noisy(v, k, np.where((v["color"] == 0) & (v["u1"] < 0.5), 0, v["shape"])),
    "background_60": lambda v, k: _noisy(v, k, np.where(v["u1"] < 0.6, v["background"] % k, v["shape"])),
    "mostly_class_0": lambda v, k: _noisy(
        v, k, np.where(v["u1"] < 0.7, 0, np.where(v["u1"] < 0.8, v["color"] % k, v["shape"]))
    ),
    "digit": lambda v, k: _noisy(v, k, v["shape"]),
    "random": lambda v, k: _noisy(v, k, v["shape"], noise=1.0),
}


@dataclass(frozen=True)
class Case:
    """A model on a probe design: ``images`` of ``classes`` classes, concept cardinalities ``cards``; optional
    ``value_p`` (a concept's value distribution), ``class_p`` (the classes'), ``follows`` = (source, concept,
    share): the concept equals the source's value (mod its cardinality) for that share of the images."""

    name: str
    model: str
    images: int
    classes: int
    cards: dict[str, int]
    listed: tuple[str, ...] = ("shape", "color", "background")
    targets: bool = True
    value_p: dict[str, list[float]] = field(default_factory=dict)
    class_p: list[float] | None = None
    follows: tuple[str, str, float] | None = None

    def draw(self, n: int, rng: np.random.Generator) -> Values:
        k = self.classes
        v = {"shape": rng.choice(k, n, p=self.class_p)}
        for c, card in self.cards.items():
            v[c] = rng.choice(card, n, p=self.value_p.get(c))
        if self.follows:
            source, concept, share = self.follows
            v[concept] = np.where(rng.random(n) < share, v[source] % self.cards[concept], v[concept])
        v["u1"], v["u2"] = rng.random(n), rng.random(n)
        return v

    def flip_rates(self) -> dict[str, float]:
        """Per concept, the counterfactual flip rate on 200,000 images of the design (noise kept)."""
        v = self.draw(200_000, np.random.default_rng(7))
        return flip_rates(lambda x: MODELS[self.model](x, self.classes), v, {"shape": self.classes, **self.cards})


def _colours(k: int) -> dict[str, int]:
    return {"color": k, "background": 2}


RARE = [0.05, 0.95 / 3, 0.95 / 3, 0.95 / 3]
CASES = [
    Case("colour sign flips with the background, 1,000 images", "sign_flip", 1000, 2, _colours(2)),
    Case("colour sign flips with the background, 250 images", "sign_flip", 250, 2, _colours(2)),
    Case("three concepts (30/20/50%), 4 classes, 1,000 images", "three_way", 1000, 4, {"color": 4, "background": 4}),
    Case("three concepts (30/20/50%), 4 classes, 250 images", "three_way", 250, 4, {"color": 4, "background": 4}),
    Case("8 colours, 2 classes, colour on 50%, 1,000 images", "color_50", 1000, 2, _colours(8)),
    Case("8 colours, 2 classes, colour on 25%, 250 images", "color_25", 250, 2, _colours(8)),
    Case("a rare colour (5%) sends digits to 0, 4 classes", "red_to_0", 1000, 4, _colours(4), value_p={"color": RARE}),
    Case("binary colour, 10 classes, red -> 0 for half, 1,000", "red_to_0_half", 1000, 10, _colours(2)),
    Case("binary colour, 10 classes, red -> 0 for half, 250", "red_to_0_half", 250, 10, _colours(2)),
    *[
        Case(
            f"colour goes with the background 90/10, background on 60%, {n:,} images",
            "background_60",
            n,
            2,
            _colours(2),
            follows=("background", "color", 0.9),
        )
        for n in (1000, 250)
    ],
    Case("70% predicted class 0, colour on 10%, 4 classes", "mostly_class_0", 1000, 4, _colours(4)),
    Case(
        "digit reader, imbalanced and 90/10 correlated, colour listed alone",
        "digit",
        1000,
        4,
        _colours(4),
        listed=("color",),
        class_p=[0.5, 1 / 6, 1 / 6, 1 / 6],
        follows=("shape", "color", 0.9),
    ),
    Case("colour on 25%, 4 classes, no class labels", "color_25", 1000, 4, _colours(4), targets=False),
    Case("random predictor, 4 classes x 8 colours, 250 images", "random", 250, 4, _colours(8)),
    Case(
        "colour on 50%, 10 classes x 10 colours, 90/10 correlated",
        "color_50",
        1000,
        10,
        {"color": 10, "background": 4},
        follows=("shape", "color", 0.9),
    ),
]


def run_case(case: Case, reps: int, seed0: int) -> dict:
    """Per concept the reps' (effect, lo, hi, counts, thin); the outcomes; the wrong decided ones; the truth."""
    truth = case.flip_rates()
    cards = {"shape": case.classes, **case.cards}
    names = {c: [f"{c}{i}" for i in range(cards[c])] for c in case.listed}
    per = {c: [] for c in case.listed}
    outcomes, wrong = Counter(), 0
    for rep in range(reps):
        v = case.draw(case.images, np.random.default_rng(seed0 + rep))
        pred = MODELS[case.model](v, case.classes)
        verdict = assess(
            pred,
            {c: v[c] for c in case.listed},
            names,
            targets=v["shape"] if case.targets else None,
            classes=case.classes,
            seed=seed0 + rep,
        )
        for c in case.listed:
            e = verdict.effects[c]
            per[c].append((e.value, e.lo, e.hi, e.relies, e.thin))
        outcomes[verdict.outcome + (f": {verdict.reason}" if verdict.reason else "")] += 1
        named = verdict.outcome
        if named in truth and (truth[named] < MIN_EFFECT or any(truth[c] - truth[named] >= 0.2 for c in case.listed)):
            wrong += 1
    return {"truth": truth, "per": per, "outcomes": outcomes, "wrong": wrong, "reps": reps}


def judge(rows: list[tuple[Case, dict]]) -> list[dict]:
    """One line per (case, concept) with the targets' readings (module docstring)."""
    level = 1 - 0.05 / max(sum(len(case.listed) for case, _r in rows), 1)
    out = []
    for case, r in rows:
        for c in case.listed:
            a = np.asarray(r["per"][c], dtype=float)
            t, judged = r["truth"][c], (a[:, 4] == 0) & np.isfinite(a[:, 0])
            held = int(((a[judged, 1] <= t + 1e-9) & (t - 1e-9 <= a[judged, 2])).sum())
            n = int(judged.sum())
            err = a[judged, 0] - t
            out.append(
                {
                    "case": case.name,
                    "concept": c,
                    "flip": t,
                    "median": np.nanmedian(a[:, :3], axis=0) if len(a) else [float("nan")] * 3,
                    "covered": (held, n),
                    "coverage_ok": n == 0 or clopper_pearson(held, n, level)[1] >= 0.90,
                    "accurate": n < 2 or median_within(err),
                    "counts": int(a[:, 3].sum()),
                    "false_positive": int(a[:, 3].sum()) if t < MIN_EFFECT else 0,
                    "thin": int((a[:, 4] == 1).sum()),
                }
            )
    return out


def markdown(rows: list[tuple[Case, dict]]) -> str:
    lines = judge(rows)
    fp = sum(x["false_positive"] for x in lines)
    wrong = sum(r["wrong"] for _c, r in rows)
    head = [
        f"Coverage not below 0.90 beyond noise: {sum(x['coverage_ok'] for x in lines)}/{len(lines)}; "
        f"median within ±0.05 + 2 SE: {sum(x['accurate'] for x in lines)}/{len(lines)}; "
        f"concepts below δ counted: {fp}; wrong decided outcomes: {wrong}.",
        "",
        "| case | concept | flip rate | median effect [lo, hi] | covered (not thin) | counts | thin | judged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in lines:
        m, (held, n) = x["median"], x["covered"]
        marks = ("" if x["coverage_ok"] else " coverage ✗") + ("" if x["accurate"] else " effect ✗")
        marks += " false positive ✗" if x["false_positive"] else ""
        head.append(
            f"| {x['case']} | {x['concept']} | {x['flip']:.3f} | {m[0]:+.3f} [{m[1]:+.3f}, {m[2]:+.3f}] | "
            f"{held}/{n} | {x['counts']} | {x['thin']} | {marks.strip() or '✓'} |"
        )
    head += ["", "Outcomes:", ""]
    head += [
        f"- {case.name}: "
        + ", ".join(f"{k} {v}" for k, v in r["outcomes"].most_common())
        + (f" (**{r['wrong']} wrong**)" if r["wrong"] else "")
        for case, r in rows
    ]
    return "\n".join(head) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--seed-offset", type=int, default=950_000)
    ap.add_argument("--out", default=None, help="also write the table here")
    ap.add_argument("--only", nargs="*", default=None, help="cases whose name contains one of these")
    args = ap.parse_args(argv)
    rows = []
    for i, case in enumerate(CASES):
        if args.only and not any(o in case.name for o in args.only):
            continue
        rows.append((case, run_case(case, args.reps, args.seed_offset + 1000 * i)))
        print(f"[beyond] {case.name}", file=sys.stderr, flush=True)
    text = markdown(rows)
    if args.out:
        atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
