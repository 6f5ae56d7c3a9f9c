"""The surgery plan (statistics + matching + which channels to swap) and the activation transplant."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.io import atomic_write, load_file
from xai_lightning.resize import resize_antialiased
from xai_lightning.surgery.layers import as_maps, forward_hooks, into_tokens
from xai_lightning.surgery.matching import Matching, layer_summaries, match
from xai_lightning.surgery.moments import CrossMoments

INTERPOLATIONS = ("bilinear", "bicubic", "area", "nearest")
Layout = list[tuple[str, int, tuple[int, int]]]  # (name, channels, (h, w)) in order


@dataclass
class SurgeryPlan:
    """Everything the transplant needs, fitted once per probed epoch.

    Channel indices are global: layer order, then channel order (the rows/columns of ``Z``).
    """

    standalone: Layout
    clip: Layout
    s_mean: torch.Tensor  # [n_s]
    s_std: torch.Tensor
    s_valid: torch.Tensor  # bool
    c_mean: torch.Tensor  # [n_c]
    c_std: torch.Tensor
    c_valid: torch.Tensor
    matching: Matching
    swap: torch.Tensor  # bool [n_c]: channels replaced by the transplant
    swap_fraction: float
    score: str
    extras: dict = field(default_factory=dict)

    @property
    def n_standalone(self) -> int:
        return len(self.s_mean)

    def with_swap_fraction(self, swap_fraction: float) -> SurgeryPlan:
        """The same matching with another share of each CLIP layer swapped (no new scores)."""
        swap = select_swaps(self.matching, self.clip, swap_fraction)
        return dataclasses.replace(self, swap=swap, swap_fraction=float(swap_fraction))

    def clip_slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, ch, _ in self.clip:
            out[name] = slice(start, start + ch)
            start += ch
        return out

    def standalone_slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, ch, _ in self.standalone:
            out[name] = slice(start, start + ch)
            start += ch
        return out

    def summaries(self) -> dict[str, dict[str, float]]:
        return layer_summaries(self.matching, [(n, c) for n, c, _ in self.clip])

    def to(self, device: torch.device | str) -> SurgeryPlan:
        moved = {
            k: getattr(self, k).to(device) for k in ("s_mean", "s_std", "s_valid", "c_mean", "c_std", "c_valid", "swap")
        }
        m = Matching(self.matching.source.to(device), self.matching.score.to(device), self.matching.method)
        return SurgeryPlan(
            self.standalone,
            self.clip,
            matching=m,
            swap_fraction=self.swap_fraction,
            score=self.score,
            extras=self.extras,
            **moved,
        )

    def save(self, path: str) -> None:
        """Atomic write (temporary file, then rename)."""
        data = {k: v for k, v in self.__dict__.items() if k != "matching"}
        data = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in data.items()}
        data["matching"] = {
            "source": self.matching.source.cpu(),
            "score": self.matching.score.cpu(),
            "method": self.matching.method,
        }
        atomic_write(path, lambda f: torch.save(data, f))

    @classmethod
    def load(cls, path: str) -> SurgeryPlan:
        data = load_file(path, "surgery plan")
        data["matching"] = Matching(**data["matching"])
        return cls(**data)


def select_swaps(matching: Matching, clip: Layout, swap_fraction: float) -> torch.Tensor:
    """Bool [n_c]: per CLIP layer, its best-matched ``swap_fraction`` of channels (only matched ones)."""
    if not 0.0 < swap_fraction <= 1.0:
        raise ValueError(f"swap_fraction={swap_fraction} must be in (0, 1]")
    swap = torch.zeros_like(matching.source, dtype=torch.bool)
    start = 0
    for _, ch, _ in clip:
        src = matching.source[start : start + ch]
        ok = src >= 0
        k = min(int(ok.sum()), math.ceil(swap_fraction * ch))
        if k > 0:
            score = torch.where(
                ok, matching.score[start : start + ch].float(), torch.tensor(float("-inf"), device=src.device)
            )
            swap[start + score.topk(k).indices] = True
        start += ch
    return swap


def build_plan(moments: CrossMoments, matching: str = "argmax", swap_fraction: float = 1.0) -> SurgeryPlan:
    """Scores, matching and swap selection from (already reduced) running sums."""
    stats = moments.stats()
    s, c = stats["standalone"], stats["clip"]
    z = moments.take_scores()  # in the cross sums' memory: the epoch's sums are not needed again
    m = match(z, s["valid"], c["valid"], matching)
    clip_layout = [(x.name, x.channels, x.size) for x in moments.clip_layout.layers]
    plan = SurgeryPlan(
        standalone=[(x.name, x.channels, x.size) for x in moments.standalone_layout.layers],
        clip=clip_layout,
        s_mean=s["mean"].float(),
        s_std=s["std"].float(),
        s_valid=s["valid"],
        c_mean=c["mean"].float(),
        c_std=c["std"].float(),
        c_valid=c["valid"],
        matching=m,
        swap=select_swaps(m, clip_layout, swap_fraction),
        swap_fraction=swap_fraction,
        score=moments.score,
        extras={"images": moments.count, "coverage": m.coverage(len(s["mean"]))},
    )
    return plan


def resize_maps(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """[B, C, h, w] -> [B, C, *size]; bilinear/bicubic anti-alias when shrinking (no 112->7 aliasing)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {mode!r}; allowed: {', '.join(INTERPOLATIONS)}")
    if mode in ("bilinear", "bicubic"):
        if x.shape[-2] > size[0] or x.shape[-1] > size[1]:
            return resize_antialiased(x, size, mode)
        return F.interpolate(x, size=size, mode=mode, align_corners=False)
    return F.interpolate(x, size=size, mode=mode)


