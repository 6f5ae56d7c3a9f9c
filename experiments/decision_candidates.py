"""Decision-aware candidates: which verdict follows what the *decision* uses, epoch by epoch?

    python experiments/decision_candidates.py OUT --mnist DIGITS.npz [--epochs 12] [--train-per-class 100]

Trains a ResNet-50 (the quickstart's model, 32 px) on a small colour-biased set of real handwritten digits
(4 red / 9 green), saving nothing but its state in memory at every epoch, and scores each epoch, on the
quickstart's probe protocol (fit on one half of the probe set, score the other), with:

* ``reliance`` (the shipped default): how much the predictions change between probe images that differ in
  the concept, beyond images that agree on every concept;
* ``separation vs start``: the surgery's caption separation minus the same on the weights the run started
  from (feature level, not decision-aware);
* ``weighted surgery``: the surgery with every transplanted channel scaled by its decision importance
  (gradient x activation of the centred logits, root mean square over the fit images, normalised per layer),
  minus the same on the start: channels the decision does not use reach CLIP as their mean;
* ``causal ablation``: the model channels matched to the 10% of CLIP channels most selective for a concept
  (eta squared of their pooled activation) are set to their mean; the flip rate of the model's predictions
  minus that of as many random channels (same layers, 4 draws).

The counterfactual flip rates at each epoch are the ground truth. Writes OUT/decision_candidates.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch
import torch.nn.functional as F

from xai_lightning.clip import load_clip
from xai_lightning.data import ColorMNISTDataModule
from xai_lightning.io import atomic_write_text
from xai_lightning.models import ClassifierModule
from xai_lightning.surgery import (
    DEFAULT_CONCEPTS,
    CrossMoments,
    StandardizedMaps,
    build_plan,
    capture,
    forward_hooks,
    resolve_concepts,
    resolve_layers,
    transplant,
)
from xai_lightning.surgery.holdout import holdout_mask
from xai_lightning.surgery.scoring import separation
from xai_lightning.verdict import DecisionTable, RelianceEffects, counterfactual_truth


def batches(ds, idx, size=250):
    for i in range(0, len(idx), size):
        yield ds.images(idx[i : i + size]), idx[i : i + size]


@torch.no_grad()
def counterfactual(model, dm) -> tuple[float, float]:
    counts = torch.zeros(4)
    for b in dm.dataloader("probe_set"):
        pred = model(b["image"]).argmax(-1)
        edits = dm.counterfactuals("probe_set", b)
        (xc, okc), (xs, oks) = edits["color"], edits["shape"]
        flips = [((model(xc).argmax(-1) != pred) & okc).sum(), okc.sum(), ((model(xs).argmax(-1) != pred) & oks).sum()]
        counts += torch.tensor([*flips, oks.sum()]).float()
    return float(counts[0] / counts[1]), float(counts[2] / counts[3])


def importance(model, layers, ds, fit_idx, plan) -> torch.Tensor:
    """[n_s] root mean square over images of each channel's first-order contribution to the centred logits."""
    mods, acts = dict(model.named_modules()), {}

    def keep(name):
        def hook(module, inputs, output):  # returns None: the output is not replaced
            output.retain_grad()
            acts[name] = output

        return hook

    handles = [mods[n].register_forward_hook(keep(n)) for n in layers]
    sl = plan.standalone_slices()
    total, count = None, 0
    try:
        for x, _ in batches(ds, fit_idx, 50):
            z = model(x)
            parts = []
            for c in range(z.shape[1]):
                for a in acts.values():
                    a.grad = None
                (z[:, c] - z.mean(1)).sum().backward(retain_graph=c < z.shape[1] - 1)
                parts.append(
                    torch.cat(
                        [
                            (acts[n].grad * (acts[n].detach() - plan.s_mean[sl[n]].view(1, -1, 1, 1))).sum((2, 3))
                            for n in layers
                        ],
                        1,
                    )
                )
            sq = torch.stack(parts).pow(2).sum((0, 1))
            total, count = (sq if total is None else total + sq), count + len(x)
    finally:
        for h in handles:
            h.remove()
    imp = (total / count).sqrt().detach()
    for s in sl.values():  # normalised per layer
        imp[s] = imp[s] / imp[s].max().clamp_min(1e-12)
    return imp


