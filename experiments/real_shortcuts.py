"""Real handwriting, no painting: does the label-free probe name a shortcut that lives in the strokes themselves?

    python experiments/real_shortcuts.py DIGITS.npz OUT [--seeds 0 1] [--attributes thickness slant]

The task: is the digit low (0-4) or high (5-9)? The training subset is chosen from real handwritten digits so
that the class goes with a naturally varying attribute measured from the pixels — low digits are the
thickest-written third of each digit and high digits the thinnest third (``thickness``: stroke width
2 x area / perimeter), or low digits lean right and high digits lean left (``slant``: the shear of the ink's
second moments). Nothing is painted: every image is drawn in the digit world as written (regular thickness,
upright, centred; colour, background, size and patch at random). A ResNet-18 learns it; the probe set is
held-out digits of every thickness and slant, read by the digit-world probe CLIP with no labels.

Reported per model: the label-free verdict (the attribute's effect, interval, whether it counts and ranks
first among the families other than the digit, its value -> class map), the same verdict with the measured
attribute as a label (terciles), and the counterfactual flip rate of the renderer's edit of that family
(thin/thick strokes, left/right shear) as an approximate truth. Writes OUT/real_shortcuts.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xai_lightning.data.backgrounds import draw_params  # noqa: E402
from xai_lightning.data.world import VALUES, render  # noqa: E402
from xai_lightning.io import atomic_write_text  # noqa: E402
from xai_lightning.verdict import assess  # noqa: E402
from xai_lightning.verdict.discover import read_captions  # noqa: E402

RANDOM = ("color", "background", "background_color", "size", "patch")  # drawn at random in every image


def stroke_width(x: np.ndarray) -> np.ndarray:
    """[N] 2 x ink area / ink perimeter (4-neighbour boundary pixels) of [N, 28, 28] strokes."""
    ink = x > 127
    pad = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    inner = pad[:, :-2, 1:-1] & pad[:, 2:, 1:-1] & pad[:, 1:-1, :-2] & pad[:, 1:-1, 2:]
    boundary = (ink & ~inner).sum((1, 2))
    return 2.0 * ink.sum((1, 2)) / np.maximum(boundary, 1)


def shear(x: np.ndarray) -> np.ndarray:
    """[N] mu11 / mu02 of the ink (positive: the top leans right)."""
    w = x.astype(np.float64)
    yy, xx = np.mgrid[:28, :28]
    m = w.sum((1, 2))
    cx, cy = (w * xx).sum((1, 2)) / m, (w * yy).sum((1, 2)) / m
    dx, dy = xx[None] - cx[:, None, None], yy[None] - cy[:, None, None]
    return -(w * dx * dy).sum((1, 2)) / np.maximum((w * dy * dy).sum((1, 2)), 1e-9)  # y grows downwards


MEASURE = {"thickness": stroke_width, "slant": shear}


def terciles(a: np.ndarray, digits: np.ndarray) -> np.ndarray:
    """0/1/2: the low, middle and high third of ``a`` within each digit."""
    out = np.zeros(len(a), dtype=np.int64)
    for d in np.unique(digits):
        rows = digits == d
        lo, hi = np.quantile(a[rows], [1 / 3, 2 / 3])
        out[rows] = (a[rows] > lo).astype(int) + (a[rows] > hi).astype(int)
    return out


def world_values(n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Every family's value: as written for thickness, slant, position; at random for the others."""
    vals = {f: torch.from_numpy(rng.integers(0, len(VALUES[f]), n)) for f in RANDOM}
    vals["thickness"] = torch.full((n,), VALUES["thickness"].index("regular"))
    vals["slant"] = torch.full((n,), VALUES["slant"].index("upright"))
    vals["position"] = torch.full((n,), VALUES["position"].index("center"))
    return vals


def split(images: np.ndarray, digits: np.ndarray, attribute: str, seed: int):
    """(train rows, probe rows, attribute terciles): 70% of each digit for the biased training subset, the rest
    for the probe set."""
    rng = np.random.default_rng([seed, 5])
    t = terciles(MEASURE[attribute](images), digits)
    pool = rng.random(len(digits)) < 0.7
    high = digits >= 5
    keep = np.where(high, t == 0, t == 2)  # low digits: the top third; high digits: the bottom third
    return np.flatnonzero(pool & keep), np.flatnonzero(~pool), t


