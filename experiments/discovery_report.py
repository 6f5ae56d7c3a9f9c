"""Scores and tables of ``validate_discovery.py`` (beside it): ``report(OUT)`` writes OUT/discovery.md.

    python experiments/discovery_report.py OUT [--seeds 3100 3101]   # only the models of these seeds

Every definition below was fixed before the grid ran (docs/discovery.md, "Validation protocol").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verdict_lab import rate, read_jsonl  # noqa: E402

from xai_lightning.io import atomic_write_text  # noqa: E402
from xai_lightning.verdict import MIN_EFFECT  # noqa: E402

FOLLOWS, CLEAR = 0.3, 0.2
UNDECIDED = ("undecided",)


def ranked(r: dict, prefix: str) -> list[str]:
    """Non-digit families by their effect (largest first; unmeasured last)."""
    fams = [k.split("/")[-1] for k in r if k.startswith(f"{prefix}/effect/") and not k.endswith("/digit")]
    return sorted(
        fams, key=lambda f: -(r[f"{prefix}/effect/{f}"][0] if math.isfinite(r[f"{prefix}/effect/{f}"][0]) else -9)
    )


def named_top(r: dict, prefix: str, k: int) -> bool:
    """The planted family is among the top ``k`` non-digit families and counts (relies)."""
    fam = r["family"]
    return fam in ranked(r, prefix)[:k] and bool(r.get(f"{prefix}/relies/{fam}"))


def wrong(r: dict, prefix: str) -> bool:
    """A decided outcome the counterfactual contradicts: a named family that moves fewer than δ of the
    predictions or that another family's flip rate beats by CLEAR; ``none`` where some family moves FOLLOWS."""
    out, truth = r[f"{prefix}/outcome"], r["truth"]
    if out in UNDECIDED:
        return False
    if out == "none":
        return max(truth.values()) >= FOLLOWS
    mine = truth.get(out, float("nan"))
    return not mine >= MIN_EFFECT or any(t - mine >= CLEAR for f, t in truth.items() if f != out)


def false_positives(rows: list[dict], prefix: str = "free") -> tuple[int, int]:
    """(families counted, families tested) over non-digit families other than the planted one whose flip rate
    is below δ."""
    k = n = 0
    for r in rows:
        for f, t in r["truth"].items():
            if f in ("digit", r["family"]) or t >= MIN_EFFECT or f"{prefix}/relies/{f}" not in r:
                continue
            n += 1
            k += bool(r[f"{prefix}/relies/{f}"])
    return k, n


def scores(rows: list[dict]) -> dict:
    planted = [r for r in rows if r["family"] != "none"]
    follows = [r for r in planted if r["truth"][r["family"]] >= FOLLOWS]
    missing = follows
    listed = follows
    nulls = [r for r in rows if r["family"] == "none"]
    return {
        "models": len(rows),
        "follows": len(follows),
        "top1": (sum(named_top(r, "free", 1) for r in follows), len(follows)),
        "top3": (sum(named_top(r, "free", 3) for r in follows), len(follows)),
        "top1_labelled": (sum(named_top(r, "labelled", 1) for r in follows), len(follows)),
        "wrong_free": [r["name"] for r in rows if wrong(r, "free")],
        "wrong_labelled": [r["name"] for r in rows if wrong(r, "labelled")],
        "agree": (sum(r["free/outcome"] == r["labelled/outcome"] for r in rows), len(rows)),
        "fp_all": false_positives(rows),
        "fp_null": false_positives(nulls),
        "fp_labelled": false_positives(rows, "labelled"),
        "flag_missing": (sum(bool(r["missing/unlisted"]) for r in missing), len(missing)),
        "flag_listed": (sum(bool(r["free/unlisted"]) for r in listed), len(listed)),
        "flag_null": (sum(bool(r["free/unlisted"]) for r in nulls), len(nulls)),
    }