@torch.no_grad()
def surgery(model, clip, captions, ds, fit_idx, score_idx, targets, weights=None, plan=None):
    """Per-image separation per concept [2, N] after surgery (optionally decision-weighted), and the plan."""
    layers, clip_layers = resolve_layers(model, "convs"), resolve_layers(clip.model, "stages")
    if plan is None:
        mom = CrossMoments()
        for x, _ in batches(ds, fit_idx):
            with capture(model, layers) as sa:
                model(x)
            with capture(clip.model, clip_layers) as ca:
                clip.encode_image(clip.preprocess(x))
            mom.update(dict(sa), dict(ca))
        plan = build_plan(mom)
    text = F.normalize(clip.encode_text(captions.captions).float(), dim=-1)
    out, plain = [], []
    for x, _ in batches(ds, score_idx):
        with capture(model, layers) as sa:
            model(x)
        maps = StandardizedMaps(plan, dict(sa))
        if weights is not None:
            for g in range(len(maps.groups)):
                sel = (maps.group_of == g).nonzero().flatten()
                w = torch.empty(len(sel))
                w[maps.pos_of[sel]] = weights[sel]
                maps.groups[g] = maps.groups[g] * w.view(1, -1, 1, 1)
        xc = clip.preprocess(x)
        plain.append(F.normalize(clip.encode_image(xc).float(), dim=-1) @ text.T)
        with transplant(clip.model, plan, maps, clip_layers[-1:]):
            out.append(F.normalize(clip.encode_image(xc).float(), dim=-1) @ text.T)
    sims, sims0 = torch.cat(out), torch.cat(plain)
    sep = torch.stack([separation(captions, sims, c, targets[c]) for c in range(2)])
    unit = torch.stack([separation(captions, sims0, c, targets[c]).abs().mean() for c in range(2)])
    return sep, unit, plan


