"""Which probe settings separate a colour-reliant from a shape-reliant model? Paper-faithful vs ours.

    python experiments/probe_ablation.py STORY_DIR [--out STORY_DIR/ablation.md]

Loads the two checkpoints of a ``bias_story.sh`` run (biased, debiased) and the quickstart data, and runs
the surgery under several settings with the shipped probe CLIP:

* ``paper``: the authors' protocol: fit and score on the coloured *test* split (where every 5 is red and
  every 8 green), the same images for both, verdict = the influence share (docs/paper.md).
* ``paper, probe set``: the same, but on the probe set (colour independent of the digit), in-sample.
* ``ours``: probe set, fit and score on disjoint halves; the surgery against reference networks (here 3
  re-initialisations of the architecture by its constructor: a checkpoint does not hold the run's starting
  weights) and the decision-level reliance (the default verdict).
* single changes from ``ours``: swap fraction, model layers, score, matching.

For each model and setting: the colour and shape effects of every verdict metric and the concept each
names; the counterfactual ground truth is colour for the biased model and shape for the debiased one.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from xai_lightning.clip import load_clip
from xai_lightning.data import ColorMNISTDataModule
from xai_lightning.io import atomic_write_text
from xai_lightning.models import ClassifierModule
from xai_lightning.report import load_run
from xai_lightning.surgery import SurgeryPipeline, reference_models, resolve_concepts
from xai_lightning.surgery.holdout import holdout_mask

SETTINGS = [  # name, fit split, score split, holdout, pipeline kwargs
    ("paper: test split, in-sample", "test", "test", False, {}),
    ("paper: probe set, in-sample", "probe_set", "probe_set", False, {}),
    ("ours: probe set, held out", "probe_set", "probe_set", True, {}),
    ("ours + swap_fraction 0.25", "probe_set", "probe_set", True, {"swap_fraction": 0.25}),
    ("ours + blocks (post-residual)", "probe_set", "probe_set", True, {"standalone_layers": "blocks"}),
    ("ours + score pearson", "probe_set", "probe_set", True, {"score": "pearson"}),
    ("ours + one_to_one matching", "probe_set", "probe_set", True, {"matching": "one_to_one"}),
]


def model_and_data(run_dir: str) -> tuple[ClassifierModule, ColorMNISTDataModule, dict, dict]:
    run = load_run(run_dir)
    cfg = run.config
    model_args = dict(cfg["model"]["init_args"])
    model_args.pop("init_checkpoint", None)
    model = ClassifierModule(**model_args)
    ckpt = torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["state_dict"])
    data_args = dict(cfg["data"]["init_args"])
    dm = ColorMNISTDataModule(**data_args)
    dm.setup()
    probe = next(cb["init_args"] for cb in cfg["trainer"]["callbacks"] if cb["class_path"].endswith("SurgeryProbe"))
    return model.eval(), dm, probe, model_args


def halves(index: torch.Tensor, fit: bool) -> torch.Tensor:
    return holdout_mask(index, fit)


METRICS = ("reliance", "share", "retention", "retention_vs_init", "separation_vs_init")


@torch.no_grad()
def run_setting(
    model, dm, probe_cfg, model_args, clip, fit_split, score_split, holdout, kwargs, max_score=500, device="cpu"
) -> dict:
    args = dict(
        standalone_layers=probe_cfg.get("standalone_layers", "convs"),
        clip_layers=probe_cfg.get("clip_layers", "stages"),
        null_draws=probe_cfg.get("null_draws", 8),
    )
    args.update(kwargs)
    pipe = SurgeryPipeline(model, clip, resolve_concepts(probe_cfg["concepts"], dm.attributes), **args)
    fit_images = []
    for b in dm.dataloader(fit_split):
        keep = halves(b["index"], True) if holdout else torch.ones_like(b["index"], dtype=torch.bool)
        if keep.any():
            fit_images.append(b["image"][keep].to(device))
            pipe.fit_batch(fit_images[-1])
    pipe.fit_finish()
    triples, scored = [], 0
    for b in dm.dataloader(score_split):
        keep = halves(b["index"], False) if holdout else torch.ones_like(b["index"], dtype=torch.bool)
        keep &= torch.cumsum(keep.long(), 0) <= max_score - scored
        if keep.any():
            targets = torch.stack([b["digit_index"], b["color"]])[:, keep]
            triples.append((b["image"][keep].to(device), targets.to(device), b["index"][keep]))
            scored += int(keep.sum())
    refs = reference_models(lambda: ClassifierModule(**model_args), [10_000, 10_001, 10_002])
    pipe.compute_references([r.to(device) for r in refs], fit_images, triples)
    for images, targets, index in triples:
        pipe.score_batch(images, targets, index=index)
    out = {"images": pipe.score_finish(verdict="reliance", bootstrap=1000).images}
    for metric in METRICS:  # each metric's own outcome (the sums are reduced once; summaries only read them)
        summary = pipe.counts.summary(metric, 1000, pipe.seed, None, pipe.decisions)
        out.update({k: v for k, v in summary.metrics.items() if k.startswith(f"effect_{metric}")})
        out[f"outcome_{metric}"] = summary.outcome.text()
        out[f"name_{metric}"] = summary.outcome.name
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("story_dir")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    t0 = time.time()
    models = {name: model_and_data(os.path.join(args.story_dir, name)) for name in ("biased", "debiased")}
    truth = {"biased": "color", "debiased": "shape"}
    clip = load_clip(models["biased"][2].get("clip", {"embedded": "colordigits"})).to(args.device)
    for model, *_ in models.values():
        model.to(args.device)
    lines = [
        "# Probe settings: which ones tell the biased from the debiased model?",
        "",
        "Effects colour / shape, then the metric's outcome: decision reliance (the default verdict), the surgery "
        "against random matching (null) or against 3 re-initialisations of the architecture (− init). ✓ = the "
        "outcome names the counterfactual ground truth (biased: colour, debiased: shape), ✗ = it names the other "
        "concept, · = none or undecided.",
        "",
        "| setting | model | reliance (default) | share − null (paper) | retention − null | retention − init | "
        "separation − init |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, fit_split, score_split, holdout, kwargs in SETTINGS:
        for model_name, (model, dm, probe_cfg, model_args) in models.items():
            r = run_setting(
                model, dm, probe_cfg, model_args, clip, fit_split, score_split, holdout, kwargs, device=args.device
            )
            cells = []
            for metric in METRICS:
                named = r[f"name_{metric}"]
                mark = "✓" if named == truth[model_name] else ("·" if named in ("none", "undecided") else "✗")
                cells.append(
                    f"{r[f'effect_{metric}/color']:+.3f} / {r[f'effect_{metric}/shape']:+.3f} "
                    f"{r[f'outcome_{metric}']} {mark}"
                )
            lines.append(f"| {name} | {model_name} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    lines += [
        "",
        f"{time.time() - t0:.0f} s on {args.device} ({torch.get_num_threads()} CPU threads); "
        f"`python experiments/probe_ablation.py {args.story_dir} --device {args.device}`",
        "",
    ]
    out = args.out or os.path.join(args.story_dir, "ablation.md")
    atomic_write_text(out, "\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
