"""The verdict from a probe set's predictions and concept values (pure numpy): ``assess``.

    verdict = assess(pred, {"shape": digit, "color": colour}, {"shape": digit_names, "color": colour_names},
                     targets=labels)
    verdict.outcome, verdict.reason, verdict.relies, verdict.effects["color"].value / .lo / .hi

Per concept: the share of predictions that follow it (``following``), matched on the class and on the
concepts associated with it (``strata``), its bootstrap interval, a within-strata permutation p-value (Holm
over the concepts), and the outcome (``outcome.decide``). docs/verdict.md says why and how it was validated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from xai_lightning.verdict.effects import Z95, Effect
from xai_lightning.verdict.following import (
    SPLITS,
    ConceptView,
    bootstrap_draws,
    holm,
    permutation_pvalue,
    plugin_estimate,
    point_estimate,
    split_estimates,
)
from xai_lightning.verdict.outcome import ALPHA, MIN_EFFECT, ConceptEvidence, Outcome, decide
from xai_lightning.verdict.strata import CLASS, class_strata, matched_on, stratum_ids, weighted_pair_median
from xai_lightning.verdict.unexplained import UNEXPLAINED, unexplained

MIN_CELL = 5  # images on the smaller side of a typical comparison below which the interval is not trusted
MAX_UNMEASURED_DRAWS = 0.1  # resampled probe sets where the effect is undefined, beyond which it is "thin"
SCREEN_SPLITS = 4  # fold assignments of the screen of concepts that may confound another
BIAS = 0.25  # an unmatched associated concept may bias an effect by at most this share of δ (strata.matched_on)
COVERS = "images, fold assignment"  # what the interval covers: what a rerun of the probe changes


@dataclass(frozen=True)
class ConceptEffect:
    """One concept's effect: the share of predictions that follow it, with its 95% interval."""

    value: float
    lo: float
    hi: float
    p_value: float  # Holm-adjusted within-strata permutation p-value
    relies: bool  # counts: p_value <= alpha and lo > min_effect
    matched_on: tuple[str, ...]  # the strata
    images: int  # images with the concept and its strata known
    cell_median: float  # images on the smaller side of a typical comparison (strata.pair_cell)
    thin: bool  # cells too thin (or too many resamples unmeasurable) for the interval to hold
    value_classes: dict[str, str] = field(default_factory=dict)  # value -> the class it pushes predictions to

    @property
    def effect(self) -> Effect:
        return Effect(self.value, self.lo, self.hi, COVERS)


