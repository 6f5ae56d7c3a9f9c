"""Zero-shot accuracy of a probe CLIP on freshly generated data (new seed) and on real MNIST digits.

    python experiments/eval_probe_clip.py [--clip colordigits] [--mnist mnist_t10k.npz] [--scenes]

Prints one JSON line per setting: digit / colour zero-shot accuracy with the probe's caption templates
and the range of caption cosine similarities (the scale of the probe's numbers). ``--scenes``: the settings
are digits over background textures (SceneDigitsDataModule, all four textures), and the background's
zero-shot accuracy is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from xai_lightning.clip import load_clip, zeroshot_accuracy
from xai_lightning.data import ColorMNISTDataModule, SceneDigitsDataModule

SETTINGS = [
    ("5/8 red/green", [5, 8], ["red", "green"], 500),
    ("10 digits x 6 colors", list(range(10)), ["red", "green", "blue", "yellow", "cyan", "magenta"], 100),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clip", default="colordigits", help="embedded name or checkpoint path")
    ap.add_argument(
        "--mnist",
        default=None,
        help=".npz with real digits (e.g. mnist_t10k.npz: MNIST test digits as images/labels arrays)",
    )
    ap.add_argument("--seed", type=int, default=12345, help="data seed (the probe was trained on seed 1)")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--scenes", action="store_true", help="digits over background textures")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    clip = load_clip(args.clip)
    sources = [("synthetic", "synthetic")]
    if args.mnist:
        sources.append(("mnist_t10k", args.mnist))
    for label, source in sources:
        for name, digits, colors, per_class in SETTINGS:
            t0 = time.time()
            per = 800 if source.endswith(".npz") else per_class  # t10k has 892-1135 images per digit
            module, scene = (
                (SceneDigitsDataModule, {"background_mode": "random"}) if args.scenes else (ColorMNISTDataModule, {})
            )
            dm = module(
                source=source,
                data_dir=args.data_dir,
                digits=digits,
                colors=colors,
                color_mode="random",
                train_per_class=5,
                test_per_class=0,
                real_world_per_class=0,
                probe_per_class=per,
                image_size=clip.image_size,
                eval_batch_size=500,
                seed=args.seed,
                **scene,
            )
            res = zeroshot_accuracy(
                clip,
                dm.dataloader("probe_set"),
                dm.class_names,
                dm.color_names,
                background_names=getattr(dm, "background_names", None),
            )
            print(
                json.dumps(
                    {"clip": args.clip, "data": label, "setting": name, **res, "seconds": round(time.time() - t0, 1)}
                )
            )
    path = clip.name
    n = sum(p.numel() for p in clip.model.parameters())
    size = os.path.getsize(args.clip) if os.path.isfile(args.clip) else None
    print(json.dumps({"clip": path, "parameters": n, "file_bytes": size}))


if __name__ == "__main__":
    main()