@torch.no_grad()
def ablation(model, clip, ds, fit_idx, score_idx, attrs, plan, q=0.1, draws=4) -> list[float]:
    """Per concept: flip rate when the model channels matched to the concept's most selective CLIP channels
    are set to their mean, minus that for as many random channels of the same layers."""
    layers, clip_layers = resolve_layers(model, "convs"), resolve_layers(clip.model, "stages")
    pooled = []
    for x, _ in batches(ds, fit_idx):
        with capture(clip.model, clip_layers) as ca:
            clip.encode_image(clip.preprocess(x))
        pooled.append(torch.cat([ca[n].float().mean((2, 3)) for n in clip_layers], 1))
    p = torch.cat(pooled)
    sl = plan.standalone_slices()

    def preds(channels=None):
        hooks = {}
        for n in layers if channels is not None else []:
            ks = channels[(channels >= sl[n].start) & (channels < sl[n].stop)]
            if len(ks):
                loc, mu = ks - sl[n].start, plan.s_mean[ks]
                hooks[n] = lambda m, i, o, loc=loc, mu=mu: o.index_copy(
                    1, loc, mu.view(1, -1, 1, 1).expand(len(o), -1, *o.shape[2:]).to(o.dtype)
                )
        with forward_hooks(model, hooks):
            return torch.cat([model(x).argmax(-1) for x, _ in batches(ds, score_idx)])

    base, gen, out = preds(), torch.Generator().manual_seed(0), []
    for attr in attrs:
        v = attr[fit_idx]
        between = sum((v == k).float().mean() * (p[v == k].mean(0) - p.mean(0)) ** 2 for k in v.unique() if k >= 0)
        eta = between / (p.var(0, unbiased=False) + 1e-12)
        chosen = plan.matching.source[eta.argsort(descending=True)[: int(q * len(eta))]]
        chosen = chosen[chosen >= 0].unique()
        flip = float((preds(chosen) != base).float().mean())
        rand = []
        for _ in range(draws):
            pick = []
            for n in layers:
                k = int(((chosen >= sl[n].start) & (chosen < sl[n].stop)).sum())
                cand = torch.arange(sl[n].start, sl[n].stop)[plan.s_valid[sl[n]]]
                pick.append(cand[torch.randperm(len(cand), generator=gen)[:k]])
            rand.append(float((preds(torch.cat(pick)) != base).float().mean()))
        out.append(flip - sum(rand) / len(rand))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--mnist", required=True, help=".npz with real digits (images N x 28 x 28 uint8, labels)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    dm = ColorMNISTDataModule(
        source=args.mnist,
        data_dir=os.path.join(args.out, "data"),
        digits=[4, 9],
        train_per_class=args.train_per_class,
        test_per_class=50,
        real_world_per_class=100,
        probe_per_class=500,
        image_size=32,
        batch_size=32,
        eval_batch_size=250,
        seed=args.seed,
    )
    dm.setup()
    ds, train = dm.datasets["probe_set"], dm.datasets["train"]
    idx = torch.arange(len(ds))
    fit_idx, score_idx = idx[holdout_mask(idx, True)], idx[holdout_mask(idx, False)]
    targets = torch.stack([ds.digit_index[score_idx], ds.color[score_idx]])
    attrs = [ds.digit_index, ds.color]
    clip = load_clip({"embedded": "colordigits"})
    captions = resolve_concepts(DEFAULT_CONCEPTS, dm.attributes)
    torch.manual_seed(args.seed)
    model = ClassifierModule(num_classes=2)
    start = copy.deepcopy(model).eval()
    start_sep, unit, _ = surgery(start, clip, captions, ds, fit_idx, score_idx, targets)
    plan0 = surgery(start, clip, captions, ds, fit_idx, score_idx, targets)[2]
    start_w = surgery(
        start,
        clip,
        captions,
        ds,
        fit_idx,
        score_idx,
        targets,
        importance(start, resolve_layers(start, "convs"), ds, fit_idx, plan0),
        plan0,
    )[0]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows = []
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(perm), 32):
            j = perm[i : i + 32]
            loss = F.cross_entropy(model(train.images(j)), train.label[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        cf_color, cf_shape = counterfactual(model, dm)
        table = DecisionTable([2, 2], 2)
        with torch.no_grad():
            for x, j in batches(ds, score_idx):
                table.update(model(x).argmax(-1), torch.stack([ds.digit_index[j], ds.color[j]]))
        rel = RelianceEffects(table, ["shape", "color"], draws=1000)
        sep, _, plan = surgery(model, clip, captions, ds, fit_idx, score_idx, targets)
        w = importance(model, resolve_layers(model, "convs"), ds, fit_idx, plan)
        wsep = surgery(model, clip, captions, ds, fit_idx, score_idx, targets, w, plan)[0]
        causal = ablation(model, clip, ds, fit_idx, score_idx, attrs, plan)
        row = {
            "epoch": epoch,
            "cf": (cf_color, cf_shape),
            "truth": counterfactual_truth(cf_color, cf_shape),
            "reliance": [rel.effect(c).point for c in ("shape", "color")],
            "separation": ((sep - start_sep).nanmean(1) / unit).tolist(),
            "weighted": ((wsep - start_w).nanmean(1) / unit).tolist(),
            "ablation": causal,
        }
        rows.append(row)
        print(row, flush=True)
    lines = [
        "# Decision-aware candidates, epoch by epoch",
        "",
        f"`python experiments/decision_candidates.py {args.out} --mnist DIGITS.npz --epochs {args.epochs} "
        f"--train-per-class {args.train_per_class}`: a ResNet-50 on {args.train_per_class} real digits per class "
        f"(4 red, 9 green), {time.time() - t0:.0f} s. Each cell: colour / shape; the larger one is the concept "
        "the candidate points at (✓ when that is the counterfactual truth, ✗ when it is the other concept, "
        "no mark when the truth is mixed).",
        "",
        "| epoch | cf colour / shape | truth | reliance | separation − start | decision-weighted surgery − start | "
        "causal ablation |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(pair, truth):
        shape, color = pair
        lead = "color" if color > shape else "shape"
        mark = "" if truth == "mixed" else (" ✓" if lead == truth else " ✗")
        return f"{color:+.3f} / {shape:+.3f}{mark}"

    for r in rows:
        lines.append(
            f"| {r['epoch']} | {r['cf'][0]:.3f} / {r['cf'][1]:.3f} | {r['truth']} | "
            + " | ".join(cell(r[k], r["truth"]) for k in ("reliance", "separation", "weighted", "ablation"))
            + " |"
        )
    atomic_write_text(os.path.join(args.out, "decision_candidates.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
