"""Validation of the label-free verdict: does the probe name a shortcut nobody labelled?

    python experiments/validate_discovery.py OUT [--part grid zeroshot] [--workers 2] [--quick]
        [--clip SPEC] [--mnist PATH]

``grid``: models trained on the digit world (``DigitWorldDataModule``, digits 3 and 8) with a shortcut planted
on one family — every family but the digit x 3 strengths (exact conflict fractions 0, 0.1, 0.25) x 3 seeds x
2 architectures (ResNet-18, a plain CNN), plus the 2-pixel corner patch (the grid's is 4 px) and models with
no shortcut (the null models). For each: the counterfactual truth of every family on the probe split (each
image re-rendered with every value of the family, everything else kept: the share of other values that
change the prediction), then three verdicts on the same predictions:

* ``free``: every family read off the images by the probe CLIP over the default vocabulary (no labels);
* ``labelled``: the data module's true values of every family;
* ``missing``: captions again, from a vocabulary without the planted family (does ``unexplained`` flag it?).

``zeroshot``: the probe CLIP's caption reading per family (accuracy against the renderer's values, share
left unknown) on synthetic strokes and, with ``--mnist``, on real handwriting rendered in the same world.

The targets were fixed before the runs (docs/discovery.md). Writes OUT/discovery.jsonl, OUT/zeroshot.json and
OUT/discovery.md; models are cached under OUT/models, so a rerun scores again without training.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from multiprocessing import Pool

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verdict_lab import fit_cached, predict_classes, read_jsonl, write_jsonl  # noqa: E402

from xai_lightning.data import DigitWorldDataModule  # noqa: E402
from xai_lightning.data.world import VALUES  # noqa: E402
from xai_lightning.io import atomic_write_text  # noqa: E402
from xai_lightning.verdict import assess  # noqa: E402
from xai_lightning.verdict.discover import predict, read_captions  # noqa: E402

PLANTED = ("color", "background", "background_color", "thickness", "size", "position", "slant", "patch")
CONFLICTS = (0.0, 0.1, 0.25)  # full, partial, weak shortcut (exact share of training images against it)
ARCHS = ("resnet18", "simple_cnn")
SEEDS = (3100, 3101, 3102)  # never used while the method was built
DEV_SEED = 2999  # --quick: the smoke test, and what the method was tried on
DIGITS = [3, 8]
FOLLOWS = 0.3  # the model follows the planted family: its counterfactual flip rate is at least this
CLEAR = 0.2  # a named family beaten by another family's flip rate by this much is wrong
PROBE_PER_CLASS = 500
DEFAULT_CLIP = {"embedded": "digitworld"}


# ---- one model ---------------------------------------------------------------------------------------------
def jobs(quick: bool, seeds: tuple[int, ...] = SEEDS) -> list[dict]:
    grid = [
        {"family": f, "conflict": c, "arch": a, "seed": s, "patch_px": 4}
        for f, c, a, s in itertools.product(PLANTED, CONFLICTS, ARCHS, seeds)
    ]
    grid += [
        {"family": "patch", "conflict": c, "arch": a, "seed": s, "patch_px": 2}
        for c, a, s in itertools.product(CONFLICTS, ARCHS, seeds)
    ]
    grid += [{"family": "none", "conflict": 0.0, "arch": a, "seed": s, "patch_px": 4} for a in ARCHS for s in seeds]
    if quick:
        grid = [g for g in grid if g["seed"] == SEEDS[0] and g["arch"] == "simple_cnn" and g["conflict"] == 0.0]
        grid = [{**g, "seed": DEV_SEED} for g in grid if g["family"] in ("thickness", "patch", "none")]
    return grid


def job_name(j: dict) -> str:
    return f"{j['family']}_c{j['conflict']:g}_p{j['patch_px']}_{j['arch']}_s{j['seed']}"


def datamodule(j: dict, out: str, quick: bool) -> DigitWorldDataModule:
    return DigitWorldDataModule(
        source="synthetic",
        data_dir=os.path.join(out, "data"),
        digits=DIGITS,
        shortcut=j["family"],
        shortcut_conflict_fraction=None if j["family"] == "none" else j["conflict"],
        patch_px=j["patch_px"],
        train_per_class=300 if quick else 800,
        test_per_class=20,
        real_world_per_class=20,
        probe_per_class=150 if quick else PROBE_PER_CLASS,
        batch_size=64,
        eval_batch_size=500,
        val_splits=["val"],
        seed=j["seed"],
    )


def train(j: dict, out: str, quick: bool):
    """(model in eval mode, set-up data module); weights cached as a plain tensor file."""
    from xai_lightning.models import ClassifierModule

    dm = datamodule(j, out, quick)
    model = ClassifierModule(num_classes=len(DIGITS), backbone=j["arch"], lr=1e-3)
    path = os.path.join(out, "models", job_name(j) + ".pt")
    return fit_cached(model, dm, path, j["seed"], 2 if quick else 3), dm


def truth(model, dm: DigitWorldDataModule) -> dict[str, float]:
    """Per family: the mean over probe images of the share of the family's other values that change the
    prediction (every other value once, everything else kept); the digit: another digit's strokes."""
    data = dm.datasets["probe_set"]
    index = torch.arange(len(data))
    base = predict_classes(model, data.images(index))
    own = data.values(index)
    out = {}
    for family in PLANTED:
        table = np.stack(
            [
                predict_classes(model, data.render(index, **{family: torch.full_like(own[family], v)}))
                for v in range(len(VALUES[family]))
            ],
            axis=1,
        )
        at_own = table[np.arange(len(index)), own[family].numpy()]
        out[family] = float(((table != at_own[:, None]).sum(1) / (table.shape[1] - 1)).mean())
    donor, found = dm.donors("probe_set", index)
    edited = predict_classes(model, data.render(index, source=donor))
    out["digit"] = float((edited != base)[found.numpy()].mean())
    return out


