"""Validation of the verdict where users live (targets fixed before the runs: docs/verdict.md).

    python experiments/validate_verdict.py OUT [--part handbuilt trained] [--reps 6] [--trained-reps 4]
        [--seed-offset 1000] [--mnist PATH] [--workers 2] [--quick] [--retest 40] [--retest-trained 20]

Two parts, each a grid of probe designs: 2, 4 and 10 classes; 100, 250, 1,000 and 5,000 probe images;
balanced, 90/10 correlated (colour goes with the class), class-imbalanced (half class 0) and 10% missing
labels; concepts shape, colour and background.

* ``handbuilt``: models whose reliance is known exactly (``xai_lightning.verdict.simulate``): partial colour
  shortcuts (0.05 to 1.0 of the predictions), a background shortcut, a secondary shortcut (red -> class 0),
  an AND of colour and shape, a shape reader, a constant, a non-monotone two-way colour effect, and a
  background shortcut the user did not list.
* ``trained``: ResNet-18s trained on coloured digits and digits over textures with graded shortcuts (2, 4
  and 10 classes; ``--mnist`` for real handwriting in the 10-class family), probed on designs drawn from a
  large probe split; the truth is each model's counterfactual flip rate per concept (every other value of
  the concept, per image), averaged as the design draws its images.

Every verdict is computed exactly as the ConceptProbe does (its defaults, the class labels given).
``--retest N`` / ``--retest-trained N``: every (cell, model, concept) that misses target 1 is measured again on
N fresh probe sets (designs), to tell a bias from the noise of a few (docs/verdict.md, round five).
Writes OUT/handbuilt.jsonl and OUT/trained.jsonl (one line per verdict, resumable), OUT/retest_<part>.jsonl and
OUT/validation.md.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import os
import sys
import time
from collections import defaultdict
from multiprocessing import Pool

import numpy as np

from xai_lightning.verdict.effects import Z95

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verdict_lab import (  # noqa: E402 - the helpers beside this script
    SIZES,
    TrainSpec,
    clopper_pearson,
    design_weights,
    draw_design,
    finite_tv,
    flip_share,
    layout_weights,
    median_within,
    potential_outcomes,
    read_jsonl,
    records,
    train,
    verdict_of,
    write_jsonl,
)

from xai_lightning.io import atomic_write_text  # noqa: E402
from xai_lightning.verdict import MIN_EFFECT  # noqa: E402
from xai_lightning.verdict.simulate import LAYOUTS, HandBuilt, ProbeDesign  # noqa: E402

SHAPES = ((2, 2, 2), (4, 4, 3), (10, 10, 4))  # classes, colours, backgrounds
MONOTONE = [HandBuilt("mixture", "color", p) for p in (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)] + [
    HandBuilt("mixture", "background", 0.4),
    HandBuilt("secondary", "color", 1.0),
    HandBuilt("and", "color", 1.0),
    HandBuilt("shape"),
    HandBuilt("constant"),
]
OTHER = [HandBuilt("two_way", "color", 0.8)]  # not monotone: the effect is only a lower bound
UNLISTED = HandBuilt("mixture", "background", 0.5)  # its concept is not listed
CONCEPTS = ("shape", "color", "background")
CLEAR = 0.2


def model_name(m: HandBuilt) -> str:
    return f"{m.kind}:{m.concept}:{m.strength:g}"


def cell_name(design: ProbeDesign) -> str:
    return f"K{design.classes}/n{design.images}/{design.layout}"


# ---- part A: hand-built models ------------------------------------------------------------------------------
@functools.cache
def _truth(classes: int, colors: int, backgrounds: int, layout: str, model: HandBuilt) -> dict[str, float]:
    """Population flip rates: 200,000 images of the design (they do not depend on its size)."""
    big = ProbeDesign(200_000, classes, colors, backgrounds, layout)
    return model.flip_rates(big.draw(np.random.default_rng(7)), big)


def _handbuilt_job(job: tuple) -> list[dict]:
    design, model, listed, reps, seed0, truth = job
    out = []
    names = {c: [f"{c}{i}" for i in range(design.cards[c])] for c in listed}
    for rep in range(reps):
        seed = seed0 + rep
        v = design.draw(np.random.default_rng(seed))
        pred = model.predict(v, design.classes)
        t0 = time.perf_counter()
        verdict = verdict_of(
            {"pred": pred, "target": v["observed_shape"], **{c: v[f"observed_{c}"] for c in listed}},
            names,
            design.classes,
            seed,
        )
        row = {
            "part": "handbuilt",
            "cell": cell_name(design),
            "classes": design.classes,
            "images": design.images,
            "layout": design.layout,
            "model": model_name(model),
            "monotone": model.kind not in ("two_way",) and listed == CONCEPTS,
            "listed": list(listed),
            "seed": seed,
            "seconds": time.perf_counter() - t0,
        }
        row.update(_verdict_row(verdict, truth, listed))
        out.append(row)
    return out


def _verdict_row(verdict, truth: dict[str, float], listed) -> dict:
    row = {"outcome": verdict.outcome, "reason": verdict.reason, "relies": list(verdict.relies)}
    for c in CONCEPTS:
        row[f"flip/{c}"] = truth[c]
    for c in listed:
        e = verdict.effects[c]
        row.update({f"effect/{c}": e.value, f"lo/{c}": e.lo, f"hi/{c}": e.hi, f"p/{c}": e.p_value})
        row.update({f"relies/{c}": e.relies, f"thin/{c}": e.thin, f"cells/{c}": e.cell_median})
    return row


def handbuilt_jobs(reps: int, offset: int, quick: bool) -> list[tuple]:
    jobs = []
    sizes = (100, 1000) if quick else SIZES
    for (k, vc, vb), n, layout in itertools.product(SHAPES, sizes, LAYOUTS):
        design = ProbeDesign(n, k, vc, vb, layout)
        models = [(m, CONCEPTS) for m in MONOTONE + OTHER] + [(UNLISTED, ("shape", "color"))]
        for j, (model, listed) in enumerate(models):
            seed0 = offset + 100_000 * SHAPES.index((k, vc, vb)) + 10_000 * SIZES.index(n) + 1_000 * j
            seed0 += 100 * LAYOUTS.index(layout)
            jobs.append((design, model, listed, reps, seed0, _truth(k, vc, vb, layout, model)))
    return jobs


# ---- part B: trained models ----------------------------------------------------------------------------------
def trained_specs(quick: bool) -> list[TrainSpec]:
    two, four = ["red", "green"], ["red", "green", "blue", "yellow"]
    ten = ["red", "green", "blue", "yellow", "cyan", "magenta", "orange", "white", "purple", "pink"]
    specs = [
        TrainSpec(f"k2_c{c:g}", [5, 8], two, {"conflict_fraction": c}, train_per_class=1000)
        for c in (0.0, 0.005, 0.02, 0.05, 0.2)
    ]
    specs.append(TrainSpec("k2_random", [5, 8], two, {"color_mode": "random"}, train_per_class=1000))
    specs += [TrainSpec(f"k4_c{c:g}", [1, 4, 7, 9], four, {"conflict_fraction": c}) for c in (0.0, 0.02, 0.1)]
    specs.append(TrainSpec("k4_random", [1, 4, 7, 9], four, {"color_mode": "random"}))
    # the real test digits hold 892-1135 per class: their probe split stays at 5,000 (its 5,000-image designs are
    # the split itself, whatever the layout)
    ten_kw = {"train_per_class": 300, "probe_images": 5000}
    specs += [TrainSpec(f"k10_c{c:g}", list(range(10)), ten, {"conflict_fraction": c}, **ten_kw) for c in (0.0, 0.05)]
    specs.append(TrainSpec("k10_random", list(range(10)), ten, {"color_mode": "random"}, **ten_kw))
    scenes = {"color_mode": "random"}
    specs += [
        TrainSpec(f"scenes_c{c:g}", [5, 8], two, {**scenes, "background_conflict_fraction": c}, scenes=True)
        for c in (0.0, 0.05)
    ]
    specs.append(TrainSpec("scenes_random", [5, 8], two, {**scenes, "background_mode": "random"}, scenes=True))
    return specs[:2] + specs[6:7] if quick else specs


def trained_rows(
    spec: TrainSpec,
    out: str,
    seed: int,
    reps: int,
    mnist: str | None,
    quick: bool,
    cells: set[str] | None = None,
    first_rep: int = 0,
) -> list[dict]:
    """Verdicts of one trained model on ``reps`` designs per grid cell (only ``cells`` when given; designs
    ``first_rep`` on, so that a retest draws fresh ones)."""
    source = mnist if (mnist and spec.name.startswith("k10")) else "synthetic"
    model, dm = train(spec, out, seed, source)
    data = dm.datasets["probe_set"]
    cards = {"shape": len(spec.digits), "color": len(spec.colors)}
    attrs = {"shape": "digit_index", "color": "color"}
    if spec.scenes:
        cards["background"], attrs["background"] = len(dm.background_names), "background"
    tables = potential_outcomes(model, data, cards)
    rec = records(model, data, attrs)
    per_image = {c: flip_share(t, rec[c]) for c, t in tables.items()}
    names = {c: [str(i) for i in range(cards[c])] for c in cards}
    rows = []
    sizes = (100, 1000) if quick else SIZES
    for n, layout in itertools.product(sizes, LAYOUTS):
        if cells is not None and f"n{n}/{layout}" not in cells:
            continue
        w = design_weights(layout_weights(layout, rec["shape"], rec["color"], cards["color"]), n)
        truth = {c: float(np.sum(w * f)) for c, f in per_image.items()}
        truth.update({c: float("nan") for c in CONCEPTS if c not in truth})
        tv = {c: finite_tv(t, _others(rec, c, cards), rec[c], w) for c, t in tables.items()}
        for rep in range(first_rep, first_rep + reps):
            rng = np.random.default_rng([seed, n, LAYOUTS.index(layout), rep])
            design = draw_design(rng, rec, n, layout, cards["color"], list(cards))
            verdict = verdict_of(design, names, len(spec.digits), seed + rep)
            row = {"part": "trained", "cell": f"n{n}/{layout}", "model": spec.name, "classes": len(spec.digits)}
            row.update({"images": n, "layout": layout, "seed": seed, "rep": rep, "monotone": True})
            row.update(_verdict_row(verdict, truth, list(cards)))
            row.update({f"tv/{c}": v for c, v in tv.items()})
            rows.append(row)
    return rows


def _others(rec: dict, concept: str, cards: dict[str, int]) -> np.ndarray:
    """Stratum id of the other concepts' joint values (the most finely matched comparison)."""
    key = np.zeros(len(rec["pred"]), dtype=np.int64)
    for c in cards:
        if c != concept:
            key = key * (cards[c] + 1) + rec[c] + 1
    return key


