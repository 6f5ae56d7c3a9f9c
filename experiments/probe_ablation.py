"""Which probe settings separate a colour-reliant from a shape-reliant model? Paper-faithful vs ours.

    python experiments/probe_ablation.py STORY_DIR [--out STORY_DIR/ablation.md]

Loads the two checkpoints of a ``bias_story.sh`` run (biased, debiased) and the quickstart data, and runs
the surgery under several settings with the shipped probe CLIP:

* ``paper``: the authors' protocol: fit and score on the coloured *test* split (where every 5 is red and
  every 8 green), the same images for both, verdict = the influence share (docs/paper.md).
* ``paper, probe set``: the same, but on the probe set (colour independent of the digit), in-sample.
* ``ours``: probe set, fit and score on disjoint halves; the surgery against reference networks (here 3
  re-initialisations of the architecture by its constructor: a checkpoint does not hold the run's starting
  weights).
* single changes from ``ours``: swap fraction, model layers, score, matching.

For each model and setting: the colour and shape effects of every surgery metric, and which concept each
separates (the larger effect's interval above the other's), beside the verdict on the scored images
(``xai_lightning.verdict.assess``: it needs no surgery, so it is the same whatever the setting); the
counterfactual ground truth is colour for the biased model and shape for the debiased one.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from xai_lightning.clip import load_clip
from xai_lightning.data import ColorMNISTDataModule
from xai_lightning.io import atomic_write_text, load_file
from xai_lightning.models import ClassifierModule
from xai_lightning.report import load_run
from xai_lightning.surgery import SurgeryPipeline, reference_models, resolve_concepts
from xai_lightning.surgery.holdout import holdout_mask
from xai_lightning.verdict import assess

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
    ckpt = load_file(os.path.join(run_dir, "checkpoints", "last.ckpt"), "checkpoint")
    model.load_state_dict(ckpt["state_dict"])
    data_args = dict(cfg["data"]["init_args"])
    dm = ColorMNISTDataModule(**data_args)
    dm.setup()
    probe = next(cb["init_args"] for cb in cfg["trainer"]["callbacks"] if cb["class_path"].endswith("SurgeryProbe"))
    return model.eval(), dm, probe, model_args


def halves(index: torch.Tensor, fit: bool) -> torch.Tensor:
    return holdout_mask(index, fit)


METRICS = ("share", "retention", "retention_vs_init", "separation_vs_init")


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
    preds, values = [], []
    for images, targets, index in triples:
        pipe.score_batch(images, targets, index=index)
        preds.append(model(images).argmax(-1).cpu())
        values.append(targets.cpu())
    summary = pipe.score_finish(bootstrap=1000)
    values = torch.cat(values, dim=1).numpy()
    verdict = assess(
        torch.cat(preds).numpy(),
        {"shape": values[0], "color": values[1]},
        {"shape": dm.class_names, "color": dm.color_names},
        targets=values[0],
        seed=0,
    )
    out = {"images": summary.images, "verdict": verdict.text(), "verdict_name": verdict.outcome}
    out.update({f"verdict/{c}": verdict.effects[c].value for c in ("color", "shape")})
    for metric in METRICS:
        out[metric] = summary.effects.get(metric, {})
    return out


def separates(effects: dict) -> str:
    """The concept whose effect's interval lies above the other's, else ``·``."""
    if not effects:
        return "·"
    top, other = sorted(effects, key=lambda c: effects[c].point, reverse=True)
    return top if effects[top].lo > effects[other].hi else "·"


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
        "The verdict (share of predictions following colour / shape, outcome; it needs no surgery), then the "
        "surgery's effects colour / shape against random matching (null) or against 3 re-initialisations of the "
        "architecture (− init) and the concept whose interval lies above the other's. ✓ = it names the "
        "counterfactual ground truth (biased: colour, debiased: shape), ✗ = the other concept, · = neither.",
        "",
        "| setting | model | verdict | share − null (paper) | retention − null | retention − init | "
        "separation − init |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, fit_split, score_split, holdout, kwargs in SETTINGS:
        for model_name, (model, dm, probe_cfg, model_args) in models.items():
            r = run_setting(
                model, dm, probe_cfg, model_args, clip, fit_split, score_split, holdout, kwargs, device=args.device
            )

            def mark(named: str, want: str = truth[model_name]) -> str:
                return "✓" if named == want else ("·" if named in ("·", "none", "undecided") else "✗")

            cells = [f"{r['verdict/color']:+.3f} / {r['verdict/shape']:+.3f} {r['verdict']} {mark(r['verdict_name'])}"]
            for metric in METRICS:
                e = r[metric]
                if not e:
                    cells.append("–")
                    continue
                named = separates(e)
                cells.append(f"{e['color'].point:+.3f} / {e['shape'].point:+.3f} {named} {mark(named)}")
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
