"""How close can any estimator of the share get on few images, and how close does the verdict's get?

    python experiments/verdict_limits.py [--classes 2 4 10] [--per-value 10 25 50 100 250] [--reps 300]
                                         [--seed 0] [--out limits.md]

The setting: one concept with two values ``a``, ``b``; each value's predictions drawn from a class
distribution over ``K`` classes; ``n`` images per value (Poisson-distributed around ``n``, as when a probe set's
images are drawn at random). The share of predictions that follows the concept is ``TV(P_a, P_b)``.

**A floor on the bias of every estimator** (Le Cam's two fuzzy hypotheses). The classes come in pairs with
base rate ``1/K`` each; in pair ``j`` value ``a`` moves ``d_j / 2`` of the predictions from one class to the
other and value ``b`` the other way, so the share is ``sum_j |d_j|``. Two families of models draw every ``d_j``
independently from priors ``A`` and ``B`` found by linear programming: their first ``L`` moments agree, so the
counts they generate are nearly indistinguishable (total variation ``tau`` between the two count
distributions, bounded through the Hellinger affinity, exactly computed on each pair's sufficient statistic),
while their mean shares differ by ``Delta``. For any estimator ``T`` with values in [0, 1],
``E_A[T] - E_B[T] <= tau``, so ``(E_A[share - T]) + (E_B[T - share]) >= Delta - tau``: on one family the
average error is at least ``(Delta - tau) / 2`` (too low on ``A`` or too high on ``B``), and so on at least one
model of it. The floor holds for every estimator, the verdict's included; it is a lower bound (other
constructions may give a higher one).

**Estimators that sum one term per class pair** (the plug-in and the cross-fit are of this kind, up to the
normalisation by each value's images): their least worst-case bias, by linear programming over the term, with and
without the constraint that the estimator reads 0 on average for a model that ignores the concept (the verdict's
cross-fit keeps it). Where the constrained least bias exceeds 0.05, no estimator of this kind that keeps the null
clean meets target 1 on every model.

**At the cross-fit's own spread.** A bias bound that ignores spread may be reached only by terms that swing
wildly between neighbouring counts. The script measures the cross-fit's mean error and standard deviation on
models whose class pairs all shift by ``d`` (11 shifts in [0, 2/K]) and solves, as a second-order cone programme
(clarabel), for the least worst-case bias of per-pair estimators with a clean null whose standard deviation is at
most the cross-fit's at every one of those shifts. The cross-fit (averaged over its fold assignments) is itself
of this kind up to its randomness and its normalisation by each value's images, so the least bias lies below its
own; the ratio says how much room a clean-null per-pair estimator has at the same spread.

**Simpler estimators** on the same families and on models that ignore the concept: the plug-in (reads high)
and the plug-in less its bootstrap estimate of its bias (the verdict's upper anchor).

**The verdict's own error** on the same families: models drawn from ``A`` and ``B``, one probe set each, the
effect read by ``verdict.assess`` (class labels not given); the mean error on each family — the larger of the
two may not lie below the floor (a check of both) — and how often the 95% interval holds the model's share.
Target 1 of the validation asks ±0.05 of the truth: where the floor exceeds 0.05 no estimator meets it on every
model. Declared before the first full run: the interval holds the share in at least 90% of the models of each
family in every setting, up to binomial noise (its Clopper-Pearson 95% upper bound reaches 0.90).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import numpy as np
from scipy import sparse
from scipy.optimize import linprog
from scipy.stats import binom, norm, poisson

from xai_lightning.io import atomic_write_text
from xai_lightning.verdict import assess
from xai_lightning.verdict.following import ConceptView, bootstrap_draws, plugin_estimate, point_estimate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verdict_lab import clopper_pearson  # noqa: E402 - the helpers beside this script

GRID = 121  # points of the priors' support in [-D, D]
DEPTHS = (2, 3, 4, 5, 6, 8, 10)  # moments matched (L) tried
REACH = np.linspace(0.1, 1.0, 10)  # D as a share of its largest value 2 / K (probabilities stay >= 0)
MAX_LP_CELLS = 70_000  # (S, T) grid cells beyond which the additive floor's linear programme is skipped
SHIFTS = 11  # shifts in [0, 2/K] at which the cross-fit's spread is measured and imposed (``spread_floor``)
MIN_SPREAD = 0.01  # the spread allowed where the cross-fit's is ~0 (a model whose counts are certain)
WEIGHT_LIMITS = (1.0, 1.5, 2.0, 3.0, 5.0)  # bounds on the cross-fit's direction weights (``direction_weights``)


def priors(reach: float, moments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(support, weights of A, weights of B) on a grid of [-reach, reach]: A and B share their first
    ``moments`` moments and maximise E_A|d| - E_B|d| (moments are matched on d / reach, for conditioning)."""
    x = np.linspace(-1.0, 1.0, GRID)
    m = len(x)
    rows = [np.r_[np.ones(m), np.zeros(m)], np.r_[np.zeros(m), np.ones(m)]]
    rows += [np.r_[x**k, -(x**k)] for k in range(1, moments + 1)]
    rhs = [1.0, 1.0] + [0.0] * moments
    fit = linprog(-np.r_[np.abs(x), -np.abs(x)], A_eq=np.array(rows), b_eq=rhs, bounds=(0, None), method="highs")
    if not fit.success:
        raise RuntimeError(f"no prior pair for reach {reach}, {moments} moments: {fit.message}")
    w = np.clip(fit.x, 0.0, None)
    return x * reach, w[:m] / w[:m].sum(), w[m:] / w[m:].sum()


