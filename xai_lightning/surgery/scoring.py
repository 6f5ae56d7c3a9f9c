"""Caption scoring: per-image outcomes folded into additive sums, and the effects they support.

Per image, with similarities ``sims[level, caption]`` (level 0 = plain CLIP, level L = all listed layers
swapped) and the null control's level-L similarities under random matchings:

* views ``clip`` (level 0), ``surgery`` (level L), ``influence`` (level L - level 0): the argmax caption
  names a concept and a value; ``share`` = fraction of images whose argmax falls in the concept,
  ``correct`` / ``wrong`` = ... and its value is / is not the image's (the paper's four columns).
* ``zeroshot_acc`` = within-concept argmax at level 0 is right (can the probe see the concept at all?);
  ``retention`` = the same at level L (how much of the concept survives when CLIP must look through
  the model's features).
* ``separation`` = a continuous retention: CLIP's similarity to the right caption of a concept minus the
  best wrong one of the same concept, after surgery; its unit is plain CLIP's mean |separation|.

Effects (each with a 95% interval; diagnostics of what the features carry, not a verdict: the verdict is
about decisions, ``xai_lightning.verdict``):

* ``share`` / ``retention``: minus the null control (the same surgery under random matchings), per
  image; bootstrap over images from histograms of per-image effects (the paper's reference).
* ``share_vs_init`` / ``retention_vs_init`` / ``separation_vs_init``: minus the same surgery on reference
  networks (the run's starting weights and re-initialisations of its architecture), paired per image;
  the interval covers the scored images and the spread between reference networks
  (``xai_lightning.verdict.effects.paired_effect``).

Every count is a named float64 sum (``_Sums.add_state``, torchmetrics' ``dist_reduce_fx="sum"`` pattern),
one class per family; all families reduce across DDP ranks in one packed collective, so 1 and N processes
give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from xai_lightning.surgery.concepts import CaptionSet
from xai_lightning.verdict.effects import Effect, bootstrap_effect, paired_effect

VIEWS = ("clip", "surgery", "influence")
METRICS = ("share", "retention", "separation")  # per-image outcomes behind the surgery's effects
SumFn = Callable[[torch.Tensor], torch.Tensor]
Effects = dict[str, Effect]  # concept -> effect


@dataclass
class SurgerySummary:
    """One probed epoch of the surgery: its descriptive metrics, its effects per family and concept, and the
    caption table's similarities."""

    concepts: list[str]
    captions: list[str]
    keys: list[str]
    images: int
    metrics: dict[str, float]  # flat, logged as surgery/<name>
    effects: dict[str, Effects]  # family (share, retention, *_vs_init) -> concept -> effect
    sim_mean: np.ndarray  # [L + 1, K] mean similarity per level and caption
    null_sim_mean: np.ndarray  # [K]
    sim_range: tuple[float, float]  # min / max cosine at level 0


class _Sums:
    """Named float64 sums that add across batches and ranks."""

    def __init__(self, device: torch.device | str) -> None:
        self._device, self._names = device, []

    def add_state(self, name: str, *shape: int) -> None:
        setattr(self, name, torch.zeros(shape, dtype=torch.float64, device=self._device))
        self._names.append(name)

    @property
    def state_names(self) -> list[str]:
        return list(self._names)


def all_reduce_sums(families: Sequence[_Sums], sum_fn: SumFn) -> None:
    """Sums every state of every family over ranks in one packed collective."""
    items = [(f, n) for f in families for n in f.state_names]
    flat = sum_fn(torch.cat([getattr(f, n).reshape(-1) for f, n in items]))
    start = 0
    for f, n in items:
        old = getattr(f, n)
        setattr(f, n, flat[start : start + old.numel()].view_as(old).clone())
        start += old.numel()


# ---- pure per-image functions ---------------------------------------------------------------------
def within(captions: CaptionSet, sims: torch.Tensor, concept: int) -> torch.Tensor:
    """Within-concept argmax value index [B] from sims [B, K]."""
    cols = captions.caption_slice(concept).to(sims.device)
    return captions.value_of.to(sims.device)[cols][sims[:, cols].argmax(dim=1)]


