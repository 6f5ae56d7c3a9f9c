"""Caption scoring: per-image outcomes folded into additive counts, and the verdict they support.

Per image, with similarities ``sims[level, caption]`` (level 0 = plain CLIP, level L = all listed
layers swapped) and the null control's level-L similarities under random matchings:

* views ``clip`` (level 0), ``surgery`` (level L), ``influence`` (level L - level 0): the argmax caption
  names a concept and a value; ``share`` = fraction of images whose argmax falls in the concept,
  ``correct`` / ``wrong`` = ... and its value is / is not the image's (the paper's four columns).
* ``zeroshot_acc`` = within-concept argmax at level 0 is right (can the probe see the concept at all?);
  ``retention`` = the same at level L (how much of the concept survives when CLIP must look through
  the model's features).
* ``effect`` = verdict metric minus a reference, with a bootstrap 95% interval over images; the
  dominant concept has the largest effect. Verdicts ``share`` / ``retention`` use the null control
  (the same surgery under random matchings) as the reference; ``share_vs_init`` / ``retention_vs_init``
  use the same surgery on a randomly initialised copy of the model, scored on the same images (paired
  per image). Random conv features already carry colour (and some shape), so "how much of a concept
  survives the trained model" is only meaningful against what an untrained network of the same
  architecture lets through; the null control only removes what random *matching* lets through.
* ``separation`` = a continuous retention: per image, CLIP's similarity to the right caption of a concept
  minus the best wrong one of the same concept, after surgery. ``separation_vs_init`` = its mean
  difference to the random-init copy on the same images, in units of plain CLIP's mean |separation| for
  that concept (so concepts are comparable). Unlike the 0/1 retention it does not saturate: when an
  untrained network already keeps a concept's argmax right on every image, training can still widen or
  narrow its separation. Its interval is a normal approximation from additive moment sums.
  ``margin`` = the dominant effect minus the runner-up's (on images where both are defined), with its
  own interval: when that interval contains 0 the verdict is undecided.

Everything is a count that adds across batches and DDP ranks (``all_reduce``), including the
histogram of per-image effects the bootstrap resamples, so 1 and N processes give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from xai_lightning.surgery.concepts import CaptionSet

VIEWS = ("clip", "surgery", "influence")
VERDICTS = ("share", "retention", "share_vs_init", "retention_vs_init", "separation_vs_init")
METRICS = ("share", "retention", "separation")  # per-image outcomes behind the verdicts
COUNTED = ("share", "retention")  # 0/1 outcomes (histograms); separation is continuous (sums of moments)
SumFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ProbeSummary:
    concepts: list[str]
    captions: list[str]
    keys: list[str]
    verdict: str
    images: int
    metrics: dict[str, float]  # flat, logged as probe/<name>
    dominant: str
    decided: bool  # the dominant concept's margin over the runner-up has an interval above 0
    sim_mean: np.ndarray  # [L + 1, K] mean similarity per level and caption
    null_sim_mean: np.ndarray  # [K]
    sim_range: tuple[float, float]  # min / max cosine at level 0


class ProbeCounts:
    """Additive outcome counts for one probed epoch."""

    def __init__(self, captions: CaptionSet, levels: int, null_draws: int, device: torch.device | str = "cpu") -> None:
        self.captions, self.levels, self.draws = captions, levels, null_draws
        nc, k = len(captions.names), len(captions.captions)
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        self.t: dict[str, torch.Tensor] = {
            "images": z(()),
            "defined": z(nc),  # images whose attribute value is known (e.g. not gray for colour)
            "share": z(len(VIEWS), nc),
            "correct": z(len(VIEWS), nc),
            "wrong": z(len(VIEWS), nc),
            "zeroshot": z(nc),
            "retention": z(nc),
            "null_share": z(nc),  # summed over draws
            "null_retention": z(nc),
            # per-image effect histogram: bin = I * (D + 1) + k, value I - k / D
            "hist_share": z(nc, 2 * (null_draws + 1)),
            "hist_retention": z(nc, 2 * (null_draws + 1)),
            # joint per-image histograms of concept pairs (a < b): the margin between two effects and its interval
            "pair_share": z(max(nc * (nc - 1) // 2, 1), (2 * (null_draws + 1)) ** 2),
            "pair_retention": z(max(nc * (nc - 1) // 2, 1), (2 * (null_draws + 1)) ** 2),
            # paired with the random-init baseline: per-image difference in {-1, 0, 1} -> bin d + 1
            "hist_share_vs_init": z(nc, 3),
            "hist_retention_vs_init": z(nc, 3),
            "pair_share_vs_init": z(max(nc * (nc - 1) // 2, 1), 9),
            "pair_retention_vs_init": z(max(nc * (nc - 1) // 2, 1), 9),
            # separation: level-L sum, plain-CLIP |separation| sum (the unit), count; paired differences' moments
            "sep_n": z(nc),
            "sep_sum": z(nc),
            "sep_clip_abs": z(nc),
            "sep_init_sum": z(nc),
            "sepd_n": z(nc),
            "sepd_sum": z(nc),
            "sepd_sq": z(nc),
            "sepp_n": z(max(nc * (nc - 1) // 2, 1)),
            "sepp_a": z(max(nc * (nc - 1) // 2, 1)),
            "sepp_b": z(max(nc * (nc - 1) // 2, 1)),
            "sepp_aa": z(max(nc * (nc - 1) // 2, 1)),
            "sepp_bb": z(max(nc * (nc - 1) // 2, 1)),
            "sepp_ab": z(max(nc * (nc - 1) // 2, 1)),
            "sim_sum": z(levels + 1, k),
            "null_sim_sum": z(k),
        }
        self.sim_min, self.sim_max = float("inf"), float("-inf")

    def _separation(self, sims: torch.Tensor, concept: int, target: torch.Tensor) -> torch.Tensor:
        """[B] similarity to the right caption of ``concept`` minus the best wrong one (NaN where undefined)."""
        cols = self.captions.caption_slice(concept).to(sims.device)
        values = self.captions.value_of.to(sims.device)[cols]
        sc = sims[:, cols]
        right = values[None, :] == target[:, None]  # [B, V]
        correct = (sc * right).sum(dim=1)
        wrong = sc.masked_fill(right, float("-inf")).amax(dim=1)
        return torch.where(target >= 0, correct - wrong, torch.full_like(correct, float("nan")))

    def _within(self, sims: torch.Tensor, concept: int) -> torch.Tensor:
        """Within-concept argmax value index [B] from sims [B, K]."""
        cols = self.captions.caption_slice(concept).to(sims.device)
        return self.captions.value_of.to(sims.device)[cols][sims[:, cols].argmax(dim=1)]

    @torch.no_grad()
    def update(
        self,
        sims: torch.Tensor,
        null_sims: torch.Tensor,
        targets: torch.Tensor,
        baseline: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fold a batch in; returns the batch's per-image outcomes (what ``baseline`` takes).

        Args:
            sims: [L + 1, B, K] cosine similarities per level.
            null_sims: [D, B, K] level-L similarities under D random matchings.
            targets: [n_concepts, B] the image's value index per concept, -1 where undefined.
            baseline: [len(METRICS), n_concepts, B] the same images' outcomes under the reference model
                (a random-init copy), as returned by its own ``update``; NaN where undefined.

        Returns:
            [len(METRICS), n_concepts, B] float64: per image and concept, ``share`` (1 if the influence
            argmax falls in the concept, else 0), ``retention`` (1 if the within-concept argmax after
            surgery is right, else 0) and ``separation`` (see the module doc); NaN where the attribute is
            undefined.
        """
        t = self.t
        sims, null_sims, targets = sims.double(), null_sims.double(), targets.long()
        concept_of = self.captions.concept_of.to(sims.device)
        value_of = self.captions.value_of.to(sims.device)
        nc = len(self.captions.names)
        defined = targets >= 0  # [nc, B]
        t["images"] += sims.shape[1]
        t["defined"] += defined.sum(dim=1)
        views = (sims[0], sims[-1], sims[-1] - sims[0])
        for v, s in enumerate(views):
            top = s.argmax(dim=1)
            c_top, v_top = concept_of[top], value_of[top]
            for c in range(nc):
                hit = c_top == c
                t["share"][v, c] += hit.sum()
                t["correct"][v, c] += (hit & defined[c] & (v_top == targets[c])).sum()
                t["wrong"][v, c] += (hit & defined[c] & (v_top != targets[c])).sum()
        d = self.draws
        bins = 2 * (d + 1)
        outcome = torch.full((len(METRICS), nc, sims.shape[1]), float("nan"), dtype=torch.float64, device=sims.device)
        share_bins, ret_bins = [], []  # per concept: each image's histogram bin (-1: undefined)
        for c in range(nc):
            ok = defined[c]
            t["zeroshot"][c] += ((self._within(sims[0], c) == targets[c]) & ok).sum()
            kept = (self._within(sims[-1], c) == targets[c]) & ok
            t["retention"][c] += kept.sum()
            share_i = concept_of[views[2].argmax(dim=1)] == c
            null_share_k = torch.zeros_like(targets[c])
            null_ret_k = torch.zeros_like(targets[c])
            for j in range(d):
                null_share_k += (concept_of[(null_sims[j] - sims[0]).argmax(dim=1)] == c).long()
                null_ret_k += ((self._within(null_sims[j], c) == targets[c]) & ok).long()
            t["null_share"][c] += null_share_k.sum()
            t["null_retention"][c] += null_ret_k.sum()
            share_bin = share_i.long() * (d + 1) + null_share_k
            ret_bin = torch.where(ok, kept.long() * (d + 1) + null_ret_k, -1)
            t["hist_share"][c] += torch.bincount(share_bin, minlength=bins).double()
            t["hist_retention"][c] += torch.bincount(ret_bin[ok], minlength=bins).double()
            share_bins.append(share_bin)
            ret_bins.append(ret_bin)
            outcome[0, c] = share_i.double()
            outcome[1, c] = torch.where(ok, kept.double(), float("nan"))
            sep = self._separation(sims[-1], c, targets[c])
            outcome[2, c] = sep
            t["sep_n"][c] += ok.sum()
            t["sep_sum"][c] += sep[ok].sum()
            t["sep_clip_abs"][c] += self._separation(sims[0], c, targets[c])[ok].abs().sum()
        pairs = [(i, j) for i in range(nc) for j in range(i + 1, nc)]
        per_metric = {"share": (share_bins, bins), "retention": (ret_bins, bins)}
        if baseline is not None:
            baseline = baseline.to(device=outcome.device, dtype=torch.float64)
            if baseline.shape != outcome.shape:
                raise ValueError(f"baseline outcomes {tuple(baseline.shape)} != this batch's {tuple(outcome.shape)}")
            for m, metric in enumerate(COUNTED):
                diff_bins = []
                for c in range(nc):
                    ok = ~(outcome[m, c].isnan() | baseline[m, c].isnan())
                    d_bin = torch.where(ok, outcome[m, c] - baseline[m, c] + 1, -1).long()
                    t[f"hist_{metric}_vs_init"][c] += torch.bincount(d_bin[ok], minlength=3).double()
                    diff_bins.append(d_bin)
                per_metric[f"{metric}_vs_init"] = (diff_bins, 3)
            m = METRICS.index("separation")
            diff = outcome[m] - baseline[m]  # [nc, B], NaN where undefined in either
            for c in range(nc):
                ok = ~diff[c].isnan()
                t["sepd_n"][c] += ok.sum()
                t["sepd_sum"][c] += diff[c][ok].sum()
                t["sepd_sq"][c] += (diff[c][ok] ** 2).sum()
                t["sep_init_sum"][c] += baseline[m, c][ok].sum()
            for p, (a, b) in enumerate(pairs):
                ok = ~(diff[a].isnan() | diff[b].isnan())
                da, db = diff[a][ok], diff[b][ok]
                t["sepp_n"][p] += ok.sum()
                t["sepp_a"][p] += da.sum()
                t["sepp_b"][p] += db.sum()
                t["sepp_aa"][p] += (da * da).sum()
                t["sepp_bb"][p] += (db * db).sum()
                t["sepp_ab"][p] += (da * db).sum()
        for p, (a, b) in enumerate(pairs):
            for metric, (per, nb) in per_metric.items():
                both = (per[a] >= 0) & (per[b] >= 0)
                joint = (per[a] * nb + per[b])[both]
                t[f"pair_{metric}"][p] += torch.bincount(joint, minlength=nb * nb).double()
        t["sim_sum"] += sims.sum(dim=1)
        t["null_sim_sum"] += null_sims.mean(dim=0).sum(dim=0) if d else 0.0
        self.sim_min = min(self.sim_min, float(sims[0].min()))
        self.sim_max = max(self.sim_max, float(sims[0].max()))
        return outcome

    def all_reduce(self, sum_fn: SumFn, max_fn: SumFn | None = None) -> None:
        """Sums every count over ranks (one packed collective); ``max_fn`` (optional) reduces the range."""
        keys = list(self.t)
        flat = sum_fn(torch.cat([self.t[k].reshape(-1) for k in keys]))
        start = 0
        for k in keys:
            n = self.t[k].numel()
            self.t[k] = flat[start : start + n].view_as(self.t[k]).clone()
            start += n
        if max_fn is not None:
            mm = max_fn(torch.tensor([-self.sim_min, self.sim_max], dtype=torch.float64, device=flat.device))
            self.sim_min, self.sim_max = -float(mm[0]), float(mm[1])

    def summary(self, verdict: str = "retention", bootstrap: int = 2000, seed: int = 0) -> ProbeSummary:
        """Metrics of the epoch. Bootstrap intervals resample images from the per-image effect histogram."""
        if verdict not in VERDICTS:
            raise ValueError(f"unknown verdict metric {verdict!r}; allowed: {', '.join(VERDICTS)}")
        t = {k: v.cpu().numpy() for k, v in self.t.items()}
        paired = bool(t["hist_retention_vs_init"].sum() + t["hist_share_vs_init"].sum())
        if verdict.endswith("_vs_init") and not paired:
            raise ValueError(
                f"verdict {verdict!r} needs the random-init baseline's outcomes (update(..., baseline=...)); "
                "none were given"
            )
        n = max(float(t["images"]), 1.0)
        d = self.draws
        # value of each histogram bin: the per-image effect
        null_values = np.concatenate([np.zeros(d + 1), np.ones(d + 1)]) - np.tile(np.arange(d + 1) / max(d, 1), 2)
        values = {"share": null_values, "retention": null_values}
        values.update({f"{metric}_vs_init": np.array([-1.0, 0.0, 1.0]) for metric in COUNTED})
        unit = np.where(t["sep_clip_abs"] > 0, t["sep_clip_abs"] / np.maximum(t["sep_n"], 1.0), np.nan)
        m: dict[str, float] = {}
        effects = {}
        for c, name in enumerate(self.captions.names):
            defined = max(float(t["defined"][c]), 1.0)
            for v, view in enumerate(VIEWS):
                key = "share" if view == "influence" else f"share_{view}"
                m[f"{key}/{name}"] = t["share"][v, c] / n
            m[f"correct/{name}"] = t["correct"][2, c] / n
            m[f"wrong/{name}"] = t["wrong"][2, c] / n
            m[f"zeroshot_acc/{name}"] = t["zeroshot"][c] / defined
            m[f"retention/{name}"] = t["retention"][c] / defined
            m[f"null_share/{name}"] = t["null_share"][c] / (n * max(d, 1))
            m[f"null_retention/{name}"] = t["null_retention"][c] / (defined * max(d, 1))
            m[f"separation/{name}"] = t["sep_sum"][c] / max(t["sep_n"][c], 1.0)
            m[f"separation_clip/{name}"] = unit[c]
            for metric in VERDICTS:
                if metric.endswith("_vs_init") and not paired:
                    continue
                if metric == "separation_vs_init":
                    k = t["sepd_n"][c]
                    m[f"init_separation/{name}"] = t["sep_init_sum"][c] / max(k, 1.0)
                    mean = t["sepd_sum"][c] / k if k else float("nan")
                    var = (t["sepd_sq"][c] - k * mean**2) / (k - 1) if k > 1 else float("nan")
                    point = mean / unit[c]
                    half = 1.959964 * np.sqrt(max(var, 0.0) / k) / unit[c] if k > 1 else float("nan")
                    lo, hi = point - half, point + half
                else:
                    point, lo, hi = self._bootstrap(
                        t[f"hist_{metric}"][c], values[metric], bootstrap, [seed, VERDICTS.index(metric), c]
                    )
                m[f"effect_{metric}/{name}"] = point
                m[f"effect_{metric}_lo/{name}"] = float(lo)
                m[f"effect_{metric}_hi/{name}"] = float(hi)
                if metric == verdict:
                    m[f"effect/{name}"] = point
                    m[f"effect_lo/{name}"] = float(lo)
                    m[f"effect_hi/{name}"] = float(hi)
                    effects[name] = point
        for k, key in enumerate(self.captions.keys):
            m[f"delta/{key}"] = (t["sim_sum"][-1, k] - t["sim_sum"][0, k]) / n
        finite = {k: v for k, v in effects.items() if np.isfinite(v)}
        dominant = max(finite, key=finite.get) if finite else "none"
        names = self.captions.names
        decided = False
        if len(finite) >= 2:
            ranked = sorted(finite, key=finite.get, reverse=True)
            a, b = sorted((names.index(ranked[0]), names.index(ranked[1])))
            p = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))].index((a, b))
            sign = 1.0 if names[a] == ranked[0] else -1.0
            if verdict == "separation_vs_init":
                k = t["sepp_n"][p]
                if k > 1:
                    ua, ub = unit[a], unit[b]
                    mean = t["sepp_a"][p] / k / ua - t["sepp_b"][p] / k / ub
                    sq = t["sepp_aa"][p] / ua**2 + t["sepp_bb"][p] / ub**2 - 2 * t["sepp_ab"][p] / (ua * ub)
                    var = (sq - k * mean**2) / (k - 1)
                    half = 1.959964 * np.sqrt(max(var, 0.0) / k)
                    point = sign * mean
                    m["margin"], m["margin_lo"], m["margin_hi"] = point, point - half, point + half
                    decided = bool(point - half > 0)
                return self._summary(verdict, n, m, dominant, decided, t)
            hist = t[f"pair_{verdict}"][p]
            total = hist.sum()
            vals = values[verdict]
            diff = (vals[:, None] - vals[None, :]).reshape(-1)  # effect_a - effect_b per joint bin
            if total:
                rng = np.random.default_rng([seed, len(VERDICTS), a, b])
                point = sign * float(hist @ diff / total)
                draws = sign * (rng.multinomial(int(total), hist / total, size=bootstrap) @ diff / total)
                lo, hi = np.percentile(draws, [2.5, 97.5])
                m["margin"], m["margin_lo"], m["margin_hi"] = point, float(lo), float(hi)
                decided = bool(lo > 0)
        return self._summary(verdict, n, m, dominant, decided, t)

    @staticmethod
    def _bootstrap(hist: np.ndarray, values: np.ndarray, bootstrap: int, seed: list[int]) -> tuple[float, float, float]:
        """(mean, 2.5%, 97.5%) of the per-image effect from its histogram; an own RNG stream per (metric,
        concept), so an interval does not depend on what else is computed."""
        total = hist.sum()
        if not total:
            return float("nan"), float("nan"), float("nan")
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(int(total), hist / total, size=bootstrap) @ values / total
        lo, hi = np.percentile(draws, [2.5, 97.5])
        return float(hist @ values / total), float(lo), float(hi)

    def _summary(self, verdict, n, m, dominant, decided, t) -> ProbeSummary:
        return ProbeSummary(
            concepts=list(self.captions.names),
            captions=list(self.captions.captions),
            keys=list(self.captions.keys),
            verdict=verdict,
            images=int(n),
            metrics={k: float(v) for k, v in m.items()},
            dominant=dominant,
            decided=decided,
            sim_mean=t["sim_sum"] / n,
            null_sim_mean=t["null_sim_sum"] / n,
            sim_range=(self.sim_min, self.sim_max),
        )