# ---- scoring -------------------------------------------------------------------------------------------------
def _pairs(rows: list[dict], monotone_only: bool = True, estimand: bool = False):
    """(row, concept, effect, lo, hi, truth, relies, thin) for every listed concept with a finite truth. The truth
    is the counterfactual flip rate, or with ``estimand`` the one-way share where it was measured (trained
    models: ``tv/<c>``; for a hand-built monotone model the two are equal)."""
    for r in rows:
        if monotone_only and not r["monotone"]:
            continue
        for c in CONCEPTS:
            if f"effect/{c}" not in r or not math.isfinite(r[f"flip/{c}"]):
                continue
            truth = r.get(f"tv/{c}", r[f"flip/{c}"]) if estimand else r[f"flip/{c}"]
            truth = min(max(truth, 0.0), 1.0)  # a share: a sum's rounding (1 + 7e-15) must not read as a miss
            yield r, c, r[f"effect/{c}"], r[f"lo/{c}"], r[f"hi/{c}"], truth, r[f"relies/{c}"], r[f"thin/{c}"]


def wrong_outcome(r: dict) -> bool:
    """A named concept that moves fewer than δ of the predictions, or that another listed concept's flip rate
    exceeds by ``CLEAR`` or more."""
    c = r["outcome"]
    if c in ("none", "undecided"):
        return False
    others = [r[f"flip/{o}"] for o in CONCEPTS if o != c and f"effect/{o}" in r and math.isfinite(r[f"flip/{o}"])]
    return r[f"flip/{c}"] < MIN_EFFECT or any(o - r[f"flip/{c}"] >= CLEAR for o in others)


