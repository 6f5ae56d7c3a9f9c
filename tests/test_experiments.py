"""The experiment scripts: the validation's scoring on fixtures, a tiny run of each part, and every script's
``--help`` (so none can rot unseen)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")


def _module(name: str):
    sys.path.insert(0, EXPERIMENTS)
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXPERIMENTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _row(cell, model, outcome, effects, flips, relies=(), thin=False, monotone=True):
    r = {"cell": cell, "model": model, "outcome": outcome, "reason": None, "relies": list(relies), "seed": 0}
    r["monotone"] = monotone
    for c in ("shape", "color", "background"):
        r[f"flip/{c}"] = flips.get(c, float("nan"))
    for c, (e, lo, hi) in effects.items():
        r.update({f"effect/{c}": e, f"lo/{c}": lo, f"hi/{c}": hi, f"relies/{c}": c in relies, f"thin/{c}": thin})
    return r


def test_scoring_counts_wrong_outcomes_detection_coverage_and_accuracy():
    v = _module("validate_verdict")
    rows = [
        _row(
            "a",
            "m",
            "color",
            {"color": (1.0, 0.9, 1.0), "shape": (0.0, -0.1, 0.1)},
            {"color": 1.0, "shape": 0.0},
            ["color"],
        ),
        # named shape, but colour's flip rate leads by >= 0.2: wrong
        _row(
            "a",
            "m",
            "shape",
            {"color": (0.2, 0.1, 0.3), "shape": (0.4, 0.3, 0.5)},
            {"color": 0.7, "shape": 0.4},
            ["shape"],
        ),
        # undecided is never wrong; colour 0.35 missed by the interval and not counted
        _row(
            "b",
            "m",
            "undecided",
            {"color": (0.1, 0.05, 0.15), "shape": (0.0, -0.1, 0.1)},
            {"color": 0.35, "shape": 0.0},
        ),
    ]
    s = v.score(rows)
    assert [r["outcome"] for r in s["wrong"]] == ["shape"]
    assert s["detection"] == (2, 4)  # flips >= 0.3: colour 1.0 (counted), 0.7 (not), 0.35 (not), shape 0.4 (counted)
    assert s["coverage"]["a"] == (3, 4, 0, 0) and s["coverage"]["b"] == (1, 2, 0, 0)
    assert s["estimand_misses"] == ["b m color: -0.250"]  # one rep 0.25 low; cell a's colour is noise (0, -0.5)
    assert v.median_within([0.2, 0.21, 0.19, 0.2]) is False and v.median_within([0.0, 0.01, -0.01]) is True
    assert v.median_within([0.3, -0.3, 0.25, -0.2]) is True  # noise, not bias
    whole = _row("c", "m", "color", {"color": (1.0, 0.9, 1.0)}, {"color": 1.0}, ["color"])
    whole["tv/color"] = 1.000000000000007  # a share summed in floating point
    assert v.score([whole])["coverage"]["c"][:2] == (1, 1)


def test_the_power_table_bins_listed_concepts_by_flip_rate_and_counts_only_what_relies():
    v = _module("validate_verdict")
    rows = [
        {**_row("a", "m", "color", {}, {"color": 0.95, "shape": 0.05}, ["color"]), "images": 100},
        {**_row("a", "m", "none", {}, {"color": 0.25, "shape": 0.0}), "images": 100},
        {**_row("a", "m", "shape", {}, {"color": 0.15, "shape": 0.7}, ["shape", "color"]), "images": 250},
    ]
    for r in rows:
        r["listed"] = ["shape", "color"]
        r.update({f"relies/{c}": c in r["relies"] for c in r["listed"]})
    t = v.power_table(rows)
    assert t[0, 100] == [0, 2]  # shape 0.05 and 0.0: below δ, never counted
    assert t[4, 100] == [1, 1] and t[2, 100] == [0, 1]  # 0.95 counted; 0.25 not
    assert t[1, 250] == [1, 1] and t[4, 250] == [1, 1]
    assert sum(m for _k, m in t.values()) == 6


def test_what_the_per_cell_coverage_band_can_show_is_binomial():
    """An exact 95% interval over 100 intervals holds coverage in [0.90, 0.98] with probability sum_{k=90}^{98}
    C(100, k) .95^k .05^(100-k); 144 of 144 covered is not significantly above 0.98 (Clopper-Pearson lower end
    0.025^(1/144) = 0.9747)."""
    import math

    v = _module("validate_verdict")
    by_hand = sum(math.comb(100, k) * 0.95**k * 0.05 ** (100 - k) for k in range(90, 99))
    expected, every = v._exact_interval_cells([100, 100])
    assert expected == pytest.approx(2 * by_hand, rel=1e-9) and every == pytest.approx(by_hand**2, rel=1e-9)
    assert v.clopper_pearson(144, 144)[0] == pytest.approx(0.025 ** (1 / 144), rel=1e-9)
    assert v.clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-9)


def test_interval_sides_compare_each_end_with_the_spread_over_reps():
    """Two reps reading 0.4 and 0.6 (variance 0.02); ends 1.96 x 0.1 below and 1.96 x 0.2 above the point:
    the ends are sqrt(0.01 / 0.02) and sqrt(0.04 / 0.02) times what the reps' spread asks for."""
    v = _module("validate_verdict")
    z = 1.959963984540054
    rows = [
        {**_row("a", "m", "color", {"color": (e, e - z * 0.1, e + z * 0.2)}, {"color": 0.5}), "seed": i}
        for i, e in enumerate((0.4, 0.6))
    ]
    for r in rows:
        r.update(classes=2, images=100, layout="balanced")
    lo, hi = v.interval_sides(rows)[(2, 100)]
    assert lo == pytest.approx(np.sqrt(0.5), rel=1e-9) and hi == pytest.approx(np.sqrt(2.0), rel=1e-9)


