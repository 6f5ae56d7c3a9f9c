"""The matching's running sums, named (``ChannelSums``, ``PairSums``, ``CrossSums``), their layout over map sizes
(``MapLayout``) and the pure helpers that fold a batch into them: projections through the adjoint of bilinear
upsampling, per-size-group batches, the float32 GEMM into a column range. ``moments.CrossMoments`` drives them
(docs/design.md gives the algebra).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import cached_property, lru_cache

import torch
import torch.nn.functional as F

SCORES = ("reference", "pearson")
Size = tuple[int, int]
SumFn = Callable[[torch.Tensor], torch.Tensor]
DRIFT = 2.0  # re-shift before a batch after which a channel's mean would lie further than this many stds from its shift
TINY = 1e-300  # floor of a scale before it is inverted (invalid channels are zeroed anyway)
BLOCK_ROWS = 4096  # cross sums are stored in blocks of this many standalone channels (freed one by one)
CHUNK_BYTES = 16 * 2**20  # standalone maps folded at a time: bounds the working memory whatever the batch size
KRON_MAX = 10_000  # both dimensions projected in one GEMM with the Kronecker product below this many entries


def near_constant(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Channels that carry no signal: std <= 1e-6 * (1 + |mean|). They are never matched or swapped."""
    return std <= 1e-6 * (1.0 + mean.abs())


@contextmanager
def full_float32() -> Iterator[None]:
    """float32 GEMMs at full float32 precision inside, whatever ``torch.set_float32_matmul_precision`` says
    outside ("high" allows TF32 on GPUs, "medium" bfloat16 also on CPUs: errors of 1e-3 to 1e-1 in a product,
    where these sums promise float32 exactness). Restores the caller's setting."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


@lru_cache(maxsize=64)
def _upsample_1d(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] float64: the 1-D operator of ``interpolate(mode='linear', align_corners=False)``.
    2-D bilinear interpolation is the separable product of two of them."""
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in)  # n_in unit signals
    up = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)  # [n_in, 1, n_out]
    return up[:, 0, :].T.contiguous()


@dataclass(frozen=True)
class LayerSpec:
    name: str
    channels: int
    size: Size


class MapLayout:
    """Layers of one model grouped by map size; channel offsets in layer order."""

    def __init__(self, acts: Mapping[str, torch.Tensor]) -> None:
        self.layers = [LayerSpec(n, int(t.shape[1]), (int(t.shape[2]), int(t.shape[3]))) for n, t in acts.items()]
        self.sizes: list[Size] = list(dict.fromkeys(spec.size for spec in self.layers))
        self.by_size = {s: [spec for spec in self.layers if spec.size == s] for s in self.sizes}
        offsets, start = {}, 0
        for spec in self.layers:
            offsets[spec.name] = start
            start += spec.channels
        self.offsets, self.total = offsets, start
        # per size group: (global start, global stop, start within the group) of each layer
        self.ranges: dict[Size, list[tuple[int, int, int]]] = {}
        for size in self.sizes:
            local, spans = 0, []
            for spec in self.by_size[size]:
                spans.append((offsets[spec.name], offsets[spec.name] + spec.channels, local))
                local += spec.channels
            self.ranges[size] = spans
        # where each size group starts in the concatenation of the groups (in ``sizes`` order)
        self.group_start: dict[Size, int] = {}
        start = 0
        for size in self.sizes:
            self.group_start[size] = start
            start += sum(spec.channels for spec in self.by_size[size])
        # global (layer-order) channel index of every channel in a size group's concatenation
        self.index = {
            s: torch.cat(
                [torch.arange(offsets[spec.name], offsets[spec.name] + spec.channels) for spec in self.by_size[s]]
            )
            for s in self.sizes
        }

    def check(self, acts: Mapping[str, torch.Tensor], what: str) -> None:
        got = [(n, tuple(t.shape[1:])) for n, t in acts.items()]
        want = [(spec.name, (spec.channels, *spec.size)) for spec in self.layers]
        if got != want:
            raise ValueError(f"{what} activations changed layout between batches: expected {want}, got {got}")

    def grouped(self, acts: Mapping[str, torch.Tensor], shift: dict[Size, torch.Tensor]) -> dict[Size, torch.Tensor]:
        """Shifted float32 maps concatenated per size, channel-first: {size: [C_size, B, h, w]}."""
        return {s: self.grouped_rows(acts, s, shift[s], (0, len(self.index[s]))) for s in self.sizes}

    def grouped_rows(
        self, acts: Mapping[str, torch.Tensor], size: Size, shift: torch.Tensor, rows: tuple[int, int]
    ) -> torch.Tensor:
        """Channels [r0, r1) of one size group, shifted, float32, channel-first [r1 - r0, B, h, w], written in
        one pass (no separate concatenation or transpose copies)."""
        r0, r1 = rows
        first = acts[self.by_size[size][0].name]
        x = torch.empty(r1 - r0, first.shape[0], *size, dtype=torch.float32, device=first.device)
        for spec, (_, _, local) in zip(self.by_size[size], self.ranges[size], strict=True):
            lo, hi = max(r0, local), min(r1, local + spec.channels)
            if lo < hi:
                src = acts[spec.name][:, lo - local : hi - local].float().transpose(0, 1)
                torch.sub(src, shift[lo:hi].view(-1, 1, 1, 1), out=x[lo - r0 : hi - r0])
        return x