def pair_law(d: np.ndarray, n: float, base: float, top: int) -> tuple[np.ndarray, np.ndarray]:
    """[shifts, top] Poisson laws of one class pair's sufficient statistic: S (class 1 under ``a`` + class 2
    under ``b``) ~ Poisson(2n(base + d/2)) and T ~ Poisson(2n(base - d/2)), for each shift ``d``."""
    k = np.arange(top)
    return poisson.pmf(k[None, :], 2 * n * (base + d[:, None] / 2)), poisson.pmf(
        k[None, :], 2 * n * (base - d[:, None] / 2)
    )


def pair_affinity(support: np.ndarray, wa: np.ndarray, wb: np.ndarray, n: float, base: float) -> float:
    """The Hellinger affinity of one class pair's counts under the two priors. Given d, the counts depend on d
    only through S (class 1 under a + class 2 under b) ~ Poisson(2n(base + d/2)) and T ~ Poisson(2n(base - d/2)):
    the affinity of the mixtures of (S, T) is that of all four counts."""
    keep = (wa > 1e-12) | (wb > 1e-12)
    d, wa, wb = support[keep], wa[keep], wb[keep]
    s, t = pair_law(d, n, base, int(poisson.ppf(1 - 1e-12, 2 * n * (base + d.max() / 2))) + 2)
    ma, mb = np.einsum("g,gs,gt->st", wa, s, t), np.einsum("g,gs,gt->st", wb, s, t)
    return float(np.sqrt(ma * mb).sum())


def floor(classes: int, per_value: float) -> dict:
    """The largest bias floor over the priors tried, with its construction."""
    base, pairs, best = 1.0 / classes, classes // 2, None
    for share, moments in itertools.product(REACH, DEPTHS):
        support, wa, wb = priors(share * 2 * base, moments)
        delta = pairs * float(np.abs(support) @ (wa - wb))
        affinity = pair_affinity(support, wa, wb, per_value, base) ** pairs
        tau = float(np.sqrt(max(0.0, 1 - affinity**2)))
        row = {"floor": (delta - tau) / 2, "delta": delta, "tau": tau, "reach": share * 2 * base, "moments": moments}
        row.update({"share_a": pairs * float(np.abs(support) @ wa), "share_b": pairs * float(np.abs(support) @ wb)})
        row.update({"support": support, "wa": wa, "wb": wb})
        if best is None or row["floor"] > best["floor"]:
            best = row
    return best


