"""Caption scoring counts per image: hand-built similarities, and an independent loop implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xai_lightning.surgery import ProbeCounts, resolve_concepts

ATTRS = {"digit": ["5", "8"], "color": ["red", "green"]}
SPEC = {
    "shape": {"attribute": "digit", "template": "a digit {}"},
    "color": {"attribute": "color", "captions": {"red": "a red digit", "green": "a green digit"}},
}
# caption order: 0 "a digit 5", 1 "a digit 8", 2 "a red digit", 3 "a green digit"


def test_hand_built_similarities_give_hand_computed_shares():
    caps = resolve_concepts(SPEC, ATTRS)
    assert caps.captions == ["a digit 5", "a digit 8", "a red digit", "a green digit"]
    assert caps.keys == ["shape_5", "shape_8", "color_red", "color_green"]
    # 4 images: (digit, colour) = (5, red), (8, red), (5, green), (8, gray)
    targets = torch.tensor([[0, 1, 0, 1], [0, 0, 1, -1]])
    level0 = torch.tensor(
        [
            [0.1, 0.0, 0.9, 0.2],  # plain CLIP: red (correct colour)
            [0.0, 0.8, 0.3, 0.1],  # 8 (correct shape)
            [0.7, 0.1, 0.2, 0.3],  # 5 (correct shape)
            [0.1, 0.2, 0.0, 0.6],
        ]
    )  # green (gray image: colour undefined)
    level1 = torch.tensor(
        [
            [0.9, 0.0, 0.8, 0.1],  # surgery: 5 (correct); within colour: red (kept)
            [0.0, 0.1, 0.2, 0.7],  # green (wrong colour); within shape: 8 (kept)
            [0.1, 0.2, 0.9, 0.3],  # red (wrong colour); within shape: 8 (lost)
            [0.2, 0.9, 0.1, 0.0],
        ]
    )  # 8 (correct)
    # influence = level1 - level0 argmax: img0 -> 0 (5, +0.8), img1 -> 3 (green, +0.6),
    # img2 -> 2 (red, +0.7), img3 -> 1 (8, +0.7)
    null = torch.stack([level0.flip(0), level1.roll(1, dims=0)])  # two 'random matching' draws
    counts = ProbeCounts(caps, levels=1, null_draws=2)
    counts.update(torch.stack([level0, level1]), null, targets)
    m = counts.summary(bootstrap=500).metrics
    assert m["share_clip/shape"] == 0.5 and m["share_clip/color"] == 0.5
    assert m["share_surgery/shape"] == 0.5 and m["share_surgery/color"] == 0.5
    assert m["share/shape"] == 0.5 and m["share/color"] == 0.5  # influence view
    assert m["correct/shape"] == 0.5 and m["wrong/shape"] == 0.0  # img0 (5) and img3 (8), both right
    assert m["correct/color"] == 0.0 and m["wrong/color"] == 0.5  # img1, img2: wrong colour
    assert m["zeroshot_acc/shape"] == 1.0  # within shape at level 0: 5, 8, 5, 8
    assert m["zeroshot_acc/color"] == 1.0  # within colour at level 0: red .9>.2, red .3>.1, green .3>.2 (img3 gray)
    assert m["retention/shape"] == 0.75  # img2 loses its shape
    assert m["retention/color"] == pytest.approx(1 / 3)  # of the 3 coloured images only img0 keeps red
    assert m["delta/shape_5"] == pytest.approx(float((level1 - level0)[:, 0].mean()))


def _reference(sims, null, targets, concept_of, value_of, n_concepts):
    """The definitions, one image at a time in plain Python."""
    L, B, K = sims.shape
    out = {}
    views = {"share_clip": sims[0], "share_surgery": sims[-1], "share": sims[-1] - sims[0]}
    for c in range(n_concepts):
        cols = [k for k in range(K) if concept_of[k] == c]
        defined = [b for b in range(B) if targets[c][b] >= 0]
        for name, s in views.items():
            out[f"{name}/{c}"] = sum(concept_of[int(np.argmax(s[b]))] == c for b in range(B)) / B
        infl = sims[-1] - sims[0]
        tops = [int(np.argmax(infl[b])) for b in range(B)]
        out[f"correct/{c}"] = (
            sum(
                concept_of[tops[b]] == c and targets[c][b] >= 0 and value_of[tops[b]] == targets[c][b] for b in range(B)
            )
            / B
        )
        out[f"wrong/{c}"] = (
            sum(
                concept_of[tops[b]] == c and targets[c][b] >= 0 and value_of[tops[b]] != targets[c][b] for b in range(B)
            )
            / B
        )

        def within(s, b, cols=cols):
            return value_of[cols[int(np.argmax([s[b][k] for k in cols]))]]

        out[f"zeroshot_acc/{c}"] = sum(within(sims[0], b) == targets[c][b] for b in defined) / len(defined)
        kept = {b: float(within(sims[-1], b) == targets[c][b]) for b in defined}
        out[f"retention/{c}"] = sum(kept.values()) / len(defined)
        null_kept = {b: np.mean([within(n, b) == targets[c][b] for n in null]) for b in defined}
        out[f"null_retention/{c}"] = float(np.mean(list(null_kept.values())))
        out[f"effect_retention/{c}"] = float(np.mean([kept[b] - null_kept[b] for b in defined]))
        share = [float(concept_of[tops[b]] == c) for b in range(B)]
        null_share = [np.mean([concept_of[int(np.argmax(n[b] - sims[0][b]))] == c for n in null]) for b in range(B)]
        out[f"null_share/{c}"] = float(np.mean(null_share))
        out[f"effect_share/{c}"] = float(np.mean(np.array(share) - np.array(null_share)))
        out[f"per_image_retention/{c}"] = {b: kept[b] - null_kept[b] for b in defined}
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counts_equal_a_loop_over_images_also_across_batches(seed):
    caps = resolve_concepts(SPEC, ATTRS)
    g = torch.Generator().manual_seed(seed)
    L, B, K, D = 3, 37, 4, 3
    sims = torch.rand(L + 1, B, K, generator=g)
    null = torch.rand(D, B, K, generator=g)
    targets = torch.stack([torch.randint(0, 2, (B,), generator=g), torch.randint(-1, 2, (B,), generator=g)])
    counts = ProbeCounts(caps, levels=L, null_draws=D)
    for part in torch.arange(B).split(10):  # batches of 10, 10, 10, 7: the counts add up
        counts.update(sims[:, part], null[:, part], targets[:, part])
    summary = counts.summary(bootstrap=500)
    m = summary.metrics
    ref = _reference(sims.numpy(), null.numpy(), targets.tolist(), caps.concept_of.tolist(), caps.value_of.tolist(), 2)
    ref.pop("per_image_retention/0"), ref.pop("per_image_retention/1")
    for key, value in ref.items():
        metric, c = key.rsplit("/", 1)
        assert m[f"{metric}/{caps.names[int(c)]}"] == pytest.approx(value, abs=1e-12), key
    for family in ("share", "retention"):
        for c in caps.names:
            e = summary.effects[family][c]
            assert (m[f"effect_{family}/{c}"], m[f"effect_{family}_lo/{c}"]) == (e.point, e.lo)
            assert e.lo <= e.point <= e.hi


def test_concept_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="'texture', which the data does not provide; available: digit, color"):
        resolve_concepts({"t": {"attribute": "texture", "template": "{}"}}, ATTRS)
    with pytest.raises(ValueError, match=r"missing \['green'\], unknown \['blue'\]"):
        resolve_concepts({"c": {"attribute": "color", "captions": {"red": "r", "blue": "b"}}}, ATTRS)
    with pytest.raises(ValueError, match="has no '\\{\\}'"):
        resolve_concepts({"s": {"attribute": "digit", "template": "a digit"}}, ATTRS)
    with pytest.raises(ValueError, match="exactly one of 'template' or 'captions'"):
        resolve_concepts({"s": {"attribute": "digit"}}, ATTRS)


def _separation_loop(s, targets, concept_of, value_of, c):
    """Per image: similarity to the right caption of concept c minus the best wrong one (None: undefined)."""
    cols = [k for k in range(len(concept_of)) if concept_of[k] == c]
    out = []
    for b in range(len(s)):
        t = targets[c][b]
        if t < 0:
            out.append(None)
            continue
        right = [s[b][k] for k in cols if value_of[k] == t][0]
        out.append(right - max(s[b][k] for k in cols if value_of[k] != t))
    return out


def _paired_reference(d: np.ndarray, ref_means: np.ndarray) -> tuple[float, float, float]:
    """The paired comparison's interval, written out: image variance + between-reference variance (1 + 1/R),
    Welch-Satterthwaite degrees of freedom, Student's t."""
    from scipy import stats

    n, r = len(d), len(ref_means)
    var_img = d.var(ddof=1) / n
    var_net = ref_means.var(ddof=1) * (1 + 1 / r)
    total = var_img + var_net
    df = total**2 / (var_img**2 / (n - 1) + var_net**2 / (r - 1))
    half = stats.t.ppf(0.975, df) * np.sqrt(total)
    return d.mean(), d.mean() - half, d.mean() + half