def score(rows: list[dict]) -> dict:
    """Every target's numbers over a part's rows (docs/verdict.md)."""
    from scipy.stats import spearmanr

    pairs = list(_pairs(rows))
    by_cell, by_cell_flip = defaultdict(list), defaultdict(list)
    for p in _pairs(rows, estimand=True):
        by_cell[p[0]["cell"]].append(p)
    for p in pairs:
        by_cell_flip[p[0]["cell"]].append(p)
    errors, to_estimand = defaultdict(list), defaultdict(list)
    for r, c, eff, *_rest in pairs:
        errors[(r["cell"], r["model"], c)].append(eff - r[f"flip/{c}"])
    for r, c, eff, _lo, _hi, truth, *_rest in _pairs(rows, estimand=True):
        to_estimand[(r["cell"], r["model"], c)].append(eff - truth)
    thin_combo = {(r["cell"], r["model"], c) for r, c, *_x, thin in pairs if thin}
    accurate = {k: median_within(v) for k, v in errors.items() if np.isfinite(v).all()}
    on_estimand = {k: median_within(v) for k, v in to_estimand.items() if np.isfinite(v).all() and k not in thin_combo}
    detect = [relies for _r, _c, _e, _l, _h, flip, relies, _t in pairs if flip >= 0.3]
    finite = [(e, f) for _r, _c, e, _l, _h, f, _x, _t in pairs if math.isfinite(e)]
    return {
        "verdicts": len(rows),
        "accuracy": {
            "met": sum(v for k, v in accurate.items() if k not in thin_combo),
            "of": sum(1 for k in accurate if k not in thin_combo),
            "met_thin": sum(v for k, v in accurate.items() if k in thin_combo),
            "of_thin": sum(1 for k in accurate if k in thin_combo),
            "misses": sorted(
                f"{k[0]} {k[1]} {k[2]}: {np.median(errors[k]):+.3f}" for k, v in accurate.items() if not v
            ),
        },
        "on_estimand": (sum(on_estimand.values()), len(on_estimand)),
        "estimand_misses": sorted(
            f"{k[0]} {k[1]} {k[2]}: {np.median(to_estimand[k]):+.3f}" for k, ok in on_estimand.items() if not ok
        ),
        "miss_keys": sorted(k for k, ok in on_estimand.items() if not ok),
        "spearman": float(spearmanr(*zip(*finite))[0]) if len(finite) > 2 else float("nan"),
        "detection": (sum(detect), len(detect)),
        "coverage": {cell: _coverage(ps) for cell, ps in sorted(by_cell.items())},
        "coverage_of_flip": {cell: _coverage(ps) for cell, ps in sorted(by_cell_flip.items())},
        "wrong": [r for r in rows if wrong_outcome(r)],
        "outcomes": _outcome_counts(rows),
    }


