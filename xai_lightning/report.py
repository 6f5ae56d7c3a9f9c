"""Side-by-side comparison of runs: a markdown table, PNG plots and a JSON summary.

    python -m xai_lightning.report RUN_DIR [RUN_DIR ...] --out DIR [--names biased debiased]

A run directory is a CSV logger dir (``runs/quickstart/biased``: its newest ``version_N``, merged with the
versions it resumes, so a resumed run reads as one and a rerun replaces an older one) or a single version dir
(``metrics.csv`` + the CLI's ``config.yaml``). Writes
``DIR/report.md``, ``DIR/summary.json`` (``{run: {metric: final value, ..., "outcome": the verdict as the
console prints it, "relies": the concepts that count, "leaning": the concept with the largest effect,
"decided": bool, "cf_truth": ...}}``),
``DIR/learning_curves.png``, ``DIR/concepts_per_epoch.png`` and ``DIR/effect_vs_null.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from xai_lightning import names
from xai_lightning.io import atomic_write, atomic_write_text
from xai_lightning.verdict import NONE, REASON_KEYS, UNDECIDED, Outcome, rates_of, truth_from_rates

log = logging.getLogger(__name__)


@dataclass
class Run:
    name: str
    path: str
    epochs: dict[int, dict[str, float]]  # epoch -> metrics logged at that epoch
    config: dict = field(default_factory=dict)
    versions: list[str] = field(default_factory=list)  # the version dirs read (newest last)
    last_verdict: dict = field(default_factory=dict)  # the ConceptProbe's last concepts/epoch_EEE.json, if any

    def final(self) -> dict[str, float]:
        """Last value of every metric (the latest epoch that logged it)."""
        out: dict[str, float] = {}
        for epoch in sorted(self.epochs):
            out.update(self.epochs[epoch])
        return out

    def series(self, key: str) -> tuple[list[int], list[float]]:
        xs = [e for e in sorted(self.epochs) if key in self.epochs[e]]
        return xs, [self.epochs[e][key] for e in xs]

    def concepts(self) -> list[str]:
        return sorted({k.split("/", 2)[2] for k in self.final() if k.startswith("probe/effect/")})

    def leaning(self) -> str:
        """The concept with the largest effect at the last probed epoch, decided or not."""
        final = self.final()
        effects = {c: final[f"probe/effect/{c}"] for c in self.concepts() if math.isfinite(final[f"probe/effect/{c}"])}
        return max(effects, key=effects.get) if effects else NONE

    def outcome(self) -> str:
        """The logged outcome of the last probed epoch: a concept, ``none`` or ``undecided``."""
        final = self.final()
        for name in [*self.concepts(), NONE, UNDECIDED]:
            if final.get(names.OUTCOME.format(c=name)) == 1.0:
                return name
        return UNDECIDED

    def reason(self) -> str | None:
        """Why the last probed epoch was undecided (None when it was not)."""
        final = self.final()
        return next((r for r, key in REASON_KEYS.items() if final.get(names.UNDECIDED.format(r=key)) == 1.0), None)

    def relies(self) -> list[str]:
        """Every concept that counted at the last probed epoch."""
        return [c for c in self.concepts() if self.final().get(names.RELIES.format(c=c)) == 1.0]

    def decided(self) -> bool:
        return self.outcome() not in (NONE, UNDECIDED)

    def verdict(self) -> str:
        """The outcome as the console prints it (``color``, ``none``, ``undecided: two concepts count (leaning
        shape)``): the verdict's own ``Outcome.text``."""
        leaning = self.leaning()
        outcome = Outcome(self.outcome(), self.reason(), tuple(self.relies()), None if leaning == NONE else leaning)
        return outcome.text()

    def cf_truth(self) -> str | None:
        """The concept the counterfactual flip rates name, or ``mixed`` (None when not logged)."""
        rates = rates_of(self.final())
        return truth_from_rates(rates) if rates else None