@pytest.mark.parametrize("seed", [0, 1])
def test_vs_init_effects_pair_each_image_with_its_reference_networks(seed):
    caps = resolve_concepts(SPEC, ATTRS)
    g = torch.Generator().manual_seed(seed)
    L, B, K, D, R = 1, 41, 4, 2, 3
    sims = torch.rand(L + 1, B, K, generator=g, dtype=torch.float64)
    null = torch.rand(D, B, K, generator=g, dtype=torch.float64)
    targets = torch.stack([torch.randint(0, 2, (B,), generator=g), torch.randint(-1, 2, (B,), generator=g)])
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    ref = torch.stack(  # R reference networks' outcomes: share, retention in {0, 1}, separation; NaN undefined
        [
            torch.stack(
                [
                    torch.randint(0, 2, (2, B), generator=g).double(),
                    torch.where(targets >= 0, torch.randint(0, 2, (2, B), generator=g).double(), nan),
                    torch.where(targets >= 0, torch.rand(2, B, generator=g, dtype=torch.float64) - 0.5 + 0.2 * r, nan),
                ]
            )
            for r in range(R)
        ]
    )
    counts = ProbeCounts(caps, levels=L, null_draws=D, references=R)
    outcome = torch.cat(
        [counts.update(sims[:, p], null[:, p], targets[:, p], ref[..., p]) for p in torch.arange(B).split(16)], -1
    )
    co, vo, tl = caps.concept_of.tolist(), caps.value_of.tolist(), targets.tolist()
    loop = _reference(sims.numpy(), null.numpy(), tl, co, vo, 2)
    infl = (sims[-1] - sims[0]).argmax(dim=1)
    for c in range(2):  # the returned per-image outcomes are the definitions
        assert outcome[0, c].tolist() == [float(co[int(k)] == c) for k in infl]
        assert [not math.isnan(o) for o in outcome[1, c].tolist()] == [
            b in loop[f"per_image_retention/{c}"] for b in range(B)
        ]
        sep = _separation_loop(sims[-1].tolist(), tl, co, vo, c)
        assert [None if math.isnan(o) else pytest.approx(o, abs=1e-12) for o in outcome[2, c].tolist()] == sep
    s = counts.summary(bootstrap=500)
    per_image = {}
    for c, name in enumerate(caps.names):
        sep0 = [abs(x) for x in _separation_loop(sims[0].tolist(), tl, co, vo, c) if x is not None]
        units = {"share": 1.0, "retention": 1.0, "separation": float(np.mean(sep0))}
        for m, metric in enumerate(("share", "retention", "separation")):
            rows = [
                b
                for b in range(B)
                if not (math.isnan(outcome[m, c, b]) or any(math.isnan(ref[r, m, c, b]) for r in range(R)))
            ]
            d = np.array([float(outcome[m, c, b] - ref[:, m, c, b].mean()) for b in rows]) / units[metric]
            means = np.array([float(ref[r, m, c, rows].mean()) for r in range(R)]) / units[metric]
            point, lo, hi = _paired_reference(d, means)
            key = f"effect_{metric}_vs_init"
            assert s.metrics[f"{key}/{name}"] == pytest.approx(point, abs=1e-12)
            assert s.metrics[f"{key}_lo/{name}"] == pytest.approx(lo, abs=1e-9)
            assert s.metrics[f"{key}_hi/{name}"] == pytest.approx(hi, abs=1e-9)
            assert s.metrics[f"init_{metric}/{name}"] == pytest.approx(float(ref[:, m, c, rows].mean()), abs=1e-12)
            per_image[(metric, c)] = dict(zip(rows, d))
            per_image[(metric, "ref", c)] = {b: ref[:, m, c, b].numpy() / units[metric] for b in rows}
    # without references there are no vs-start effects at all (not a silent zero)
    plain = ProbeCounts(caps, levels=L, null_draws=D)
    plain.update(sims, null, targets)
    assert not any("vs_init" in k for k in plain.summary().metrics)
