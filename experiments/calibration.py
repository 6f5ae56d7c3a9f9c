"""Calibration: how often does the verdict claim a concept that the model's decisions do not follow?

    python experiments/calibration.py OUT [--families random_predictor shape_on_correlated random_labels
        untrained] [--seed-offset 1000] [--tests 100] [--workers 2]

Four null families, each with at least ``--tests`` non-degenerate tests (the predictions vary: at least two
classes take 10% of them each; a model that predicts one class cannot be wrong about anything):

* ``random_predictor``: hand-built models that predict at random, on every probe design of the validation
  grid (2/4/10 classes; 100-5,000 images; balanced, correlated, imbalanced, missing labels);
* ``shape_on_correlated``: hand-built models that read the digit, on 90/10 correlated probe sets (colour goes
  with the class), scored for colour: listed alone with the class labels, and beside shape;
* ``random_labels``: ResNet-18s trained on labels drawn independently of digit and colour (2 and 4 classes,
  colour-biased training images), every epoch one test;
* ``untrained``: freshly initialised networks (ResNet-18, a plain CNN, MobileNet-V3) with their logits centred
  over the probe split (a fresh network mostly predicts one class: 165 of 175 did in a first try; centring
  makes its predictions vary without training it).

A **false positive** is a concept the verdict counts (``relies``: null rejected and interval above δ) whose
counterfactual flip rate is below δ: the verdict said "at least δ of the predictions follow it" and they do
not. For the hand-built families every flip rate of colour is exactly 0; for trained and untrained networks
it is measured per image (every other value of the concept). Also reported: any concept counted, and named
outcomes. Rates with Clopper-Pearson 95% intervals. Writes OUT/calibration.jsonl and OUT/calibration.md.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from multiprocessing import Pool

import lightning as L
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verdict_lab import (  # noqa: E402 - the helpers beside this script
    SIZES,
    TrainSpec,
    clopper_pearson,
    datamodule,
    flips,
    non_degenerate,
    quiet_trainer,
    rate,
    read_jsonl,
    records,
    verdict_of,
    write_jsonl,
)

from xai_lightning.io import atomic_write_text  # noqa: E402
from xai_lightning.models import ClassifierModule  # noqa: E402
from xai_lightning.verdict import MIN_EFFECT  # noqa: E402
from xai_lightning.verdict.simulate import LAYOUTS, HandBuilt, ProbeDesign  # noqa: E402

FAMILIES = ("random_predictor", "shape_on_correlated", "random_labels", "untrained")
SHAPES = ((2, 2, 2), (4, 4, 3), (10, 10, 4))


def _row(family: str, verdict, truth: dict[str, float], pred: np.ndarray, **meta) -> dict:
    counted = list(verdict.relies)
    return {
        "family": family,
        "outcome": verdict.outcome,
        "reason": verdict.reason,
        "relies": counted,
        "false": [c for c in counted if truth.get(c, 0.0) < MIN_EFFECT],
        "flips": truth,
        "non_degenerate": non_degenerate(pred),
        **meta,
    }


# ---- hand-built families ---------------------------------------------------------------------------------
def _handbuilt(job: tuple) -> dict:
    family, design, listed, seed = job
    v = design.draw(np.random.default_rng(seed))
    model = HandBuilt("random") if family == "random_predictor" else HandBuilt("shape")
    pred = model.predict(v, design.classes)
    names = {c: [str(i) for i in range(design.cards[c])] for c in listed}
    design_rec = {"pred": pred, "target": v["observed_shape"], **{c: v[f"observed_{c}"] for c in listed}}
    verdict = verdict_of(design_rec, names, design.classes, seed)
    truth = model.flip_rates(v, design)
    cell = f"K{design.classes}/n{design.images}/{design.layout}/{'+'.join(listed)}"
    return _row(family, verdict, truth, pred, cell=cell, seed=seed)


def handbuilt_jobs(family: str, tests: int, offset: int) -> list[tuple]:
    jobs = []
    if family == "random_predictor":
        cells = [
            (ProbeDesign(n, *s, layout), ("shape", "color", "background"))
            for s, n, layout in itertools.product(SHAPES, SIZES, LAYOUTS)
        ]
    else:
        cells = [
            (ProbeDesign(n, *s, "correlated"), listed)
            for s, n, listed in itertools.product(SHAPES, SIZES, (("color",), ("shape", "color")))
        ]
    reps = math.ceil(tests / len(cells))
    for i, (design, listed) in enumerate(cells):
        jobs += [(family, design, listed, offset + 1000 * i + r) for r in range(reps)]
    return jobs


# ---- trained on random labels ----------------------------------------------------------------------------
def random_label_rows(out: str, runs: int, offset: int) -> list[dict]:
    rows = []
    for run in range(runs):
        k = 2 if run % 3 else 4
        digits, colors = ([5, 8], ["red", "green"]) if k == 2 else ([1, 4, 7, 9], ["red", "green", "blue", "yellow"])
        spec = TrainSpec(
            f"random_labels_k{k}", digits, colors, {"label_mode": "random"}, train_per_class=400, probe_images=1000
        )
        seed = offset + run
        dm = datamodule(spec, os.path.join(out, "data"), seed)
        model = ClassifierModule(num_classes=k, backbone="resnet18")
        probe = EpochProbe(k, seed, spec.name)
        L.seed_everything(seed, verbose=False)
        quiet_trainer(3, [probe]).fit(model, dm)
        rows += probe.rows
        print(f"[calibration] random labels run {run}: {[r['outcome'] for r in probe.rows]}", flush=True)
    return rows


class EpochProbe(L.Callback):
    """After every training epoch: the verdict on the whole probe split and the per-image flip rates."""

    def __init__(self, classes: int, seed: int, name: str) -> None:
        self.classes, self.seed, self.name, self.rows = classes, seed, name, []

    def on_train_epoch_end(self, trainer, pl_module):
        was = pl_module.training
        pl_module.eval()
        data = trainer.datamodule.datasets["probe_set"]
        row = _trained_row("random_labels", pl_module, data, self.classes, self.seed, self.name, trainer.current_epoch)
        self.rows.append(row)
        pl_module.train(was)


def _trained_row(family: str, model, data, classes: int, seed: int, name: str, epoch: int) -> dict:
    cards = {"shape": classes, "color": int(len(data.rgb))}
    truth = {c: float(v.mean()) for c, v in flips(model, data, cards).items()}
    rec = records(model, data, {"shape": "digit_index", "color": "color"})
    names = {c: [str(i) for i in range(cards[c])] for c in cards}
    verdict = verdict_of(rec, names, classes, seed + epoch)
    return _row(family, verdict, truth, rec["pred"], cell=name, seed=seed, epoch=epoch)


# ---- untrained networks ------------------------------------------------------------------------------------
class Centred(torch.nn.Module):
    """A network's logits minus their mean over a set of images (per class): the same function of the image,
    its constant preference for one class removed."""

    def __init__(self, net: torch.nn.Module, images: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        with torch.no_grad():
            self.register_buffer("mean", torch.cat([net(x) for x in images.split(500)]).mean(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) - self.mean


def untrained_rows(out: str, tests: int, offset: int) -> list[dict]:
    from verdict_lab import render

    spec = TrainSpec("untrained", [5, 8], ["red", "green"], {"color_mode": "random"}, probe_images=1000)
    dm = datamodule(spec, os.path.join(out, "data"), offset)
    dm.setup()
    data = dm.datasets["probe_set"]
    images = render(data, torch.arange(len(data)))
    rows, seed = [], offset
    while sum(r["non_degenerate"] for r in rows) < tests and seed < offset + 5 * tests:
        arch = ("resnet18", "simple_cnn", "mobilenet_v3_small")[seed % 3]
        torch.manual_seed(seed)
        model = Centred(ClassifierModule(num_classes=2, backbone=arch).eval(), images).eval()
        rows.append(_trained_row("untrained", model, data, 2, seed, arch, 0))
        seed += 1
    return rows


# ---- the report ------------------------------------------------------------------------------------------
def markdown(rows: list[dict], header: list[str]) -> str:
    lines = [
        *header,
        "| null family | non-degenerate tests | false positives (counted, flip < δ) | any concept counted | "
        "named outcome | target: FP <= 5%, upper < 0.08 |",
        "|---|---|---|---|---|---|",
    ]
    for family in FAMILIES:
        fam = [r for r in rows if r["family"] == family and r["non_degenerate"]]
        if not fam:
            continue
        n = len(fam)
        fp = sum(bool(r["false"]) for r in fam)
        counted = sum(bool(r["relies"]) for r in fam)
        named = sum(r["outcome"] not in ("none", "undecided") for r in fam)
        ok = fp / n <= 0.05 and clopper_pearson(fp, n)[1] < 0.08
        lines.append(
            f"| {family} | {n} (of {sum(r['family'] == family for r in rows)}) | {rate(fp, n)} | {rate(counted, n)} | "
            f"{rate(named, n)} | {'✓' if ok else '✗'} |"
        )
    lines += ["", "False positives, one line each:", ""]
    for r in rows:
        if r["non_degenerate"] and r["false"]:
            lines.append(f"- {r['family']} {r['cell']} seed {r['seed']}: counted {r['false']} (flips {r['flips']})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--seed-offset", type=int, default=1000)
    ap.add_argument("--tests", type=int, default=100, help="non-degenerate tests per family (at least)")
    ap.add_argument("--random-label-runs", type=int, default=45, help="trained runs (3 probed epochs each)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "calibration.jsonl")
    done = {r["family"] for r in read_jsonl(path)}
    t0 = time.time()
    for family in args.families:
        if family in done:
            continue
        t1 = time.time()
        if family in ("random_predictor", "shape_on_correlated"):
            with Pool(args.workers) as pool:
                rows = list(pool.imap(_handbuilt, handbuilt_jobs(family, args.tests, args.seed_offset)))
        elif family == "random_labels":
            rows = random_label_rows(args.out, args.random_label_runs, args.seed_offset)
        else:
            rows = untrained_rows(args.out, args.tests, args.seed_offset)
        write_jsonl(path, rows)
        print(f"[calibration] {family}: {len(rows)} tests, {time.time() - t1:.0f}s", flush=True)
    header = [
        "# Calibration: models that rely on nothing (or not on the concept scored)",
        "",
        f"`python experiments/calibration.py {' '.join(argv or sys.argv[1:])}` ({time.time() - t0:.0f} s this call)",
        "",
    ]
    text = markdown(read_jsonl(path), header)
    atomic_write_text(os.path.join(args.out, "calibration.md"), text)
    print(text)


if __name__ == "__main__":
    main()
