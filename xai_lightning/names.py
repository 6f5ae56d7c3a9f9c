"""Every name the project logs: the one source that the docs, the tests and dashboards read.

Placeholders: ``{c}`` a concept, ``{k}`` a caption key (``<concept>_<value>``), ``{l}`` a CLIP layer,
``{m}`` a verdict metric (``xai_lightning.verdict.VERDICTS``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# ---- SurgeryProbe, every probed epoch ----------------------------------------------------------------
PROBE_CONCEPT = (
    "probe/share/{c}",  # the paper's influence share (argmax caption of surgery - plain CLIP in the concept)
    "probe/share_clip/{c}",
    "probe/share_surgery/{c}",
    "probe/correct/{c}",
    "probe/wrong/{c}",
    "probe/null_share/{c}",
    "probe/zeroshot_acc/{c}",  # can plain CLIP see the concept?
    "probe/retention/{c}",  # ... through the model's features
    "probe/null_retention/{c}",
    "probe/separation/{c}",  # right caption - best wrong one, after surgery
    "probe/separation_clip/{c}",  # plain CLIP's mean |separation|: the unit of separation effects
    "probe/effect/{c}",  # the chosen verdict's effect, with its 95% interval
    "probe/effect_lo/{c}",
    "probe/effect_hi/{c}",
    "probe/outcome/{c}",  # 1 when the outcome names the concept
)
PROBE_METRIC = ("probe/effect_{m}/{c}", "probe/effect_{m}_lo/{c}", "probe/effect_{m}_hi/{c}")
# every verdict metric's own margin (leading - runner-up) and whether it alone would name a concept
PROBE_METRIC_SCALAR = ("probe/margin_{m}", "probe/margin_{m}_lo", "probe/margin_{m}_hi", "probe/decided_{m}")
PROBE_REFERENCE = ("probe/init_share/{c}", "probe/init_retention/{c}", "probe/init_separation/{c}")
PROBE_CAPTION = ("probe/delta/{k}",)  # mean similarity change per caption (surgery - plain CLIP)
PROBE_LAYER = ("probe/match/score_mean/{l}",)
PROBE_SCALAR = (
    "probe/decided",  # 1 when the outcome names a concept
    "probe/outcome/none",
    "probe/outcome/undecided",
    "probe/margin",  # leading effect - runner-up, with its interval
    "probe/margin_lo",
    "probe/margin_hi",
    "probe/images",
    "probe/reliance_images",
    "probe/match/coverage",
    "probe/skipped",
    "probe/seconds",
    "probe/fit_seconds",
    "probe/score_seconds",
)
PROBE_ONCE = ("probe/reference_seconds",)  # the epoch the references are computed
# ---- other callbacks and the model ------------------------------------------------------------------
ALARM = ("alarm/{c}",)  # ConceptAlarm: the epoch it fired for a spurious concept
COUNTERFACTUAL = ("cf/color_flip_rate", "cf/shape_flip_rate", "cf/background_flip_rate")  # background: scenes
TIMER = ("time/train_epoch_seconds", "time/val_epoch_seconds")
CLASSIFIER = (
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "val/acc_best",
    "real_world/loss",
    "real_world/acc",
    "probe_set/loss",
    "probe_set/acc",
    "test/loss",
    "test/acc",
)


def _fill(patterns: Iterable[str], **values: Sequence[str]) -> list[str]:
    out = []
    for p in patterns:
        combos = [{}]
        for key, options in values.items():
            if "{" + key + "}" in p:
                combos = [{**c, key: o} for c in combos for o in options]
        out += [p.format(**c) for c in combos]
    return out


def probe_keys(
    concepts: Sequence[str],
    caption_keys: Sequence[str],
    clip_layers: Sequence[str],
    metrics: Sequence[str],
    references: bool = True,
) -> list[str]:
    """Every key a probed epoch logs (without ``probe/reference_seconds``), for these concepts, captions,
    CLIP layers and computed verdict metrics."""
    keys = _fill(PROBE_CONCEPT, c=concepts) + _fill(PROBE_METRIC, m=metrics, c=concepts)
    keys += _fill(PROBE_METRIC_SCALAR, m=metrics)
    if references:
        keys += _fill(PROBE_REFERENCE, c=concepts)
    keys += _fill(PROBE_CAPTION, k=caption_keys) + _fill(PROBE_LAYER, l=clip_layers) + list(PROBE_SCALAR)
    return keys


ALL_PATTERNS = (
    PROBE_CONCEPT
    + PROBE_METRIC
    + PROBE_METRIC_SCALAR
    + PROBE_REFERENCE
    + PROBE_CAPTION
    + PROBE_LAYER
    + PROBE_SCALAR
    + PROBE_ONCE
    + ALARM
    + COUNTERFACTUAL
    + TIMER
    + CLASSIFIER
)


def known(key: str) -> bool:
    """Whether a concrete key (``probe/effect/color``) is one of the documented names."""
    import re

    for pattern in ALL_PATTERNS:
        regex = re.escape(pattern)
        for ph in ("c", "k", "l", "m"):
            regex = regex.replace(re.escape("{" + ph + "}"), ".+")
        if re.fullmatch(regex, key):
            return True
    return False
