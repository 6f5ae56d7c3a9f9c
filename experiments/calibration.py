"""Calibration: how often does the probe name a concept for models that rely on nothing?

    python experiments/calibration.py OUT [--domain colour|scenes] [--trained-seeds 0 1 2]
        [--untrained-seeds 0 ... 9] [--train-per-class 1000] [-- FIT_ARGS...]

Two families of null models, every verdict metric side by side:

* ``random labels``: the quickstart (``configs/quickstart.yaml``, ``--data.label_mode random``) trained
  on labels drawn independently of digit and colour: the features change, no concept predicts the label.
  Every probed epoch is one test (and each run's final epoch). Trained through the CLI, as users do.
* ``untrained``: a freshly initialised ResNet-50 (seed s) probed against 3 reference networks that exclude
  its own weights (re-initialisations under other seeds), on the quickstart probe set: tests the
  between-network part of the surgery's interval (the decision-level reliance of an untrained network is 0:
  it predicts one class).

A false positive is any named concept (``none`` and ``undecided`` are not). The rate comes with a
Clopper-Pearson 95% interval. The counterfactual flip rates of each null model are reported beside it: a
model trained on random labels can still, by chance, let colour or shape decide its predictions on new
images, which the counterfactual then shows.

``--domain scenes`` does the same on digits over background textures (``configs/scenes/biased.yaml``, the
scenes probe CLIP, concepts shape, colour and background).

Writes OUT/calibration.json and OUT/calibration.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from validate_verdict import Scenario, epoch_rows, run_one  # the suite next to this script

from xai_lightning.clip import load_clip
from xai_lightning.data import ColorMNISTDataModule, SceneDigitsDataModule
from xai_lightning.io import atomic_write_text
from xai_lightning.models import ClassifierModule
from xai_lightning.report import load_run
from xai_lightning.surgery import DEFAULT_CONCEPTS, SurgeryPipeline, reference_models, resolve_concepts
from xai_lightning.surgery.holdout import holdout_mask
from xai_lightning.verdict import VERDICTS, truth_from_rates

BACKGROUND = {"attribute": "background", "template": "a photo of a digit on a {} background."}
# What differs between the colour domain (the quickstart) and the scenes domain (digits over textures).
DOMAINS = {
    "colour": {
        "config": "configs/quickstart.yaml",
        "datamodule": lambda **kw: ColorMNISTDataModule(**kw),
        "clip": "colordigits",
        "concepts": DEFAULT_CONCEPTS,
    },
    "scenes": {
        "config": "configs/scenes/biased.yaml",
        "datamodule": lambda **kw: SceneDigitsDataModule(backgrounds=["stripes", "dots"], **kw),
        "clip": "scenedigits",
        "concepts": {**DEFAULT_CONCEPTS, "background": BACKGROUND},
    },
}


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    from scipy.stats import beta

    if n == 0:
        return float("nan"), float("nan")
    lo = 0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))
    return lo, hi


def trained_nulls(out: str, seeds: list[int], train_per_class: int, extra: list[str], domain: str) -> list[dict]:
    rows = []
    for s in seeds:
        args = ["--data.init_args.label_mode", "random", "--data.init_args.train_per_class", str(train_per_class)]
        sc = Scenario(f"random_labels_s{s}", "random labels", args, s, config=DOMAINS[domain]["config"])
        run_dir = run_one(out, sc, extra, {})
        rows += epoch_rows(sc.name, sc.family, load_run(os.path.join(run_dir, "biased")).epochs)
    return rows


@torch.no_grad()
def _counterfactual(model, dm) -> dict[str, float]:
    """Concept -> flip rate of ``model``'s predictions under the data module's counterfactual edits."""
    counts = {name: torch.zeros(2) for name in dm.counterfactual_names}
    for b in dm.dataloader("probe_set"):
        pred = model(b["image"]).argmax(-1)
        for name, (edited, ok) in dm.counterfactuals("probe_set", b).items():
            counts[name] += torch.tensor([((model(edited).argmax(-1) != pred) & ok).sum(), ok.sum()]).float()
    return {name: float(c[0] / c[1].clamp_min(1)) for name, c in counts.items()}


@torch.no_grad()
def untrained_nulls(out: str, seeds: list[int], domain: str) -> list[dict]:
    """Each untrained network against 3 re-initialisations under other seeds, on the quickstart probe set."""
    spec = DOMAINS[domain]
    dm = spec["datamodule"](
        data_dir=os.path.join(out, "data"),
        train_per_class=5,
        test_per_class=5,
        real_world_per_class=5,
        probe_per_class=500,
        image_size=32,
        eval_batch_size=250,
    )
    dm.setup()
    clip = load_clip({"embedded": spec["clip"]})
    captions = resolve_concepts(spec["concepts"], dm.attributes)
    batches = list(dm.dataloader("probe_set"))

    def fit_images():
        for b in batches:
            yield b["image"][holdout_mask(b["index"], fit=True)]

    def scored():
        for b in batches:
            keep = holdout_mask(b["index"], fit=False)
            targets = torch.stack([b[dm.attribute_keys[a]] for a in captions.attributes])
            yield b["image"][keep], targets[:, keep], b["index"][keep]

    rows = []
    for s in seeds:
        t0 = time.time()
        torch.manual_seed(s)
        model = ClassifierModule(num_classes=2).eval()
        pipe = SurgeryPipeline(model, clip, captions, "convs", "stages", null_draws=8)
        for x in fit_images():
            pipe.fit_batch(x)
        pipe.fit_finish()
        build = lambda: ClassifierModule(num_classes=2)  # noqa: E731
        pipe.compute_references(reference_models(build, [100_000 + 10 * s + k for k in range(3)]), fit_images, scored())
        for x, t, i in scored():
            pipe.score_batch(x, t, index=i)
        pipe.score_finish(bootstrap=2000)
        row = _row(f"untrained_s{s}", pipe, _counterfactual(model, dm), captions.names)
        print(
            f"[calibration] untrained seed {s}: "
            + ", ".join(f"{v} {row[f'outcome/{v}']}" for v in VERDICTS)
            + f" ({time.time() - t0:.0f} s)",
            flush=True,
        )
        rows.append(row)
    return rows


def _row(name: str, pipe: SurgeryPipeline, flips: dict[str, float], concepts: list[str]) -> dict:
    """Every verdict metric's outcome and effects for one scored model, beside its counterfactual truth."""
    row = {"run": name, "family": "untrained", "epoch": 0, **{f"cf_{c}": r for c, r in flips.items()}}
    row["truth"] = truth_from_rates(flips)
    for v in VERDICTS:
        summary = pipe.counts.summary(v, 2000, pipe.seed, None, pipe.decisions)
        row[f"outcome/{v}"] = summary.outcome.name
        for c in concepts:
            for k in ("", "_lo", "_hi"):
                row[f"{v}{k}/{c}"] = summary.metrics[f"effect_{v}{k}/{c}"]
    return row


