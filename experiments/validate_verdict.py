"""Validation suite: is the probe's outcome right, epoch by epoch, on cases it was not tuned on?

    python experiments/validate_verdict.py OUT [--mode small|full] [--seed-offset N] [--families F ...]
        [--mnist PATH] [-- FIT_ARGS...]

Trains every scenario with ``python -m xai_lightning fit --config configs/quickstart.yaml`` plus overrides
(runs that finished are reused: an interrupted suite resumes), then scores every probed epoch's outcome,
for every verdict metric side by side, against the counterfactual ground truth *at that epoch*
(``cf/color_flip_rate`` vs ``cf/shape_flip_rate``, and ``cf/background_flip_rate`` for scenes: clear when one
leads every other by >= 0.2, else mixed).

Families (``--families``): ``graded`` (planted colour reliance in steps: the exact fraction of training
digits whose colour conflicts with their class, 7 levels x 3 seeds), ``arch`` (ResNet-18, a plain CNN,
EfficientNet-B0; biased and debiased), ``finetune`` (pretrained on grayscale digits of all ten classes,
then fine-tuned on the biased pair: the reference is the pretrained weights), ``real`` (MNIST digits 3/7
from ``--mnist``), ``palette`` (digits 2/6 in blue/yellow), ``long`` (25 epochs on 80 training digits per
class, real MNIST 4/9), ``null`` (random labels), ``scenes`` (the background shortcut,
``configs/scenes/biased.yaml``: biased backgrounds, and random ones; the truth then compares the
background's flip rate too). ``--mode full`` uses the quickstart's sizes and ResNet-50
(meant for a GPU: add ``-- --trainer.accelerator gpu``). ``--seed-offset`` shifts every seed (a fresh
replication).

Writes OUT/validation.json (every run, every probed epoch) and OUT/validation.md (targets, tables).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from xai_lightning.io import atomic_write_text
from xai_lightning.report import load_run
from xai_lightning.verdict import MIXED, VERDICTS, outcome_from_metrics, rates_of, truth_from_rates

CONCEPTS = ["shape", "color"]
ALL_CONCEPTS = [*CONCEPTS, "background"]  # the scenes family's probe adds the background
CONFLICTS = (0.001, 0.004, 0.008, 0.012, 0.016, 0.024, 0.05)
FAMILIES = ("graded", "arch", "finetune", "real", "palette", "long", "null", "scenes")
DEBIASED = ["--model.init_args.input_transform", "grayscale"]


@dataclass
class Scenario:
    name: str
    family: str
    args: list[str]
    seed: int
    pretrain: bool = False  # trains a start for other runs (no probe, not scored)
    needs: str | None = None  # the pretraining run whose last checkpoint starts this one
    meta: dict = field(default_factory=dict)
    config: str = "configs/quickstart.yaml"  # the scenes family trains configs/scenes/biased.yaml


def _sizes(mode: str, train: int = 1000, probe: int = 250, epochs: int = 3) -> list[str]:
    if mode == "full":
        return []  # the quickstart's sizes, ResNet-50
    return [
        "--model.init_args.backbone",
        "resnet18",
        "--data.init_args.train_per_class",
        str(train),
        "--data.init_args.test_per_class",
        "100",
        "--data.init_args.real_world_per_class",
        "100",
        "--data.init_args.probe_per_class",
        str(probe),
        "--trainer.max_epochs",
        str(epochs),
    ]


def _graded(mode: str, offset: int, mnist: str | None) -> list[Scenario]:
    out = []
    for c in CONFLICTS:
        for s in range(3):
            args = _sizes(mode) + ["--data.init_args.conflict_fraction", str(c)]
            out.append(Scenario(f"graded_c{c:g}_s{s + offset}", "graded", args, s + offset, meta={"conflict": c}))
    return out


def _arch(mode: str, offset: int, mnist: str | None) -> list[Scenario]:
    out = []
    for arch in ("resnet18", "simple_cnn", "efficientnet_b0"):
        args = _sizes(mode) + ["--model.init_args.backbone", arch]
        out.append(Scenario(f"arch_{arch}_biased", "arch", args, offset))
        out.append(Scenario(f"arch_{arch}_debiased", "arch", args + DEBIASED, offset))
    return out


def _finetune(mode: str, offset: int, mnist: str | None) -> list[Scenario]:
    base = _sizes(mode)
    ten = ["--data.init_args.digits", "[0,1,2,3,4,5,6,7,8,9]", "--data.init_args.color_mode", "grayscale"]
    pre = base + ten + ["--data.init_args.train_per_class", "400", "--trainer.callbacks", "null"]
    return [
        Scenario("finetune_pretrain", "finetune", pre, offset, pretrain=True),
        Scenario("finetune_biased", "finetune", base, offset, needs="finetune_pretrain"),
        Scenario("finetune_debiased", "finetune", base + DEBIASED, offset, needs="finetune_pretrain"),
    ]


def _real(mode: str, offset: int, mnist: str | None) -> list[Scenario]:
    if not mnist:
        return []
    real = _sizes(mode, train=500) + ["--data.init_args.source", mnist, "--data.init_args.digits", "[3,7]"]
    return [
        Scenario("real_37_biased", "real", real, offset),
        Scenario("real_37_debiased", "real", real + DEBIASED, offset),
    ]


def _palette(mode: str, offset: int, mnist: str | None) -> list[Scenario]:
    pal = _sizes(mode) + ["--data.init_args.digits", "[2,6]", "--data.init_args.colors", "[blue,yellow]"]
    return [
        Scenario("palette_26_biased", "palette", pal, offset),
        Scenario("palette_26_debiased", "palette", pal + DEBIASED, offset),
    ]


def _long(mode: str, offset: int, mnist: str | None) -> list[Scenario]:
    """The quickstart's ResNet-50 for 25 epochs on 80 training digits per class of real handwriting."""
    if not mnist:
        return []
    args = ["--data.init_args.source", mnist, "--data.init_args.digits", "[4,9]"]
    args += ["--data.init_args.train_per_class", "100", "--data.init_args.test_per_class", "50"]
    args += ["--data.init_args.real_world_per_class", "100", "--data.init_args.probe_per_class", "250"]
    return [Scenario("long_mnist49_biased", "long", args + ["--trainer.max_epochs", "25"], offset)]