def _epochs_of(version: str) -> dict[int, dict[str, float]]:
    epochs: dict[int, dict[str, float]] = {}
    with open(os.path.join(version, "metrics.csv")) as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for k, v in row.items():
                if k not in ("epoch", "step") and v not in ("", None):
                    epochs.setdefault(epoch, {})[k] = float(v)
    return epochs


def _versions(path: str) -> list[str]:
    """A version dir itself; in a run dir, the newest ``version_N`` and the versions it resumes (Lightning's
    convention: every fit logs a new version; a resumed fit's first epoch is not 0, so it continues the
    version before it), oldest first."""
    if os.path.isfile(os.path.join(path, "metrics.csv")):
        return [path]
    found = [d for d in os.listdir(path) if d.startswith("version_") and d[8:].isdigit()] if os.path.isdir(path) else []
    found = [os.path.join(path, d) for d in sorted(found, key=lambda d: int(d[8:]))]
    found = [d for d in found if os.path.isfile(os.path.join(d, "metrics.csv"))]
    if not found:
        raise FileNotFoundError(
            f"{path!r} is not a run directory: no metrics.csv in it or in version_N/ below it "
            f"(e.g. runs/quickstart/biased or runs/quickstart/biased/version_0)"
        )
    chain = [found.pop()]
    while found and min(_epochs_of(chain[0]) or {0: {}}) > 0:
        chain.insert(0, found.pop())
    return chain


def load_run(path: str, name: str | None = None) -> Run:
    """Metrics per epoch of a run's newest version (merged with the versions it resumes; a later version wins
    for the same epoch); ``Run.versions`` says which were read."""
    versions = _versions(path)
    epochs: dict[int, dict[str, float]] = {}
    for version in versions:
        for epoch, values in _epochs_of(version).items():
            epochs.setdefault(epoch, {}).update(values)
    config = {}
    config_path = os.path.join(versions[-1], "config.yaml")
    if os.path.isfile(config_path):
        import yaml

        with open(config_path) as f:
            config = yaml.safe_load(f) or {}
    if name is None:
        name = _job_type(config) or os.path.basename(os.path.dirname(os.path.abspath(versions[-1])))
    return Run(name, path, epochs, config, [os.path.basename(v) for v in versions], _last_verdict(versions))


def _last_verdict(versions: Sequence[str]) -> dict:
    """The newest ``concepts/epoch_EEE.json`` the ConceptProbe wrote in these versions ({} when none)."""
    for version in reversed(versions):
        folder = os.path.join(version, "concepts")
        files = sorted(f for f in os.listdir(folder) if f.endswith(".json")) if os.path.isdir(folder) else []
        if files:
            with open(os.path.join(folder, files[-1])) as f:
                return json.load(f)
    return {}


def _sentence_lines(runs: Sequence[Run]) -> list[str]:
    """What each run's decisions follow at its last probed epoch, in words."""
    lines = []
    for r in runs:
        if r.last_verdict.get("sentences"):
            lines.append(
                f"- **{r.name}** (epoch {r.last_verdict.get('epoch')}): " + " ".join(r.last_verdict["sentences"])
            )
    return ["## What the decisions follow, last probed epoch", "", *lines, ""] if lines else []


def _job_type(config: dict) -> str | None:
    loggers = (config.get("trainer") or {}).get("logger") or []
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, dict) and (logger.get("init_args") or {}).get("job_type"):
            return logger["init_args"]["job_type"]
    return None


def summary(runs: Sequence[Run]) -> dict[str, dict]:
    out = {}
    for run in runs:
        entry = {k: v for k, v in run.final().items()}
        entry["outcome"] = run.verdict()
        entry["versions"] = " + ".join(run.versions)
        entry["relies"] = run.relies()
        entry["leaning"] = run.leaning()
        entry["decided"] = run.decided()
        if run.cf_truth() is not None:
            entry["cf_truth"] = run.cf_truth()
        out[run.name] = entry
    return out