class StandardizedMaps:
    """The standalone model's maps of one batch, standardized with the plan's dataset statistics and
    grouped by map size (one tensor per size), so that every transplant of the batch (the matched one
    and each null draw) only gathers channels."""

    def __init__(self, plan: SurgeryPlan, standalone_maps: Mapping[str, torch.Tensor]) -> None:
        sizes = list(dict.fromkeys(size for _, _, size in plan.standalone))
        self.sizes = sizes
        group_of, pos_of = (
            torch.empty(plan.n_standalone, dtype=torch.long),
            torch.empty(plan.n_standalone, dtype=torch.long),
        )
        self.groups: list[torch.Tensor] = []
        slices = plan.standalone_slices()
        for g, size in enumerate(sizes):
            names = [name for name, _, sz in plan.standalone if sz == size]
            missing = [n for n in names if n not in standalone_maps]
            if missing:
                raise KeyError(f"standalone maps lack layer {missing[0]!r} needed by the plan")
            x = torch.cat([standalone_maps[n].float() for n in names], dim=1)  # [B, C_g, h, w]
            idx = torch.cat([torch.arange(slices[n].start, slices[n].stop) for n in names])
            group_of[idx], pos_of[idx] = g, torch.arange(len(idx))
            idx = idx.to(x.device)
            self.groups.append((x - plan.s_mean[idx].view(1, -1, 1, 1)) / plan.s_std[idx].view(1, -1, 1, 1))
        dev = self.groups[0].device
        self.group_of, self.pos_of = group_of.to(dev), pos_of.to(dev)


def transplant_maps(
    plan: SurgeryPlan,
    standalone_maps: Mapping[str, torch.Tensor] | StandardizedMaps,
    clip_layer: str,
    interpolation: str = "bilinear",
    matching: Matching | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(channel indices within ``clip_layer`` [n], replacement maps [B, n, H, W]) for one CLIP layer:
    the matched standalone maps standardized with their dataset statistics, resized to the CLIP map
    size, and de-standardized with the CLIP channel's statistics."""
    maps = standalone_maps if isinstance(standalone_maps, StandardizedMaps) else StandardizedMaps(plan, standalone_maps)
    matching = matching or plan.matching
    sl = plan.clip_slices()[clip_layer]
    ((h, w),) = [size for name, _, size in plan.clip if name == clip_layer]
    local = plan.swap[sl].nonzero().flatten()  # [n]
    glob = local + sl.start
    src = matching.source[glob]
    out = torch.empty(maps.groups[0].shape[0], len(local), h, w, device=maps.groups[0].device, dtype=torch.float32)
    group = maps.group_of[src]
    for g, x in enumerate(maps.groups):
        pick = (group == g).nonzero().flatten()
        if len(pick):
            out[:, pick] = resize_maps(x[:, maps.pos_of[src[pick]]], (h, w), interpolation)
    out = out * plan.c_std[glob].view(1, -1, 1, 1) + plan.c_mean[glob].view(1, -1, 1, 1)
    return local, out


@contextmanager
def transplant(
    clip_model: nn.Module,
    plan: SurgeryPlan,
    standalone_maps: Mapping[str, torch.Tensor] | StandardizedMaps,
    layers: Sequence[str],
    interpolation: str = "bilinear",
    matching: Matching | None = None,
) -> Iterator[None]:
    """Within the block, CLIP's ``layers`` output the transplanted maps on their swapped channels
    (cumulative over all listed layers) and keep their own values elsewhere. Hooks are removed on exit,
    exceptions included. ``matching`` overrides the plan's (the random-matching null control)."""
    if not isinstance(standalone_maps, StandardizedMaps):
        standalone_maps = StandardizedMaps(plan, standalone_maps)
    replacements = {layer: transplant_maps(plan, standalone_maps, layer, interpolation, matching) for layer in layers}

    def make(layer: str):
        idx, maps = replacements[layer]

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            seen = as_maps(layer, output)  # a ViT block's tokens are edited through their patch grid
            if seen.shape[0] != maps.shape[0] or tuple(seen.shape[-2:]) != tuple(maps.shape[-2:]):
                raise ValueError(
                    f"transplant into {layer!r}: CLIP map {tuple(seen.shape)} does not fit the "
                    f"planned {tuple(maps.shape)}; run CLIP at the image size it was matched at"
                )
            return into_tokens(output, idx, maps)  # a copy: never CLIP's tensor in place (the reference's bug)

        return hook

    with forward_hooks(clip_model, {layer: make(layer) for layer in layers}):
        yield