def true_labels(dm: DigitWorldDataModule) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    data = dm.datasets["probe_set"]
    index = torch.arange(len(data))
    values = {f: v.numpy() for f, v in data.values(index).items()}
    values["digit"] = data.digit_index.numpy()
    names = {f: list(VALUES[f]) for f in values if f != "digit"}
    names["digit"] = [str(d) for d in DIGITS]
    return values, names


# ---- verdicts ----------------------------------------------------------------------------------------------
def _verdict_fields(prefix: str, v) -> dict:
    row = {f"{prefix}/outcome": v.outcome, f"{prefix}/reason": v.reason, f"{prefix}/unlisted": v.unlisted}
    row[f"{prefix}/unexplained"] = [v.unexplained.point, v.unexplained.lo, v.unexplained.hi]
    for c, e in v.effects.items():
        row[f"{prefix}/effect/{c}"] = [e.value, e.lo, e.hi]
        row[f"{prefix}/relies/{c}"] = e.relies
        row[f"{prefix}/thin/{c}"] = e.thin
        if e.relies and e.value_classes:
            row[f"{prefix}/map/{c}"] = e.value_classes
    return row


def _read_accuracy(read, values: dict[str, np.ndarray]) -> dict:
    """Per family: (share of images read right, share left unknown), by value name."""
    out = {}
    for f, v in read.values.items():
        if f == "digit":
            truth_names = [str(DIGITS[i]) for i in values["digit"]]
        else:
            truth_names = [VALUES[f][i] for i in values[f]]
        names = read.names[f]
        got = [names[i] if i >= 0 else None for i in v]
        out[f] = [float(np.mean([g == t for g, t in zip(got, truth_names)])), float(np.mean(v < 0))]
    return out


def score_model(j: dict, out: str, clip, quick: bool) -> dict:
    t0 = time.perf_counter()
    model, dm = train(j, out, quick)
    data = dm.datasets["probe_set"]
    images = data.images(torch.arange(len(data)))
    batches = [images[i : i + 500] for i in range(0, len(images), 500)]
    pred, _ = predict(model, batches, 500)
    targets = data.label.numpy()
    labels, label_names = true_labels(dm)
    read = read_captions(batches, "digitworld", clip, 0.5, skip=set())
    row = {**j, "name": job_name(j), "images": len(pred), "truth": truth(model, dm)}
    row["read"] = _read_accuracy(read, labels)
    opts = {"targets": targets, "classes": [str(d) for d in DIGITS], "seed": j["seed"]}
    row.update(_verdict_fields("free", assess(pred, read.values, read.names, **opts)))
    row.update(_verdict_fields("labelled", assess(pred, labels, label_names, **opts)))
    if j["family"] != "none":
        kept = {f: v for f, v in read.values.items() if f != j["family"]}
        row.update(_verdict_fields("missing", assess(pred, kept, read.names, **opts)))
    row["seconds"] = time.perf_counter() - t0
    return row