@dataclass
class Verdict:
    """What the predictions on the probe set follow."""

    outcome: str  # a concept, "none" or "undecided"
    reason: str | None  # why undecided
    relies: tuple[str, ...]  # every concept that counts, largest effect first
    effects: dict[str, ConceptEffect]
    decision: Outcome
    images: int
    classes: int
    min_effect: float
    unexplained: Effect = field(default_factory=Effect.undefined)  # same-cell pairs predicted differently

    @property
    def unlisted(self) -> bool:
        """Images that agree on the class and every concept that counts get different predictions: something the
        listed concepts do not name decides (``verdict.unexplained``)."""
        return bool(self.unexplained.finite() and self.unexplained.lo > UNEXPLAINED)

    @property
    def decided(self) -> bool:
        return self.decision.decided

    def text(self) -> str:
        return self.decision.text()

    def sentences(self, top: int = 3) -> list[str]:
        """The concepts that count (at most ``top``, largest first) in words, or why none does."""
        out = []
        for c in self.relies[:top]:
            e = self.effects[c]
            pushes = ", ".join(f"{v} -> {k}" for v, k in e.value_classes.items())
            out.append(
                f"{e.value:.0%} of the predictions follow {c} [{e.lo:.0%}, {e.hi:.0%}]"
                + (f": {pushes}." if pushes else ".")
            )
        if not out:
            out.append(f"No concept moves more than {self.min_effect:.0%} of the predictions for sure.")
        u = self.unexplained
        if self.unlisted:
            out.append(
                f"Images that agree on the class and every concept that counts are predicted apart in {u.point:.0%} "
                f"of pairs [{u.lo:.0%}, {u.hi:.0%}]: something the listed concepts do not name decides."
            )
        return out

    def to_dict(self) -> dict:
        """Plain types for JSON: the outcome, each concept's effect, interval, whether it counts and its value ->
        class map, the unexplained share, the sentences."""
        u = self.unexplained
        return {
            "outcome": self.text(),
            "relies": list(self.relies),
            "images": self.images,
            "effects": {
                c: {
                    "value": e.value,
                    "lo": e.lo,
                    "hi": e.hi,
                    "counts": e.relies,
                    "thin": e.thin,
                    "matched_on": list(e.matched_on),
                    "value_classes": e.value_classes,
                }
                for c, e in self.effects.items()
            },
            "unexplained": [u.point, u.lo, u.hi],
            "sentences": self.sentences(),
        }

    def table(self) -> str:
        """A plain-text table: one row per concept, largest effect first."""
        rows = [f"outcome: {self.text()}   ({self.images} images, {self.classes} classes, δ = {self.min_effect:g})"]
        u = self.unexplained
        if u.finite():
            flag = "  <- something unlisted decides" if self.unlisted else ""
            rows.append(f"unexplained: {u.point:.3f} [{u.lo:.3f}, {u.hi:.3f}] of same-cell pairs predicted apart{flag}")
        rows.append(f"{'concept':<14} {'follows':>8} {'95% interval':>18} {'p (Holm)':>9}  counts  matched on")
        for name in sorted(self.effects, key=lambda c: -np.nan_to_num(self.effects[c].value, nan=-9)):
            e = self.effects[name]
            note = "  (thin cells)" if e.thin else ""
            rows.append(
                f"{name:<14} {e.value:>+8.3f} [{e.lo:>+7.3f}, {e.hi:>+7.3f}] {e.p_value:>9.3f}  "
                f"{'yes' if e.relies else 'no':<6}  {', '.join(e.matched_on) or '-'}{note}"
            )
            if e.relies and e.value_classes:
                rows.append("    " + "; ".join(f"{v} -> {k}" for v, k in e.value_classes.items()))
        return "\n".join(rows)


def _column(values: Mapping[str, np.ndarray], targets: np.ndarray | None, name: str) -> np.ndarray:
    return targets if name == CLASS else values[name]


def concept_view(
    name: str,
    pred: np.ndarray,
    values: Mapping[str, np.ndarray],
    cards: Mapping[str, int],
    targets: np.ndarray | None,
    classes: int,
    screen: Mapping[str, float] | None = None,
    on: Sequence[str] | None = None,
    tolerance: float = 0.0,
) -> ConceptView:
    """The images usable for ``name`` (its value and every matched variable known), with their strata (``on``,
    default ``strata.matched_on``)."""
    on = list(on) if on is not None else matched_on(name, values, targets, screen, tolerance)
    sid, known = stratum_ids([_column(values, targets, v) for v in on], len(pred))
    known &= values[name] >= 0
    rows = np.flatnonzero(known)
    stratum = np.unique(sid[rows], return_inverse=True)[1] if len(rows) else sid[rows]
    return ConceptView(
        name=name,
        value=values[name][rows].astype(np.int64),
        stratum=stratum.astype(np.int64),
        pred=pred[rows].astype(np.int64),
        rows=rows,
        values=int(cards[name]),
        strata=int(stratum.max()) + 1 if len(rows) else 1,
        classes=int(classes),
        matched_on=tuple(on),
    )


def informative_images(view: ConceptView) -> float:
    """How many images a comparison of the concept's values learns from: per stratum, the harmonic mean of a
    value's images and the rest's, summed over values (``T - sum_a n_a^2 / T``), at most half the stratum's
    comparable images. Half the images on a balanced probe set (unchanged by more values); on a 90/10
    correlated one about a fifth: the images whose value is not the one their class usually has carry it."""
    cells = _comparable_cells(view).astype(np.float64)
    total = cells.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.where(total > 0, total - (cells**2).sum(1) / total, 0.0)
    return float(np.minimum(total / 2, spread).sum())


def _comparable_cells(view: ConceptView) -> np.ndarray:
    """[S, V] cell sizes, 0 where a cell cannot be cross-fitted (fewer than two images on either side)."""
    sizes = view.cell_sizes()
    usable = sizes >= 2
    return sizes * (usable & (usable.sum(1, keepdims=True) >= 2))