def separation(captions: CaptionSet, sims: torch.Tensor, concept: int, target: torch.Tensor) -> torch.Tensor:
    """[B] similarity to the right caption of ``concept`` minus the best wrong one (NaN where undefined)."""
    cols = captions.caption_slice(concept).to(sims.device)
    values = captions.value_of.to(sims.device)[cols]
    sc = sims[:, cols]
    right = values[None, :] == target[:, None]  # [B, V]
    correct = (sc * right).sum(dim=1)
    wrong = sc.masked_fill(right, float("-inf")).amax(dim=1)
    return torch.where(target >= 0, correct - wrong, torch.full_like(correct, float("nan")))


def image_outcomes(captions: CaptionSet, plain: torch.Tensor, swapped: torch.Tensor, targets: torch.Tensor):
    """[len(METRICS), n_concepts, B] float64 per image: ``share`` (1 if the influence argmax falls in the
    concept), ``retention`` (1 if the within-concept argmax after surgery is right) and ``separation``;
    NaN where the attribute is undefined. ``plain``/``swapped`` [B, K] float64, ``targets`` [nc, B]."""
    concept_of = captions.concept_of.to(plain.device)
    nc = len(captions.names)
    top = concept_of[(swapped - plain).argmax(dim=1)]
    out = torch.full((len(METRICS), nc, plain.shape[0]), float("nan"), dtype=torch.float64, device=plain.device)
    for c in range(nc):
        ok = targets[c] >= 0
        out[0, c] = (top == c).double()
        out[1, c] = torch.where(ok, (within(captions, swapped, c) == targets[c]).double(), float("nan"))
        out[2, c] = separation(captions, swapped, c, targets[c])
    return out


# ---- families ---------------------------------------------------------------------------------------
class ShareCounts(_Sums):
    """The paper's view: argmax caption shares per view, correct/wrong, and the share effect vs the null."""

    def __init__(self, captions: CaptionSet, draws: int, device) -> None:
        super().__init__(device)
        nc, self.captions, self.draws = len(captions.names), captions, draws
        self.bins = 2 * (draws + 1)  # per-image effect bin = I * (D + 1) + k, value I - k / D
        self.add_state("images")
        self.add_state("share", len(VIEWS), nc)
        self.add_state("correct", len(VIEWS), nc)
        self.add_state("wrong", len(VIEWS), nc)
        self.add_state("null_share", nc)  # summed over draws
        self.add_state("hist", nc, self.bins)

    def update(self, sims: torch.Tensor, null_sims: torch.Tensor, targets: torch.Tensor) -> None:
        concept_of = self.captions.concept_of.to(sims.device)
        value_of = self.captions.value_of.to(sims.device)
        defined = targets >= 0
        self.images += sims.shape[1]
        views = (sims[0], sims[-1], sims[-1] - sims[0])
        for v, s in enumerate(views):
            top = s.argmax(dim=1)
            c_top, v_top = concept_of[top], value_of[top]
            for c in range(len(self.captions.names)):
                hit = c_top == c
                self.share[v, c] += hit.sum()
                self.correct[v, c] += (hit & defined[c] & (v_top == targets[c])).sum()
                self.wrong[v, c] += (hit & defined[c] & (v_top != targets[c])).sum()
        null_top = [concept_of[(null_sims[j] - sims[0]).argmax(dim=1)] for j in range(self.draws)]
        for c in range(len(self.captions.names)):
            hit = concept_of[views[2].argmax(dim=1)] == c
            null_k = sum(((t == c).long() for t in null_top), torch.zeros_like(targets[c]))
            self.null_share[c] += null_k.sum()
            b = hit.long() * (self.draws + 1) + null_k
            self.hist[c] += torch.bincount(b, minlength=self.bins).double()

    def metrics(self) -> dict[str, float]:
        n = max(float(self.images), 1.0)
        out = {}
        for c, name in enumerate(self.captions.names):
            for v, view in enumerate(VIEWS):
                out[f"{'share' if view == 'influence' else f'share_{view}'}/{name}"] = float(self.share[v, c]) / n
            out[f"correct/{name}"] = float(self.correct[2, c]) / n
            out[f"wrong/{name}"] = float(self.wrong[2, c]) / n
            out[f"null_share/{name}"] = float(self.null_share[c]) / (n * max(self.draws, 1))
        return out

    def family(self, draws: int, seed: int) -> Effects:
        return _null_family(self.captions.names, self.hist, self.draws, draws, seed, metric=0)