def _coverage(pairs) -> tuple[int, int, int, int]:
    """(intervals not flagged thin that cover the flip rate, such intervals, thin ones covering, thin ones) in one
    grid cell."""
    fin = [(lo <= f <= hi, thin) for _r, _c, _e, lo, hi, f, _x, thin in pairs if math.isfinite(lo)]
    held = [hit for hit, thin in fin if not thin]
    thin = [hit for hit, thin in fin if thin]
    return sum(held), len(held), sum(thin), len(thin)


def _outcome_counts(rows: list[dict]) -> dict:
    out = defaultdict(lambda: defaultdict(int))
    for r in rows:
        key = r["outcome"] if r["outcome"] != "undecided" else f"undecided: {r['reason']}"
        out[r["model"]][key] += 1
    return {m: dict(v) for m, v in out.items()}


# ---- the report --------------------------------------------------------------------------------------------
def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def _coverage_lines(s: dict) -> list[str]:
    lines = [
        "| cell | covered / intervals (not thin) | coverage | in [0.90, 0.98] | thin: covered / intervals | "
        "coverage of the flip rate |",
        "|---|---|---|---|---|---|",
    ]
    for cell, (hit, n, thin_hit, thin_n) in s["coverage"].items():
        cov = hit / n if n else float("nan")
        ok = _mark(0.90 <= cov <= 0.98) if n else "– (all thin)"
        fh, fn, _th, _tn = s["coverage_of_flip"][cell]
        lines.append(f"| {cell} | {hit}/{n} | {cov:.3f} | {ok} | {thin_hit}/{thin_n} | {fh / max(fn, 1):.3f} |")
    return lines


TRUTH_BANDS = ("0", "(0, 0.3)", "[0.3, 0.9)", ">= 0.9")  # declared before round three


def _truth_band(t: float) -> str:
    return TRUTH_BANDS[0 if t <= 1e-9 else 1 if t < 0.3 else 2 if t < 0.9 else 3]