def cell_median(view: ConceptView) -> float:
    """The typical smaller side of the concept's comparisons (``strata.pair_cell``): images of the rarer value
    of a pair, in its stratum."""
    return weighted_pair_median(view.cell_sizes())


def value_classes(view: ConceptView, value_names: Sequence[str], class_names: Sequence[str]) -> dict[str, str]:
    """Each value's class: the class whose share of predictions rises most with the value, stratum-matched
    (the value's cells against the other values' cells of the same strata)."""
    sizes = view.cell_sizes()  # [S, V]
    counts = np.bincount(view.cell * view.classes + view.pred, minlength=sizes.size * view.classes)
    counts = counts.reshape(view.strata, view.values, view.classes).astype(np.float64)
    out = {}
    for a in range(view.values):
        rest = counts.sum(1) - counts[:, a]
        ok = (sizes[:, a] > 0) & (sizes.sum(1) - sizes[:, a] > 0)
        if not ok.any():
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            lift = counts[ok, a] / sizes[ok, a, None] - rest[ok] / (sizes[ok].sum(1) - sizes[ok, a])[:, None]
        out[str(value_names[a])] = str(class_names[int(np.argmax(lift.mean(0)))])
    return out


def wilson(p: float, n: float) -> tuple[float, float]:
    """Wilson's 95% score interval of a proportion ``p`` observed on ``n`` trials."""
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return centre - half, centre + half


def _sampling_sd(draws: np.ndarray, fold_var: float = 0.0) -> float:
    """The standard deviation of the estimate over reruns of the probe: the bootstrap draws' (each dealt into
    folds once) less the fold-assignment variance that averaging ``SPLITS`` assignments removes from the point
    estimate (``fold_var``: the variance over the point estimate's own assignments), at least half the draws'."""
    var = float(np.var(draws, ddof=1))
    return float(np.sqrt(max(var - (1 - 1 / SPLITS) * fold_var, var / 4)))


def _interval(
    point: float, draws: np.ndarray, informative: float = 0.0, fold_var: float = 0.0
) -> tuple[float, float, float]:
    """(lo, hi, share of unmeasurable draws): ``point`` +- 1.96 bootstrap standard deviations; in the upper half
    a Wilson score interval instead, on the effective number of images the bootstrap variance implies (at most
    the ``informative`` images, ``informative_images``). Near 1 a share behaves like a proportion: a probe set
    where every prediction happened to follow the concept has a bootstrap variance of 0, yet the truth may be
    0.95. Near 0 likewise: where no prediction happened to follow it, the upper bound is at least Wilson's for 0
    of the informative images (about 4 / images on a balanced probe set: the rule of three), not 0."""
    finite = draws[np.isfinite(draws)]
    missing = 1.0 - len(finite) / max(len(draws), 1)
    if not np.isfinite(point) or len(finite) < 2:
        return float("nan"), float("nan"), missing
    sd = _sampling_sd(finite, fold_var)
    if informative < 1:
        return point - Z95 * sd, point + Z95 * sd, missing
    if point <= 0.5:
        return point - Z95 * sd, float(max(point + Z95 * sd, wilson(0.0, informative)[1])), missing
    p = min(point, 1.0)
    n_eff = p * (1 - p) / sd**2 if sd > 0 and p < 1 else np.inf
    lo, hi = wilson(p, min(n_eff, informative))
    return float(min(lo, p)), float(max(hi, p)), missing  # exactly p where rounding would leave it outside


def class_concept(
    values: Mapping[str, np.ndarray], value_names: Mapping[str, Sequence[str]], targets: np.ndarray, classes: list[str]
) -> dict[str, np.ndarray]:
    """A concept whose values include every class name is the class itself (the digit, when the classes are
    digits): where an image's class label is known, that is its value. A reading of it (captions) would
    otherwise differ from the class only by its misreadings, and never vary alone."""
    out = dict(values)
    for concept, names in value_names.items():
        if concept in values and set(classes) <= set(map(str, names)):
            index = np.asarray([list(map(str, names)).index(c) for c in classes])
            known = targets >= 0
            out[concept] = values[concept].copy()
            out[concept][known] = index[targets[known]]
    return out