class RetentionCounts(_Sums):
    """Zero-shot accuracy, retention after surgery, and the retention effect vs the null control."""

    def __init__(self, captions: CaptionSet, draws: int, device) -> None:
        super().__init__(device)
        nc, self.captions, self.draws = len(captions.names), captions, draws
        self.bins = 2 * (draws + 1)
        self.add_state("defined", nc)  # images whose attribute value is known (e.g. not gray for colour)
        self.add_state("zeroshot", nc)
        self.add_state("retention", nc)
        self.add_state("null_retention", nc)  # summed over draws
        self.add_state("hist", nc, self.bins)

    def update(self, sims: torch.Tensor, null_sims: torch.Tensor, targets: torch.Tensor) -> None:
        for c in range(len(self.captions.names)):
            ok = targets[c] >= 0
            self.defined[c] += ok.sum()
            self.zeroshot[c] += ((within(self.captions, sims[0], c) == targets[c]) & ok).sum()
            kept = (within(self.captions, sims[-1], c) == targets[c]) & ok
            self.retention[c] += kept.sum()
            null_k = torch.zeros_like(targets[c])
            for j in range(self.draws):
                null_k += ((within(self.captions, null_sims[j], c) == targets[c]) & ok).long()
            self.null_retention[c] += null_k.sum()
            b = kept.long() * (self.draws + 1) + null_k
            self.hist[c] += torch.bincount(b[ok], minlength=self.bins).double()

    def metrics(self) -> dict[str, float]:
        out = {}
        for c, name in enumerate(self.captions.names):
            defined = max(float(self.defined[c]), 1.0)
            out[f"zeroshot_acc/{name}"] = float(self.zeroshot[c]) / defined
            out[f"retention/{name}"] = float(self.retention[c]) / defined
            out[f"null_retention/{name}"] = float(self.null_retention[c]) / (defined * max(self.draws, 1))
        return out

    def family(self, draws: int, seed: int) -> Effects:
        return _null_family(self.captions.names, self.hist, self.draws, draws, seed, metric=1)


class SeparationSums(_Sums):
    """The caption separation after surgery, and its unit (plain CLIP's mean |separation|)."""

    def __init__(self, captions: CaptionSet, device) -> None:
        super().__init__(device)
        nc, self.captions = len(captions.names), captions
        self.add_state("n", nc)
        self.add_state("sum", nc)
        self.add_state("clip_abs", nc)

    def update(self, sims: torch.Tensor, targets: torch.Tensor) -> None:
        for c in range(len(self.captions.names)):
            ok = targets[c] >= 0
            self.n[c] += ok.sum()
            self.sum[c] += separation(self.captions, sims[-1], c, targets[c])[ok].sum()
            self.clip_abs[c] += separation(self.captions, sims[0], c, targets[c])[ok].abs().sum()

    def units(self) -> np.ndarray:
        """[nc] plain CLIP's mean |separation| per concept (NaN where no image defines it)."""
        n = self.n.cpu().numpy()
        return np.where(n > 0, self.clip_abs.cpu().numpy() / np.maximum(n, 1.0), np.nan)

    def metrics(self) -> dict[str, float]:
        unit = self.units()
        out = {}
        for c, name in enumerate(self.captions.names):
            out[f"separation/{name}"] = float(self.sum[c]) / max(float(self.n[c]), 1.0)
            out[f"separation_clip/{name}"] = float(unit[c])
        return out


