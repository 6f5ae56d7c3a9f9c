"""What the SurgeryProbe shows on rank 0: the console summary, the caption table, the match-score plot, and
the W&B table / plot / plan artifact. Pure formatting and file writing; no probe math."""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Mapping

from xai_lightning import names
from xai_lightning.io import atomic_write, atomic_write_text
from xai_lightning.surgery.scoring import SurgerySummary

TABLE_COLUMNS = ["caption", "key", "clip", "surgery", "influence", "null_surgery"]


def _interval(m: Mapping[str, float], key: str, concept: str) -> str:
    return f"{m[f'{key}/{concept}']:+.3f} [{m[f'{key}_lo/{concept}']:+.3f}, {m[f'{key}_hi/{concept}']:+.3f}]"


def summary_lines(summary: SurgerySummary, metrics: Mapping[str, float], epoch: int) -> list[str]:
    """The console summary: what the features carry, one line per concept (diagnostics, not a verdict)."""
    m = summary.metrics
    lines = [
        f"SurgeryProbe epoch {epoch}: what the features carry ({summary.images} images, "
        f"{metrics['surgery/seconds']:.1f}s)"
    ]
    for c in summary.concepts:
        parts = [f"  {c:>12}:"]
        if f"effect_separation_vs_init/{c}" in m:
            parts.append(f"separation vs start {_interval(m, 'effect_separation_vs_init', c)}")
        parts.append(f"retention {m[f'retention/{c}']:.3f}")
        if f"init_retention/{c}" in m:
            parts[-1] += f" (start {m[f'init_retention/{c}']:.3f})"
        parts.append(f"zero-shot {m[f'zeroshot_acc/{c}']:.3f}")
        lines.append("  ".join(parts))
    return lines


def table_rows(summary: SurgerySummary) -> list[list]:
    sims = summary.sim_mean  # [2, K]: plain CLIP, after surgery
    return [
        [
            cap,
            key,
            round(float(sims[0, k]), 5),
            round(float(sims[-1, k]), 5),
            round(float(sims[-1, k] - sims[0, k]), 5),
            round(float(summary.null_sim_mean[k]), 5),
        ]
        for k, (cap, key) in enumerate(zip(summary.captions, summary.keys))
    ]


def match_plot(plan, epoch: int):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    data, labels = [], []
    for name, sl in plan.clip_slices().items():
        matched = plan.matching.source[sl] >= 0
        data.append(plan.matching.score[sl][matched].float().cpu().numpy())
        labels.append(f"{name}\n({int(matched.sum())}/{sl.stop - sl.start})")
    ax.boxplot(data, tick_labels=labels, showfliers=False)
    ax.set_ylabel("match score Z")
    ax.set_title(
        f"best-match scores per CLIP layer, epoch {epoch} (coverage {plan.extras['coverage']:.3f})", fontsize=9
    )
    fig.tight_layout()
    return fig


def write_files(out: str, summary: SurgerySummary, plan, epoch: int, rows: list[list], fig) -> str:
    """Caption table (CSV), surgery plan and match plot into ``out``; returns the plan's path."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(TABLE_COLUMNS)
    writer.writerows(rows)
    atomic_write_text(os.path.join(out, f"table_epoch{epoch:03d}.csv"), buf.getvalue())
    plan_path = os.path.join(out, f"plan_epoch{epoch:03d}.pt")
    plan.save(plan_path)
    atomic_write(
        os.path.join(out, f"match_scores_epoch{epoch:03d}.png"), lambda f: fig.savefig(f, format="png", dpi=90)
    )
    return plan_path


def log_wandb(run, summary: SurgerySummary, rows: list[list], fig, plan_path: str, epoch: int) -> None:
    """Caption table, match plot and the plan (artifact and run file)."""
    import wandb

    table_key, plot_key = names.SURGERY_MEDIA
    run.log({table_key: wandb.Table(columns=TABLE_COLUMNS, data=rows), plot_key: wandb.Image(fig), "epoch": epoch})
    # the plan also goes into the run's own files (uploaded by `wandb sync`): an offline artifact only
    # references W&B's staging area outside the run directory
    os.makedirs(os.path.join(run.dir, "surgery"), exist_ok=True)
    kept = os.path.join(run.dir, "surgery", os.path.basename(plan_path))
    shutil.copyfile(plan_path, kept)
    run.save(kept, base_path=run.dir, policy="now")
    art = wandb.Artifact(
        f"surgery-plan-{run.id}",
        type="surgery_plan",
        metadata={"epoch": epoch, "images": summary.images},
    )
    art.add_file(plan_path, name="plan.pt")
    run.log_artifact(art, aliases=[f"epoch-{epoch}", "latest"])
