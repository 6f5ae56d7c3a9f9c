"""Planted-bias sweep: does the probe's colour effect track how much the model really relies on colour?

    python experiments/bias_sweep.py OUT_DIR [--strengths 0 0.5 0.9 1.0] [--seeds 0 1 2] [-- FIT_ARGS...]

Trains the quickstart (``configs/quickstart.yaml``) for every bias_strength x seed (runs that already
finished are reused, so an interrupted sweep resumes), then compares, per run, the probe's colour effect
(every verdict metric: the paper's influence ``share`` and ``retention``, each against the null control,
and both against a random-init copy of the model) with the counterfactual ground truth
(``cf/color_flip_rate``, ``cf/shape_flip_rate``). Writes OUT_DIR/sweep.json, OUT_DIR/sweep.md and OUT_DIR/sweep.png:
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
from xai_lightning.verdict import counterfactual_truth, outcome_from_metrics


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


VERDICT_METRICS = ("reliance", "share", "retention", "share_vs_init", "retention_vs_init", "separation_vs_init")


def dominant(final: dict[str, float], metric: str) -> str:
    """The metric's own outcome at the final epoch (a concept, none or undecided)."""
    concepts = [k.split("/", 2)[2] for k in final if k.startswith(f"probe/effect_{metric}/")]
    return outcome_from_metrics(final, concepts, metric, prefix="probe/")


