"""Which probe images fit the matching and which are scored: disjoint halves by sample index."""

from __future__ import annotations

import torch


def holdout_mask(index: torch.Tensor, fit: bool) -> torch.Tensor:
    """The fit (or the held-out) half of a split, by sample index: a multiplicative hash, so that any DDP
    sharding (rank = index mod world size) splits evenly, unlike index parity."""
    in_fit = (index.long() * 2654435761) % 4294967296 < 2147483648
    return in_fit if fit else ~in_fit