def train(images: torch.Tensor, labels: torch.Tensor, seed: int, epochs: int = 4):
    from xai_lightning.models import ClassifierModule

    torch.manual_seed(seed)
    model = ClassifierModule(num_classes=2, backbone="resnet18", lr=1e-3)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(images))
        for i in range(0, len(order), 64):
            b = order[i : i + 64]
            if len(b) < 2:  # batch norm cannot train on a single image
                continue
            loss = F.cross_entropy(model(images[b]), labels[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict(model, images: torch.Tensor) -> np.ndarray:
    return torch.cat([model(images[i : i + 500]).argmax(-1) for i in range(0, len(images), 500)]).numpy()


def edit_flip(model, strokes, vals, params, attribute: str) -> float:
    """Share of probe images whose prediction changes when the renderer draws the family at its two extremes
    (thin/thick, left/right) instead of as written: the mean over both edits."""
    base = predict(model, render(strokes, vals, params))
    flips = []
    for v in (0, len(VALUES[attribute]) - 1):
        edited = {**vals, attribute: torch.full_like(vals[attribute], v)}
        flips.append(float((predict(model, render(strokes, edited, params)) != base).mean()))
    return float(np.mean(flips))


def one(images: np.ndarray, digits: np.ndarray, attribute: str, seed: int) -> dict:
    tr, pr, t = split(images, digits, attribute, seed)
    rng = np.random.default_rng([seed, 6])
    x = torch.from_numpy(images)
    y = torch.from_numpy((digits >= 5).astype(np.int64))
    tv, pv = world_values(len(tr), rng), world_values(len(pr), rng)
    tp, pp = (torch.from_numpy(draw_params(n, rng)) for n in (len(tr), len(pr)))
    model = train(render(x[tr], tv, tp), y[tr], seed)
    probe = render(x[pr], pv, pp)
    pred, targets = predict(model, probe), y[pr].numpy()
    read = read_captions([probe[i : i + 500] for i in range(0, len(probe), 500)], "digitworld", None, 0.5, set())
    free = assess(pred, read.values, read.names, targets=targets, classes=2, seed=seed)
    measured = assess(
        pred, {attribute: t[pr]}, {attribute: ["low", "middle", "high"]}, targets=targets, classes=2, seed=seed
    )
    others = sorted(
        (f for f in free.effects if f != "digit"), key=lambda f: -np.nan_to_num(free.effects[f].value, nan=-9)
    )
    e, m = free.effects[attribute], measured.effects[attribute]
    return {
        "attribute": attribute,
        "seed": seed,
        "train": len(tr),
        "probe": len(pr),
        "train_acc": float((predict(model, render(x[tr], tv, tp)) == y[tr].numpy()).mean()),
        "probe_acc": float((pred == targets).mean()),
        "free": {
            "outcome": free.outcome,
            "reason": free.reason,
            "effect": [e.value, e.lo, e.hi],
            "counts": e.relies,
            "rank": others.index(attribute) + 1,
            "map": e.value_classes,
            "top": others[:3],
            "unexplained": free.unexplained.point,
        },
        "measured": {"effect": [m.value, m.lo, m.hi], "counts": m.relies, "map": m.value_classes},
        "edit_flip": edit_flip(model, x[pr], pv, pp, attribute),
        "table": free.table(),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "# Real handwriting, no painting (experiments/real_shortcuts.py)",
        "",
        "| attribute | seed | probe acc | free: effect [95%] | counts | rank | value -> class | outcome | "
        "measured-label effect | renderer-edit flip |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, m = r["free"], r["measured"]
        lines.append(
            f"| {r['attribute']} | {r['seed']} | {r['probe_acc']:.3f} | {f['effect'][0]:+.3f} [{f['effect'][1]:+.3f}, "
            f"{f['effect'][2]:+.3f}] | {'yes' if f['counts'] else 'no'} | {f['rank']} | "
            f"{'; '.join(f'{k} -> {v}' for k, v in f['map'].items()) or '-'} | {f['outcome']} "
            f"{'(' + f['reason'] + ')' if f['reason'] else ''} | {m['effect'][0]:+.3f} [{m['effect'][1]:+.3f}, "
            f"{m['effect'][2]:+.3f}] | {r['edit_flip']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("npz")
    ap.add_argument("out")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--attributes", nargs="+", default=["thickness", "slant"], choices=sorted(MEASURE))
    args = ap.parse_args(argv)
    data = np.load(args.npz)
    images, digits = data["images"], data["labels"].astype(np.int64)
    rows = []
    for attribute in args.attributes:
        for seed in args.seeds:
            rows.append(one(images, digits, attribute, seed))
            print(rows[-1]["table"], flush=True)
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "real_shortcuts.json"), json.dumps(rows, indent=1))
    text = markdown(rows)
    atomic_write_text(os.path.join(args.out, "real_shortcuts.md"), text)
    print(text)


if __name__ == "__main__":
    main()