def _cell_rows(rows: list[dict]) -> list[str]:
    cells = defaultdict(list)
    for r in rows:
        if r["family"] != "none":
            cells[(r["family"], r["patch_px"], r["conflict"])].append(r)
    out = [
        "| planted | conflict | models | follows (cf ≥ 0.3) | cf flip, mean | free effect, mean | top-1 | top-3 | "
        "free outcomes | unexplained flags (missing vocabulary) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (fam, px, c), rs in sorted(cells.items()):
        fol = [r for r in rs if r["truth"][fam] >= FOLLOWS]
        eff = [r[f"free/effect/{fam}"][0] for r in rs if math.isfinite(r[f"free/effect/{fam}"][0])]
        outs = defaultdict(int)
        for r in rs:
            outs[r["free/outcome"] if r["free/outcome"] != "undecided" else f"undecided ({r['free/reason']})"] += 1
        label = fam if fam != "patch" else f"patch {px} px"
        out.append(
            f"| {label} | {c:g} | {len(rs)} | {len(fol)} | {np.mean([r['truth'][fam] for r in rs]):.2f} | "
            f"{np.mean(eff) if eff else float('nan'):.2f} | {sum(named_top(r, 'free', 1) for r in fol)}/{len(fol)} | "
            f"{sum(named_top(r, 'free', 3) for r in fol)}/{len(fol)} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(outs.items()))} | "
            f"{sum(bool(r['missing/unlisted']) for r in fol)}/{len(fol)} |"
        )
    return out


def _reading_rows(rows: list[dict], zs: dict) -> list[str]:
    fams = sorted({f for r in rows for f in r["read"]})
    out = [
        "| family | read right on the grid's probe sets (mean) | unknown |"
        + "".join(f" {s}: accuracy (unknown) |" for s in zs),
        "|---|---|---|" + "---|" * len(zs),
    ]
    for f in fams:
        acc = [r["read"][f][0] for r in rows if f in r["read"]]
        unk = [r["read"][f][1] for r in rows if f in r["read"]]
        extra = "".join(
            f" {zs[s][f]['accuracy']:.3f} ({zs[s][f]['unknown']:.3f}) |" if f in zs[s] else " - |" for s in zs
        )
        out.append(f"| {f} | {np.mean(acc):.3f} | {np.mean(unk):.3f} |{extra}")
    return out


def _mark(k: int, n: int, at_least: float | None = None, at_most: float | None = None) -> str:
    if not n:
        return "-"
    ok = (at_least is None or k / n >= at_least) and (at_most is None or k / n <= at_most)
    return "✓" if ok else "✗"


def markdown(rows: list[dict], zs: dict) -> str:
    s = scores(rows)
    lines = [
        "# Discovery validation (experiments/validate_discovery.py)",
        "",
        f"{s['models']} trained models; {s['follows']} follow their planted family (cf flip ≥ {FOLLOWS}).",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| planted family top-1 (free) ≥ 80% | {rate(*s['top1'])} | {_mark(*s['top1'], at_least=0.8)} |",
        f"| planted family top-3 (free) ≥ 95% | {rate(*s['top3'])} | {_mark(*s['top3'], at_least=0.95)} |",
        f"| wrong decided outcomes (free) = 0 | {len(s['wrong_free'])} {s['wrong_free'][:6]} | "
        f"{'✓' if not s['wrong_free'] else '✗'} |",
        f"| free and labelled outcomes agree ≥ 95% | {rate(*s['agree'])} | {_mark(*s['agree'], at_least=0.95)} |",
        f"| false positives, null models ≤ 5% | {rate(*s['fp_null'])} | {_mark(*s['fp_null'], at_most=0.05)} |",
        f"| false positives, every model ≤ 5% | {rate(*s['fp_all'])} | {_mark(*s['fp_all'], at_most=0.05)} |",
        f"| unexplained flags the missing family ≥ 90% | {rate(*s['flag_missing'])} | "
        f"{_mark(*s['flag_missing'], at_least=0.9)} |",
        f"| unexplained flags with the family listed ≤ 5% | {rate(*s['flag_listed'])} | "
        f"{_mark(*s['flag_listed'], at_most=0.05)} |",
        "",
        f"For comparison, with the true labels: top-1 {rate(*s['top1_labelled'])}; wrong decided "
        f"{len(s['wrong_labelled'])} {s['wrong_labelled'][:6]}; false positives {rate(*s['fp_labelled'])}. "
        f"Unexplained flags on the null models (full vocabulary): {rate(*s['flag_null'])}.",
        "",
        "## Per planted family and strength",
        "",
        *_cell_rows(rows),
        "",
        "## Caption reading per family",
        "",
        *_reading_rows(rows, zs),
        "",
        f"Seconds per model (train + truth + three verdicts): median "
        f"{np.median([r['seconds'] for r in rows]) if rows else float('nan'):.0f}.",
    ]
    return "\n".join(lines) + "\n"


def report(out: str, seeds: tuple[int, ...] | None = None) -> str:
    path = os.path.join(out, "discovery.jsonl")
    rows = read_jsonl(path) if os.path.isfile(path) else []
    if seeds is not None:
        rows = [r for r in rows if r["seed"] in seeds]
    zpath = os.path.join(out, "zeroshot.json")
    zs = json.load(open(zpath)) if os.path.isfile(zpath) else {}
    text = markdown(rows, zs)
    atomic_write_text(os.path.join(out, "discovery.md"), text)
    print(text)
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Score a discovery grid (OUT/discovery.jsonl) into OUT/discovery.md")
    ap.add_argument("out")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="only the models of these training seeds")
    args = ap.parse_args(argv)
    report(args.out, tuple(args.seeds) if args.seeds else None)


if __name__ == "__main__":
    main()