def null_rows(top: int) -> np.ndarray:
    """[top, top * top + 1] one row per total ``m < top`` of (S, T): the weights ``Bin(S; m, 1/2)`` on the cells
    with ``S + T = m`` (the term's conditional mean at the null), 0 on the bias variable."""
    s, t = np.meshgrid(np.arange(top), np.arange(top), indexing="ij")
    total = (s + t).ravel()
    rows = np.where(
        total[None, :] == np.arange(top)[:, None], binom.pmf(s.ravel()[None, :], np.arange(top)[:, None], 0.5), 0.0
    )
    return np.hstack([rows, np.zeros((top, 1))])


def additive_floor(classes: int, per_value: float, null_exact: bool, grid: int = 81) -> float:
    """The least worst-case bias, over models whose class pairs all shift by the same ``d`` in [-2/K, 2/K], of
    an estimator that sums one term in [-1, 1] per class pair, each a function of that pair's counts (the plug-in,
    the cross-fit and the polynomial estimators of the literature are of this kind, up to the normalisation by
    each value's images). By sufficiency the term may be taken a function of (S, T) (``pair_affinity``), and
    averaging it over the pairs changes no such model's bias, so the bound is ``pairs`` times one pair's
    minimax bias: a linear programme over the term's values on the (S, T) grid. ``null_exact``: the estimator
    reads 0 on average for a model that ignores the concept, whatever the class's base rate (as the verdict's
    cross-fit does): given d = 0, S and T are independent Poissons of one mean, so by completeness this holds
    for every base rate exactly when, for each total ``m = S + T``, the term averages 0 over ``S ~ Bin(m, 1/2)``.
    NaN where the grid exceeds ``MAX_LP_CELLS``."""
    d = np.linspace(-2.0 / classes, 2.0 / classes, grid)
    law, top = pair_laws(classes, per_value, d)  # [d, (S, T)]: E_d[f] = law @ f
    if top * top > MAX_LP_CELLS:
        return float("nan")
    m = law.shape[1]
    ones = np.ones((grid, 1))
    a_ub = np.vstack([np.hstack([law, -ones]), np.hstack([-law, -ones])])  # |E_d f - |d|| <= bias
    b_ub = np.r_[np.abs(d), -np.abs(d)]
    a_eq = null_rows(top) if null_exact else None
    fit = linprog(
        np.r_[np.zeros(m), 1.0],
        a_ub,
        b_ub,
        a_eq,
        np.zeros(top) if null_exact else None,
        [(-1, 1)] * m + [(0, None)],
        method="highs",
    )
    if not fit.success:
        raise RuntimeError(f"additive floor, {classes} classes, {per_value} per value: {fit.message}")
    return classes // 2 * float(fit.fun)


