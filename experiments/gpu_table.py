"""The GPU check's table (experiments/gpu_check.sh): matching vs matmul, probe cost per training epoch, DDP.

python experiments/gpu_table.py OUT_DIR
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from xai_lightning.report import load_run  # noqa: E402


def _bench(out: str) -> list[str]:
    rows = {r["impl"]: r for r in map(json.loads, open(os.path.join(out, "bench.jsonl"))) if "impl" in r}
    ours = rows.get("ours", {})
    return [
        f"| matching: ours / plain matmul (GFLOP/s) | {ours.get('fraction_of_matmul', float('nan')):.3f} "
        f"({ours.get('gflops', float('nan')):.0f} / {rows.get('matmul', {}).get('gflops', float('nan')):.0f}; "
        f"{ours.get('device', '?')}, {ours.get('images')} images at {ours.get('image_size')} px) | >= 0.25 |",
        f"| matching: peak memory of ours | {ours.get('peak_mb', float('nan')):.0f} MB | |",
    ]


def _cost(out: str) -> list[str]:
    f = load_run(os.path.join(out, "runs", "cost")).final()
    train = f.get("time/train_epoch_seconds", float("nan"))
    verdict, surgery = f.get("probe/seconds", float("nan")), f.get("surgery/seconds", float("nan"))
    both = verdict + surgery
    images = f"{f.get('probe/images', 0):.0f} / {f.get('surgery/images', 0):.0f}"
    return [
        f"| training epoch | {train:.1f} s | |",
        f"| verdict (ConceptProbe) / training epoch | {verdict:.2f} s = {verdict / train:.1%} | <= 3% |",
        f"| verdict + surgery / training epoch | {both:.1f} s = {both / train:.1%} | <= 15% |",
        f"| probe images (verdict / surgery scored) | {images} | |",
    ]


def _ddp(out: str) -> list[str]:
    runs = sorted(glob.glob(os.path.join(out, "runs", "ddp*")))
    if len(runs) < 2:
        return ["| DDP 1 vs 2 GPUs | skipped (fewer than 2 GPUs) | equal |"]
    a, b = (load_run(r).final() for r in runs[:2])
    keys = [k for k in a if k.startswith(("probe/", "surgery/")) and "seconds" not in k and k in b]
    worst = max((abs(a[k] - b[k]) for k in keys if a[k] == a[k] and b[k] == b[k]), default=float("nan"))
    return [f"| DDP 1 vs 2 GPUs: largest difference over {len(keys)} values | {worst:.2e} | equal |"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    out = ap.parse_args(argv).out
    lines = ["| measurement | value | goal |", "|---|---|---|", *_bench(out), *_cost(out), *_ddp(out)]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
