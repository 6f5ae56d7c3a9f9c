"""How the probe's cost grows: seconds per probed epoch against images, model layers and resolution.

    python experiments/probe_scaling.py [--out scaling.md] [--device cpu|cuda]

One probed epoch as the callback runs it, on an untrained ResNet-50 (the quickstart's model) and the embedded
probe CLIP, on synthetic colour digits: the fit pass (the model's maps and CLIP's on the fit half, folded into
the matching sums; the model's forward is counted, which validation runs anyway in training), the matching,
and the scoring pass (every scored image: the model's forward, plain CLIP, the transplant and 8 null draws).
The references (once per run) cost about the fit + matching + one transplant per reference network. Rows:
probe images (half fitted, half scored) at 32 px with the paper's 49 convs; the layer presets at 32 px; the
resolution with 250 images.
"""

from __future__ import annotations

import argparse
import time

import torch

from xai_lightning.clip import load_clip
from xai_lightning.data import ColorMNISTDataModule
from xai_lightning.io import atomic_write_text
from xai_lightning.models import ClassifierModule
from xai_lightning.surgery import DEFAULT_CONCEPTS, SurgeryPipeline, resolve_concepts
from xai_lightning.surgery.holdout import holdout_mask


@torch.no_grad()
def probe_seconds(images: int, layers: str, size: int, device: str) -> tuple[float, float, float]:
    """(fit seconds, match seconds, score seconds) of one probed epoch."""
    dm = ColorMNISTDataModule(
        data_dir="data",
        train_per_class=5,
        test_per_class=5,
        real_world_per_class=5,
        probe_per_class=images // 2,
        image_size=size,
        eval_batch_size=125,
    )
    dm.setup()
    torch.manual_seed(0)
    model = ClassifierModule(num_classes=2).eval().to(device)
    pipe = SurgeryPipeline(
        model,
        load_clip({"embedded": "colordigits"}),
        resolve_concepts(DEFAULT_CONCEPTS, dm.attributes),
        layers,
        "stages",
        null_draws=8,
    ).to(device)
    batches = [{k: v.to(device) for k, v in b.items()} for b in dm.dataloader("probe_set")]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for b in batches:
        pipe.fit_batch(b["image"][holdout_mask(b["index"], True)])
    sync()
    t1 = time.perf_counter()
    pipe.fit_finish()
    sync()
    t2 = time.perf_counter()
    for b in batches:
        keep = holdout_mask(b["index"], False)
        pipe.score_batch(b["image"][keep], torch.stack([b["digit_index"], b["color"]])[:, keep])
    pipe.score_finish(bootstrap=2000)
    sync()
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="scaling.md")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    rows = [(n, "convs", 32) for n in (250, 500, 1000, 2000)]
    rows += [(500, p, 32) for p in ("blocks", "stages")]
    rows += [(250, "convs", s) for s in (64, 224)]
    lines = [
        "# Probe cost per probed epoch",
        "",
        f"`python experiments/probe_scaling.py --device {args.device}` ({torch.get_num_threads()} CPU threads): an "
        "untrained ResNet-50 and the embedded probe CLIP; seconds for the fit pass, the matching and the scoring pass.",
        "",
        "| probe images | model layers | px | fit s | match s | score s | total s |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, layers, size in rows:
        fit, match, score = probe_seconds(n, layers, size, args.device)
        lines.append(f"| {n} | {layers} | {size} | {fit:.1f} | {match:.1f} | {score:.1f} | {fit + match + score:.1f} |")
        print(lines[-1], flush=True)
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