def direction_weights(limit: float, reach: float = 8.0, grid: int = 160) -> tuple[float, float]:
    """Could a cross-fit weigh its classes better than by the sign of the direction learned on the other folds?
    A cross-fitted term is ``w(Z) D``: ``D`` a class's held-out difference, ``Z`` its difference on the other
    folds in units of its standard error, ``Z ~ N(x, 1)`` (Gaussian approximation; ``x`` the true difference in
    those units). Any ``w`` keeps the null clean (``E D = 0`` there, independently of ``Z``); the term's bias is
    ``|delta| (1 - E_x w)``, ``x (1 - E_x w)`` standard errors. Over odd ``w`` with ``|w| <= limit`` that never
    read high (``E_x w <= 1``, as the sign does not), a linear programme finds the least worst-case bias.
    Returns (that bias in standard errors, ``E_0 w^2``: the factor on the term's variance at the null)."""
    step = reach / grid
    t = (np.arange(grid) + 0.5) * step  # midpoints of [0, reach]
    x = np.linspace(0.05, 6.0, 120)
    mean = (norm.pdf(t[None, :] - x[:, None]) - norm.pdf(t[None, :] + x[:, None])) * step  # [x, t]: E_x w
    a_ub = np.vstack([np.c_[-x[:, None] * mean, -np.ones(len(x))], np.c_[mean, np.zeros(len(x))]])
    b_ub = np.r_[-x, np.ones(len(x))]
    fit = linprog(np.r_[np.zeros(grid), 1.0], a_ub, b_ub, bounds=[(-limit, limit)] * grid + [(0, None)], method="highs")
    if not fit.success:
        raise RuntimeError(f"direction weights up to {limit}: {fit.message}")
    w = fit.x[:grid]
    return float(fit.x[-1]), float(2 * (w**2 * norm.pdf(t)).sum() * step)


def weights_table(limits: tuple[float, ...] = WEIGHT_LIMITS) -> str:
    """Per bound on the weights: the least worst-case bias of a cross-fitted class term, its null variance factor."""
    lines = ["| weights within | worst-case bias (standard errors) | variance at the null, × |", "|---|---|---|"]
    for limit in limits:
        bias, var = direction_weights(limit)
        lines.append(f"| ±{limit:g} | {bias:.3f} | {var:.2f} |")
    return "\n".join(lines) + "\n"


def draw_probe(d: np.ndarray, classes: int, per_value: float, rng: np.random.Generator):
    """(predictions, values) of one probe set: per value a Poisson(n) number of images, classes drawn from the
    value's distribution (pair j: base +- d_j / 2)."""
    base = np.full(classes, 1.0 / classes)
    shift = np.zeros(classes)
    shift[0::2], shift[1::2] = d / 2, -d / 2
    pred, value = [], []
    for v, sign in ((0, 1.0), (1, -1.0)):
        m = rng.poisson(per_value)
        pred.append(rng.choice(classes, m, p=base + sign * shift))
        value.append(np.full(m, v))
    return np.concatenate(pred), np.concatenate(value)