def _exact_interval_cells(counts: list[int], level: float = 0.95) -> tuple[float, float]:
    """(expected cells, probability that every cell) an exact ``level`` interval, independent across intervals,
    would hold coverage in [0.90, 0.98] with these interval counts per cell (binomial)."""
    from scipy.stats import binom

    p = [
        binom.cdf(math.floor(0.98 * n + 1e-9), n, level) - binom.cdf(math.ceil(0.90 * n - 1e-9) - 1, n, level)
        for n in counts
    ]
    return float(np.sum(p)), float(np.prod(p))


def band_consistent(coverage: dict[str, tuple[int, int, int, int]]) -> dict[str, bool]:
    """Per cell with intervals not flagged thin: does its coverage's Clopper-Pearson interval, at family-wise 95%
    over the cells (level ``1 - 0.05 / cells``), meet [0.90, 0.98]? (Declared before round five: the per-cell
    band at the resolution the cell's count allows; an exact 95% interval passes every cell with probability
    at least 0.95.)"""
    judged = {c: (h, n) for c, (h, n, *_x) in coverage.items() if n}
    level = 1 - 0.05 / max(len(judged), 1)
    out = {}
    for cell, (hit, n) in judged.items():
        lo, hi = clopper_pearson(hit, n, level)
        out[cell] = lo <= 0.98 and hi >= 0.90
    return out


def interval_sides(rows: list[dict]) -> dict[tuple[int, int], tuple[float, float]]:
    """(classes, images) -> (lower, upper): how far each end of the interval lies from the point, in units of
    1.96 x the estimate's spread over the reps of the same model, concept and probe design (root mean squares;
    truths inside (0.02, 0.98), not thin). 1 is an interval as wide as the reruns' own noise asks for."""
    reps = defaultdict(list)
    for r, c, e, lo, hi, t, _x, thin in _pairs(rows, estimand=True):
        if math.isfinite(lo) and not thin and 0.02 < t < 0.98:
            reps[(r["classes"], r["images"], r["layout"], r["model"], c)].append((e, e - lo, hi - e))
    sums = defaultdict(lambda: np.zeros(3))
    for key, v in reps.items():
        if len(v) > 1:
            a = np.asarray(v)
            sums[key[:2]] += [np.var(a[:, 0], ddof=1), *np.mean((a[:, 1:] / Z95) ** 2, 0)]
    return {k: (float(np.sqrt(v[1] / v[0])), float(np.sqrt(v[2] / v[0]))) for k, v in sorted(sums.items()) if v[0] > 0}


def _coverage_diagnostics(rows: list[dict], s: dict) -> list[str]:
    """Reported, not targets: coverage by the truth's size, and what the per-cell band can show at these counts."""
    bands, below_lo, above_hi = defaultdict(lambda: [0, 0]), 0, 0
    for _r, _c, _e, lo, hi, t, _x, thin in _pairs(rows, estimand=True):
        if math.isfinite(lo) and not thin:
            bands[_truth_band(t)][0] += lo <= t <= hi
            bands[_truth_band(t)][1] += 1
            below_lo, above_hi = below_lo + (t < lo), above_hi + (t > hi)
    judged_n = max(sum(n for _h, n in bands.values()), 1)
    by_truth = ", ".join(
        f"{b}: {bands[b][0]}/{bands[b][1]} = {bands[b][0] / bands[b][1]:.3f}" for b in TRUTH_BANDS if bands[b][1]
    )
    judged = [(h, n) for h, n, _th, _tn in s["coverage"].values() if n]
    expected, every = _exact_interval_cells([n for _h, n in judged])
    below = [c for c, (h, n, *_x) in s["coverage"].items() if n and clopper_pearson(h, n)[1] < 0.90]
    above = [c for c, (h, n, *_x) in s["coverage"].items() if n and clopper_pearson(h, n)[0] > 0.98]
    return [
        f"Coverage by the truth's size (not thin): {by_truth}. The truth lies below the lower end in "
        f"{below_lo / judged_n:.1%} and above the upper end in {above_hi / judged_n:.1%} of them "
        "(2.5% each for an exact 95% interval).",
        "",
        f"What the per-cell band can show at these counts: an exact 95% interval, independent across intervals, "
        f"would hold [0.90, 0.98] in {expected:.1f} of {len(judged)} cells on average, in every cell with probability "
        f"{every:.3f}. Cells whose coverage lies below 0.90 beyond their binomial noise (Clopper-Pearson 95%): "
        f"{', '.join(below) or 'none'}; above 0.98 beyond it: {', '.join(above) or 'none'}.",
        "",
        "Interval ends against the reruns' own noise (lower, upper; 1 = as wide as 1.96 x the spread of the "
        "estimate over the reps): "
        + "; ".join(f"K{k}/n{n} {lo:.2f}, {hi:.2f}" for (k, n), (lo, hi) in interval_sides(rows).items())
        + ".",
        "",
    ]


