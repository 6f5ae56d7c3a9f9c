"""Planted-bias sweep: does the probe's colour effect track how much the model really relies on colour?

    python experiments/bias_sweep.py OUT_DIR [--strengths 0 0.5 0.9 1.0] [--seeds 0 1 2] [-- FIT_ARGS...]

Trains the quickstart (``configs/quickstart.yaml``) for every bias_strength x seed (runs that already
finished are reused, so an interrupted sweep resumes), then compares, per run, the probe's colour effect
(both verdict metrics: ``retention`` and the paper's influence ``share``) with the counterfactual ground
truth (``cf/color_flip_rate``). Writes OUT_DIR/sweep.json, OUT_DIR/sweep.md and OUT_DIR/sweep.png:
Spearman rank correlations and the detection rate (probe's dominant concept == the counterfactually
dominant one) per verdict metric.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

from xai_lightning.io import atomic_write, atomic_write_text
from xai_lightning.report import load_run


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = v.argsort(kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for val in np.unique(v):  # average ties
            r[v == val] = r[v == val].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def run_one(out: str, strength: float, seed: int, config: str, extra: list[str]) -> str:
    run_dir = os.path.join(out, f"bias{strength:g}_seed{seed}")
    version = os.path.join(run_dir, "biased")
    if os.path.isfile(os.path.join(run_dir, "DONE")):
        print(f"[sweep] reuse {version}", flush=True)
        return version
    if os.path.exists(run_dir):  # an interrupted run: start it again from scratch
        import shutil

        shutil.rmtree(run_dir)
    env = dict(os.environ, XAI_RUN_DIR=run_dir, XAI_GROUP=os.environ.get("XAI_GROUP", f"sweep-{os.path.basename(out)}"))
    cmd = [
        sys.executable,
        "-m",
        "xai_lightning",
        "fit",
        "--config",
        config,
        "--data.bias_strength",
        str(strength),
        "--data.seed",
        str(seed),
        "--seed_everything",
        str(seed),
        *extra,
    ]
    t0 = time.time()
    print(f"[sweep] bias_strength={strength} seed={seed}: {' '.join(cmd)}", flush=True)
    with open(os.path.join(out, f"bias{strength:g}_seed{seed}.log"), "w") as log:
        subprocess.run(cmd, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    open(os.path.join(run_dir, "DONE"), "w").write(f"{time.time() - t0:.1f}\n")
    return version


def dominant(final: dict[str, float], metric: str) -> str:
    concepts = [k.split("/", 2)[2] for k in final if k.startswith(f"probe/effect_{metric}/")]
    return max(concepts, key=lambda c: final[f"probe/effect_{metric}/{c}"])


def main() -> None:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.5, 0.9, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    rows = []
    for strength in args.strengths:
        for seed in args.seeds:
            final = load_run(run_one(args.out, strength, seed, args.config, extra)).final()
            cf = "color" if final["cf/color_flip_rate"] > final["cf/shape_flip_rate"] else "shape"
            rows.append(
                {
                    "bias_strength": strength,
                    "seed": seed,
                    "val/acc": final.get("val/acc"),
                    "real_world/acc": final.get("real_world/acc"),
                    "cf/color_flip_rate": final["cf/color_flip_rate"],
                    "cf/shape_flip_rate": final["cf/shape_flip_rate"],
                    "cf_dominant": cf,
                    "effect_retention/color": final["probe/effect_retention/color"],
                    "effect_retention/shape": final["probe/effect_retention/shape"],
                    "effect_share/color": final["probe/effect_share/color"],
                    "effect_lo/color": final["probe/effect_lo/color"],
                    "effect_hi/color": final["probe/effect_hi/color"],
                    "dominant_retention": dominant(final, "retention"),
                    "dominant_share": dominant(final, "share"),
                    "planted": "color" if strength > 0 else "shape",
                }
            )
    flips = [r["cf/color_flip_rate"] for r in rows]
    result = {"runs": rows, "seconds": round(time.time() - t0, 1)}
    for metric in ("retention", "share"):
        result[f"spearman_{metric}"] = spearman([r[f"effect_{metric}/color"] for r in rows], flips)
        result[f"detection_{metric}"] = float(np.mean([r[f"dominant_{metric}"] == r["cf_dominant"] for r in rows]))
        result[f"planted_{metric}"] = float(np.mean([r[f"dominant_{metric}"] == r["planted"] for r in rows]))
    # the quantity the retention verdict reads: colour effect minus shape effect
    result["spearman_retention_contrast"] = spearman([r["effect_retention_contrast"] for r in rows], flips)
    decided = [r for r in rows if r["decided"]]
    result["decided_runs"] = len(decided)
    result["detection_retention_decided"] = (
        float(np.mean([r["dominant_retention"] == r["cf_dominant"] for r in decided])) if decided else float("nan")
    )
    atomic_write_text(os.path.join(args.out, "sweep.json"), json.dumps(result, indent=2) + "\n")

    md = [
        "# Planted-bias sweep",
        "",
        f"{len(rows)} runs of `{args.config}` ({' '.join(extra) or 'as configured'}); {result['seconds']} s.",
        "",
        "| bias_strength | seed | val/acc | real_world/acc | cf color flip | cf shape flip | effect_retention/color "
        "[95% CI] | effect_share/color | dominant (retention) | dominant (share) | counterfactual |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['bias_strength']:g} | {r['seed']} | {r['val/acc']:.3f} | {r['real_world/acc']:.3f} | "
            f"{r['cf/color_flip_rate']:.3f} | {r['cf/shape_flip_rate']:.3f} | {r['effect_retention/color']:+.3f} "
            f"[{r['effect_lo/color']:+.3f}, {r['effect_hi/color']:+.3f}] | {r['effect_share/color']:+.3f} | "
            f"{r['dominant_retention']} | {r['dominant_share']} | {r['cf_dominant']} |"
        )
    md += [
        "",
        "| verdict metric | Spearman(colour effect, cf colour flip rate) | detection rate (vs counterfactual) | "
        "names the planted concept |",
        "|---|---|---|---|",
    ]
    for metric in ("retention", "share"):
        md.append(
            f"| {metric} | {result[f'spearman_{metric}']:+.3f} | {result[f'detection_{metric}']:.2f} | "
            f"{result[f'planted_{metric}']:.2f} |"
        )
    md += ["", "![sweep](sweep.png)", ""]
    atomic_write_text(os.path.join(args.out, "sweep.md"), "\n".join(md))

    import matplotlib

    matplotlib.use("Agg")
    import io as _io

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    for ax, metric in zip(axes, ("retention", "share")):
        sc = ax.scatter(
            flips,
            [r[f"effect_{metric}/color"] for r in rows],
            c=[r["bias_strength"] for r in rows],
            cmap="viridis",
            vmin=0,
            vmax=1,
            s=40,
        )
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("counterfactual colour flip rate (ground truth)")
        ax.set_ylabel(f"probe colour effect ({metric} − null)")
        rho = result[f"spearman_{metric}"]
        ax.set_title(f"{metric}: Spearman {rho:+.2f}" if math.isfinite(rho) else metric, fontsize=10)
        ax.grid(alpha=0.3)
    fig.colorbar(sc, ax=axes, label="bias_strength")
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write(os.path.join(args.out, "sweep.png"), lambda f: f.write(buf.getvalue()))
    print("\n".join(md[-7:-3]))
    print(f"[sweep] wrote {args.out}/sweep.md")


if __name__ == "__main__":
    main()