def rates(rows: list[dict]) -> dict:
    out = {}
    for v in VERDICTS:
        named = [r for r in rows if r.get(f"outcome/{v}") not in (None, "none", "undecided")]
        lo, hi = clopper_pearson(len(named), len(rows))
        rate = len(named) / len(rows) if rows else float("nan")
        out[v] = {"false_positives": len(named), "n": len(rows), "rate": rate, "lo": lo, "hi": hi}
    return out


def markdown(families: dict[str, list[dict]], header: list[str]) -> str:
    lines = [*header, "", "## False-positive rate (any named concept), 95% Clopper-Pearson interval", ""]
    lines += ["| null family | tests | " + " | ".join(VERDICTS) + " |", "|---|---|" + "---|" * len(VERDICTS)]
    for name, rows in families.items():
        r = rates(rows)
        cells = [
            f"{r[v]['false_positives']}/{r[v]['n']} = {r[v]['rate']:.2f} [{r[v]['lo']:.2f}, {r[v]['hi']:.2f}]"
            for v in VERDICTS
        ]
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Every null model",
        "",
        "| model | epoch | cf colour / shape (/ background) | truth | "
        + " | ".join(VERDICTS)
        + " | reliance colour / shape (/ background) |",
        "|---|---|---|---|" + "---|" * len(VERDICTS) + "---|",
    ]
    for name, rows in families.items():
        if "(final epoch)" in name:
            continue  # the same rows as every probed epoch
        for r in rows:
            bg = "cf_background" in r
            rel = f"{r['reliance/color']:+.3f} / {r['reliance/shape']:+.3f}" if "reliance/color" in r else "–"
            rel += f" / {r['reliance/background']:+.3f}" if "reliance/background" in r else ""
            cf = f"{r['cf_color']:.3f} / {r['cf_shape']:.3f}" + (f" / {r['cf_background']:.3f}" if bg else "")
            lines.append(
                f"| {r['run']} | {r['epoch']} | {cf} | {r['truth']} | "
                + " | ".join(r.get(f"outcome/{v}", "–") for v in VERDICTS)
                + f" | {rel} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        extra, argv = argv[argv.index("--") + 1 :], argv[: argv.index("--")]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--trained-seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--untrained-seeds", type=int, nargs="*", default=list(range(10)))
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--domain", choices=sorted(DOMAINS), default="colour", help="colour digits or scenes")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    trained = trained_nulls(args.out, args.trained_seeds, args.train_per_class, extra, args.domain)
    untrained = untrained_nulls(args.out, args.untrained_seeds, args.domain)
    finals = {r["run"]: r for r in trained}  # the last probed epoch of each run
    families = {
        "random labels (every probed epoch)": trained,
        "random labels (final epoch)": list(finals.values()),
        "untrained vs references without it": untrained,
    }
    families = {name: rows for name, rows in families.items() if rows}
    wall = time.time() - t0
    result = {name: {"rates": rates(rows), "rows": rows} for name, rows in families.items()}
    result["seconds"] = wall
    atomic_write_text(os.path.join(args.out, "calibration.json"), json.dumps(result, indent=1) + "\n")
    header = [
        "# Calibration: models that rely on nothing",
        "",
        f"`python experiments/calibration.py {' '.join(sys.argv[1:])}`: {len(args.trained_seeds)} runs of "
        f"{DOMAINS[args.domain]['config']} on random labels ({args.train_per_class} training digits per class), "
        f"{len(args.untrained_seeds)} untrained ResNet-50s against 3 references each; {wall:.0f} s.",
    ]
    atomic_write_text(os.path.join(args.out, "calibration.md"), markdown(families, header))
    print(open(os.path.join(args.out, "calibration.md")).read())


if __name__ == "__main__":
    main()