def markdown(parts: dict[str, list[dict]], header: list[str], retests: dict[str, list[dict]] | None = None) -> str:
    lines = list(header)
    for part, rows in parts.items():
        if not rows:
            continue
        s = score(rows)
        acc, (det, det_n) = s["accuracy"], s["detection"]
        judged = [(h, n) for h, n, _th, _tn in s["coverage"].values() if n]
        cov_ok = sum(0.90 <= h / n <= 0.98 for h, n in judged)
        consistent = band_consistent(s["coverage"])
        lines += [
            f"## {part} ({s['verdicts']} verdicts)",
            "",
            "| target (fixed before the runs) | result |",
            "|---|---|",
            f"| effect within ±0.05 of the flip rate (median per cell, model, concept, up to 2 SE; not thin) | "
            f"{acc['met']}/{acc['of']} {_mark(acc['met'] == acc['of'])} "
            f"(thin cells: {acc['met_thin']}/{acc['of_thin']}) |",
            f"| (reported, not a target) the same against the one-way share, the effect's estimand | "
            f"{s['on_estimand'][0]}/{s['on_estimand'][1]} |",
            f"| Spearman(effect, flip rate) >= 0.9 (monotone) | {s['spearman']:+.3f} {_mark(s['spearman'] >= 0.9)} |",
            f"| detection >= 90% of concepts with flip rate >= 0.3 | {det}/{det_n} = {det / max(det_n, 1):.3f} "
            f"{_mark(det >= 0.9 * det_n)} |",
            f"| coverage in [0.90, 0.98] in every cell (intervals not flagged thin) | {cov_ok}/{len(judged)} cells "
            f"{_mark(cov_ok == len(judged))} |",
            f"| (declared before round five) ... consistent with it at each cell's binomial noise (Clopper-Pearson, "
            f"family-wise 95% over the cells) | {sum(consistent.values())}/{len(consistent)} cells "
            f"{_mark(all(consistent.values()))}{''.join(f' ✗{c}' for c, ok in consistent.items() if not ok)} |",
            f"| 0 wrong decided outcomes | {len(s['wrong'])} {_mark(not s['wrong'])} |",
            "",
            "Effect misses (median effect − flip rate beyond ±0.05 + 2 SE): "
            + ("; ".join(acc["misses"][:60]) or "none")
            + ("; ..." if len(acc["misses"]) > 60 else ""),
            "",
            "Against the estimand (not thin): " + ("; ".join(s["estimand_misses"]) or "none"),
            "",
            *(retest_lines(s["miss_keys"], retests[part]) if (retests or {}).get(part) else []),
            *_coverage_lines(s),
            "",
            *_coverage_diagnostics(rows, s),
            "Outcomes per model:",
            "",
            *[
                f"- `{m}`: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
                for m, c in sorted(s["outcomes"].items())
            ],
            "",
        ]
        lines += _power_lines(rows) + _gap_lines(rows)
        for r in s["wrong"][:20]:
            lines.append(
                f"- WRONG: {r['cell']} {r['model']} seed {r['seed']}: {r['outcome']} (flips "
                + ", ".join(f"{c} {r[f'flip/{c}']:.2f}" for c in CONCEPTS)
                + ")"
            )
    return "\n".join(lines) + "\n"


BANDS = ((0.0, MIN_EFFECT), (MIN_EFFECT, 0.2), (0.2, 0.3), (0.3, 0.5), (0.5, 1.01))


def power_table(rows: list[dict]) -> dict[tuple[int, int], list[int]]:
    """(band index, probe images) -> [counted, listed concepts]: how often a concept counts (``relies``) by its
    counterfactual flip rate; band 0 (below δ) counts the false positives."""
    table: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        for c in r.get("listed") or [c for c in CONCEPTS if f"effect/{c}" in r]:
            if f"flip/{c}" not in r:
                continue
            band = next(i for i, (lo, hi) in enumerate(BANDS) if lo <= r[f"flip/{c}"] < hi)
            table[band, r["images"]][0] += bool(r.get(f"relies/{c}"))
            table[band, r["images"]][1] += 1
    return table


