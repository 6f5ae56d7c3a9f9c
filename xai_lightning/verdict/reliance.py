"""Decision reliance: how much the model's *predictions* depend on each concept, read off a probe set whose
concepts vary independently (no image is edited).

For concept ``c``, compare pairs of probe images that agree on every other concept (the same stratum):

    reliance_c = P(predictions differ | the pair differs in c) - P(predictions differ | the pair agrees on c)

The second term is how often two images that share every concept value get different predictions anyway
(handwriting, noise): only what concept ``c`` adds counts. A model whose prediction follows colour
(every red digit -> class 0) has colour reliance 1 and shape reliance 0; one that ignores a concept has
reliance 0 for it, whatever its features carry. It is the observational counterpart of a counterfactual
flip rate, and it only needs the model's predictions and the concept labels of the probe set.

Everything follows from one joint count table ``T[v_1, ..., v_C, y]`` (value of every concept, predicted
class; an extra last index per concept for "unknown", e.g. gray for colour, never used in pairs), which
adds across batches and DDP ranks. Pairs are counted without replacement (``n (n - 1) / 2`` within a
cell). The interval resamples images: multinomial draws over the table's cells (images in one cell are
interchangeable), percentile interval; the margin between two concepts uses the same draws. Scored
images are the only thing that changes when the probe is rerun on new data: there is no matching and no
reference network behind this number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from xai_lightning.verdict.effects import Effect

SumFn = Callable[[torch.Tensor], torch.Tensor]


class DecisionTable:
    """Joint counts of (each concept's value, predicted class) over probe images.

    Args:
        cards: number of values per concept (e.g. ``[2, 2]`` for two digits and two colours).
        classes: the model's number of outputs.
    """

    def __init__(self, cards: Sequence[int], classes: int, device: torch.device | str = "cpu") -> None:
        self.cards, self.classes = [int(c) for c in cards], int(classes)
        self.counts = torch.zeros(*[c + 1 for c in self.cards], self.classes, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, targets: torch.Tensor) -> None:
        """``pred`` [B] predicted class; ``targets`` [C, B] each concept's value index (-1 unknown)."""
        if targets.shape[0] != len(self.cards):
            raise ValueError(f"targets have {targets.shape[0]} concepts, the table {len(self.cards)}")
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= self.classes):
            raise ValueError(f"predicted classes must lie in [0, {self.classes}); got {int(pred.max())}")
        cards = torch.tensor(self.cards, device=targets.device).view(-1, 1)
        idx = torch.where(targets >= 0, targets, cards).long()  # unknown -> the extra last index
        flat = torch.zeros_like(pred, dtype=torch.long)
        for c, card in enumerate(self.cards):
            flat = flat * (card + 1) + idx[c]
        flat = flat * self.classes + pred.long()
        self.counts.view(-1).index_add_(
            0, flat.to(self.counts.device), torch.ones_like(flat, dtype=torch.float64, device=self.counts.device)
        )

    def all_reduce(self, sum_fn: SumFn) -> None:
        self.counts = sum_fn(self.counts)

    @property
    def images(self) -> int:
        return int(self.counts.sum())

    def known(self) -> np.ndarray:
        """Counts of images whose every concept is known: [V_1, ..., V_C, classes]."""
        return self.counts.cpu().numpy()[tuple(slice(0, c) for c in self.cards)]


def reliance(known: np.ndarray, n_concepts: int) -> np.ndarray:
    """Reliance per concept from count tables ``known`` [..., V_1, ..., V_C, classes] (leading batch dims
    allowed); [..., C], NaN where no pair exists."""
    lead = known.ndim - n_concepts - 1
    out = []
    for c in range(n_concepts):
        x = np.moveaxis(known, lead + c, -2)  # [..., others..., V_c, K]
        x = x.reshape(*x.shape[:lead], -1, x.shape[-2], x.shape[-1])  # [..., S, V, K]
        n = x.sum(-1)  # [..., S, V]
        diff_pairs = ((n.sum(-1) ** 2 - (n**2).sum(-1)) / 2).sum(-1)
        diff_agree = ((x.sum(-2) ** 2 - (x**2).sum(-2)) / 2).sum((-2, -1))
        same_pairs = (n * (n - 1) / 2).sum((-2, -1))
        same_agree = (x * (x - 1) / 2).sum((-3, -2, -1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((1 - diff_agree / diff_pairs) - (1 - same_agree / same_pairs))
    return np.stack(out, axis=-1)


class RelianceEffects:
    """Reliance per concept with bootstrap intervals, and the margin between any two concepts (same draws)."""

    covers = "images"

    def __init__(self, table: DecisionTable, names: Sequence[str], draws: int = 2000, seed: int = 0) -> None:
        self.names = list(names)
        known = table.known()
        n_c = len(self.names)
        self.point = reliance(known, n_c)
        total = float(known.sum())
        if total:
            rng = np.random.default_rng([seed, 7919])
            flat = known.reshape(-1)
            resampled = rng.multinomial(int(total), flat / total, size=draws).reshape(draws, *known.shape)
            self.draws = reliance(resampled.astype(np.float64), n_c)  # [draws, C]
        else:
            self.draws = np.full((draws, n_c), np.nan)
        self.images = int(total)

    def _interval(self, point: float, draws: np.ndarray) -> Effect:
        draws = draws[np.isfinite(draws)]
        if not np.isfinite(point) or not len(draws):
            return Effect.undefined(self.covers)
        lo, hi = np.percentile(draws, [2.5, 97.5])
        return Effect(float(point), float(lo), float(hi), self.covers)

    def effect(self, name: str) -> Effect:
        c = self.names.index(name)
        return self._interval(float(self.point[c]), self.draws[:, c])

    def margin(self, a: str, b: str) -> Effect:
        i, j = self.names.index(a), self.names.index(b)
        return self._interval(float(self.point[i] - self.point[j]), self.draws[:, i] - self.draws[:, j])