def screen(
    pred: np.ndarray,
    values: Mapping[str, np.ndarray],
    cards: Mapping[str, int],
    targets: np.ndarray | None,
    classes: int,
    seed: int,
) -> dict[str, float]:
    """Concept -> the share of predictions that follow it, matched on the class alone (a cross-fitted point
    estimate, no interval: what decides which associated concepts may confound another; NaN unmeasurable)."""
    out = {}
    for i, c in enumerate(values):
        view = concept_view(c, pred, values, cards, targets, classes, on=class_strata(c, values, targets))
        out[c] = point_estimate(view, np.random.default_rng([seed, 3, i]), splits=SCREEN_SPLITS)
    return out


def assess(
    pred: np.ndarray,
    values: Mapping[str, np.ndarray],
    value_names: Mapping[str, Sequence[str]],
    targets: np.ndarray | None = None,
    classes: int | Sequence[str] | None = None,
    draws: int = 400,
    permutations: int = 500,
    min_effect: float = MIN_EFFECT,
    alpha: float = ALPHA,
    seed: int = 0,
) -> Verdict:
    """The verdict on a probe set.

    Args:
        pred: [n] predicted class of every probe image.
        values: concept -> [n] value index (-1 unknown).
        value_names: concept -> its values' names (their number is the concept's cardinality).
        targets: [n] the images' class labels (-1 unknown) when known: effects are then matched on the class.
        classes: the number of classes, or their names (default: max prediction + 1).
        draws: bootstrap resamples of the interval. permutations: of the within-strata null.
        min_effect: δ, the share of predictions a concept must move (interval above it) to count.
        alpha: family-wise error of the permutation tests over the concepts.
        seed: folds, resamples and permutations.
    """
    pred = _indices("pred", pred)
    values = {c: _indices(f"concept {c!r}", v) for c, v in values.items()}
    targets = None if targets is None else _indices("targets", targets)
    _check(pred, values, value_names, targets)
    class_names = _class_names(classes, pred)
    if pred.max() >= len(class_names):
        raise ValueError(f"predicted class {int(pred.max())} outside the {len(class_names)} classes given")
    if targets is not None and isinstance(classes, Sequence) and not isinstance(classes, str):
        values = class_concept(values, value_names, targets, class_names)
    cards = {c: len(value_names[c]) for c in values}
    first = screen(pred, values, cards, targets, len(class_names), seed)
    k = len(class_names)
    views = {c: concept_view(c, pred, values, cards, targets, k, first, tolerance=min_effect * BIAS) for c in values}
    evidence, boots = _evidence(views, len(pred), draws, permutations, seed)
    provisional = decide(evidence, lambda a, b: _margin(evidence, boots, a, b), min_effect, alpha)
    u = unexplained(pred, values, provisional.relies, targets, draws, seed)
    unlisted = bool(u.finite() and u.lo > UNEXPLAINED)
    decision = decide(evidence, lambda a, b: _margin(evidence, boots, a, b), min_effect, alpha, unlisted)
    effects = {}
    for c, view in views.items():
        e, relies = evidence[c], c in decision.relies
        effects[c] = ConceptEffect(
            value=e.effect.point,
            lo=e.effect.lo,
            hi=e.effect.hi,
            p_value=e.p_value,
            relies=relies,
            matched_on=view.matched_on,
            images=view.images,
            cell_median=cell_median(view),
            thin=e.thin,
            value_classes=value_classes(view, value_names[c], class_names) if relies else {},
        )
    return Verdict(
        decision.name, decision.reason, decision.relies, effects, decision, len(pred), len(class_names), min_effect, u
    )


def _class_names(classes: int | Sequence[str] | None, pred: np.ndarray) -> list[str]:
    if isinstance(classes, Sequence) and not isinstance(classes, str):
        return [str(c) for c in classes]
    k = int(classes) if classes else int(pred.max(initial=-1)) + 1
    return [str(i) for i in range(k)]