def _power_lines(rows: list[dict]) -> list[str]:
    table = power_table(rows)
    sizes = sorted({n for _b, n in table})
    lines = [
        "How often a listed concept counts, by its flip rate and the probe set's size (all layouts and class "
        "counts; the first row is the false-positive rate):",
        "",
        "| flip rate | " + " | ".join(f"{n} images" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for b, (lo, hi) in enumerate(BANDS):
        cells = [table.get((b, n), [0, 0]) for n in sizes]
        lines.append(
            f"| [{lo:.2f}, {min(hi, 1.0):.2f}{']' if hi > 1 else ')'} | "
            + " | ".join(f"{k}/{m} = {k / m:.2f}" if m else "–" for k, m in cells)
            + " |"
        )
    return [*lines, ""]


def _gap_lines(rows: list[dict]) -> list[str]:
    """Trained models: the flip rate beside the split's own share that follows one way (balanced layout)."""
    if not any("tv/color" in r for r in rows):
        return []
    lines = [
        "Trained models, balanced layout: counterfactual flip rate vs the share that follows one way (the "
        "effect's estimand, from every image's prediction under each value); their difference flips both ways "
        "and is invisible to any verdict that does not edit images:",
        "",
        "| model | " + " | ".join(f"{c}: flip / one-way" for c in CONCEPTS) + " |",
        "|---|" + "---|" * len(CONCEPTS),
    ]
    seen = set()
    for r in rows:
        if "tv/color" not in r or r["layout"] != "balanced" or r["model"] in seen:
            continue
        seen.add(r["model"])
        cells = [f"{r[f'flip/{c}']:.3f} / {r[f'tv/{c}']:.3f}" if f"tv/{c}" in r else "–" for c in CONCEPTS]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _run_handbuilt(out: str, reps: int, offset: int, workers: int, quick: bool) -> None:
    path = os.path.join(out, "handbuilt.jsonl")
    done = {(r["cell"], r["model"], tuple(r["listed"])) for r in read_jsonl(path)}
    jobs = [
        j for j in handbuilt_jobs(reps, offset, quick) if (cell_name(j[0]), model_name(j[1]), tuple(j[2])) not in done
    ]
    print(f"[validate] hand-built: {len(jobs)} cells x models to run ({reps} reps each)", flush=True)
    with Pool(workers) as pool:
        for i, rows in enumerate(pool.imap_unordered(_handbuilt_job, jobs)):
            write_jsonl(path, rows)
            if i % 20 == 0:
                print(f"[validate] {i + 1}/{len(jobs)} {rows[0]['cell']} {rows[0]['model']}", flush=True)


def _run_trained(out: str, reps: int, offset: int, mnist: str | None, quick: bool) -> None:
    path = os.path.join(out, "trained.jsonl")
    done = {r["model"] for r in read_jsonl(path)}
    for spec in trained_specs(quick):
        if spec.name in done:
            continue
        t0 = time.time()
        rows = trained_rows(spec, out, offset, reps, mnist, quick)
        write_jsonl(path, rows)
        print(f"[validate] trained {spec.name}: {len(rows)} verdicts, {time.time() - t0:.0f}s", flush=True)


RETEST_SEEDS = 5_000_000  # hand-built retests draw seeds this far above the grid's
RETEST_FIRST_DESIGN = 1_000  # trained retests draw designs from this index on (the grid's are 0, 1, ...)


def _retest_handbuilt(out: str, reps: int, offset: int, workers: int) -> None:
    """1' (declared before round five): every (cell, model) with a concept missing target 1 (not thin) again on
    ``reps`` fresh probe sets of the same design."""
    keys = score(read_jsonl(os.path.join(out, "handbuilt.jsonl")))["miss_keys"]
    path = os.path.join(out, "retest_handbuilt.jsonl")
    want = {(cell, model) for cell, model, _c in keys} - {(r["cell"], r["model"]) for r in read_jsonl(path)}
    jobs = [
        (design, model, listed, reps, seed0 + RETEST_SEEDS, truth)
        for design, model, listed, _reps, seed0, truth in handbuilt_jobs(reps, offset, False)
        if (cell_name(design), model_name(model)) in want
    ]
    print(f"[validate] hand-built retest: {len(jobs)} cells x models ({reps} reps each)", flush=True)
    with Pool(workers) as pool:
        for rows in pool.imap_unordered(_handbuilt_job, jobs):
            write_jsonl(path, rows)


def _retest_trained(out: str, reps: int, offset: int, mnist: str | None) -> None:
    """1' for the trained models: the missed cells of each model on ``reps`` fresh designs (the cached model)."""
    keys = score(read_jsonl(os.path.join(out, "trained.jsonl")))["miss_keys"]
    path = os.path.join(out, "retest_trained.jsonl")
    done = {r["model"] for r in read_jsonl(path)}
    cells = defaultdict(set)
    for cell, model, _c in keys:
        cells[model].add(cell)
    for spec in trained_specs(False):
        if spec.name in cells and spec.name not in done:
            rows = trained_rows(spec, out, offset, reps, mnist, False, cells[spec.name], RETEST_FIRST_DESIGN)
            write_jsonl(path, rows)
            print(f"[validate] trained retest {spec.name}: {len(rows)} verdicts", flush=True)


def retest_lines(keys: list, rows: list[dict]) -> list[str]:
    """The misses of target 1 against their re-measurement on fresh probe sets (against the estimand)."""
    keys = [tuple(k) for k in keys]
    errors = defaultdict(list)
    for r, c, eff, _lo, _hi, truth, _x, _thin in _pairs(rows, estimand=True):
        if (r["cell"], r["model"], c) in keys and math.isfinite(eff):
            errors[r["cell"], r["model"], c].append(eff - truth)
    measured = [k for k in keys if errors.get(k)]
    still = [k for k in measured if not median_within(errors[k])]
    detail = "; ".join(
        f"{k[0]} {k[1]} {k[2]}: {np.median(errors[k]):+.3f} over {len(errors[k])}{' ✗' if k in still else ''}"
        for k in measured
    )
    unmeasured = f" ({len(keys) - len(measured)} not re-measured)" if len(measured) < len(keys) else ""
    return [
        f"Target 1 misses re-measured on fresh probe sets (declared before round five; against the estimand): "
        f"{len(still)} of {len(measured)} still miss ±0.05 + 2 SE{unmeasured}" + (f" — {detail}." if detail else "."),
        "",
    ]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--part", nargs="+", default=["handbuilt", "trained"], choices=["handbuilt", "trained"])
    ap.add_argument("--reps", type=int, default=6, help="hand-built probe sets per cell and model")
    ap.add_argument("--trained-reps", type=int, default=4, help="probe sets per trained model and cell")
    ap.add_argument("--seed-offset", type=int, default=1000, help="validation seeds (development used < 1000)")
    ap.add_argument("--mnist", default=None, help=".npz of real digits (images, labels) for the 10-class family")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a few cells only (a smoke test)")
    ap.add_argument("--retest", type=int, default=0, help="fresh hand-built probe sets for each target-1 miss")
    ap.add_argument("--retest-trained", type=int, default=0, help="fresh designs for each trained target-1 miss")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    if "handbuilt" in args.part:
        _run_handbuilt(args.out, args.reps, args.seed_offset, args.workers, args.quick)
    if "trained" in args.part:
        _run_trained(args.out, args.trained_reps, args.seed_offset, args.mnist, args.quick)
    if args.retest and "handbuilt" in args.part:
        _retest_handbuilt(args.out, args.retest, args.seed_offset, args.workers)
    if args.retest_trained and "trained" in args.part:
        _retest_trained(args.out, args.retest_trained, args.seed_offset, args.mnist)
    parts = {p: read_jsonl(os.path.join(args.out, f"{p}.jsonl")) for p in ("handbuilt", "trained")}
    retests = {p: read_jsonl(os.path.join(args.out, f"retest_{p}.jsonl")) for p in parts}
    header = [
        "# Verdict validation",
        "",
        f"`python experiments/validate_verdict.py {' '.join(argv or sys.argv[1:])}` "
        f"({time.time() - t0:.0f} s this call)",
        "",
    ]
    text = markdown(parts, header, retests)
    atomic_write_text(os.path.join(args.out, "validation.md"), text)
    print(text)


if __name__ == "__main__":
    main()