def test_a_tiny_handbuilt_cell_runs_like_the_suite():
    v = _module("validate_verdict")
    from xai_lightning.verdict.simulate import HandBuilt, ProbeDesign

    design, model = ProbeDesign(200, 2, 2, 2), HandBuilt("mixture", "color", 1.0, noise=0.0)
    rows = v._handbuilt_job((design, model, v.CONCEPTS, 2, 5, v._truth(2, 2, 2, "balanced", model)))
    assert len(rows) == 2 and all(r["outcome"] == "color" for r in rows)
    assert rows[0]["flip/color"] == 1.0 and rows[0]["effect/color"] == pytest.approx(1.0)


def test_trained_model_flips_are_the_counterfactual_per_image(tmp_path):
    """A model that reads the red channel flips on every colour edit and on no shape edit."""
    import torch

    lab = _module("verdict_lab")
    spec = lab.TrainSpec("t", [5, 8], ["red", "green"], {"color_mode": "random"}, train_per_class=10, probe_images=40)
    dm = lab.datamodule(spec, str(tmp_path), seed=0)
    dm.setup()

    class Red(torch.nn.Module):
        def forward(self, x):
            red = x[:, 0].sum((1, 2)) - x[:, 1].sum((1, 2))
            return torch.stack([red, -red], 1)

    f = lab.flips(Red(), dm.datasets["probe_set"], {"shape": 2, "color": 2})
    assert np.all(f["color"] == 1.0) and np.all(f["shape"] == 0.0)