def _worker(args: tuple) -> dict:
    j, out, clip_spec, quick = args
    torch.set_num_threads(1)
    from xai_lightning.clip import load_clip

    return score_model(j, out, load_clip(clip_spec), quick)


def run_grid(out: str, clip_spec: dict, workers: int, quick: bool, seeds: tuple[int, ...] = SEEDS) -> list[dict]:
    path = os.path.join(out, "discovery.jsonl")
    done = {r["name"] for r in read_jsonl(path)} if os.path.isfile(path) else set()
    todo = [(j, out, clip_spec, quick) for j in jobs(quick, seeds) if job_name(j) not in done]
    print(f"[discovery] {len(todo)} models to score ({len(done)} done)", flush=True)
    with Pool(workers) as pool:
        for k, row in enumerate(pool.imap_unordered(_worker, todo), 1):
            write_jsonl(path, [row])
            print(
                f"[discovery] {k}/{len(todo)} {row['name']}: free {row['free/outcome']} ({row['seconds']:.0f} s)",
                flush=True,
            )
    return read_jsonl(path)


# ---- zero-shot reading -------------------------------------------------------------------------------------
def zeroshot(out: str, clip_spec: dict, mnist: str | None, quick: bool) -> dict:
    """Per source and family: (accuracy, share unknown) of the caption reading on a probe split of every digit
    (the corner patch 4 px wide, and again 2 px wide on synthetic strokes: the grid's hard case)."""
    from xai_lightning.clip import load_clip

    clip, res = load_clip(clip_spec), {}
    settings = [("synthetic", "synthetic", 4), ("synthetic, 2-px patch", "synthetic", 2)]
    settings += [("real handwriting", mnist, 4)] if mnist else []
    for label, source, patch_px in settings:
        dm = DigitWorldDataModule(
            source=source,
            patch_px=patch_px,
            data_dir=os.path.join(out, "data"),
            train_per_class=10,
            test_per_class=10,
            real_world_per_class=10,
            probe_per_class=30 if quick else 200,
            val_splits=["val"],
            seed=77,
        )
        dm.prepare_data()
        dm.setup()
        data = dm.datasets["probe_set"]
        index = torch.arange(len(data))
        batches = [data.images(index[i : i + 500]) for i in range(0, len(index), 500)]
        read = read_captions(batches, "digitworld", clip, 0.5, skip=set())
        values = {f: v.numpy() for f, v in data.values(index).items()}
        values["digit"] = data.digit_index.numpy()
        acc = {}
        for f, v in read.values.items():
            names = VALUES[f] if f != "digit" else [str(d) for d in dm.digits]
            got = np.asarray([read.names[f][i] if i >= 0 else "" for i in v])
            acc[f] = {
                "accuracy": float((got == np.asarray(names)[values[f]]).mean()),
                "unknown": float((v < 0).mean()),
                "chance": 1.0 / len(names),
            }
        res[label] = {"images": len(index), **acc}
    atomic_write_text(os.path.join(out, "zeroshot.json"), json.dumps(res, indent=1))
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--part", nargs="+", default=["zeroshot", "grid"], choices=["zeroshot", "grid"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clip", type=json.loads, default=DEFAULT_CLIP, help="probe CLIP spec (JSON)")
    ap.add_argument("--mnist", default=None, help="an .npz of real handwriting for the zero-shot part")
    ap.add_argument("--quick", action="store_true", help="a few models at small sizes (a smoke test)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="training seeds of the grid")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if "zeroshot" in args.part:
        zeroshot(args.out, args.clip, args.mnist, args.quick)
    if "grid" in args.part:
        run_grid(args.out, args.clip, args.workers, args.quick, tuple(args.seeds))
    from discovery_report import report

    report(args.out, tuple(args.seeds))


if __name__ == "__main__":
    main()
