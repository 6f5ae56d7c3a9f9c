"""Matching CLIP channels to standalone channels from the score matrix ``Z``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

METHODS = ("argmax", "one_to_one")


@dataclass
class Matching:
    """For every CLIP channel j: ``source[j]`` = matched standalone channel (global row of Z) or -1
    (near-constant CLIP channel, or none left), ``score[j]`` = Z[source[j], j] (0 where unmatched)."""

    source: torch.Tensor  # [n_c] long
    score: torch.Tensor  # [n_c] float
    method: str

    def coverage(self, n_standalone: int) -> float:
        """Distinct standalone channels used / all standalone channels."""
        used = self.source[self.source >= 0].unique().numel()
        return used / max(n_standalone, 1)


def match(z: torch.Tensor, valid_s: torch.Tensor, valid_c: torch.Tensor, method: str = "argmax") -> Matching:
    """Best standalone channel per CLIP channel.

    Args:
        z: [n_s, n_c] scores.
        valid_s, valid_c: bool masks; near-constant channels are never matched.
        method: ``argmax`` (the paper: each CLIP channel takes its best standalone channel, many-to-one)
            or ``one_to_one`` (global greedy: pairs taken in decreasing score, each standalone channel once).
    """
    if method not in METHODS:
        raise ValueError(f"unknown matching {method!r}; allowed: {', '.join(METHODS)}")
    n_s, n_c = z.shape
    masked = z.float().masked_fill(~valid_s.view(-1, 1), float("-inf"))
    source = torch.full((n_c,), -1, dtype=torch.long, device=z.device)
    score = torch.zeros(n_c, dtype=torch.float32, device=z.device)
    if not bool(valid_s.any()):
        return Matching(source, score, method)
    if method == "argmax":
        best, idx = masked.max(dim=0)
        source = torch.where(valid_c, idx, source)
        score = torch.where(valid_c, best, score)
        return Matching(source, score, method)
    return _greedy_one_to_one(masked, valid_s, valid_c, source, score)


def _greedy_one_to_one(
    masked: torch.Tensor, valid_s: torch.Tensor, valid_c: torch.Tensor, source: torch.Tensor, score: torch.Tensor
) -> Matching:
    """Exact global greedy (pairs in decreasing score, each standalone channel used once), over top-k
    candidate lists per column: a round stops as soon as a column runs out of candidates while it could
    still have more (its next candidate might outrank pairs not yet taken); k then grows."""
    n_s = masked.shape[0]
    free_s, todo = valid_s.clone(), valid_c.clone()
    k = min(n_s, 16)
    while bool(todo.any()) and bool(free_s.any()):
        cols = todo.nonzero().flatten()
        cand = masked[:, cols].masked_fill(~free_s.view(-1, 1), float("-inf"))
        top, rows = cand.topk(k, dim=0)  # [k, n_todo]
        _greedy_round(top, rows, cols, k, n_s, free_s, todo, source, score)
        if k >= n_s:  # every candidate was seen: the columns left have no free standalone channel
            break
        k = min(n_s, k * 4)
    return Matching(source, score, "one_to_one")


def _greedy_round(top, rows, cols, k, n_s, free_s, todo, source, score) -> None:
    """One pass over the candidate pairs in decreasing score; updates the matching in place."""
    left = torch.full((len(cols),), k).tolist()
    order = top.flatten().argsort(descending=True).tolist()
    top_l, rows_l, cols_l = top.flatten().tolist(), rows.flatten().tolist(), cols.tolist()
    for flat in order:
        val = top_l[flat]
        if val == float("-inf"):
            return
        ci = flat % len(cols_l)
        r, c = rows_l[flat], cols_l[ci]
        if not todo[c]:
            continue
        if free_s[r]:
            source[c], score[c] = r, val
            free_s[r], todo[c] = False, False
            continue
        left[ci] -= 1
        if left[ci] == 0 and k < n_s:
            return


def random_matching(valid_s: torch.Tensor, valid_c: torch.Tensor, generator: torch.Generator) -> Matching:
    """The null control: each valid CLIP channel gets a uniformly random valid standalone channel."""
    pool = valid_s.nonzero().flatten().cpu()
    pick = pool[torch.randint(len(pool), (valid_c.numel(),), generator=generator)].to(valid_c.device)
    source = torch.where(valid_c, pick, torch.full_like(pick, -1))
    return Matching(source, torch.zeros(valid_c.numel(), device=valid_c.device), "random")


def layer_summaries(matching: Matching, clip_layers: list[tuple[str, int]]) -> dict[str, dict[str, float]]:
    """Per CLIP layer: mean / median / max match score and the fraction of its channels matched."""
    out, start = {}, 0
    for name, channels in clip_layers:
        sl = slice(start, start + channels)
        matched = matching.source[sl] >= 0
        scores = matching.score[sl][matched].float()
        out[name] = {
            "score_mean": float(scores.mean()) if scores.numel() else 0.0,
            "score_median": float(scores.median()) if scores.numel() else 0.0,
            "score_max": float(scores.max()) if scores.numel() else 0.0,
            "matched": float(matched.float().mean()),
        }
        start += channels
    return out
