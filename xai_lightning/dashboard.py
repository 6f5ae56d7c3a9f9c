"""A W&B workspace for concept drift, built by one command.

    python -m xai_lightning.dashboard --entity E --project P [--group G] [--name NAME] [--concepts shape color]
    python -m xai_lightning.dashboard --entity E --project P --group G --dry-run [spec.json]

Sections: *Verdict* (per concept the share of predictions that follow it with its 95% interval and whether
it counts, the margin, the outcome, the undecided reasons and the alarm, per epoch), *Does it generalize?*
(val/acc, real_world/acc, the counterfactual flip rates), *Surgery* (what the features carry: retention and
separation against their references, zero-shot accuracy, match coverage) and *Cost* (verdict and surgery
seconds against the training epoch). Runs are grouped by ``job_type`` (biased / debiased) with fixed colours,
so the two stories sit side by side; ``--group`` keeps one experiment's runs. Every key comes from
``xai_lightning.names`` (a renamed metric breaks a test, not a dashboard).

``--dry-run`` writes the spec as JSON and needs no network; saving needs ``wandb-workspaces``
(``pip install -e ".[dashboard]"``) and a W&B login.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

from xai_lightning import names
from xai_lightning.verdict import REASON_KEYS

GROUP_COLORS = {"biased": "#d62728", "debiased": "#1f77b4"}


def _line(title: str, y: list[str]) -> dict:
    return {"title": title, "x": "epoch", "y": y}


def workspace_spec(
    group: str | None = None,
    name: str = "xai-lightning: concept drift",
    concepts: Sequence[str] = ("shape", "color"),
    clip_layers: Sequence[str] = ("visual.layer1", "visual.layer2", "visual.layer3", "visual.layer4"),
) -> dict:
    """The workspace as plain data: sections of line plots (x = epoch) over logged keys."""

    def each(pattern: str) -> list[str]:
        return [pattern.format(c=c) for c in concepts]

    verdict = [
        _line(
            f"share of predictions following {c} [95% CI]",
            [p.format(c=c) for p in (names.EFFECT, names.EFFECT_LO, names.EFFECT_HI)],
        )
        for c in concepts
    ]
    verdict += [
        _line("counts (1 = the concept counts)", each(names.RELIES)),
        _line("margin over the runner-up [95% CI]", [names.MARGIN, names.MARGIN_LO, names.MARGIN_HI]),
        _line("outcome (1 = named)", each(names.OUTCOME) + [names.OUTCOME.format(c=o) for o in ("none", "undecided")]),
        _line("undecided because", [names.UNDECIDED.format(r=r) for r in REASON_KEYS.values()]),
        _line("alarm (epoch it fired)", each(names.ALARM[0])),
    ]
    generalize = [
        _line("accuracy: validation vs deployment", ["val/acc", "real_world/acc"]),
        _line("counterfactual flip rates (ground truth)", list(names.COUNTERFACTUAL)),
    ]
    surgery = [
        _line(f"retention: {c} (model vs start)", [f"surgery/retention/{c}", f"surgery/init_retention/{c}"])
        for c in concepts
    ]
    surgery += [
        _line(
            f"features: separation − start, {c} [95% CI]",
            [p.format(m="separation_vs_init", c=c) for p in names.SURGERY_METRIC],
        )
        for c in concepts
    ]
    surgery += [
        _line("zero-shot accuracy (can the probe CLIP see it?)", each("surgery/zeroshot_acc/{c}")),
        _line(
            "match coverage and scores",
            ["surgery/match/coverage"] + [f"surgery/match/score_mean/{x}" for x in clip_layers],
        ),
    ]
    cost = [
        _line("seconds per epoch", [names.SECONDS, "surgery/seconds", *names.TIMER]),
        _line("references (once per run)", list(names.SURGERY_ONCE)),
    ]
    return {
        "name": name,
        "group": group,
        "groupby": "JobType",
        "group_colors": GROUP_COLORS,
        "sections": [
            {"name": "Verdict", "panels": verdict},
            {"name": "Does it generalize?", "panels": generalize},
            {"name": "Surgery: what the features carry", "panels": surgery},
            {"name": "Cost", "panels": cost},
        ],
    }


def spec_keys(spec: dict) -> set[str]:
    return {y for section in spec["sections"] for panel in section["panels"] for y in panel["y"]}


def build_workspace(spec: dict, entity: str, project: str):
    """The ``wandb_workspaces`` Workspace for a spec (building needs no network; ``.save()`` does)."""
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
        from wandb_workspaces import expr
    except ImportError as err:
        raise SystemExit(
            'the dashboard needs wandb-workspaces: pip install -e ".[dashboard]" (or pip install wandb-workspaces)'
        ) from err
    sections = [
        ws.Section(
            name=s["name"],
            is_open=True,
            panels=[wr.LinePlot(title=p["title"], x=p["x"], y=list(p["y"])) for p in s["panels"]],
        )
        for s in spec["sections"]
    ]
    filters = [expr.Metric("Group") == spec["group"]] if spec.get("group") else []
    runset = ws.RunsetSettings(
        groupby=[expr.Metric(spec["groupby"])], filters=filters, group_colors=dict(spec["group_colors"])
    )
    return ws.Workspace(entity=entity, project=project, name=spec["name"], sections=sections, runset_settings=runset)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m xai_lightning.dashboard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--entity", required=True)
    ap.add_argument("--project", required=True)
    ap.add_argument("--group", default=None, help="only this experiment's runs (the W&B group, e.g. story-...)")
    ap.add_argument("--name", default="xai-lightning: concept drift")
    ap.add_argument("--concepts", nargs="+", default=["shape", "color"])
    ap.add_argument(
        "--dry-run",
        nargs="?",
        const="dashboard_spec.json",
        default=None,
        metavar="PATH",
        help="write the workspace spec as JSON (default dashboard_spec.json) instead of saving it",
    )
    args = ap.parse_args(argv)
    spec = workspace_spec(args.group, args.name, args.concepts)
    spec.update({"entity": args.entity, "project": args.project})
    unknown = sorted(k for k in spec_keys(spec) if not names.known(k))
    if unknown:
        raise SystemExit(f"dashboard keys missing from xai_lightning.names: {unknown}")
    if args.dry_run:
        with open(args.dry_run, "w") as f:
            json.dump(spec, f, indent=2)
        print(f"wrote the workspace spec to {os.path.abspath(args.dry_run)} (nothing sent to W&B)")
        return
    workspace = build_workspace(spec, args.entity, args.project)
    workspace.save()
    print(f"saved the W&B workspace: {workspace.url}")


if __name__ == "__main__":
    main()
