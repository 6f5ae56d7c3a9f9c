"""Every name the project logs, and the one place producers build them from.

Producers format these patterns (``names.EFFECT.format(c="color")``); docs/metrics.md, the dashboard and
the tests read them. Placeholders: ``{c}`` a concept, ``{r}`` an undecided reason's key
(``xai_lightning.verdict.REASON_KEYS``), ``{k}`` a caption key (``<concept>_<value>``), ``{l}`` a CLIP layer,
``{m}`` a surgery effect (``share``, ``retention``, ``share_vs_init``, ``retention_vs_init``,
``separation_vs_init``), ``{s}`` an evaluation split, ``{z}`` a zero-shot kind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# ---- ConceptProbe: the verdict, every probed epoch ---------------------------------------------------------
OUTCOME = "probe/outcome/{c}"  # 1 for the outcome (a concept, "none" or "undecided"), else 0
DECIDED = "probe/decided"  # 1 when the outcome names a concept
UNDECIDED = "probe/undecided/{r}"  # 1 for the reason an undecided outcome gives
EFFECT = "probe/effect/{c}"  # share of predictions that follow the concept, with its 95% interval
EFFECT_LO = "probe/effect_lo/{c}"
EFFECT_HI = "probe/effect_hi/{c}"
RELIES = "probe/relies/{c}"  # 1 when the concept counts (null rejected, interval above δ): the alarm reads it
MARGIN = "probe/margin"  # leading effect - runner-up, with its interval
MARGIN_LO = "probe/margin_lo"
MARGIN_HI = "probe/margin_hi"
UNEXPLAINED = "probe/unexplained"  # same-class, same-counted-concepts image pairs predicted apart, with interval
UNEXPLAINED_LO = "probe/unexplained_lo"
UNEXPLAINED_HI = "probe/unexplained_hi"
IMAGES = "probe/images"  # probe images behind the verdict
SECONDS = "probe/seconds"
# with ConceptProbe(log="all") also:
P_VALUE = "probe/p_value/{c}"  # Holm-adjusted within-strata permutation p-value
CELL_MEDIAN = "probe/cell_median/{c}"  # median images per (stratum, value) cell
THIN = "probe/thin/{c}"  # 1 when the cells were too thin for the interval to hold

PROBE_CONCEPT = (OUTCOME, EFFECT, EFFECT_LO, EFFECT_HI, RELIES)
PROBE_SCALAR = (
    "probe/outcome/none",
    "probe/outcome/undecided",
    DECIDED,
    UNEXPLAINED,
    UNEXPLAINED_LO,
    UNEXPLAINED_HI,
    IMAGES,
    SECONDS,
)
ZEROSHOT = "probe/zeroshot_acc/{c}"  # concepts read from captions where labels exist: the probe CLIP's accuracy
PROBE_REASON = (UNDECIDED,)
PROBE_MARGIN = (MARGIN, MARGIN_LO, MARGIN_HI)  # when there are two concepts or more
PROBE_ALL = (P_VALUE, CELL_MEDIAN, THIN)

# ---- SurgeryProbe: what the features carry (the paper's view), diagnostics -----------------------------------
S_EFFECT = "surgery/effect_{m}/{c}"  # a surgery effect with its 95% interval (not a verdict)
S_EFFECT_LO = "surgery/effect_{m}_lo/{c}"
S_EFFECT_HI = "surgery/effect_{m}_hi/{c}"
SURGERY_CONCEPT = (
    "surgery/share/{c}",  # the paper's influence share (argmax caption of surgery - plain CLIP in the concept)
    "surgery/share_clip/{c}",
    "surgery/share_surgery/{c}",
    "surgery/correct/{c}",
    "surgery/wrong/{c}",
    "surgery/null_share/{c}",
    "surgery/zeroshot_acc/{c}",  # can plain CLIP see the concept?
    "surgery/retention/{c}",  # ... through the model's features
    "surgery/null_retention/{c}",
    "surgery/separation/{c}",  # right caption - best wrong one, after surgery
    "surgery/separation_clip/{c}",  # plain CLIP's mean |separation|: the unit of separation effects
)
SURGERY_METRIC = (S_EFFECT, S_EFFECT_LO, S_EFFECT_HI)
SURGERY_REFERENCE = ("surgery/init_share/{c}", "surgery/init_retention/{c}", "surgery/init_separation/{c}")
SURGERY_CAPTION = ("surgery/delta/{k}",)  # mean similarity change per caption (surgery - plain CLIP)
SURGERY_LAYER = ("surgery/match/score_mean/{l}",)
SURGERY_SCALAR = (
    "surgery/images",
    "surgery/match/coverage",
    "surgery/skipped",
    "surgery/seconds",
    "surgery/fit_seconds",
    "surgery/score_seconds",
)
SURGERY_ONCE = ("surgery/reference_seconds",)  # the epoch the references are computed
SURGERY_MEDIA = ("surgery/table", "surgery/match_scores")  # W&B: caption table, match-score plot
SUMMARY = ("probe/verdict",)  # W&B run summary: the outcome as the console prints it

# ---- other callbacks and the models ------------------------------------------------------------------------
ALARM = ("alarm/{c}",)  # ConceptAlarm: the epoch it fired for a spurious concept
FLIP_RATE = "cf/{c}_flip_rate"
COUNTERFACTUAL = ("cf/color_flip_rate", "cf/shape_flip_rate", "cf/background_flip_rate")  # background: scenes
CF_FAMILY = (FLIP_RATE,)  # any edit a data module offers (the digit world: every family)
TIMER = ("time/train_epoch_seconds", "time/val_epoch_seconds")
CLASSIFIER = (
    "train/loss",
    "train/acc",
    "val/acc_best",
    "{s}/loss",  # one per evaluation loader: val, real_world, probe_set, test, ...
    "{s}/acc",
)
CLIP_TRAINER = ("train/logit_scale", "val/zeroshot_{z}_acc")  # CLIPModule (train/loss as above)


def fill(patterns: Iterable[str], **values: Sequence[str]) -> list[str]:
    """Every concrete name of ``patterns`` for the given placeholder values."""
    out = []
    for p in patterns:
        combos: list[dict[str, str]] = [{}]
        for key, options in values.items():
            if "{" + key + "}" in p:
                combos = [{**c, key: o} for c in combos for o in options]
        out += [p.format(**c) for c in combos]
    return out


def probe_keys(concepts: Sequence[str], reasons: Sequence[str], log_all: bool = False) -> list[str]:
    """Every key a ConceptProbe logs per probed epoch for these concepts (``reasons``: REASON_KEYS values)."""
    keys = fill(PROBE_CONCEPT, c=concepts) + list(PROBE_SCALAR) + fill(PROBE_REASON, r=reasons)
    keys += list(PROBE_MARGIN) if len(concepts) > 1 else []
    return keys + (fill(PROBE_ALL, c=concepts) if log_all else [])


def surgery_keys(
    concepts: Sequence[str], caption_keys: Sequence[str], clip_layers: Sequence[str], metrics: Sequence[str]
) -> list[str]:
    """Every key a SurgeryProbe logs per probed epoch (``metrics``: its computed effects; references add the
    ``*_vs_init`` ones and ``surgery/init_*``)."""
    keys = fill(SURGERY_CONCEPT, c=concepts) + fill(SURGERY_METRIC, m=metrics, c=concepts)
    if any(m.endswith("_vs_init") for m in metrics):
        keys += fill(SURGERY_REFERENCE, c=concepts)
    keys += fill(SURGERY_CAPTION, k=caption_keys) + fill(SURGERY_LAYER, l=clip_layers) + list(SURGERY_SCALAR)
    return keys


ALL_PATTERNS = (
    PROBE_CONCEPT
    + PROBE_SCALAR
    + PROBE_REASON
    + PROBE_MARGIN
    + PROBE_ALL
    + SURGERY_CONCEPT
    + SURGERY_METRIC
    + SURGERY_REFERENCE
    + SURGERY_CAPTION
    + SURGERY_LAYER
    + SURGERY_SCALAR
    + SURGERY_ONCE
    + SURGERY_MEDIA
    + SUMMARY
    + (ZEROSHOT,)
    + ALARM
    + COUNTERFACTUAL
    + CF_FAMILY
    + TIMER
    + CLASSIFIER
    + CLIP_TRAINER
)
_PLACEHOLDERS = ("c", "r", "k", "l", "m", "s", "z")


def _regex(pattern: str) -> re.Pattern:
    regex = re.escape(pattern)
    for ph in _PLACEHOLDERS:
        regex = regex.replace(re.escape("{" + ph + "}"), "[^/]+" if ph in ("s", "z", "r") else ".+")
    return re.compile(regex)


_COMPILED = [_regex(p) for p in ALL_PATTERNS]


def known(key: str) -> bool:
    """Whether a concrete key (``probe/effect/color``) is one of the documented names."""
    return any(r.fullmatch(key) for r in _COMPILED)