def _fmt(v: float | None, digits: int = 3, sign: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


REPORT_INTRO = (
    "Final epoch of each run. The verdict (ConceptProbe) reads the share of the model's predictions that follow "
    "each concept on the probe set, with a 95% interval; a concept *counts* when a within-strata permutation "
    'test rejects "the predictions ignore it" (family-wise over the concepts) and its interval lies above '
    "δ = 0.1; the outcome names the leading concept when it counts, decides most predictions (interval above "
    "0.5) and leads the runner-up by a decided margin, "
    "`none` when every interval lies below δ, `undecided: <reason>` otherwise (docs/verdict.md). The surgery's "
    "effects (what the features carry, not a verdict) are against the weights the run started from and "
    "re-initialisations of its architecture (`− start`) or against random matching (`− null`). The "
    "counterfactual rows are the ground truth: the fraction of predictions that change when only the colour, "
    "only the digit or (scenes) only the background is changed (clear when one exceeds every other by 0.2, "
    "else mixed)."
)
EFFECT_ROWS = (
    ("share", "share − null (paper)"),
    ("retention", "retention − null"),
    ("retention_vs_init", "retention − start"),
    ("separation_vs_init", "separation − start (CLIP units)"),
)


def _interval(f: dict, key: str, c: str | None = None, prefix: str = "probe") -> str:
    """``point [lo, hi]`` of a logged effect (``<prefix>/<key>/<c>``) or scalar (``<prefix>/<key>``)."""
    name = (lambda s: f"{prefix}/{key}{s}/{c}") if c else (lambda s: f"{prefix}/{key}{s}")
    point, lo, hi = (_fmt(f.get(name(s)), sign=True) for s in ("", "_lo", "_hi"))
    return f"{point} [{lo}, {hi}]"


def _concept_order(runs: Sequence[Run]) -> list[str]:
    """Concepts in the order the probe's config lists them (alphabetical when no config says)."""
    found = {c for r in runs for c in r.concepts()}
    for r in runs:
        listed = [c for c in (_probe_arg(r, "concepts") or {}) if c in found]
        if listed:
            return listed + sorted(found - set(listed))
    return sorted(found)


def _table_rows(runs: Sequence[Run], concepts: list[str]) -> list[str]:
    finals = [r.final() for r in runs]
    rows: list[str] = []

    def row(label: str, cells: list[str]) -> None:
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    for key, label in (
        ("val/acc", "val/acc"),
        ("test/acc", "test/acc"),
        ("real_world/acc", "real_world/acc (deployment: concepts at random)"),
        ("probe_set/acc", "probe_set/acc"),
    ):
        row(label, [_fmt(f.get(key)) for f in finals])
    row("**outcome (verdict)**", [f"**{r.verdict()}**" for r in runs])
    row("concepts that count", [", ".join(r.relies()) or "–" for r in runs])
    row("margin over the runner-up [95% CI]", [_interval(f, "margin") for f in finals])
    row("counterfactual ground truth", [r.cf_truth() or "–" for r in runs])
    for c in concepts:
        row(f"share of predictions following {c} [95% CI]", [_interval(f, "effect", c) for f in finals])
    for name in sorted({k for f in finals for k in f if k.startswith("cf/") and k.endswith("_flip_rate")}):
        row(name, [_fmt(f.get(name)) for f in finals])
    _surgery_rows(finals, concepts, row)
    row(
        "verdict / surgery / train-epoch seconds",
        [
            f"{_fmt(f.get(names.SECONDS), 2)} / {_fmt(f.get('surgery/seconds'), 1)} / "
            f"{_fmt(f.get('time/train_epoch_seconds'), 1)}"
            for f in finals
        ],
    )
    return rows


def _surgery_rows(finals: list[dict], concepts: list[str], row) -> None:
    """The SurgeryProbe's diagnostics, when it ran, added through ``row(label, cells)``."""
    if not any(k.startswith("surgery/") for f in finals for k in f):
        return
    for c in concepts:
        row(
            f"surgery: retention/{c} (null · start)",
            [
                f"{_fmt(f.get(f'surgery/retention/{c}'))} ({_fmt(f.get(f'surgery/null_retention/{c}'))} · "
                f"{_fmt(f.get(f'surgery/init_retention/{c}'))})"
                for f in finals
            ],
        )
        row(
            f"surgery: influence share/{c} (null) — paper",
            [f"{_fmt(f.get(f'surgery/share/{c}'))} ({_fmt(f.get(f'surgery/null_share/{c}'))})" for f in finals],
        )
    for metric, label in EFFECT_ROWS:
        for c in concepts:
            row(
                f"surgery: {c} {label} [95% CI]",
                [_interval(f, f"effect_{metric}", c, prefix="surgery") for f in finals],
            )
    for c in concepts:
        row(
            f"zero-shot acc/{c} (can the probe CLIP see it?)",
            [_fmt(f.get(f"surgery/zeroshot_acc/{c}")) for f in finals],
        )


def _agreement_lines(runs: Sequence[Run]) -> list[str]:
    lines = []
    for r in runs:
        truth = r.cf_truth()
        if truth is None:
            continue
        if not r.decided():
            lines.append(f"- **{r.name}**: the probe says **{r.verdict()}**; the counterfactual says {truth}.")
            continue
        verdict = "agrees with" if truth == r.outcome() else "DISAGREES with"
        lines.append(
            f"- **{r.name}**: the probe names **{r.outcome()}**, which {verdict} the counterfactual ground truth "
            f"({truth})."
        )
    return lines


def markdown(runs: Sequence[Run], images: Sequence[str] = ()) -> str:
    head = "| | " + " | ".join(r.name for r in runs) + " |\n|---|" + "---|" * len(runs) + "\n"
    lines = ["# Run comparison", "", REPORT_INTRO, "", head + "\n".join(_table_rows(runs, _concept_order(runs))), ""]
    lines += [*_sentence_lines(runs), *_agreement_lines(runs), ""]
    lines += method_table(runs)
    lines += [f"![{os.path.splitext(img)[0]}]({img})" for img in images]
    lines += ["", "Runs: " + ", ".join(f"`{r.name}` = `{r.path}` ({' + '.join(r.versions)})" for r in runs)]
    return "\n".join(lines) + "\n"


ATTR_METHODS = (("integrated_gradients", "Integrated Gradients"), ("saliency", "saliency"), ("occlusion", "occlusion"))


def method_table(runs: Sequence[Run]) -> list[str]:
    """'Which methods detect the colour reliance?' — the probe, the counterfactual ground truth and each
    attribution method, per run (only when AttributionProbe metrics were logged)."""
    finals = [r.final() for r in runs]
    if not any(k.startswith("attr/") for f in finals for k in f):
        return []
    lines = [
        "## Method comparison: which methods detect the colour reliance?",
        "",
        "Reading per method: the probe's dominant concept; the counterfactual's dominant reliance; for an "
        "attribution method, `color` when its colour share (the part of the attribution only a change of hue "
        "produces) exceeds 0.5, else `shape`. Grad-CAM has no channel axis: colour and shape occupy the same "
        "pixels, so it cannot separate them (its column shows the share of its mass on the digit)."
        + (
            " The colour share splits colour from everything else: it cannot single out a background."
            if any("cf/background_flip_rate" in f for f in finals)
            else ""
        ),
        "",
        "| method | " + " | ".join(r.name for r in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    lines.append(
        "| ConceptProbe (margin over the runner-up [95% CI]) | "
        + " | ".join(
            f"{r.verdict()} ({_fmt(f.get('probe/margin'), sign=True)} [{_fmt(f.get('probe/margin_lo'), sign=True)}, "
            f"{_fmt(f.get('probe/margin_hi'), sign=True)}])"
            for r, f in zip(runs, finals)
        )
        + " |"
    )
    lines.append(
        "| counterfactual ground truth (flip rates) | "
        + " | ".join(
            f"{r.cf_truth() or '–'} ({', '.join(f'{c} {_fmt(v, 2)}' for c, v in sorted(rates_of(f).items()))})"
            for r, f in zip(runs, finals)
        )
        + " |"
    )
    for key, label in ATTR_METHODS:
        cells = []
        for f in finals:
            share = f.get(f"attr/{key}/color_share")
            cells.append("–" if share is None else f"{'color' if share > 0.5 else 'shape'} (colour share {share:.2f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        "| Grad-CAM | "
        + " | ".join(f"cannot separate (on digit {_fmt(f.get('attr/gradcam/on_digit'), 2)})" for f in finals)
        + " |"
    )
    seconds = " | ".join(_fmt(f.get("attr/seconds"), 1) for f in finals)
    lines.append(f"| attribution seconds per epoch | {seconds} |")
    return [*lines, ""]


def _probe_arg(run: Run, key: str):
    for cb in (run.config.get("trainer") or {}).get("callbacks") or []:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("ConceptProbe"):
            return (cb.get("init_args") or {}).get(key)
    return None


def _save(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def _learning_curves(runs: Sequence[Run], plt):
    # 1. learning curves with the real-world curve
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 3.4), squeeze=False, sharey=True)
    for ax, run in zip(axes[0], runs):
        for key, style in (("train/acc", "-"), ("val/acc", "-"), ("test/acc", "--"), ("real_world/acc", "-")):
            xs, ys = run.series(key)
            if xs:
                ax.plot(xs, ys, style, marker="o", ms=3, label=key, lw=2.2 if key == "real_world/acc" else 1.4)
        ax.set_title(run.name)
        ax.set_xlabel("epoch")
        ax.set_ylim(0.0, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle("Learning curves: validation looks perfect, deployment (real_world) tells the truth", fontsize=10)
    return fig


def _concepts_per_epoch(runs: Sequence[Run], plt):
    # 2. concept effects and shares per epoch
    fig, axes = plt.subplots(2, len(runs), figsize=(4.6 * len(runs), 6.0), squeeze=False, sharex=True)
    for j, run in enumerate(runs):
        for c in run.concepts():
            xs, ys = run.series(f"probe/effect/{c}")
            _, lo = run.series(f"probe/effect_lo/{c}")
            _, hi = run.series(f"probe/effect_hi/{c}")
            if xs:
                (line,) = axes[0][j].plot(xs, ys, marker="o", label=c)
                axes[0][j].fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
            xs, ys = run.series(f"surgery/effect_separation_vs_init/{c}")
            _, lo = run.series(f"surgery/effect_separation_vs_init_lo/{c}")
            _, hi = run.series(f"surgery/effect_separation_vs_init_hi/{c}")
            if xs:
                (line,) = axes[1][j].plot(xs, ys, marker="o", label=c)
                axes[1][j].fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
        for ax in axes[:, j]:
            ax.axhline(0, color="k", lw=0.8)
        axes[0][j].set_title(f"{run.name}: {run.verdict()} (last epoch)", fontsize=9)
        axes[1][j].set_xlabel("epoch")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of predictions following, 95% CI")
    axes[1][0].set_ylabel("features: separation − start, 95% CI")
    axes[0][-1].legend(fontsize=8)
    axes[1][-1].legend(fontsize=8)
    return fig


def _references_plot(runs: Sequence[Run], plt):
    # 3. what the concepts keep after surgery vs the references, final epoch: retention (trained, start and
    # re-initialisations, null) and the caption separation (trained, references)
    concepts = _concept_order(runs)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(1.6 + 1.9 * len(runs) * len(concepts), 6.6), sharex=True)
    sep_top = 0.0
    x, ticks, labels = 0.0, [], []
    for run in runs:
        f = run.final()
        for c in concepts:
            metric, null = f.get(f"surgery/retention/{c}", math.nan), f.get(f"surgery/null_retention/{c}", math.nan)
            init = f.get(f"surgery/init_retention/{c}", math.nan)
            ax.bar(x - 0.27, metric, 0.27, color="tab:blue")
            ax.bar(x, init, 0.27, color="tab:orange")
            ax.bar(x + 0.27, null, 0.27, color="tab:gray")
            sep, sep_init = f.get(f"surgery/separation/{c}", math.nan), f.get(f"surgery/init_separation/{c}", math.nan)
            ax2.bar(x - 0.2, sep, 0.4, color="tab:blue")
            ax2.bar(x + 0.2, sep_init, 0.4, color="tab:orange")
            eff, lo, hi = (f.get(f"surgery/effect_separation_vs_init{s}/{c}", math.nan) for s in ("", "_lo", "_hi"))
            top = max(v for v in (sep, sep_init, 0.0) if math.isfinite(v))
            sep_top = max(sep_top, top)
            ax2.text(x, top + 0.03, f"{eff:+.2f}\n[{lo:+.2f},{hi:+.2f}]", ha="center", fontsize=7)
            ticks.append(x)
            labels.append(f"{run.name}\n{c}")
            x += 1.0
        x += 0.5
    for a in (ax, ax2):
        a.set_xticks(ticks, labels, fontsize=8)
        a.grid(alpha=0.3, axis="y")
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("within-concept accuracy after surgery")
    ax.legend(["trained model", "start + re-initialisations", "null (random matching)"], fontsize=8, loc="upper right")
    ax.set_title("Retention after surgery", fontsize=10)
    ax2.set_ylabel("caption separation after surgery")
    ax2.legend(["trained model", "start + re-initialisations"], fontsize=8, loc="upper right")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_ylim(top=1.35 * sep_top + 0.05)
    ax2.set_title("Separation after surgery; text = separation − start [95% CI], CLIP units", fontsize=10)
    fig.tight_layout()
    return fig


PLOTS = (
    ("learning_curves.png", _learning_curves),
    ("concepts_per_epoch.png", _concepts_per_epoch),
    ("effect_vs_null.png", _references_plot),
)


def plots(runs: Sequence[Run], out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, draw in PLOTS:
        fig = draw(runs, plt)
        _save(fig, os.path.join(out, name))
        plt.close(fig)
    return [name for name, _ in PLOTS]


def write_report(run_dirs: Sequence[str], out: str, names: Sequence[str] | None = None) -> dict[str, dict]:
    if names and len(names) != len(run_dirs):
        raise ValueError(f"--names has {len(names)} entries for {len(run_dirs)} run directories")
    runs = [load_run(d, names[i] if names else None) for i, d in enumerate(run_dirs)]
    if len({r.name for r in runs}) != len(runs):
        raise ValueError(f"run names must be distinct, got {[r.name for r in runs]}; pass --names")
    os.makedirs(out, exist_ok=True)
    images = plots(runs, out)
    data = summary(runs)
    atomic_write_text(os.path.join(out, "summary.json"), json.dumps(data, indent=2, sort_keys=True) + "\n")
    atomic_write_text(os.path.join(out, "report.md"), markdown(runs, images))
    return data


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m xai_lightning.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", help="run directories (CSV logger dirs or version dirs)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--names", nargs="+", default=None, help="column names (default: W&B job_type or folder)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = write_report(args.runs, args.out, args.names)
    for name, entry in data.items():
        log.info(
            f"{name} ({entry['versions']}): outcome={entry['outcome']} val/acc={_fmt(entry.get('val/acc'))} "
            f"real_world/acc={_fmt(entry.get('real_world/acc'))}"
        )
    log.info(f"wrote {os.path.join(args.out, 'report.md')}")


if __name__ == "__main__":
    main()