def _evidence(
    views: Mapping[str, ConceptView], n: int, draws: int, permutations: int, seed: int
) -> tuple[dict[str, ConceptEvidence], dict[str, np.ndarray]]:
    """Per concept: the effect with its interval, the Holm-adjusted p-value, thinness; and the bootstrap draws
    (the same resampled probe sets for every concept, so margins can be read off them)."""
    weights = np.random.default_rng([seed, 1]).multinomial(n, np.full(n, 1.0 / max(n, 1)), size=draws)
    points, boots, uppers, fold_var, raw_p = {}, {}, {}, {}, []
    for i, (c, view) in enumerate(views.items()):
        rng = np.random.default_rng([seed, 2, i])  # one stream per concept: its numbers do not depend on others
        splits = split_estimates(view, rng)
        points[c] = float(np.mean(splits))
        fold_var[c] = float(np.var(splits, ddof=1)) if np.isfinite(splits).all() else 0.0
        boots[c], plug = bootstrap_draws(view, weights, rng)
        plugin = plugin_estimate(view)
        uppers[c] = _upper(plugin, plug)
        raw_p.append(permutation_pvalue(view, rng, permutations, observed=plugin))
    evidence = {}
    for (c, view), p in zip(views.items(), holm(raw_p)):
        lo, hi, missing = _interval(points[c], boots[c], informative_images(view), fold_var[c])
        hi = min(max(hi, uppers[c]), 1.0) if np.isfinite(hi) else hi
        thin = cell_median(view) < MIN_CELL or missing > MAX_UNMEASURED_DRAWS
        evidence[c] = ConceptEvidence(Effect(points[c], lo, hi, COVERS), float(p), thin)
    return evidence, boots


def _upper(point: float, draws: np.ndarray) -> float:
    """The plug-in estimate, less its bootstrap estimate of its own upward bias (``point - (mean(draws) -
    point)``), + 1.96 bootstrap standard deviations: a bound on the share from above where the cross-fitted
    estimate has lost what its directions learned wrong (``following``). Without the correction the plug-in's
    noise (about 0.5 for a model that ignores a 10-valued concept over cells of ten images) stood in the bound."""
    finite = draws[np.isfinite(draws)]
    if not np.isfinite(point) or len(finite) < 2:
        return float("nan")
    return 2 * point - float(np.mean(finite)) + Z95 * float(np.std(finite, ddof=1))


def _margin(evidence: Mapping[str, ConceptEvidence], boots: Mapping[str, np.ndarray], a: str, b: str) -> Effect:
    point = evidence[a].effect.point - evidence[b].effect.point
    lo, hi, _ = _interval(point, boots[a] - boots[b])
    return Effect(point, lo, hi, COVERS)


def _indices(name: str, x) -> np.ndarray:
    """``x`` as int64 indices; a fractional or non-finite entry is a one-line error, not truncated into a cell."""
    x = np.asarray(x)
    if x.dtype.kind == "f":
        bad = x[~np.isfinite(x) | (x != np.round(x))] if x.size else x
        if len(bad):
            raise ValueError(f"{name}: indices must be whole numbers, got {float(bad.flat[0])}")
    elif x.size and x.dtype.kind not in "iub":
        raise ValueError(f"{name}: indices must be integers, got {x.dtype} (encode names first: verdict.encode)")
    return x.astype(np.int64)


def _check(pred: np.ndarray, values: Mapping[str, np.ndarray], value_names, targets) -> None:
    """One-line errors for inputs that would silently land in the wrong cell."""
    if pred.ndim != 1:
        raise ValueError(f"pred must be one predicted class per image, got shape {tuple(pred.shape)}")
    if not len(pred):
        raise ValueError("empty probe set: no predictions to assess")
    if pred.min() < 0:
        raise ValueError(f"predicted classes must be >= 0, got {int(pred.min())}")
    if not values:
        raise ValueError("no concepts: give at least one concept's values per image")
    for c, v in values.items():
        if c not in value_names:
            raise ValueError(f"concept {c!r} has values but no value names")
        if v.shape != pred.shape:
            raise ValueError(f"concept {c!r}: {v.shape[0] if v.ndim else 0} values for {len(pred)} images")
        card = len(value_names[c])
        bad = v[(v < -1) | (v >= card)]
        if len(bad):
            raise ValueError(f"concept {c!r}: value index {int(bad[0])} outside [0, {card}) (-1 = unknown)")
    if targets is not None and np.asarray(targets).shape != pred.shape:
        raise ValueError(f"targets: {np.asarray(targets).shape} for {len(pred)} images")