class ReferencePairing(_Sums):
    """Every per-image outcome paired with the same image's outcomes on ``refs`` reference networks: moments
    of the difference to their mean per concept, and each reference's own sums (the between-network spread)."""

    def __init__(self, captions: CaptionSet, refs: int, device) -> None:
        super().__init__(device)
        nc, self.captions, self.refs = len(captions.names), captions, refs
        m = len(METRICS)
        for name in ("n", "s1", "s2"):  # per metric and concept: count, sum and sum of squares of d
            self.add_state(name, m, nc)
        self.add_state("ref", refs, m, nc)  # each reference's sum of its own outcome over the same images

    def update(self, outcome: torch.Tensor, reference: torch.Tensor) -> None:
        """``outcome`` [M, nc, B] this model's; ``reference`` [R, M, nc, B] the references' (NaN undefined)."""
        if reference.shape[0] != self.refs or reference.shape[1:] != outcome.shape:
            raise ValueError(
                f"reference outcomes {tuple(reference.shape)} do not fit {self.refs} x {tuple(outcome.shape)}"
            )
        ok = ~(outcome.isnan() | reference.isnan().any(dim=0))  # [M, nc, B]
        d = torch.where(ok, outcome - reference.mean(dim=0), 0.0)
        ref = torch.where(ok, reference, 0.0)
        self.n += ok.sum(-1)
        self.s1 += d.sum(-1)
        self.s2 += (d * d).sum(-1)
        self.ref += ref.sum(-1)

    def reference_means(self) -> dict[str, float]:
        """The references' mean outcome (over networks and images): ``init_<metric>/<c>``."""
        out = {}
        n = self.n.cpu().numpy()
        ref = self.ref.cpu().numpy().mean(axis=0)
        for m, metric in enumerate(METRICS):
            for c, name in enumerate(self.captions.names):
                out[f"init_{metric}/{name}"] = float(ref[m, c] / n[m, c]) if n[m, c] else float("nan")
        return out

    def family(self, metric: int, units: np.ndarray) -> Effects:
        n, s1, s2 = (getattr(self, k)[metric].cpu().numpy() for k in ("n", "s1", "s2"))
        ref = self.ref[:, metric].cpu().numpy()  # [R, nc]
        return {
            name: paired_effect(n[c], s1[c], s2[c], ref[:, c] / max(n[c], 1.0), units[c])
            for c, name in enumerate(self.captions.names)
        }


class SimilaritySums(_Sums):
    """Mean similarity per level and caption (the caption table), and the null control's."""

    def __init__(self, levels: int, keys: int, device) -> None:
        super().__init__(device)
        self.add_state("images")
        self.add_state("sim", levels + 1, keys)
        self.add_state("null_sim", keys)
        self.sim_min, self.sim_max = float("inf"), float("-inf")

    def update(self, sims: torch.Tensor, null_sims: torch.Tensor) -> None:
        self.images += sims.shape[1]
        self.sim += sims.sum(dim=1)
        if len(null_sims):
            self.null_sim += null_sims.mean(dim=0).sum(dim=0)
        self.sim_min = min(self.sim_min, float(sims[0].min()))
        self.sim_max = max(self.sim_max, float(sims[0].max()))


def _null_family(names, hist, null_draws: int, draws: int, seed: int, metric: int) -> Effects:
    """Effects against the null control from per-image effect histograms: bin I * (D + 1) + k has value
    I - k / D. Own RNG stream per (metric, concept), so an interval does not depend on what else is computed."""
    d = null_draws
    values = np.concatenate([np.zeros(d + 1), np.ones(d + 1)]) - np.tile(np.arange(d + 1) / max(d, 1), 2)
    hist = hist.cpu().numpy()
    return {name: bootstrap_effect(hist[c], values, draws, [seed, metric, c])[0] for c, name in enumerate(names)}


