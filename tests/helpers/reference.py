"""Independent references: the definitions computed directly, in float64, the slow way."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def concat_batches(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([b[k] for b in batches]).double() for k in batches[0]}


def reference_z(standalone: list[dict], clip: list[dict], score: str = "reference") -> torch.Tensor:
    """Z by the definition: upsample the smaller map with F.interpolate (bilinear, align_corners=False) to
    the larger size, standardize with dataset moments (population std), average the product over images and
    positions (einsum). Pearson: normalize by the upsampled maps' own moments instead."""
    s_all, c_all = concat_batches(standalone), concat_batches(clip)
    rows = []
    for s in s_all.values():
        mu_s, sd_s = s.mean(dim=(0, 2, 3)), s.std(dim=(0, 2, 3), unbiased=False)
        cols = []
        for c in c_all.values():
            mu_c, sd_c = c.mean(dim=(0, 2, 3)), c.std(dim=(0, 2, 3), unbiased=False)
            size = (max(s.shape[2], c.shape[2]), max(s.shape[3], c.shape[3]))
            su = F.interpolate(s, size=size, mode="bilinear", align_corners=False)
            cu = F.interpolate(c, size=size, mode="bilinear", align_corners=False)
            if score == "reference":
                ns = (su - mu_s.view(1, -1, 1, 1)) / sd_s.view(1, -1, 1, 1)
                nc = (cu - mu_c.view(1, -1, 1, 1)) / sd_c.view(1, -1, 1, 1)
            else:
                ns = (su - su.mean(dim=(0, 2, 3), keepdim=True)) / su.std(dim=(0, 2, 3), unbiased=False, keepdim=True)
                nc = (cu - cu.mean(dim=(0, 2, 3), keepdim=True)) / cu.std(dim=(0, 2, 3), unbiased=False, keepdim=True)
            z = torch.einsum("aixy,ajxy->ij", ns, nc) / (ns.shape[0] * size[0] * size[1])
            dead = (sd_s <= 1e-6 * (1 + mu_s.abs())).view(-1, 1) | (sd_c <= 1e-6 * (1 + mu_c.abs())).view(1, -1)
            cols.append(torch.where(dead, 0.0, torch.nan_to_num(z)))
        rows.append(torch.cat(cols, dim=1))
    return torch.cat(rows, dim=0)