class GroupBatch:
    """One size group's shifted maps of one batch, x [C, B, h, w] (channel-first), and sums over it that
    several pairs need (each computed once, float32 on near-centred data; accumulated in float64)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    @cached_property
    def total(self) -> torch.Tensor:
        return self.x.reshape(self.x.shape[0], -1).sum(dim=1).double()

    @cached_property
    def squares(self) -> torch.Tensor:
        return torch.linalg.vector_norm(self.x.reshape(self.x.shape[0], -1), dim=1).double().square()

    @cached_property
    def plane(self) -> torch.Tensor:
        """[C, h, w]: summed over the images."""
        return self.x.sum(dim=1).double()


def _pair_terms(
    batch: GroupBatch, own: Size, other: Size, need_sq: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """For one group's shifted maps paired with maps of size ``other``:

    Returns:
        gemm operand [C, B * m] at m = min size (dims where x is larger go through the adjoint of the
        other side's upsampling); the sum [C] over images and P of the (upsampled) maps; for pearson, their
        sum of squares [C] (a quadratic form with U^T U where x is upsampled), else None.
    """
    x = batch.x
    gemm = _project(x, own, other).reshape(x.shape[0], -1)
    if own[0] >= other[0] and own[1] >= other[1]:
        return gemm, batch.total, batch.squares if need_sq else None
    # x itself is upsampled along h and/or w: sums over P weight its native positions by U's column sums
    weights = [
        _upsample_1d(n_own, n_other).sum(0) if n_own < n_other else torch.ones(n_own, dtype=torch.float64)
        for n_own, n_other in zip(own, other)
    ]
    wsum = torch.einsum("chw,h,w->c", batch.plane, *(w.to(x.device) for w in weights))
    return gemm, wsum, _upsampled_squares(x, own, other) if need_sq else None


def _along(t: torch.Tensor, dim: int, mat: torch.Tensor) -> torch.Tensor:
    """Applies mat [n, n'] along h (dim 2) or w (dim 3) of t [C, B, h, w]; the result stays contiguous."""
    return torch.matmul(mat.T, t) if dim == 2 else torch.matmul(t, mat)


def _project(x: torch.Tensor, own: Size, other: Size) -> torch.Tensor:
    """x at min(own, other) per dimension: where the other side is upsampled to our size, x goes through the
    adjoint of that upsampling."""
    adj = [
        _upsample_1d(n_other, n_own).to(x.device, torch.float32) if n_own > n_other else None  # [n_own, n_other]
        for n_own, n_other in zip(own, other)
    ]
    if adj[0] is not None and adj[1] is not None and own[0] * own[1] * other[0] * other[1] <= KRON_MAX:
        # small maps: both dimensions in one GEMM (measured fastest on the CPU)
        return (x.reshape(-1, own[0] * own[1]) @ torch.kron(adj[0], adj[1])).view(*x.shape[:2], *other)
    for dim, a in ((3, adj[1]), (2, adj[0])):
        if a is not None:
            x = _along(x, dim, a)
    return x


def _upsampled_squares(x: torch.Tensor, own: Size, other: Size) -> torch.Tensor:
    """Sum over images and P of the squared upsampled maps, per channel: the quadratic form with U^T U."""
    form = x
    for dim, (n_own, n_other) in ((2, (own[0], other[0])), (3, (own[1], other[1]))):
        if n_own < n_other:
            up = _upsample_1d(n_own, n_other)
            form = _along(form, dim, (up.T @ up).to(x.device, torch.float32))  # symmetric
    return (x * form).sum(dim=(1, 2, 3)).double()


def _accumulate_product(acc: torch.Tensor, left: torch.Tensor, right: torch.Tensor, assign: bool = False) -> None:
    """acc [M, N] float32 += left [M, K] @ right [N, K]^T (``assign``: =, acc's old content ignored): one GEMM
    that adds into ``acc``'s memory (a column range of the sums is a strided view the GEMM writes directly)."""
    acc.addmm_(left, right.T, beta=0.0 if assign else 1.0)


@lru_cache(maxsize=256)
def _shared_run(clip_sizes: tuple[Size, ...], a: Size) -> tuple[Size, ...]:
    """The CLIP sizes whose pairs with standalone size ``a`` share the standalone operand (the CLIP map is at
    least as large) when their column groups are adjacent: one GEMM with their CLIP operands stacked covers
    them. Empty when fewer than two or not adjacent. Depends on the layout only, so computed once per layout."""
    shared = [b for b in clip_sizes if a[0] <= b[0] and a[1] <= b[1]]
    positions = [clip_sizes.index(b) for b in shared]
    adjacent = positions == list(range(positions[0], positions[0] + len(shared))) if shared else False
    return tuple(shared) if len(shared) > 1 and adjacent else ()


def _sum_fields(state: ChannelSums | PairSums | CrossSums) -> list[str]:
    """Names of the fields that are sums (added when merging or reducing; every field but ``shift``)."""
    return [f.name for f in fields(state) if f.name != "shift" and getattr(state, f.name) is not None]


@dataclass
class ChannelSums:
    """One model's channels of one map size, summed at their own resolution around ``shift``."""

    shift: torch.Tensor  # [C] float32: the first batch's channel means (x - shift is exact near them)
    n: torch.Tensor  # () float64: values per channel folded in (images x positions)
    total: torch.Tensor  # [C] float64: sum of (x - shift)
    squares: torch.Tensor  # [C] float64: sum of (x - shift)^2

    @classmethod
    def zeros(cls, channels: int, device: torch.device) -> ChannelSums:
        f64 = dict(dtype=torch.float64, device=device)
        return cls(torch.zeros(channels, device=device), torch.zeros((), **f64), *torch.zeros(2, channels, **f64))

    def fold(self, batch: GroupBatch, rows: tuple[int, int] | None = None) -> None:
        """Adds one batch of this group's shifted maps, or of channels ``rows`` = (r0, r1) of it (then the
        caller counts the batch once in ``n``)."""
        if rows is None:
            self.n += batch.x[0].numel()
            rows = (0, len(self.total))
        self.total[rows[0] : rows[1]] += batch.total
        self.squares[rows[0] : rows[1]] += batch.squares

    def reshift(self, new_shift: torch.Tensor) -> torch.Tensor:
        """Re-expresses the sums around ``new_shift`` (exact); returns delta = old - new shift, float64."""
        delta = self.shift.double() - new_shift.double()  # (x - new) = (x - old) + delta
        self.squares += 2 * delta * self.total + self.n * delta * delta
        self.total += self.n * delta
        self.shift = new_shift.to(self.shift.dtype)
        return delta

    def recentred(self, batch_mean: torch.Tensor, count: int) -> torch.Tensor:
        """The shift to fold the next batch around, given its channel means over ``count`` values each: the
        current shift, or the means with that batch when some channel's would lie further than ``DRIFT`` stds
        from it. The std leaves out the batch's own spread (a lower bound), so the test errs towards
        re-shifting; near-constant channels never trigger it."""
        n = float(self.n)
        shifted_r = self.total / n
        var_r = (self.squares / n - shifted_r * shifted_r).clamp_min(0.0)
        d = batch_mean.double() - self.shift.double() - shifted_r
        w = count / (n + count)
        shifted = shifted_r + w * d  # the mean with the batch, relative to the shift
        var = (1.0 - w) * (var_r + w * d * d)  # n var_r + n (w d)^2 + count ((1 - w) d)^2, over n + count
        mean = shifted + self.shift.double()
        far = shifted.abs() > DRIFT * var.sqrt() + 1e-6 * (1.0 + mean.abs())
        return mean.float() if bool(far.any()) else self.shift

    def moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean - shift, mean, population std) per channel, float64."""
        shifted = self.total / self.n
        var = (self.squares / self.n - shifted * shifted).clamp_min(0.0)
        return shifted, shifted + self.shift.double(), var.sqrt()


@dataclass
class PairSums:
    """One (standalone size a, CLIP size b) pair on the common grid P = max(a, b) per dimension; the maps
    are the shifted ones of ``ChannelSums``, the smaller one upsampled to P."""

    n: torch.Tensor  # () float64: images x |P|
    sum_s: torch.Tensor  # [C_s] sums over images and P
    sum_c: torch.Tensor  # [C_c]
    sq_s: torch.Tensor | None = None  # pearson only: sums of squares over images and P
    sq_c: torch.Tensor | None = None
    # the pair's sums of products are the columns of group b in the CrossSums of size a

    @classmethod
    def zeros(cls, cs: int, cc: int, pearson: bool, device: torch.device) -> PairSums:
        f64 = dict(dtype=torch.float64, device=device)
        sq = (torch.zeros(cs, **f64), torch.zeros(cc, **f64)) if pearson else (None, None)
        return cls(torch.zeros((), **f64), torch.zeros(cs, **f64), torch.zeros(cc, **f64), *sq)

    def fold_clip(self, images: int, sizes: tuple[Size, Size], wc: torch.Tensor, sqc: torch.Tensor | None) -> None:
        """Adds one batch's count and CLIP-side sums (``_pair_terms`` of the CLIP group)."""
        (a, b) = sizes
        self.n += images * max(a[0], b[0]) * max(a[1], b[1])
        self.sum_c += wc
        if self.sq_c is not None:
            self.sq_c += sqc

    def fold_rows(self, rows: tuple[int, int], ws: torch.Tensor, sqs: torch.Tensor | None) -> None:
        """Adds one batch's standalone-side sums of channels rows = (r0, r1)."""
        self.sum_s[rows[0] : rows[1]] += ws
        if self.sq_s is not None:
            self.sq_s[rows[0] : rows[1]] += sqs

    def reshift(self, ds: torch.Tensor, dc: torch.Tensor, cross: list[tuple[int, torch.Tensor]]) -> None:
        """The sums (and the pair's cross sums, given as (first row, block view) pieces) around new shifts,
        given each side's delta = old - new shift (in place; the temporaries are per channel)."""
        n = float(self.n)
        if cross and (ds.any() or dc.any()):  # before sum_s and sum_c move: the products need the old sums
            # sum (s + ds)(c + dc) = sum s c + ds sum_c + sum_s dc + n ds dc: one rank-3 update per block
            left = torch.stack([ds, self.sum_s, n * ds], dim=1).float()
            right = torch.stack([self.sum_c, dc, dc], dim=1).float()
            for r0, block in cross:
                block.addmm_(left[r0 : r0 + block.shape[0]], right.T)
        if self.sq_s is not None:
            self.sq_s += 2 * ds * self.sum_s + n * ds * ds
            self.sq_c += 2 * dc * self.sum_c + n * dc * dc
        self.sum_s += n * ds
        self.sum_c += n * dc

    def normalizers(
        self, score: str, s_stats: tuple[torch.Tensor, ...], c_stats: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U [C_s, 2], V [C_c, 2], row scale [C_s], column scale [C_c]): Z's block = diag(row) (cross + U V^T)
        diag(column); invalid channels get scale 0. ``*_stats``: ``ChannelSums.moments()`` of each side."""
        (ms_native, mu_s, sd_s), (mc_native, mu_c, sd_c) = s_stats, c_stats
        n = self.n
        mean_s, mean_c = self.sum_s / n, self.sum_c / n
        # centred about the P-grid means, then (reference) moved to the dataset means: (U s - mu) =
        # (U s - mean_P) + (mean_P - mu), both means relative to the same shift
        u = torch.stack([self.sum_s, n * (mean_s - ms_native)], dim=1)
        v = torch.stack([-mean_c, mean_c - mc_native], dim=1)
        if score == "reference":
            scale_s, scale_c = sd_s, sd_c
            valid_s, valid_c = ~near_constant(mu_s, sd_s), ~near_constant(mu_c, sd_c)
        else:
            u[:, 1] = 0.0
            scale_s = (self.sq_s / n - mean_s**2).clamp_min(0.0).sqrt()
            scale_c = (self.sq_c / n - mean_c**2).clamp_min(0.0).sqrt()
            valid_s = ~near_constant(mu_s, sd_s) & ~near_constant(mean_s, scale_s)
            valid_c = ~near_constant(mu_c, sd_c) & ~near_constant(mean_c, scale_c)
        row = torch.where(valid_s, 1.0 / (n * scale_s).clamp_min(TINY), 0.0)
        col = torch.where(valid_c, 1.0 / scale_c.clamp_min(TINY), 0.0)
        return u, v, row, col


@dataclass
class CrossSums:
    """The sums of products of a block of one standalone size group's channels with every CLIP channel."""

    cross: torch.Tensor  # [rows, C_clip] float32; columns: CLIP size groups in MapLayout.sizes order