@pytest.mark.parametrize(
    "script",
    [
        "validate_verdict.py",
        "calibration.py",
        "bench_matching.py",
        "probe_ablation.py",
        "eval_probe_clip.py",
        "probe_scaling.py",
        "synthetic_realism.py",
        "validate_discovery.py",
        "real_shortcuts.py",
        "discovery_report.py",
        "verdict_cases.py",
        "verdict_beyond.py",
        "verdict_limits.py",
    ],
)
def test_every_experiment_script_answers_help(script):
    done = subprocess.run([sys.executable, os.path.join(EXPERIMENTS, script), "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout


def test_the_gpu_check_runs_in_its_smallest_mode_on_the_cpu(tmp_path):
    """experiments/gpu_check.sh --smoke: every step of the GPU check at toy sizes on the CPU, and its table."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    done = subprocess.run(
        ["bash", os.path.join(EXPERIMENTS, "gpu_check.sh"), str(tmp_path), "--smoke"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    table = (tmp_path / "gpu_check.md").read_text()
    for row in ("matching: ours / plain matmul", "verdict (ConceptProbe) / training epoch", "DDP 1 vs 2 GPUs"):
        assert row in table


def _discovery_row(family, truth, effects, relies, outcome="undecided", unlisted=False, missing=True):
    r = {"family": family, "truth": truth, "free/outcome": outcome, "labelled/outcome": outcome}
    r.update({"free/unlisted": unlisted, "missing/unlisted": missing, "name": family})
    for f, e in effects.items():
        r[f"free/effect/{f}"] = [e, e - 0.05, e + 0.05]
        r[f"free/relies/{f}"] = f in relies
        r[f"labelled/relies/{f}"] = f in relies
    return r


def test_discovery_scoring_ranks_families_other_than_the_digit_and_counts_only_what_the_truth_contradicts():
    rep = _module("discovery_report")
    truth = {"digit": 0.9, "thickness": 0.6, "color": 0.02, "size": 0.05}
    effects = {"digit": 0.8, "thickness": 0.55, "color": 0.2, "size": 0.01}
    # thickness leads the non-digit families and counts: top-1; color counts with a flip rate of 0.02: a false
    # positive; size does not count; the digit is never ranked
    r = _discovery_row("thickness", truth, effects, relies=("digit", "thickness", "color"))
    assert rep.ranked(r, "free") == ["thickness", "color", "size"]
    assert rep.named_top(r, "free", 1) and rep.false_positives([r]) == (1, 2)
    not_counted = _discovery_row("thickness", truth, effects, relies=("color",))
    assert not rep.named_top(not_counted, "free", 3)  # ranked first but it does not count: not named
    # wrong outcomes: a named family under δ, one beaten by 0.2, or none where something moves 0.3
    assert rep.wrong({**r, "free/outcome": "color"}, "free")
    assert rep.wrong({**r, "free/outcome": "thickness"}, "free")  # the digit's 0.9 beats its 0.6 by 0.3
    assert not rep.wrong({**r, "free/outcome": "digit"}, "free")
    assert rep.wrong({**r, "free/outcome": "none"}, "free") and not rep.wrong(r, "free")
    s = rep.scores([r, not_counted, _discovery_row("none", {"digit": 0.9, "color": 0.0}, {"color": 0.0}, ())])
    assert s["top1"] == (1, 2) and s["fp_null"] == (0, 1) and s["flag_missing"] == (2, 2)


def test_real_handwriting_measures_follow_drawn_width_and_slant():
    real = _module("real_shortcuts")
    img = np.zeros((3, 28, 28), dtype=np.uint8)
    img[0, 4:24, 12:14] = 255  # a vertical bar 2 px wide
    img[1, 4:24, 11:15] = 255  # 4 px wide
    for row in range(4, 24):  # a bar whose top leans right
        img[2, row, 14 + (24 - row) // 3 : 16 + (24 - row) // 3] = 255
    width = real.stroke_width(img)
    assert width[0] < width[1] and abs(width[1] / width[0] - 2.0) < 0.5
    shear = real.shear(img)
    assert abs(shear[0]) < 1e-9 and shear[2] > 0.2
    t = real.terciles(np.arange(30.0), np.zeros(30, dtype=int))
    assert (np.bincount(t) == 10).all()


def test_the_bias_story_runs_both_fits_and_the_report_at_toy_sizes(tmp_path):
    """experiments/bias_story.sh end to end (two fits, the report), with the quickstart configs at toy sizes."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env["WANDB_MODE"] = "disabled"
    toy = ["--data.init_args.train_per_class", "20", "--data.init_args.test_per_class", "4"]
    toy += ["--data.init_args.real_world_per_class", "4", "--data.init_args.probe_per_class", "20"]
    toy += ["--data.init_args.data_dir", str(tmp_path / "data"), "--model.init_args.backbone", "resnet18"]
    toy += ["--trainer.max_epochs", "1"]
    done = subprocess.run(
        ["bash", os.path.join(EXPERIMENTS, "bias_story.sh"), str(tmp_path / "story"), *toy],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    report = (tmp_path / "story" / "report.md").read_text()
    assert "biased" in report and "debiased" in report and (tmp_path / "story" / "summary.json").is_file()


def test_the_bad_input_script_parses():
    done = subprocess.run(["bash", "-n", os.path.join(EXPERIMENTS, "bad_input.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_band_is_judged_at_each_cells_binomial_noise_family_wise():
    """Three cells, so each Clopper-Pearson interval is at 1 - 0.05/3; a cell is consistent with [0.90, 0.98]
    unless a binomial with p = 0.90 (or 0.98) makes its count that extreme with probability below 0.05/6 — the
    same bound written with binomial tails instead of beta quantiles."""
    from scipy.stats import binom

    v = _module("validate_verdict")
    cells = {"a": (144, 144, 0, 0), "b": (115, 144, 0, 0), "d": (126, 144, 0, 0), "thin": (0, 0, 5, 5)}
    tail = 0.05 / 3 / 2
    by_hand = {
        c: bool(binom.sf(h - 1, n, 0.98) >= tail and binom.cdf(h, n, 0.90) >= tail)
        for c, (h, n, *_x) in cells.items()
        if n
    }
    assert by_hand == {"a": True, "b": False, "d": True}
    assert v.band_consistent(cells) == by_hand


def test_a_retest_tells_a_bias_from_the_noise_of_four_probe_sets():
    v = _module("validate_verdict")

    def rows(errors):
        return [
            {**_row("c", "m", "shape", {"color": (0.3 + e, 0.0, 1.0)}, {"color": 0.3}), "seed": i}
            for i, e in enumerate(errors)
        ]

    key = [["c", "m", "color"]]
    noise = v.retest_lines(key, rows([0.02, -0.03, 0.01, 0.0, -0.01]))[0]
    bias = v.retest_lines(key, rows([-0.12, -0.11, -0.13, -0.12, -0.10]))[0]
    assert "0 of 1 still miss" in noise and "c m color: +0.000 over 5." in noise
    assert "1 of 1 still miss" in bias and "c m color: -0.120 over 5 ✗." in bias
    assert "(1 not re-measured)" in v.retest_lines(key + [["x", "m", "color"]], rows([0.0, 0.01]))[0]


def test_beyond_the_grid_truths_are_the_flip_rates_worked_out_by_hand():
    """Red sends every digit to class 0, otherwise the digit, 5% at random: colour and shape each flip exactly
    the non-random images of the other concept's deciding value (half of them), background nothing."""
    b = _module("verdict_beyond")
    case = b.Case("t", "red_to_0", 100, 2, {"color": 2, "background": 2})
    flips = case.flip_rates()
    assert flips["color"] == pytest.approx(0.475, abs=0.005) and flips["shape"] == pytest.approx(0.475, abs=0.005)
    assert flips["background"] == 0.0
    rare = b.Case("t", "red_to_0", 100, 4, {"color": 4, "background": 2}, value_p={"color": b.RARE})
    v = rare.draw(20_000, np.random.default_rng(0))
    assert (v["color"] == 0).mean() == pytest.approx(0.05, abs=0.005)


def test_beyond_the_grid_judges_coverage_at_its_noise_and_counts_false_positives():
    b = _module("verdict_beyond")
    case = b.Case("t", "digit", 100, 2, {"color": 2}, listed=("color",))
    # truth 0; 40 reps: 30 intervals hold it (0.75, far below 0.90 even at 40), 4 count it
    per = [(0.0, -0.1, 0.1, i < 4, False) for i in range(30)] + [(0.2, 0.15, 0.25, False, False)] * 10
    line = b.judge([(case, {"truth": {"color": 0.0}, "per": {"color": per}, "outcomes": Counter(), "wrong": 0})])[0]
    assert line["covered"] == (30, 40) and not line["coverage_ok"] and line["false_positive"] == 4
    assert line["accurate"]  # median error 0.0
    ok = [(0.0, -0.1, 0.1, False, False)] * 37 + [(0.2, 0.15, 0.25, False, False)] * 3  # 37/40: noise of 0.95
    line = b.judge([(case, {"truth": {"color": 0.0}, "per": {"color": ok}, "outcomes": Counter(), "wrong": 0})])[0]
    assert line["coverage_ok"] and line["false_positive"] == 0


def test_the_bias_floor_families_share_their_moments_and_differ_in_share():
    lim = _module("verdict_limits")
    support, wa, wb = lim.priors(0.2, 4)
    assert wa.min() >= 0 and wb.min() >= 0 and np.isclose(wa.sum(), 1) and np.isclose(wb.sum(), 1)
    for k in range(1, 5):
        assert np.isclose(support**k @ wa, support**k @ wb, atol=1e-12)
    assert np.abs(support) @ wa > np.abs(support) @ wb + 0.01
    assert lim.pair_affinity(support, wa, wa, 25, 0.25) == pytest.approx(1.0, abs=1e-9)


def test_the_pair_affinity_on_its_sufficient_statistic_is_that_of_all_four_counts():
    """Summed by hand over the four Poisson counts of a class pair (a's two classes, b's two), small n."""
    from scipy.stats import poisson

    lim = _module("verdict_limits")
    support, wa, wb = np.array([-0.3, 0.0, 0.3]), np.array([0.5, 0.0, 0.5]), np.array([0.25, 0.5, 0.25])
    n, base, x = 3.0, 0.25, np.arange(30)
    grid = np.stack(np.meshgrid(x, x, x, x, indexing="ij"), -1)  # (a1, a2, b1, b2)

    def mixture(w):
        out = 0.0
        for d, wd in zip(support, w):
            up, down = poisson.pmf(grid, n * (base + d / 2)), poisson.pmf(grid, n * (base - d / 2))
            out = out + wd * up[..., 0] * down[..., 1] * down[..., 2] * up[..., 3]
        return out

    by_hand = float(np.sqrt(mixture(wa) * mixture(wb)).sum())
    assert lim.pair_affinity(support, wa, wb, n, base) == pytest.approx(by_hand, abs=1e-9)
    assert by_hand < 0.999  # the two families are told apart a little: the check is not vacuous


def test_the_additive_floor_lies_below_the_worst_bias_of_estimators_built_by_hand():
    """The linear programme's least worst-case bias cannot exceed that of any one estimator of its kind: the
    plug-in |S - T| / 2n (free), and the same less its mean over the split of each total S + T at the null
    (reads 0 there whatever the base rate), worked out here."""
    from scipy.stats import binom, poisson

    lim = _module("verdict_limits")
    k, n, base = 4, 10, 0.25
    d = np.linspace(-2 * base, 2 * base, 81)
    x = np.arange(60)
    s, t = np.meshgrid(x, x, indexing="ij")
    plug = np.clip(np.abs(s - t) / (2 * n), 0, 1)

    def worst(f):
        law = [np.outer(poisson.pmf(x, 2 * n * (base + e / 2)), poisson.pmf(x, 2 * n * (base - e / 2))) for e in d]
        return (k // 2) * max(abs(float((f * w).sum()) - abs(e)) for w, e in zip(law, d))

    total = s + t
    split = np.arange(len(x))
    centre = np.array(
        [(np.abs(2 * split[: m + 1] - m) * binom.pmf(split[: m + 1], m, 0.5)).sum() for m in range(2 * len(x))]
    )
    centred = plug - np.clip(centre[total] / (2 * n), 0, 1)
    for rate in (0.05, 0.15, 0.25):  # clean at any base rate
        null = np.outer(poisson.pmf(x, 2 * n * rate), poisson.pmf(x, 2 * n * rate))
        assert abs(float((centred * null).sum())) < 1e-6
    free, exact = lim.additive_floor(k, n, False), lim.additive_floor(k, n, True)
    assert 0 < free <= exact  # asking for a clean null can only cost
    assert free <= worst(plug) + 1e-9 and exact <= worst(centred) + 1e-9
    assert exact < 2 * base * (k // 2)  # better than reading 0 always


def test_the_sign_is_the_best_direction_weight_within_one_and_larger_weights_trade_variance():
    """With weights in [-1, 1] the programme finds the sign's worst-case bias, max_x 2x(1 - Phi(x)) (worked out
    here by a scalar search), at the sign's null variance; wider bounds lower the bias and raise the variance."""
    from scipy.optimize import minimize_scalar
    from scipy.stats import norm

    lim = _module("verdict_limits")
    sign = -minimize_scalar(lambda x: -2 * x * (1 - norm.cdf(x)), bounds=(0, 5), method="bounded").fun
    bias, var = lim.direction_weights(1.0)
    assert bias == pytest.approx(sign, abs=2e-3) and var == pytest.approx(1.0, abs=1e-3)
    wider, var2 = lim.direction_weights(2.0)
    assert wider < bias - 0.05 and 1.5 < var2 <= 4.0 + 1e-9


def test_the_spread_floor_is_the_additive_floor_without_a_budget_and_lies_below_an_estimator_within_its_own():
    """With budgets no estimator reaches, the cone programme's bias is the linear programme's; with the spread of
    the plug-in centred per total (worked out here, clipped to [-1, 1] as the programme's terms are: clean at
    every base rate up to cells of negligible mass) it lies between that and the centred plug-in's own
    worst-case bias."""
    from scipy.stats import binom, poisson

    lim = _module("verdict_limits")
    k, n, base = 4, 10, 0.25
    shifts = np.linspace(0, 2 * base, 5)
    for exact in (True, False):
        unbounded = lim.spread_floor(k, n, shifts, np.full(5, 100.0), null_exact=exact)
        assert unbounded == pytest.approx(lim.additive_floor(k, n, exact), abs=1e-4)
    x = np.arange(40)
    s, t = np.meshgrid(x, x, indexing="ij")
    centre = [(np.abs(2 * x[: m + 1] - m) * binom.pmf(x[: m + 1], m, 0.5)).sum() for m in range(2 * len(x))]
    f = np.clip(np.abs(s - t) / (2 * n), 0, 1) - np.clip(np.array(centre)[s + t] / (2 * n), 0, 1)

    def law(e):
        return np.outer(poisson.pmf(x, 2 * n * (base + e / 2)), poisson.pmf(x, 2 * n * (base - e / 2)))

    spread = [np.sqrt((k // 2) * ((f**2 * law(e)).sum() - (f * law(e)).sum() ** 2)) for e in shifts]
    worst = (k // 2) * max(abs(float((f * law(e)).sum()) - abs(e)) for e in np.linspace(-2 * base, 2 * base, 81))
    least = lim.spread_floor(k, n, shifts, np.array(spread))
    assert lim.additive_floor(k, n, True) - 1e-6 <= least <= worst + 1e-4
    assert least > lim.additive_floor(k, n, True) + 0.005  # the budget binds: the check is not vacuous
    assert lim.spread_floor(k, n, shifts, np.array(spread), null_exact=False) <= least + 1e-6  # fewer constraints
