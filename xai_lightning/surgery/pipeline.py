"""Network surgery end to end on any CNN and any CLIP-like model (pure PyTorch, no Lightning).

    pipe = SurgeryPipeline(cnn, clip, resolve_concepts(spec, attributes), standalone_layers="convs")
    for batch in fit_loader:                      # one pass: statistics and Z together
        pipe.fit_batch(batch["image"])
    plan = pipe.fit_finish()                      # matching (+ null matchings)
    for batch in score_loader:
        pipe.score_batch(batch["image"], targets)  # targets [n_concepts, B] value indices
    summary = pipe.score_finish()                 # shares, retention, effect vs null, dominant concept

The ``*_vs_init`` verdicts compare with the same surgery on a randomly initialised copy of the model:
``pipe.compute_baseline(fit_images, score_triples)`` once (the copy is fitted and scored on the same
images), then ``score_batch(..., index=...)`` pairs each image with its baseline outcome.

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
from xai_lightning.surgery.layers import capture, resolve_layers
from xai_lightning.surgery.matching import METHODS, Matching, random_matching
from xai_lightning.surgery.moments import SCORES, CrossMoments
from xai_lightning.surgery.scoring import METRICS, VERDICTS, ProbeCounts, ProbeSummary
from xai_lightning.surgery.transplant import INTERPOLATIONS, StandardizedMaps, SurgeryPlan, build_plan, transplant

SumFn = Callable[[torch.Tensor], torch.Tensor]


class ClipLike(Protocol):
    """What the surgery needs from a CLIP: the module to hook, and image/text encoders."""

    model: nn.Module

    def preprocess(self, images: torch.Tensor) -> torch.Tensor: ...  # [B, 3, H, W] in [0, 1] -> CLIP input

    def encode_image(self, x: torch.Tensor) -> torch.Tensor: ...  # [B, D]

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor: ...  # [K, D]


def check_options(
    score: str, matching: str, swap_fraction: float, interpolation: str, null_draws: int, verdict: str
) -> None:
    """Validates surgery options; errors name the allowed values."""
    for name, value, allowed in (
        ("score", score, SCORES),
        ("matching", matching, METHODS),
        ("interpolation", interpolation, INTERPOLATIONS),
        ("verdict", verdict, VERDICTS),
    ):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
    if not 0.0 < float(swap_fraction) <= 1.0:
        raise ValueError(f"swap_fraction={swap_fraction} must be in (0, 1]")
    if int(null_draws) < 1:
        raise ValueError(f"null_draws={null_draws} must be >= 1 (the null control is what makes the effect honest)")


@torch.no_grad()
def random_init_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every parameter and buffer re-drawn by its module's ``reset_parameters``
    (``reset_running_stats`` for norms), seeded, in eval mode: the same architecture and preprocessing
    (e.g. a grayscale ``input_transform``) with nothing learned. The caller's RNG state is kept.

    Works on a module in the middle of training: what it refers to outside itself (a ``_trainer``
    attribute, as a LightningModule has) is not copied, and tensors that are outputs of a graph (e.g. a
    cached last loss) are copied detached."""
    memo: dict[int, object] = {}
    for module in model.modules():
        for name, value in vars(module).items():
            if name == "_trainer" and value is not None:
                memo[id(value)] = None
            elif isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    clone = copy.deepcopy(model, memo)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in clone.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            elif hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
    return clone.eval()