def family_probes(support: np.ndarray, weights: np.ndarray, classes: int, per_value: float, reps: int, rng):
    """(rep, share, predictions, values) of ``reps`` models drawn from one family, one probe set each (probe sets
    that hold one value only are skipped)."""
    for rep in range(reps):
        d = rng.choice(support, classes // 2, p=weights / weights.sum())
        pred, value = draw_probe(d, classes, per_value, rng)
        if len(np.unique(value)) == 2:
            yield rep, float(np.abs(d).sum()), pred, value


def verdict_reading(row: dict, weights: np.ndarray, classes: int, per_value: float, reps: int, seed: int):
    """(mean effect - share, intervals holding the share, intervals) of the verdict over one family's models (a
    probe set where the effect is undefined is skipped)."""
    errors, held = [], 0
    probes = family_probes(row["support"], weights, classes, per_value, reps, np.random.default_rng(seed))
    for rep, share, pred, value in probes:
        e = assess(pred, {"c": value}, {"c": ["a", "b"]}, classes=classes, permutations=10, seed=rep).effects["c"]
        if np.isfinite(e.value):
            errors.append(e.value - share)
            held += int(e.lo <= share <= e.hi)
    return float(np.mean(errors)), held, len(errors)


ESTIMATORS = ("cross-fitted (the verdict's)", "plug-in", "plug-in less its bootstrap bias")


def one_stratum(pred: np.ndarray, value: np.ndarray, classes: int) -> ConceptView:
    """The probe set of one concept with two values, no strata, as the verdict sees it."""
    n = len(pred)
    return ConceptView("c", value, np.zeros(n, dtype=np.int64), pred, np.arange(n), 2, 1, classes)


def estimates(pred: np.ndarray, value: np.ndarray, classes: int, seed: int) -> tuple[float, float, float]:
    """The three estimators of the share on one probe set (one stratum), in ``ESTIMATORS`` order."""
    n, view = len(pred), one_stratum(pred, value, classes)
    rng = np.random.default_rng(seed)
    plugin = plugin_estimate(view)
    _cross, plugs = bootstrap_draws(view, rng.multinomial(n, np.full(n, 1.0 / n), size=200), rng)
    return point_estimate(view, rng), plugin, 2 * plugin - float(np.mean(plugs))


def alternatives(floors: dict[tuple[int, int], dict], reps: int, seed: int) -> str:
    """Mean error of each estimator on families A, B and on models that ignore the concept (d = 0)."""
    lines = [
        "| classes | images per value | " + " | ".join(f"{e}: A / B / ignores" for e in ESTIMATORS) + " |",
        "|---|---|" + "---|" * len(ESTIMATORS),
    ]
    for (k, n), row in floors.items():
        families = (row["wa"], row["wb"], (np.abs(row["support"]) < 1e-12).astype(float))
        errors = np.zeros((len(families), len(ESTIMATORS)))
        for f, w in enumerate(families):
            probes = family_probes(row["support"], w, k, n, reps, np.random.default_rng([seed, k, n, f, 7]))
            got = [np.array(estimates(pred, value, k, rep)) - share for rep, share, pred, value in probes]
            errors[f] = np.nanmean(got, axis=0)
        cells = [" / ".join(f"{x:+.3f}" for x in errors[:, e]) for e in range(len(ESTIMATORS))]
        lines.append(f"| {k} | {n} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def table(floors: dict[tuple[int, int], dict], reps: int, seed: int) -> str:
    """Per setting: the families' shares, Δ, τ, the floor, the verdict's mean error and interval coverage."""
    lines = [
        "| classes | images per value | share A / B | Δ | τ | floor: any estimator | verdict's mean error A / B "
        "| interval holds the share A / B |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (k, n), row in floors.items():
        read = [
            verdict_reading(row, row[w], k, n, reps, seed * 1_000_003 + 1_000 * k + 2 * n + i)
            for i, w in enumerate(("wa", "wb"))
        ]
        held = " / ".join(f"{h}/{m}{'' if clopper_pearson(h, m)[1] >= 0.90 else ' ✗'}" for _e, h, m in read)
        lines.append(
            f"| {k} | {n} | {row['share_a']:.3f} / {row['share_b']:.3f} | {row['delta']:.3f} | {row['tau']:.3f} | "
            f"{max(row['floor'], 0.0):.3f}{' > 0.05' if row['floor'] > 0.05 else ''} | "
            f"{read[0][0]:+.3f} / {read[1][0]:+.3f} | {held} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def pair_laws(classes: int, per_value: float, d: np.ndarray) -> tuple[np.ndarray, int]:
    """([shifts, top * top] laws of one class pair's (S, T) at each shift ``d``, top): the grid of the programmes
    below (base rate 1 / K, counts below ``top``)."""
    top = int(poisson.ppf(1 - 1e-10, 4 * per_value / classes)) + 2
    s, t = pair_law(d, per_value, 1.0 / classes, top)
    return np.einsum("gs,gt->gst", s, t).reshape(len(d), -1), top


def crossfit_curve(classes: int, per_value: float, shifts: np.ndarray, reps: int, seed: int):
    """([shifts] mean error, [shifts] SD) of the verdict's cross-fitted share on models whose class pairs all
    shift by ``d`` (``reps`` probe sets each; probe sets with no image of a value are left out)."""
    errors, spreads = [], []
    for i, d in enumerate(shifts):
        rng = np.random.default_rng([seed, classes, int(per_value), i])
        read = []
        for rep in range(reps):
            pred, value = draw_probe(np.full(classes // 2, d), classes, per_value, rng)
            read.append(point_estimate(one_stratum(pred, value, classes), np.random.default_rng([seed, rep])))
        errors.append(np.nanmean(read) - classes // 2 * abs(d))
        spreads.append(np.nanstd(read, ddof=1))
    return np.array(errors), np.array(spreads)


def _spread_cones(laws: np.ndarray, budget: np.ndarray, columns: int, first: int):
    """Rows, right-hand sides and second-order cone sizes of ``Var_h(f) <= budget_h^2`` for each law ``h``, written
    as ``||sqrt(law_h) (f - c_h)|| <= budget_h`` with a free centre ``c_h`` (column ``first + h``): a variance is
    the least mean square about any centre. ``f`` is in the first columns."""
    rows, rhs, sizes = [], [], []
    for h, law in enumerate(laws):
        keep = np.flatnonzero(law > 1e-18)
        w = np.sqrt(law[keep])
        part = sparse.lil_matrix((len(keep), columns))
        part[np.arange(len(keep)), keep] = -w
        part[:, first + h] = w[:, None]
        rows += [sparse.csr_matrix((1, columns)), part.tocsr()]
        rhs += [np.array([budget[h]]), np.zeros(len(keep))]
        sizes.append(len(keep) + 1)
    return rows, rhs, sizes


def spread_floor(
    classes: int, per_value: float, shifts: np.ndarray, spreads: np.ndarray, null_exact: bool = True, grid: int = 81
) -> float:
    """The least worst-case bias (as ``additive_floor``; ``null_exact``: reading 0 at the null for every base rate)
    of estimators that sum one term per class pair and whose share varies over probe sets no more than ``spreads``
    (SDs) at the pair shifts ``+-shifts`` (at least ``MIN_SPREAD``): a second-order cone programme (clarabel). The
    pairs are independent, so the share's variance is ``pairs`` times the term's."""
    try:
        import clarabel
    except ImportError as err:
        raise SystemExit("spread_floor needs clarabel: pip install -e '.[dev]' (or pip install clarabel)") from err
    pairs, d = classes // 2, np.linspace(-2.0 / classes, 2.0 / classes, grid)
    law, top = pair_laws(classes, per_value, d)
    laws = pair_laws(classes, per_value, np.r_[shifts, -shifts])[0]
    m, h = law.shape[1], len(laws)
    columns = m + 1 + h  # the term f, the bias, a centre per spread constraint
    pad, ones = sparse.csr_matrix((grid, h)), sparse.csr_matrix(np.ones((grid, 1)))
    box = sparse.hstack([sparse.identity(m), sparse.csr_matrix((m, 1 + h))])
    null = [sparse.hstack([sparse.csr_matrix(null_rows(top)), sparse.csr_matrix((top, h))])] if null_exact else []
    rows = null + [
        sparse.hstack([sparse.csr_matrix(law), -ones, pad]),
        sparse.hstack([sparse.csr_matrix(-law), -ones, pad]),
        box,
        -box,
    ]
    rhs = [np.zeros(top)] * bool(null) + [np.abs(d), -np.abs(d), np.ones(m), np.ones(m)]
    budget = np.maximum(np.r_[spreads, spreads], MIN_SPREAD) / np.sqrt(pairs)
    more_rows, more_rhs, sizes = _spread_cones(laws, budget, columns, m + 1)
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    solution = clarabel.DefaultSolver(
        sparse.csc_matrix((columns, columns)),
        np.r_[np.zeros(m), 1.0, np.zeros(h)],
        sparse.vstack(rows + more_rows).tocsc(),
        np.concatenate(rhs + more_rhs),
        [clarabel.ZeroConeT(top)] * bool(null)
        + [clarabel.NonnegativeConeT(2 * grid + 2 * m)]
        + [clarabel.SecondOrderConeT(size) for size in sizes],
        settings,
    ).solve()
    if str(solution.status) not in ("Solved", "AlmostSolved"):
        raise RuntimeError(f"spread floor, {classes} classes, {per_value} per value: {solution.status}")
    return pairs * float(solution.x[m])


def spread_table(bounds: dict[tuple[int, int], tuple[float, float]], reps: int, seed: int) -> str:
    """Per setting of ``bounds`` (``additive_bounds``; those the programme skips are left out): the cross-fit's
    worst-case bias and spread over the shifts, and the least worst-case bias of a clean-null per-pair estimator
    no more spread than it at every shift (``spread_floor``)."""
    lines = [
        "| classes | images per value | cross-fit: worst bias | its SD, most | least bias at its spread "
        "| the same, not reading 0 at the null | at any spread |",
        "|---|---|---|---|---|---|---|",
    ]
    for (k, n), (exact, _free) in bounds.items():
        if not np.isfinite(exact):
            continue
        shifts = np.linspace(0.0, 2.0 / k, SHIFTS)
        errors, spreads = crossfit_curve(k, n, shifts, reps, seed)
        worst, least = float(np.abs(errors).max()), spread_floor(k, n, shifts, spreads)
        free = spread_floor(k, n, shifts, spreads, null_exact=False)
        lines.append(
            f"| {k} | {n} | {worst:.3f} | {spreads.max():.3f} | {least:.3f} ({least / worst:.0%}) | {free:.3f} | "
            f"{exact:.3f} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def additive_bounds(classes: list[int], per_value: list[int]) -> dict[tuple[int, int], tuple[float, float]]:
    """(classes, images per value) -> ``additive_floor`` reading 0 at the null, and free."""
    return {
        (k, n): (additive_floor(k, n, True), additive_floor(k, n, False))
        for k, n in itertools.product(classes, per_value)
    }


def additive_table(bounds: dict[tuple[int, int], tuple[float, float]]) -> str:
    """Per setting: the least worst-case bias of estimators that sum one term per class pair, reading 0 on average
    at the null or not (``additive_bounds``)."""
    lines = [
        "| classes | images per value | reads 0 at the null | free |",
        "|---|---|---|---|",
    ]
    for (k, n), (exact, free) in bounds.items():
        lines.append(f"| {k} | {n} | {exact:.3f}{' > 0.05' if exact > 0.05 else ''} | {free:.3f} |".replace("nan", "–"))
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, nargs="+", default=[2, 4, 10])
    ap.add_argument("--per-value", type=int, nargs="+", default=[10, 25, 50, 100, 250])
    ap.add_argument("--reps", type=int, default=300, help="models of each family the verdict reads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the table here too (markdown)")
    args = ap.parse_args(argv)
    if any(k % 2 or k < 2 for k in args.classes):
        raise SystemExit("--classes: even numbers >= 2 (the construction moves predictions within class pairs)")
    text = f"`python experiments/verdict_limits.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
    floors = {(k, n): floor(k, n) for k, n in itertools.product(args.classes, args.per_value)}
    text += table(floors, args.reps, args.seed)
    text += '\nThe same families read by simpler estimators (mean error; "ignores": models with d = 0):\n\n'
    text += alternatives(floors, args.reps, args.seed)
    text += "\nThe least worst-case bias of estimators that sum one term per class pair (linear programming):\n\n"
    bounds = additive_bounds(args.classes, args.per_value)
    text += additive_table(bounds)
    text += "\nThe same bias at the cross-fit's own spread (pairs all shifted by d; the cross-fit read on --reps "
    text += "probe sets at each of 11 shifts):\n\n"
    text += spread_table(bounds, args.reps, args.seed)
    text += (
        "\nA cross-fitted class term weighed by w(learned direction) instead of its sign (Gaussian approximation):\n\n"
    )
    text += weights_table()
    if args.out:
        atomic_write_text(os.path.abspath(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