def row_of(final: dict[str, float], strength: float, seed: int, verdict: str) -> dict:
    cf = counterfactual_truth(final["cf/color_flip_rate"], final["cf/shape_flip_rate"])
    row = {
        "verdict": next(
            m for m in VERDICT_METRICS if final.get("probe/effect/shape") == final.get(f"probe/effect_{m}/shape")
        ),
        "bias_strength": strength,
        "seed": seed,
        "val/acc": final.get("val/acc"),
        "real_world/acc": final.get("real_world/acc"),
        "cf/color_flip_rate": final["cf/color_flip_rate"],
        "cf/shape_flip_rate": final["cf/shape_flip_rate"],
        "cf_dominant": cf,
        "planted": "color" if strength > 0 else "shape",
        # the run's own verdict (the configured metric) with its interval and margin
        "effect/color": final["probe/effect/color"],
        "effect_lo/color": final["probe/effect_lo/color"],
        "effect_hi/color": final["probe/effect_hi/color"],
        "effect/shape": final["probe/effect/shape"],
        "margin_lo": final.get("probe/margin_lo", float("nan")),
        "decided": final.get("probe/decided") == 1.0,
        "init_retention/color": final.get("probe/init_retention/color", float("nan")),
        "init_retention/shape": final.get("probe/init_retention/shape", float("nan")),
        "retention/color": final["probe/retention/color"],
        "retention/shape": final["probe/retention/shape"],
    }
    for metric in VERDICT_METRICS:
        for c in ("color", "shape"):
            row[f"effect_{metric}/{c}"] = final[f"probe/effect_{metric}/{c}"]
        row[f"dominant_{metric}"] = dominant(final, metric)
    return row


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
            run = load_run(run_one(args.out, strength, seed, args.config, extra))
            probe = next(
                (
                    cb.get("init_args", {})
                    for cb in run.config["trainer"]["callbacks"]
                    if "SurgeryProbe" in cb["class_path"]
                ),
                {},
            )
            rows.append(row_of(run.final(), strength, seed, probe.get("verdict", "reliance")))
    flips = [r["cf/color_flip_rate"] for r in rows]
    cf_contrast = [r["cf/color_flip_rate"] - r["cf/shape_flip_rate"] for r in rows]
    run_seconds = [
        float(open(os.path.join(args.out, f"bias{r['bias_strength']:g}_seed{r['seed']}", "DONE")).read()) for r in rows
    ]
    result = {"runs": rows, "seconds": round(time.time() - t0, 1), "run_seconds": run_seconds, "metrics": {}}
    for metric in VERDICT_METRICS:
        result["metrics"][metric] = {
            "spearman_color_effect_vs_cf_color_flip": spearman([r[f"effect_{metric}/color"] for r in rows], flips),
            "spearman_contrast": spearman(
                [r[f"effect_{metric}/color"] - r[f"effect_{metric}/shape"] for r in rows], cf_contrast
            ),
            "detection_rate": float(np.mean([r[f"dominant_{metric}"] == r["cf_dominant"] for r in rows])),
            "wrong_rate": float(
                np.mean(
                    [
                        r[f"dominant_{metric}"] in ("color", "shape") and r[f"dominant_{metric}"] != r["cf_dominant"]
                        for r in rows
                    ]
                )
            ),
            "planted_rate": float(np.mean([r[f"dominant_{metric}"] == r["planted"] for r in rows])),
        }
    decided = [r for r in rows if r["decided"]]
    result["configured_verdict"] = {
        "decided_runs": len(decided),
        "runs": len(rows),
        "detection_rate_decided": (
            float(np.mean([r[f"dominant_{r['verdict']}"] == r["cf_dominant"] for r in decided]))
            if decided
            else float("nan")
        ),
    }
    atomic_write_text(os.path.join(args.out, "sweep.json"), json.dumps(result, indent=2) + "\n")

    md = [
        "# Planted-bias sweep",
        "",
        f"{len(rows)} runs of `{args.config}` ({' '.join(extra) or 'as configured'}); each run's wall time "
        f"(training + probe, from its DONE file) {min(result['run_seconds']):.0f}–{max(result['run_seconds']):.0f} s, "
        f"{sum(result['run_seconds']):.0f} s in all.",
        "Effects: colour / shape, each verdict metric minus its reference (reliance: none needed; null = random "
        "matching; init = the same surgery on the run's starting weights and re-initialisations). ✓ = the metric's "
        "outcome equals the counterfactual truth, · = none/undecided, ✗ = the other concept.",
        "",
        "| bias | seed | val/acc | real_world/acc | cf colour / shape flip | reliance | share − null | "
        "retention − null | retention − init | separation − init | configured verdict: colour effect [95% CI], "
        "decided? |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(r, metric):
        name = r[f"dominant_{metric}"]
        ok = "✓" if name == r["cf_dominant"] else ("·" if name in ("none", "undecided") else "✗")
        return f"{r[f'effect_{metric}/color']:+.3f} / {r[f'effect_{metric}/shape']:+.3f} {ok}"

    for r in rows:
        md.append(
            f"| {r['bias_strength']:g} | {r['seed']} | {r['val/acc']:.3f} | {r['real_world/acc']:.3f} | "
            f"{r['cf/color_flip_rate']:.3f} / {r['cf/shape_flip_rate']:.3f} | {cell(r, 'reliance')} | "
            f"{cell(r, 'share')} | {cell(r, 'retention')} | {cell(r, 'retention_vs_init')} | "
            f"{cell(r, 'separation_vs_init')} | "
            f"{r['effect/color']:+.3f} "
            f"[{r['effect_lo/color']:+.3f}, {r['effect_hi/color']:+.3f}], {'yes' if r['decided'] else 'undecided'} |"
        )
    md += [
        "",
        "| verdict metric | Spearman(colour effect, cf colour flip) | Spearman(colour − shape effect, cf colour − "
        "shape flip) | detection rate (vs counterfactual) | names the planted concept |",
        "|---|---|---|---|---|",
    ]
    for metric in VERDICT_METRICS:
        m = result["metrics"][metric]
        md.append(
            f"| {metric} | {m['spearman_color_effect_vs_cf_color_flip']:+.3f} | {m['spearman_contrast']:+.3f} | "
            f"{m['detection_rate']:.2f} | {m['planted_rate']:.2f} |"
        )
    cv = result["configured_verdict"]
    md += [
        "",
        f"Configured verdict: decided in {cv['decided_runs']}/{cv['runs']} runs; detection rate among decided runs "
        f"{cv['detection_rate_decided']:.2f}.",
        "",
        "![sweep](sweep.png)",
        "",
    ]
    atomic_write_text(os.path.join(args.out, "sweep.md"), "\n".join(md))

    import matplotlib

    matplotlib.use("Agg")
    import io as _io

    import matplotlib.pyplot as plt

    shown = ("reliance", "share", "retention_vs_init", "separation_vs_init")
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.8), sharex=True)
    for ax, metric in zip(axes, shown):
        sc = ax.scatter(
            cf_contrast,
            [r[f"effect_{metric}/color"] - r[f"effect_{metric}/shape"] for r in rows],
            c=[r["bias_strength"] for r in rows],
            cmap="viridis",
            vmin=0,
            vmax=1,
            s=40,
        )
        ax.axhline(0, color="k", lw=0.8)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel("cf colour flip − cf shape flip\n(ground truth)")
        if ax is axes[0]:
            ax.set_ylabel("probe: colour effect − shape effect")
        m = result["metrics"][metric]
        rho = m["spearman_contrast"]
        title = {"reliance": "decision reliance"}.get(metric) or (
            metric.replace("_vs_init", " − init") if metric.endswith("_vs_init") else f"{metric} − null"
        )
        rho_text = f"Spearman {rho:+.2f}" if math.isfinite(rho) else "Spearman n/a"
        ax.set_title(f"{title}\n{rho_text}, detection {m['detection_rate']:.2f}", fontsize=9)
        ax.grid(alpha=0.3)
    fig.colorbar(sc, ax=axes, label="bias_strength")
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write(os.path.join(args.out, "sweep.png"), lambda f: f.write(buf.getvalue()))
    print("\n".join(md[-(len(VERDICT_METRICS) + 9) :]))
    print(f"[sweep] wrote {args.out}/sweep.md")


if __name__ == "__main__":
    main()