class SurgeryPipeline:
    """Fit (statistics + matching) and score (captions, null control) network surgery.

    Args:
        standalone: the model to explain (eval mode is the caller's business).
        clip: a ``ClipLike`` (see ``xai_lightning.clip.ProbeCLIP``).
        captions: concepts and captions (``resolve_concepts``).
        standalone_layers: preset (``convs``, ``blocks``, ...), names or globs.
        clip_layers: CLIP module names, in the cumulative swap order (default: ``visual.layer1..4``).
        score: ``reference`` (paper formula, exact statistics) or ``pearson``.
        matching: ``argmax`` (paper) or ``one_to_one``.
        swap_fraction: best-matched fraction of each CLIP layer's channels to replace (1.0 = paper).
        interpolation: resizing of transplanted maps.
        null_draws: random matchings for the null control.
        seed: for the null matchings.
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
        check_options(score, matching, swap_fraction, interpolation, null_draws, "share")
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
        self.baseline: Baseline | None = None

    # ---- fit ----------------------------------------------------------------------------------
    def standalone_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with capture(self.standalone, self.standalone_layers) as acts:
            self.standalone(images)
        return dict(acts)

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

    def fit_finish(self, sum_fn: SumFn | None = None) -> SurgeryPlan:
        """Reduces the sums across ranks (``sum_fn``), matches, selects swaps and draws the null matchings."""
        if sum_fn is not None:
            self.moments.all_reduce(sum_fn)
        self.plan = build_plan(self.moments, self.matching_method, self.swap_fraction)
        gen = torch.Generator().manual_seed(self.seed)
        self.null_matchings = [
            random_matching(self.plan.s_valid, self.plan.c_valid, gen) for _ in range(self.null_draws)
        ]
        self.counts = ProbeCounts(self.captions, len(self.clip_layers), self.null_draws, self.text_features.device)
        return self.plan

    # ---- score --------------------------------------------------------------------------------
    def _similarity(self, clip_input: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(self.clip.encode_image(clip_input).float(), dim=-1)
        return emb @ self.text_features.T  # [B, K]

    @torch.no_grad()
    def similarities(
        self, images: torch.Tensor, standalone_maps: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sims [L + 1, B, K], null_sims [D, B, K]): level 0 runs CLIP with no hooks at all; level i swaps
        CLIP layers 1..i; the null swaps all L layers under each random matching."""
        if self.plan is None:
            raise RuntimeError("call fit_finish() before scoring")
        if standalone_maps is None:
            standalone_maps = self.standalone_maps(images)
        standalone_maps = StandardizedMaps(self.plan, standalone_maps)  # once per batch, shared by all swaps
        x = self.clip.preprocess(images)
        levels = [self._similarity(x)]
        for i in range(1, len(self.clip_layers) + 1):
            with transplant(self.clip.model, self.plan, standalone_maps, self.clip_layers[:i], self.interpolation):
                levels.append(self._similarity(x))
        null = []
        for m in self.null_matchings:
            with transplant(self.clip.model, self.plan, standalone_maps, self.clip_layers, self.interpolation, m):
                null.append(self._similarity(x))
        return torch.stack(levels), torch.stack(null) if null else levels[0].new_zeros(0, *levels[0].shape)

    @torch.no_grad()
    def score_batch(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        standalone_maps: Mapping[str, torch.Tensor] | None = None,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores a batch. ``targets`` [n_concepts, B]: each image's value index per concept (-1 unknown).
        ``index`` [B]: the images' ids, needed once a baseline exists (pairs each image with its baseline
        outcome). Returns the per-image outcomes [len(METRICS), n_concepts, B]."""
        sims, null = self.similarities(images, standalone_maps)
        base = None
        if self.baseline is not None:
            if index is None:
                raise ValueError("a baseline was computed: score_batch needs the images' index to pair them")
            base = self.baseline.lookup(index)
        return self.counts.update(sims, null, targets.to(sims.device), base)

    def compute_baseline(
        self,
        fit_images: Iterable[torch.Tensor],
        score_triples: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        model: nn.Module | None = None,
        sum_fn: SumFn | None = None,
        image_size: int | None = None,
    ) -> ProbeSummary:
        """The same surgery on a reference model (default: ``random_init_copy(standalone, seed)``), fitted on
        ``fit_images`` and scored on ``score_triples`` = (images, targets, index) batches: its per-image
        outcomes are kept by index for the ``*_vs_init`` verdicts of every later ``score_batch``. Returns
        the reference's own summary (its shares and retention). ``image_size`` lays out the sums on a rank
        that has no fit images (DDP with tiny data)."""
        ref = self._with_model(random_init_copy(self.standalone, self.seed) if model is None else model)
        for images in fit_images:
            ref.fit_batch(images)
        if ref.moments.s is None:  # no fit images on this rank: join the reduction with zero counts
            if image_size is None:
                raise ValueError("compute_baseline got no fit images: pass image_size to join the reduction")
            ref.moments.init_layout(ref.empty_activations(image_size))
        ref.fit_finish(sum_fn)
        baseline = Baseline(len(METRICS), len(self.captions.names))
        for images, targets, index in score_triples:
            baseline.add(index, ref.score_batch(images, targets))
        self.baseline = baseline
        return ref.score_finish(sum_fn, verdict="retention")

    def _with_model(self, model: nn.Module) -> SurgeryPipeline:
        """The same surgery (options, CLIP, captions, text embeddings, null seed) on another model of the same
        architecture, with fresh sums."""
        other = copy.copy(self)
        other.standalone = model
        other.moments = CrossMoments(self.score)
        other.plan, other.null_matchings, other.counts, other.baseline = None, [], None, None
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

    def score_finish(
        self,
        sum_fn: SumFn | None = None,
        max_fn: SumFn | None = None,
        verdict: str = "retention",
        bootstrap: int = 2000,
    ) -> ProbeSummary:
        if self.counts is None:
            raise RuntimeError("call fit_finish() and score_batch() first")
        if sum_fn is not None:
            self.counts.all_reduce(sum_fn, max_fn)
        return self.counts.summary(verdict, bootstrap, self.seed)

    def to(self, device: torch.device | str) -> SurgeryPipeline:
        """Moves the CLIP and the text embeddings (the standalone model is the caller's)."""
        self.clip.to(device)
        self.text_features = self.text_features.to(device)
        return self

    def reset(self) -> None:
        """Forget this epoch's sums (the next probed epoch fits afresh; buffers are reused; the baseline,
        which does not change with training, is kept)."""
        self.moments.reset()
        self.plan, self.null_matchings, self.counts = None, [], None


class Baseline:
    """Per-image outcomes of the reference model, by image index (this rank's images)."""

    def __init__(self, metrics: int, concepts: int) -> None:
        self.table = torch.full((metrics, concepts, 0), float("nan"), dtype=torch.float64)
        self.scored = torch.zeros(0, dtype=torch.bool)

    def add(self, index: torch.Tensor, outcomes: torch.Tensor) -> None:
        index = index.long().cpu()
        if index.numel() and int(index.max()) >= self.table.shape[-1]:
            grow = int(index.max()) + 1 - self.table.shape[-1]
            self.table = torch.cat([self.table, self.table.new_full((*self.table.shape[:2], grow), float("nan"))], -1)
            self.scored = torch.cat([self.scored, self.scored.new_zeros(grow)])
        self.table[:, :, index] = outcomes.double().cpu()
        self.scored[index] = True

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        index = index.long().cpu()
        if index.numel() and (int(index.max()) >= self.table.shape[-1] or not bool(self.scored[index].all())):
            raise ValueError(
                "an image scored now was not scored by the baseline (the scoring set must be the same images "
                "every epoch)"
            )
        return self.table[:, :, index]