class ProbeCounts:
    """Additive outcome sums of one probed epoch (all families), and the effects they support.

    Args:
        captions: concepts and captions.
        levels: number of cumulative swap levels (CLIP layers).
        null_draws: random matchings of the null control.
        references: number of reference networks each image is paired with (0: none).
    """

    def __init__(
        self,
        captions: CaptionSet,
        levels: int,
        null_draws: int,
        device: torch.device | str = "cpu",
        references: int = 0,
    ) -> None:
        self.captions, self.levels, self.draws = captions, levels, null_draws
        self.shares = ShareCounts(captions, null_draws, device)
        self.retention = RetentionCounts(captions, null_draws, device)
        self.separation = SeparationSums(captions, device)
        self.similarities = SimilaritySums(levels, len(captions.captions), device)
        self.paired = ReferencePairing(captions, references, device) if references else None

    @property
    def families(self) -> list[_Sums]:
        out = [self.shares, self.retention, self.separation, self.similarities]
        return out + ([self.paired] if self.paired is not None else [])

    @torch.no_grad()
    def update(
        self,
        sims: torch.Tensor,
        null_sims: torch.Tensor,
        targets: torch.Tensor,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Folds a batch in; returns its per-image outcomes (what a reference network contributes).

        Args:
            sims: [L + 1, B, K] cosine similarities per level.
            null_sims: [D, B, K] level-L similarities under D random matchings.
            targets: [n_concepts, B] the image's value index per concept, -1 where undefined.
            reference: [R, len(METRICS), n_concepts, B] the same images' outcomes on the reference networks.

        Returns:
            [len(METRICS), n_concepts, B] float64 (``image_outcomes``).
        """
        sims, null_sims, targets = sims.double(), null_sims.double(), targets.long()
        self.shares.update(sims, null_sims, targets)
        self.retention.update(sims, null_sims, targets)
        self.separation.update(sims, targets)
        self.similarities.update(sims, null_sims)
        outcome = image_outcomes(self.captions, sims[0], sims[-1], targets)
        if reference is not None:
            if self.paired is None:
                raise ValueError("these counts were built without references (references=0)")
            self.paired.update(outcome, reference.to(device=outcome.device, dtype=torch.float64))
        return outcome

    def all_reduce(self, sum_fn: SumFn, max_fn: SumFn | None = None) -> None:
        """Sums every family over ranks (one packed collective); ``max_fn`` (optional) reduces the range."""
        all_reduce_sums(self.families, sum_fn)
        if max_fn is not None:
            s = self.similarities
            mm = max_fn(torch.tensor([-s.sim_min, s.sim_max], dtype=torch.float64, device=s.sim.device))
            s.sim_min, s.sim_max = -float(mm[0]), float(mm[1])

    def metrics(self) -> dict[str, float]:
        """Every descriptive metric (shares, accuracies, retention, separation, reference means)."""
        out = {**self.shares.metrics(), **self.retention.metrics(), **self.separation.metrics()}
        if self.paired is not None:
            out.update(self.paired.reference_means())
        n = max(float(self.similarities.images), 1.0)
        for k, key in enumerate(self.captions.keys):
            out[f"delta/{key}"] = float(self.similarities.sim[-1, k] - self.similarities.sim[0, k]) / n
        return out

    def families_of_effects(self, draws: int = 2000, seed: int = 0) -> dict[str, Effects]:
        """Every surgery effect family (``*_vs_init`` only with references)."""
        out = {"share": self.shares.family(draws, seed), "retention": self.retention.family(draws, seed)}
        if self.paired is not None and float(self.paired.n.sum()) > 0:
            units = {"share": np.ones(len(self.captions.names)), "retention": np.ones(len(self.captions.names))}
            units["separation"] = self.separation.units()
            for m, metric in enumerate(METRICS):
                out[f"{metric}_vs_init"] = self.paired.family(m, units[metric])
        return out

    def summary(self, bootstrap: int = 2000, seed: int = 0) -> SurgerySummary:
        """The epoch's summary: every descriptive metric and every effect family with its intervals."""
        metrics = self.metrics()
        families = self.families_of_effects(bootstrap, seed)
        for family, effects in families.items():
            for concept, e in effects.items():
                metrics[f"effect_{family}/{concept}"] = e.point
                metrics[f"effect_{family}_lo/{concept}"] = e.lo
                metrics[f"effect_{family}_hi/{concept}"] = e.hi
        sim = self.similarities
        n = max(float(sim.images), 1.0)
        return SurgerySummary(
            concepts=list(self.captions.names),
            captions=list(self.captions.captions),
            keys=list(self.captions.keys),
            images=int(sim.images),
            metrics={k: float(v) for k, v in metrics.items()},
            effects=families,
            sim_mean=(sim.sim / n).cpu().numpy(),
            null_sim_mean=(sim.null_sim / n).cpu().numpy(),
            sim_range=(sim.sim_min, sim.sim_max),
        )
