"""Anti-aliased resizing on any device (plain PyTorch): used by the surgery's transplant and the CLIP's
preprocessing."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


@lru_cache(maxsize=512)
def _aa_weights(n_in: int, n_out: int, mode: str) -> torch.Tensor:
    """[n_out, n_in] float64: one axis of ``F.interpolate(..., antialias=True)`` as a matrix (read off the CPU
    kernel applied to the unit vectors). The other axis is 2 wide and kept: torch's CPU kernel mishandles a
    1-wide axis when anti-aliasing (it returns the mean over the resized axis)."""
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1).expand(n_in, 1, n_in, 2).contiguous()
    cols = F.interpolate(eye, size=(n_out, 2), mode=mode, align_corners=False, antialias=True)
    return cols[:, 0, :, 0].T.contiguous()


def resize_antialiased(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """``F.interpolate(x, size, mode, align_corners=False, antialias=True)`` for ``bilinear``/``bicubic`` on any
    device and any scale factor: the anti-aliased resize is separable, so it runs as two small matrix
    products with the CPU kernel's weights. (CUDA's anti-aliased kernels refuse large shrink factors, e.g.
    112 -> 8 px: "Too much shared memory required".)"""
    wh = _aa_weights(int(x.shape[-2]), int(size[0]), mode).to(device=x.device, dtype=x.dtype)
    ww = _aa_weights(int(x.shape[-1]), int(size[1]), mode).to(device=x.device, dtype=x.dtype)
    return torch.einsum("oh,...hw,pw->...op", wh, x, ww)
