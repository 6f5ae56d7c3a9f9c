"""Network surgery end to end on any CNN and any CLIP-like model (pure PyTorch, no Lightning).

    pipe = SurgeryPipeline(cnn, clip, resolve_concepts(spec, attributes), standalone_layers="convs")
    for images in fit_images:                     # one pass: statistics and Z together
        pipe.fit_batch(images)
    plan = pipe.fit_finish()                      # matching (+ null matchings)
    pipe.compute_references(reference_models(build_cnn, [0, 1, 2], start=cnn0), fit_images, scored)  # once
    for images, targets, index in scored:
        pipe.score_batch(images, targets, index=index)  # targets [n_concepts, B] value indices
    summary = pipe.score_finish()                 # metrics and effects (what the features carry)

The ``*_vs_init`` effects compare the surgery with the same surgery on reference networks
(``compute_references``, once per run: the weights the run started from and re-initialisations of the
architecture), paired per image by ``index``. None of this decides a verdict: what the model's decisions
follow is ``xai_lightning.verdict``'s, which needs no surgery.

The ``SurgeryProbe`` callback drives exactly these calls from Lightning hooks (and passes DDP
reductions as ``sum_fn``), so the callback adds no math of its own.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.surgery.concepts import CaptionSet
from xai_lightning.surgery.layers import capture, is_token_block, resolve_layers
from xai_lightning.surgery.matching import METHODS, Matching, random_matching
from xai_lightning.surgery.moments import SCORES, CrossMoments
from xai_lightning.surgery.scoring import METRICS, ProbeCounts, SurgerySummary, image_outcomes
from xai_lightning.surgery.transplant import (
    INTERPOLATIONS,
    StandardizedMaps,
    SurgeryPlan,
    build_plan,
    transplant,
    transplant_maps,
)

SumFn = Callable[[torch.Tensor], torch.Tensor]
Images = Callable[[], Iterable[torch.Tensor]] | Sequence[torch.Tensor]


class ClipLike(Protocol):
    """What the surgery needs from a CLIP: the module to hook, and image/text encoders."""

    model: nn.Module

    def preprocess(self, images: torch.Tensor) -> torch.Tensor: ...  # [B, 3, H, W] in [0, 1] -> CLIP input

    def encode_image(self, x: torch.Tensor) -> torch.Tensor: ...  # [B, D]

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor: ...  # [K, D]


def check_options(score: str, matching: str, swap_fraction: float, interpolation: str, null_draws: int) -> None:
    """Validates surgery options; errors name the allowed values."""
    for name, value, allowed in (
        ("score", score, SCORES),
        ("matching", matching, METHODS),
        ("interpolation", interpolation, INTERPOLATIONS),
    ):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
    if not 0.0 < float(swap_fraction) <= 1.0:
        raise ValueError(f"swap_fraction={swap_fraction} must be in (0, 1]")
    if int(null_draws) < 1:
        raise ValueError(f"null_draws={null_draws} must be >= 1 (the null control is what makes the effect honest)")


def reference_models(
    build: Callable[[], nn.Module], seeds: Sequence[int], start: nn.Module | None = None
) -> list[nn.Module]:
    """Reference networks: ``start`` (a copy of the weights the run started from, if given) and one network per
    seed built by ``build()`` (the architecture's own constructor and initialisation) under
    ``torch.manual_seed(seed)``; all in eval mode. The caller's RNG state is kept."""
    out = [copy.deepcopy(start).eval()] if start is not None else []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            out.append(build().eval())
    return out


def _images(source: Images) -> Iterable[torch.Tensor]:
    return source() if callable(source) else source


class SurgeryPipeline:
    """Fit (statistics + matching) and score (captions, null control, references) network surgery.

    Args:
        standalone: the model to explain (eval mode is the caller's business).
        clip: a ``ClipLike`` (see ``xai_lightning.clip.ProbeCLIP``).
        captions: concepts and captions (``resolve_concepts``).
        standalone_layers: preset (``convs``, ``blocks``, ...), names or globs.
        clip_layers: CLIP module names, in the cumulative swap order (default: ``visual.layer1..4``).
        score: ``reference`` (paper formula, exact statistics) or ``pearson``.
        matching: ``argmax`` (paper) or ``one_to_one``.
        swap_fraction: best-matched fraction of each CLIP layer's channels to replace (1.0 = paper). With
            1.0 the last layer's transplant alone decides CLIP's output, so only it is hooked.
        interpolation: resizing of transplanted maps.
        null_draws: random matchings for the null control.
        seed: for the null matchings and the bootstrap.
    """

    def __init__(
        self,
        standalone: nn.Module,
        clip: ClipLike,
        captions: CaptionSet,
        standalone_layers: str | Sequence[str] = "convs",
        clip_layers: str | Sequence[str] = "stages",
        score: str = "reference",
        matching: str = "argmax",
        swap_fraction: float = 1.0,
        interpolation: str = "bilinear",
        null_draws: int = 8,
        seed: int = 0,
    ) -> None:
        check_options(score, matching, swap_fraction, interpolation, null_draws)
        self.standalone, self.clip, self.captions = standalone, clip, captions
        self.standalone_layers = resolve_layers(standalone, standalone_layers)
        self.clip_layers = resolve_layers(clip.model, clip_layers)
        self.score, self.matching_method = score, matching
        self.swap_fraction, self.interpolation = float(swap_fraction), interpolation
        self.null_draws, self.seed = int(null_draws), int(seed)
        with torch.no_grad():
            text = clip.encode_text(captions.captions).float()
        self.text_features = F.normalize(text, dim=-1)  # [K, D], once
        self.moments = CrossMoments(score)
        self.plan: SurgeryPlan | None = None
        self.null_matchings: list[Matching] = []
        self.counts: ProbeCounts | None = None
        self.reference: ReferenceOutcomes | None = None

    @property
    def swapped_layers(self) -> list[str]:
        """The CLIP layers hooked for the full transplant: the last one alone when whole conv stages are swapped
        (the same output, as near-constant channels are never swapped and barely move); every one in a ViT
        tower, whose class token is never replaced and carries what the earlier blocks saw."""
        whole_maps = self.swap_fraction == 1.0 and not any(is_token_block(self.clip.model, n) for n in self.clip_layers)
        return self.clip_layers[-1:] if whole_maps else self.clip_layers

    # ---- fit ----------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, model: nn.Module | None = None) -> tuple[dict[str, torch.Tensor], object]:
        """(feature maps of the hooked layers, the model's output) for one batch."""
        model = self.standalone if model is None else model
        with capture(model, self.standalone_layers) as acts:
            out = model(images)
        return dict(acts), out

    def standalone_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward(images)[0]

    @torch.no_grad()
    def fit_batch(self, images: torch.Tensor, standalone_acts: Mapping[str, torch.Tensor] | None = None) -> None:
        """Folds one batch into the running sums. ``standalone_acts`` reuses maps the caller already has
        (the callback passes those captured in ``validation_step``)."""
        if standalone_acts is None:
            standalone_acts = self.standalone_maps(images)
        s_acts = {n: standalone_acts[n] for n in self.standalone_layers}
        with capture(self.clip.model, self.clip_layers) as c_acts:
            self.clip.encode_image(self.clip.preprocess(images))
        self.moments.update(s_acts, dict(c_acts))

    def fit_plan(self, sum_fn: SumFn | None = None) -> SurgeryPlan:
        """Reduces the sums across ranks (``sum_fn``), matches and selects swaps."""
        if sum_fn is not None:
            self.moments.all_reduce(sum_fn)
        self.plan = build_plan(self.moments, self.matching_method, self.swap_fraction)
        return self.plan

    def fit_finish(self, sum_fn: SumFn | None = None) -> SurgeryPlan:
        """``fit_plan``, then the null matchings; the epoch's scoring starts afresh."""
        plan = self.fit_plan(sum_fn)
        gen = torch.Generator().manual_seed(self.seed)
        self.null_matchings = [random_matching(plan.s_valid, plan.c_valid, gen) for _ in range(self.null_draws)]
        self.counts = None
        return plan

    def _new_counts(self) -> ProbeCounts:
        refs = self.reference.refs if self.reference is not None else 0
        return ProbeCounts(self.captions, 1, self.null_draws, self.text_features.device, references=refs)

    # ---- score --------------------------------------------------------------------------------
    def _similarity(self, clip_input: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(self.clip.encode_image(clip_input).float(), dim=-1)
        return emb @ self.text_features.T  # [B, K]

    def _swapped(self, x: torch.Tensor, plan: SurgeryPlan, maps: StandardizedMaps, matching=None) -> torch.Tensor:
        with transplant(self.clip.model, plan, maps, self.swapped_layers, self.interpolation, matching):
            return self._similarity(x)

    def _transplants(
        self, x: torch.Tensor, variants: Sequence[tuple[SurgeryPlan, StandardizedMaps, Matching | None]]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(plain similarities [B, K], one [B, K] per transplant variant). When whole layers are swapped and
        the CLIP can finish from its last stage (``tail``), CLIP runs once: each variant replaces the last
        stage's channels in that forward's output and only the rest of the tower (an attention pool) runs
        again; the result equals a full forward with the transplant hooked. Otherwise a full forward each."""
        last = self.clip_layers[-1]
        tail = getattr(self.clip, "tail", None) if self.swap_fraction == 1.0 else None
        if tail is not None:
            with capture(self.clip.model, [last]) as acts:
                plain = self._similarity(x)
            out = []
            for plan, maps, matching in variants:
                idx, replacement = transplant_maps(plan, maps, last, self.interpolation, matching)
                y = acts[last].clone()
                y[:, idx] = replacement.to(y.dtype)
                emb = tail(last, y)
                if emb is None:
                    break
                out.append(F.normalize(emb.float(), dim=-1) @ self.text_features.T)
            else:
                return plain, out
        plain = self._similarity(x)
        return plain, [self._swapped(x, plan, maps, matching) for plan, maps, matching in variants]

    @torch.no_grad()
    def similarities(
        self, images: torch.Tensor, standalone_maps: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sims [2, B, K], null_sims [D, B, K]): plain CLIP (no hooks at all), CLIP with every listed layer
        transplanted, and the full transplant under each random matching (the null control)."""
        if self.plan is None:
            raise RuntimeError("call fit_finish() before scoring")
        if standalone_maps is None:
            standalone_maps = self.standalone_maps(images)
        maps = StandardizedMaps(self.plan, standalone_maps)  # once per batch, shared by all swaps
        x = self.clip.preprocess(images)
        variants = [(self.plan, maps, None)] + [(self.plan, maps, m) for m in self.null_matchings]
        plain, (swapped, *null) = self._transplants(x, variants)
        return torch.stack([plain, swapped]), torch.stack(null) if null else plain.new_zeros(0, *plain.shape)

    @torch.no_grad()
    def score_batch(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        standalone_maps: Mapping[str, torch.Tensor] | None = None,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores a batch. ``targets`` [n_concepts, B]: each image's value index per concept (-1 unknown).
        ``index`` [B]: the images' ids, needed once references exist (pairs each image with its reference
        outcomes). ``standalone_maps`` reuses a forward. Returns the per-image outcomes
        [len(METRICS), n_concepts, B]."""
        if self.plan is None:
            raise RuntimeError("call fit_finish() before scoring")
        if self.counts is None:
            self.counts = self._new_counts()
        if standalone_maps is None:
            standalone_maps = self.standalone_maps(images)
        sims, null = self.similarities(images, standalone_maps)
        ref = None
        if self.reference is not None:
            if index is None:
                raise ValueError("references were computed: score_batch needs the images' index to pair them")
            ref = self.reference.lookup(index)
        return self.counts.update(sims, null, targets.to(sims.device), ref)

    # ---- references ---------------------------------------------------------------------------
    def compute_references(
        self,
        models: Sequence[nn.Module],
        fit_images: Images,
        score_triples: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        sum_fn: SumFn | None = None,
        image_size: int | None = None,
        total: int | None = None,
    ) -> None:
        """The same surgery on each reference network, fitted on ``fit_images`` (a sequence, or a function
        returning a fresh iterable: it is read once per reference) and scored on ``score_triples`` =
        (images, targets, index) batches; every later ``score_batch`` pairs its images with these outcomes by
        index. ``image_size`` lays out the sums on a rank with no fit images (DDP with tiny data);
        ``total`` (ids are below it) sizes the table that ranks share."""
        plans = [self._reference_plan(m, fit_images, sum_fn, image_size) for m in models]
        table = ReferenceOutcomes(len(models), len(METRICS), len(self.captions.names))
        with torch.no_grad():
            for images, targets, index in score_triples:
                x = self.clip.preprocess(images)
                variants = [
                    (plan, StandardizedMaps(plan, self.forward(images, model)[0]), None) for model, plan in plans
                ]
                plain, swapped = self._transplants(x, variants)
                targets = targets.to(plain.device).long()
                outs = [image_outcomes(self.captions, plain.double(), s.double(), targets) for s in swapped]
                table.add(index, torch.stack(outs))
        if sum_fn is not None:
            table.all_reduce(sum_fn, self.text_features.device, total)
        self.reference = table

    def _reference_plan(
        self, model: nn.Module, fit_images: Images, sum_fn: SumFn | None, image_size: int | None
    ) -> tuple[nn.Module, SurgeryPlan]:
        model = model.to(self.text_features.device).eval()
        other = self._with_model(model)
        for images in _images(fit_images):
            other.fit_batch(images)
        if not other.moments.has_layout:  # no fit images on this rank: join the reduction with zero counts
            if image_size is None:
                raise ValueError("compute_references got no fit images: pass image_size to join the reduction")
            other.moments.init_layout(other.empty_activations(image_size))
        return model, other.fit_plan(sum_fn)

    def _with_model(self, model: nn.Module) -> SurgeryPipeline:
        """The same surgery (options, CLIP, captions, text embeddings, seed) on another model of the same
        architecture, with fresh sums."""
        other = copy.copy(self)
        other.standalone = model
        other.moments = CrossMoments(self.score)
        other.plan, other.null_matchings, other.counts, other.reference = None, [], None, None
        return other

    @torch.no_grad()
    def empty_activations(self, image_size: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Zero-image activations of both models (their shapes define the running sums' layout, for a rank
        that saw no fit sample)."""
        device = self.text_features.device
        empty = torch.zeros(1, 3, int(image_size), int(image_size), device=device)
        s_acts = {k: v[:0] for k, v in self.standalone_maps(empty).items()}
        with capture(self.clip.model, self.clip_layers) as c_acts:
            self.clip.encode_image(self.clip.preprocess(empty))
        return s_acts, {k: v[:0] for k, v in c_acts.items()}

    # ---- summary ------------------------------------------------------------------------------
    def score_finish(
        self, sum_fn: SumFn | None = None, max_fn: SumFn | None = None, bootstrap: int = 2000
    ) -> SurgerySummary:
        """Reduces every count across ranks and summarizes the epoch (metrics and effects with intervals)."""
        if self.plan is None:
            raise RuntimeError("call fit_finish() and score_batch() first")
        if self.counts is None:  # nothing scored (on this rank): join the reductions with zero counts
            self.counts = self._new_counts()
        if sum_fn is not None:
            self.counts.all_reduce(sum_fn, max_fn)
        return self.counts.summary(bootstrap, self.seed)

    def to(self, device: torch.device | str) -> SurgeryPipeline:
        """Moves the CLIP and the text embeddings (the standalone model is the caller's)."""
        self.clip.to(device)
        self.text_features = self.text_features.to(device)
        return self

    def reset(self) -> None:
        """Forget this epoch's sums (the next probed epoch fits afresh; buffers are reused; the references,
        which do not change with training, are kept)."""
        self.moments.reset()
        self.plan, self.null_matchings, self.counts = None, [], None


class ReferenceOutcomes:
    """Per-image outcomes of the reference networks, by image id: [R, metrics, concepts, ids]."""

    def __init__(self, refs: int, metrics: int, concepts: int) -> None:
        self.refs = refs
        self.table = torch.full((refs, metrics, concepts, 0), float("nan"), dtype=torch.float64)
        self.scored = torch.zeros(0, dtype=torch.bool)

    def _grow(self, size: int) -> None:
        if size > self.table.shape[-1]:
            grow = size - self.table.shape[-1]
            self.table = torch.cat([self.table, self.table.new_full((*self.table.shape[:3], grow), float("nan"))], -1)
            self.scored = torch.cat([self.scored, self.scored.new_zeros(grow)])

    def add(self, index: torch.Tensor, outcomes: torch.Tensor) -> None:
        """``outcomes`` [R, metrics, concepts, B] of the images ``index`` [B]."""
        index = index.long().cpu()
        if index.numel():
            self._grow(int(index.max()) + 1)
        self.table[..., index] = outcomes.double().cpu()
        self.scored[index] = True

    def all_reduce(self, sum_fn: SumFn, device: torch.device | str = "cpu", total: int | None = None) -> None:
        """Every rank ends with every rank's images (each image is scored on one rank); ``total`` (ids are
        below it) makes the tables of all ranks the same size."""
        self._grow(int(total or 0))
        values = torch.nan_to_num(self.table, nan=0.0)
        defined = (~self.table.isnan()).double()
        packed = torch.cat([values.reshape(-1), defined.reshape(-1), self.scored.double()])
        packed = sum_fn(packed.to(device)).cpu()
        n = values.numel()
        v, d = packed[:n].view_as(values), packed[n : 2 * n].view_as(values)
        self.table = torch.where(d > 0, v / d.clamp_min(1.0), float("nan"))
        self.scored = packed[2 * n :] > 0

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        index = index.long().cpu()
        if index.numel() and (int(index.max()) >= self.table.shape[-1] or not bool(self.scored[index].all())):
            raise ValueError(
                "an image scored now was not scored by the references (the scoring set must be the same images "
                "every epoch)"
            )
        return self.table[..., index]

    def state_dict(self) -> dict:
        return {"table": self.table.clone(), "scored": self.scored.clone()}

    @classmethod
    def from_state_dict(cls, state: dict) -> ReferenceOutcomes:
        refs, metrics, concepts, _ = state["table"].shape
        out = cls(refs, metrics, concepts)
        out.table, out.scored = state["table"].clone(), state["scored"].clone()
        return out