def _null(mode: str, offset: int, mnist: str | None) -> list[Scenario]:
    args = _sizes(mode) + ["--data.init_args.label_mode", "random"]
    return [Scenario(f"null_random_labels_s{s + offset}", "null", args, s + offset) for s in range(2)]


def _scenes(mode: str, offset: int, mnist: str | None) -> list[Scenario]:
    """The background shortcut (configs/scenes/): biased backgrounds, and random ones (debiased)."""
    args = _sizes(mode)
    scenes = "configs/scenes/biased.yaml"
    return [
        Scenario("scenes_biased", "scenes", args, offset, config=scenes),
        Scenario(
            "scenes_debiased", "scenes", args + ["--data.init_args.background_mode", "random"], offset, config=scenes
        ),
    ]


BUILDERS = {
    "graded": _graded,
    "arch": _arch,
    "finetune": _finetune,
    "real": _real,
    "palette": _palette,
    "long": _long,
    "null": _null,
    "scenes": _scenes,
}


def scenarios(mode: str, offset: int, mnist: str | None, families: list[str]) -> list[Scenario]:
    """Every scenario of the chosen families, in the suite's order (a pretraining run before its users)."""
    return [sc for family in FAMILIES if family in families for sc in BUILDERS[family](mode, offset, mnist)]


def run_one(out: str, sc: Scenario, extra: list[str], done: dict[str, str]) -> str:
    """Trains one scenario (reused when its DONE file exists); returns its run directory."""
    run_dir = os.path.join(out, sc.name)
    if os.path.isfile(os.path.join(run_dir, "DONE")):
        print(f"[suite] reuse {sc.name}", flush=True)
        return run_dir
    if os.path.exists(run_dir):  # interrupted: start it again
        shutil.rmtree(run_dir)
    args = list(sc.args)
    if sc.needs:
        ckpts = sorted(glob.glob(os.path.join(done[sc.needs], "**", "*.ckpt"), recursive=True))
        if not ckpts:
            raise FileNotFoundError(f"{sc.needs} left no checkpoint for {sc.name}")
        args += ["--model.init_args.init_checkpoint", ckpts[-1]]
    env = dict(os.environ, XAI_RUN_DIR=run_dir, WANDB_MODE="disabled", XAI_GROUP=f"suite-{os.path.basename(out)}")
    cmd = [sys.executable, "-m", "xai_lightning", "fit", "--config", sc.config]
    cmd += ["--data.init_args.data_dir", os.path.join(out, "data"), "--data.init_args.seed", str(sc.seed)]
    cmd += ["--seed_everything", str(sc.seed), *args, *extra]
    print(f"[suite] {sc.name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(out, f"{sc.name}.log"), "w") as log:
        subprocess.run(cmd, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    atomic_write_text(os.path.join(run_dir, "DONE"), f"{time.time() - t0:.1f}\n")
    return run_dir


# ---- scoring (pure: the unit tests drive these on fixtures) ------------------------------------------
def epoch_rows(name: str, family: str, epochs: dict[int, dict[str, float]], meta: dict | None = None) -> list[dict]:
    """One row per probed epoch: ground truth, and every verdict metric's outcome and effects."""
    rows = []
    for epoch in sorted(epochs):
        m = epochs[epoch]
        if "cf/color_flip_rate" not in m or "probe/images" not in m:
            continue
        flips = rates_of(m)  # colour and shape; scenes add background
        row = {
            "run": name,
            "family": family,
            "epoch": epoch,
            **{f"cf_{c}": r for c, r in flips.items()},
            "truth": truth_from_rates(flips),
            "real_world_acc": m.get("real_world/acc", float("nan")),
            **(meta or {}),
        }
        for v in VERDICTS:
            if f"probe/effect_{v}/shape" not in m:
                continue
            concepts = [c for c in ALL_CONCEPTS if f"probe/effect_{v}/{c}" in m]
            row[f"outcome/{v}"] = outcome_from_metrics(m, concepts, v, prefix="probe/")
            for c in concepts:
                for k in ("", "_lo", "_hi"):
                    row[f"{v}{k}/{c}"] = m[f"probe/effect_{v}{k}/{c}"]
        rows.append(row)
    return rows


def _spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _rate(hits: int, n: int) -> dict:
    return {"hits": hits, "n": n, "rate": hits / n if n else float("nan")}


def score(rows: list[dict], verdict: str) -> dict:
    """The issue's targets for one verdict metric over epoch rows (final epoch = a run's last row)."""
    key = f"outcome/{verdict}"
    rows = [r for r in rows if key in r]
    finals = {}
    for r in rows:
        finals[r["run"]] = r  # rows come in epoch order
    final = list(finals.values())
    clear_final = [r for r in final if r["truth"] != MIXED]
    clear_epochs = [r for r in rows if r["truth"] != MIXED]
    mixed_epochs = [r for r in rows if r["truth"] == MIXED]

    def named(r):
        return r[key] in ALL_CONCEPTS

    def overlapping(r):  # both named with overlapping intervals: counts as not-decided for mixed truth
        return (
            r[f"{verdict}_lo/color"] <= r[f"{verdict}_hi/shape"]
            and r[f"{verdict}_lo/shape"] <= r[f"{verdict}_hi/color"]
        )

    graded = [r for r in final if r["family"] == "graded"]
    contrast = [r[f"{verdict}/color"] - r[f"{verdict}/shape"] for r in graded]
    truth_contrast = [r["cf_color"] - r["cf_shape"] for r in graded]
    return {
        "wrong_runs": _rate(sum(named(r) and r[key] != r["truth"] for r in clear_final), len(clear_final)),
        "detection": _rate(sum(r[key] == r["truth"] for r in clear_final), len(clear_final)),
        "epoch_agreement": _rate(sum(r[key] == r["truth"] for r in clear_epochs), len(clear_epochs)),
        "wrong_epochs": _rate(sum(named(r) and r[key] != r["truth"] for r in clear_epochs), len(clear_epochs)),
        "named_on_mixed_epochs": _rate(sum(named(r) for r in mixed_epochs), len(mixed_epochs)),
        "mixed_runs_ok": _rate(
            sum((not named(r)) or overlapping(r) for r in final if r["truth"] == MIXED),
            sum(r["truth"] == MIXED for r in final),
        ),
        "spearman_graded": _spearman(contrast, truth_contrast),
        "graded_runs": len(graded),
    }


TARGETS = (  # (key, label, test on the value)
    ("wrong_runs", "no wrong decided outcome (runs, final epoch, clear truth)", lambda s: s["hits"] == 0),
    ("detection", "detection >= 90% (runs, final epoch, clear truth)", lambda s: s["rate"] >= 0.9),
    ("epoch_agreement", "per-epoch agreement >= 95% (epochs with clear truth)", lambda s: s["rate"] >= 0.95),
    ("wrong_epochs", "no epoch decided wrong (clear truth)", lambda s: s["hits"] == 0),
    ("spearman_graded", "Spearman(colour - shape effect, cf colour - shape) >= 0.8 (graded)", lambda s: s >= 0.8),
    ("mixed_runs_ok", "mixed truth: undecided/none or both with overlapping intervals", lambda s: s["rate"] == 1.0),
)


def _cell(value) -> str:
    if isinstance(value, dict):
        return f"{value['hits']}/{value['n']}" + (f" ({value['rate']:.2f})" if value["n"] else " (no such case)")
    return f"{value:+.3f}" if isinstance(value, float) and math.isfinite(value) else "–"


def markdown(rows: list[dict], scores: dict[str, dict], header: list[str]) -> str:
    lines = [*header, "", "## Targets, per verdict metric", ""]
    verdicts = list(scores)
    lines += ["| target | " + " | ".join(verdicts) + " |", "|---|" + "---|" * len(verdicts)]
    for key, label, ok in TARGETS:
        cells = []
        for v in verdicts:
            value = scores[v][key]
            if isinstance(value, dict) and not value["n"]:
                cells.append(_cell(value))  # nothing to judge
                continue
            passed = ok(value) if (not isinstance(value, float) or math.isfinite(value)) else False
            cells.append(f"{_cell(value)} {'✓' if passed else '✗'}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    mixed = " | ".join(_cell(scores[v]["named_on_mixed_epochs"]) for v in verdicts)
    lines.append(f"| named a concept on an epoch with mixed truth (reported, not a target) | {mixed} |")
    lines += ["", "## Every run, final epoch", ""]
    lines += [
        "| run | epochs | cf colour / shape (/ background) | truth | real_world/acc | "
        + " | ".join(verdicts)
        + " | reliance colour [95% CI] | reliance shape [95% CI] |",
        "|---|---|---|---|---|" + "---|" * len(verdicts) + "---|---|",
    ]
    finals: dict[str, dict] = {}
    counts: dict[str, int] = {}
    for r in rows:
        finals[r["run"]] = r
        counts[r["run"]] = counts.get(r["run"], 0) + 1
    for name, r in finals.items():
        marks = []
        for v in verdicts:
            o = r.get(f"outcome/{v}", "–")
            mark = "" if r["truth"] == MIXED or o not in ALL_CONCEPTS else (" ✓" if o == r["truth"] else " ✗")
            marks.append(f"{o}{mark}")
        rel = (
            f"{r['reliance/color']:+.3f} [{r['reliance_lo/color']:+.3f}, {r['reliance_hi/color']:+.3f}] | "
            f"{r['reliance/shape']:+.3f} [{r['reliance_lo/shape']:+.3f}, {r['reliance_hi/shape']:+.3f}]"
            if "reliance/color" in r
            else "– | –"
        )
        cf = f"{r['cf_color']:.3f} / {r['cf_shape']:.3f}" + (
            f" / {r['cf_background']:.3f}" if "cf_background" in r else ""
        )
        lines.append(
            f"| {name} | {counts[name]} | {cf} | {r['truth']} | "
            f"{r['real_world_acc']:.3f} | " + " | ".join(marks) + f" | {rel} |"
        )
    lines += ["", "## Per-epoch outcomes of the default verdict (reliance), against the truth at that epoch", ""]
    for name in finals:
        seq = [r for r in rows if r["run"] == name]
        text = ", ".join(
            f"{r['epoch']}: {r.get('outcome/reliance', '–')}" + ("" if r["truth"] == MIXED else f" ({r['truth']})")
            for r in seq
        )
        lines.append(f"- `{name}`: {text}")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str, verdicts: tuple[str, ...] = ("reliance", "separation_vs_init")) -> None:
    """Final epoch of every run: the verdict's colour - shape effect against the counterfactual's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finals = {r["run"]: r for r in rows}
    families = sorted({r["family"] for r in finals.values()})
    fig, axes = plt.subplots(1, len(verdicts), figsize=(4.6 * len(verdicts), 4.0), squeeze=False)
    for ax, v in zip(axes[0], verdicts):
        for fam in families:
            pts = [r for r in finals.values() if r["family"] == fam and f"{v}/color" in r]
            ax.scatter(
                [r["cf_color"] - r["cf_shape"] for r in pts],
                [r[f"{v}/color"] - r[f"{v}/shape"] for r in pts],
                label=fam,
                s=28,
            )
        ax.axhline(0, color="k", lw=0.8)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel("counterfactual: colour flip − shape flip")
        ax.set_ylabel(f"{v}: colour − shape effect")
        ax.set_title(v, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        extra, argv = argv[argv.index("--") + 1 :], argv[: argv.index("--")]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--mode", choices=("small", "full"), default="small")
    ap.add_argument("--seed-offset", type=int, default=0)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--mnist", default=None, help=".npz of real digits (images, labels) for the real/long families")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    todo = scenarios(args.mode, args.seed_offset, args.mnist, args.families)
    done: dict[str, str] = {}
    rows: list[dict] = []
    seconds = {}
    for sc in todo:
        done[sc.name] = run_one(args.out, sc, extra, done)
        seconds[sc.name] = float(open(os.path.join(done[sc.name], "DONE")).read())
        if not sc.pretrain:
            run = load_run(os.path.join(done[sc.name], "biased"))
            rows += epoch_rows(sc.name, sc.family, run.epochs, sc.meta)
    scores = {v: score(rows, v) for v in VERDICTS if any(f"outcome/{v}" in r for r in rows)}
    wall = time.time() - t0
    result = {"mode": args.mode, "seed_offset": args.seed_offset, "seconds": wall, "run_seconds": seconds}
    result.update({"scores": scores, "rows": rows})
    atomic_write_text(os.path.join(args.out, "validation.json"), json.dumps(result, indent=1) + "\n")
    header = [
        "# Verdict validation suite",
        "",
        f"`python experiments/validate_verdict.py {' '.join(sys.argv[1:])}` — mode {args.mode}, seed offset "
        f"{args.seed_offset}, {len([s for s in todo if not s.pretrain])} scored runs, {len(rows)} probed epochs; "
        f"the runs took {sum(seconds.values()):.0f} s in all ({min(seconds.values()):.0f}–"
        f"{max(seconds.values()):.0f} s each, pretraining included; each run's own time, also when reused).",
        "",
        "Ground truth per probed epoch: the counterfactual flip rates at that epoch (clear when colour and shape "
        "differ by >= 0.2, else mixed). ✓/✗: a named concept equal / not equal to a clear truth.",
    ]
    plot(rows, os.path.join(args.out, "validation.png"))
    header += ["", "![final epoch of every run](validation.png)"]
    atomic_write_text(os.path.join(args.out, "validation.md"), markdown(rows, scores, header))
    print(open(os.path.join(args.out, "validation.md")).read().split("## Every run")[0])


if __name__ == "__main__":
    main()
