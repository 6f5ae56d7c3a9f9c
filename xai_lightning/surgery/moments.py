"""Single-pass, mergeable running sums for the matching score ``Z`` (docs/design.md).

For standalone channel i (map a = h_i x w_i) and CLIP channel j (map b), with P the larger size per
dimension and U, V the bilinear (align_corners=False) upsampling of the smaller map to P:

    Z_ij = mean_{n,p} ((U s_i)_p - mu_i) / sigma_i * ((V c_j)_p - nu_j) / tau_j

with mu, sigma the exact dataset mean and population std of each channel at its own resolution.
Everything follows from sums gathered in ONE pass:

* Rows of U sum to 1, so (U s - mu) = U (s - mu): statistics are needed only at the end.
* sum_p (U s)_p c_p = sum_q s_q (U^T c)_q: the larger map is projected through the adjoint of the
  smaller map's upsampling (separable: one small matrix per dimension) and the GEMM runs at the
  smaller resolution. Sums of upsampled maps are weighted sums at the native resolution (weights
  U^T 1), and squared norms of upsampled maps are quadratic forms with U^T U (for ``pearson``).
* Cancellation (|mean| >> std): every channel is shifted by a constant K (its first batch's mean,
  float32, so x - K is exact by Sterbenz' lemma). Per-channel sums accumulate in float64; the sums of
  products (the large state) accumulate in float32 straight from the GEMM (``addmm_``: no float32 product
  is converted into float64). That is as exact as the float32 GEMM itself while every channel's mean stays
  within ``DRIFT`` standard deviations of its shift: rounding is relative to sum (x - K)(y - L), about
  n * sigma_x * sigma_y * (1 + r_x * r_y) with r = |mean - K| / sigma. Before each batch is folded in, the
  means with it are checked (one read of the batch); where some channel's would drift further (an
  unrepresentative first batch), the sums of its size group are re-expressed around them (``_recentre``).
  Two sets of sums with different shifts combine exactly by re-shifting one of them, so batches and
  DDP ranks combine without loss (``all_reduce``).

Layers of equal map size are concatenated, so each (standalone size, CLIP size) pair is one large GEMM
that adds its product into its columns of the sums (``_accumulate_product``): no product the size of the
sums is ever allocated.

Pairs whose GEMM runs at the standalone size (the CLIP map is the larger one) share the standalone operand,
so their CLIP operands are stacked into one wider GEMM; the cross sums of one standalone size are one
matrix whose columns are the CLIP size groups, so that GEMM writes one column range.

The state is named: ``ChannelSums`` per model and map size, ``PairSums`` per pair of sizes, ``CrossSums``
per standalone size. Every field but ``shift`` is a sum, so merging, reducing over ranks and checkpointing
iterate the fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

import torch

from xai_lightning.surgery.sums import (
    BLOCK_ROWS,
    CHUNK_BYTES,
    SCORES,
    ChannelSums,
    CrossSums,
    GroupBatch,
    MapLayout,
    PairSums,
    Size,
    SumFn,
    _accumulate_product,
    _pair_terms,
    _shared_run,
    _sum_fields,
    full_float32,
    near_constant,
)


class CrossMoments:
    """Running sums from which ``Z`` and the per-channel statistics follow exactly.

    Feed aligned batches with ``update(standalone_acts, clip_acts)`` (dicts ``{layer: [B, C, H, W]}``,
    the same images in both); combine ranks with ``all_reduce(sum_fn)`` (DDP: ``sum_fn`` sums a tensor over
    ranks); read ``stats()``, then ``take_scores()`` (``Z`` computed inside the cross sums' memory, which it
    leaves ``consumed``: what the surgery does) or ``scores()`` (a copy; the sums stay usable).
    """

    def __init__(self, score: str = "reference") -> None:
        self._clear(score)

    def _clear(self, score: str) -> None:
        """No layout and no sums (a new object, or before a checkpoint's state is loaded)."""
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; allowed: {', '.join(SCORES)}")
        self.score = score
        self.standalone_layout: MapLayout | None = None
        self.clip_layout: MapLayout | None = None
        self.s_sums: dict[Size, ChannelSums] = {}
        self.c_sums: dict[Size, ChannelSums] = {}
        self.pairs: dict[tuple[Size, Size], PairSums] = {}
        self.crosses: dict[tuple[Size, int], CrossSums] = {}  # by (standalone size, first channel of the block)
        self.batches = 0  # folded in since the layout was set or reset() (merged and reduced ones included)
        self.consumed = False  # take_scores() handed the cross sums' memory to Z; reset() re-creates them

    # ---- layout -------------------------------------------------------------------------------
    @property
    def has_layout(self) -> bool:
        return self.standalone_layout is not None

    def _set_layout(self, standalone: MapLayout, clip: MapLayout, device: torch.device) -> None:
        self.standalone_layout, self.clip_layout = standalone, clip
        self.s_sums = {a: ChannelSums.zeros(len(standalone.index[a]), device) for a in standalone.sizes}
        self.c_sums = {b: ChannelSums.zeros(len(clip.index[b]), device) for b in clip.sizes}
        self._new_pair_sums(device)
        self.batches = 0

    def _new_pair_sums(self, device: torch.device) -> None:
        s, c = self.standalone_layout, self.clip_layout
        pearson = self.score == "pearson"
        self.pairs = {
            (a, b): PairSums.zeros(len(s.index[a]), len(c.index[b]), pearson, device) for a in s.sizes for b in c.sizes
        }
        # empty: the first batch assigns them (the largest state: no fill, no page touched twice)
        self.crosses = {
            (a, r0): CrossSums(torch.empty(r1 - r0, c.total, device=device))
            for a in s.sizes
            for r0, r1 in self._row_blocks(a)
        }
        self.consumed = False

    def init_layout(self, acts: tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]) -> None:
        """Zero sums with the layout of these (possibly empty) activations, e.g. for a DDP rank that saw no
        data but must join ``all_reduce``."""
        if not self.has_layout:
            device = next(iter(acts[0].values())).device
            self._set_layout(MapLayout(acts[0]), MapLayout(acts[1]), device)

    def _states(self) -> list[ChannelSums | PairSums | CrossSums]:
        return [*self.s_sums.values(), *self.c_sums.values(), *self.pairs.values(), *self.crosses.values()]

    def _row_blocks(self, a: Size) -> list[tuple[int, int]]:
        """(first, last + 1) channel of each stored block of size group ``a``."""
        n = len(self.standalone_layout.index[a])
        return [(r0, min(r0 + BLOCK_ROWS, n)) for r0 in range(0, n, BLOCK_ROWS)]

    def _columns(self, b: Size) -> slice:
        """The columns of CLIP size group ``b`` in every ``CrossSums``."""
        start = self.clip_layout.group_start[b]
        return slice(start, start + len(self.clip_layout.index[b]))

    def _pair_blocks(self, a: Size, b: Size) -> list[tuple[int, torch.Tensor]]:
        """The cross sums of pair (a, b) as (first row, view) pieces, one per stored block."""
        return [(r0, self.crosses[(a, r0)].cross[:, self._columns(b)]) for r0, _ in self._row_blocks(a)]

    def _usable(self, what: str, needs_data: bool = False) -> None:
        if not self.has_layout or (needs_data and self.batches == 0):
            raise RuntimeError(f"{what}: no data folded in yet")
        if self.consumed:
            raise RuntimeError(f"{what}: take_scores() consumed these sums; call reset() first")

    def reset(self) -> None:
        """Forget the sums but keep the layout and the buffers (no re-allocation between epochs; the cross sums
        are re-created after ``take_scores()``); the next batch sets fresh shifts and assigns the cross sums."""
        if not self.has_layout:
            return
        if self.consumed:
            self._new_pair_sums(next(iter(self.s_sums.values())).n.device)
        for state in self._states():
            if not isinstance(state, CrossSums):  # valid only once batches > 0: the first batch assigns them
                for name in _sum_fields(state):
                    getattr(state, name).zero_()
        self.batches = 0

    def _zero_crosses_if_empty(self) -> None:
        """The cross sums hold whatever was there until the first batch assigns them: zero them where they
        are read with no batch folded in (a rank that saw no data joining a reduction, a checkpoint)."""
        if self.batches == 0:
            for state in self.crosses.values():
                state.cross.zero_()

    @property
    def count(self) -> float:
        """Number of images folded in so far."""
        if not self.has_layout:
            return 0.0
        size, sums = next(iter(self.s_sums.items()))
        return float(sums.n) / (size[0] * size[1])

    # ---- accumulation -------------------------------------------------------------------------
    @torch.no_grad()
    @full_float32()
    def update(self, standalone: Mapping[str, torch.Tensor], clip: Mapping[str, torch.Tensor]) -> None:
        """Fold one batch in. Both dicts hold [B, C, H, W] maps of the same B images."""
        if not standalone or not clip:
            raise ValueError("update needs at least one standalone and one CLIP layer")
        batch = {int(t.shape[0]) for t in (*standalone.values(), *clip.values())}
        if len(batch) != 1:
            raise ValueError(f"standalone and CLIP activations disagree on the batch size: {sorted(batch)}")
        self.init_layout((standalone, clip))
        self._usable("update")
        self.standalone_layout.check(standalone, "standalone")
        self.clip_layout.check(clip, "CLIP")
        if self.batches == 0:  # the first batch sets the shifts
            self._set_shifts(standalone, clip)
        else:
            self._recentre(standalone, clip)
        shifts = {b: sums.shift for b, sums in self.c_sums.items()}
        c_maps = {b: GroupBatch(x) for b, x in self.clip_layout.grouped(clip, shifts).items()}  # CLIP maps are few
        for b, group in c_maps.items():
            self.c_sums[b].fold(group)
        images = next(iter(c_maps.values())).x.shape[1]
        for a, s_sums in self.s_sums.items():
            c_ops = {b: _pair_terms(group, b, a, self.score == "pearson") for b, group in c_maps.items()}
            for b, (_, wc, sqc) in c_ops.items():
                self.pairs[(a, b)].fold_clip(images, (a, b), wc, sqc)
            s_sums.n += images * a[0] * a[1]
            shared = _shared_run(tuple(self.clip_layout.sizes), a)
            right = torch.cat([c_ops[b][0] for b in shared]) if shared else None  # stacked CLIP operands
            rows = max(1, CHUNK_BYTES // (images * a[0] * a[1] * 4))  # channels folded at a time
            r0 = 0
            while r0 < len(s_sums.total):  # chunks never straddle a stored block
                r1 = min(r0 + rows, (r0 // BLOCK_ROWS + 1) * BLOCK_ROWS, len(s_sums.total))
                part = GroupBatch(self.standalone_layout.grouped_rows(standalone, a, s_sums.shift, (r0, r1)))
                s_sums.fold(part, (r0, r1))
                self._fold_rows(a, (r0, r1), part, c_ops, (shared, right))
                r0 = r1
        self.batches += 1

    def _fold_rows(
        self,
        a: Size,
        rows: tuple[int, int],
        part: GroupBatch,
        c_ops: Mapping[Size, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
        shared: tuple[tuple[Size, ...], torch.Tensor | None],
    ) -> None:
        """Adds channels rows = (r0, r1) of size group ``a`` (``part``) to every pair's sums and cross sums:
        one GEMM for the shared run, one per other pair (its standalone operand built, used and freed)."""
        first, pearson = self.batches == 0, self.score == "pearson"  # the first batch writes every cross sum
        block = rows[0] - rows[0] % BLOCK_ROWS
        cross = self.crosses[(a, block)].cross[rows[0] - block : rows[1] - block]
        for b in self.clip_layout.sizes:
            ys, ws, sqs = _pair_terms(part, a, b, pearson)
            self.pairs[(a, b)].fold_rows(rows, ws, sqs)
            if b not in shared[0]:
                start = self.clip_layout.group_start[b]
                _accumulate_product(cross[:, start : start + len(self.clip_layout.index[b])], ys, c_ops[b][0], first)
            del ys
        if shared[0]:
            start = self.clip_layout.group_start[shared[0][0]]
            stop = start + len(shared[1])
            _accumulate_product(cross[:, start:stop], part.x.reshape(part.x.shape[0], -1), shared[1], first)

    def _sides(self, s_acts: Mapping[str, torch.Tensor], c_acts: Mapping[str, torch.Tensor]) -> tuple:
        """(layout, per-size sums, this batch's activations) of the standalone model, then of CLIP."""
        return (self.standalone_layout, self.s_sums, s_acts), (self.clip_layout, self.c_sums, c_acts)

    def _set_shifts(self, s_acts: Mapping[str, torch.Tensor], c_acts: Mapping[str, torch.Tensor]) -> None:
        """Shift K = the batch mean per channel, float32 (so x - K is exact for x near K)."""
        for layout, sums, acts in self._sides(s_acts, c_acts):
            for size, state in sums.items():
                state.shift = _group_means(layout, acts, size)

    def _recentre(self, s_acts: Mapping[str, torch.Tensor], c_acts: Mapping[str, torch.Tensor]) -> bool:
        """Before a batch is folded in: re-expresses the sums of every size group where, with this batch, some
        channel's mean would lie more than ``DRIFT`` stds from its shift around those means (module docstring:
        keeps the float32 sums of products exact; one read of the batch for its means). Returns whether it did."""
        new = []
        for layout, sums, acts in self._sides(s_acts, c_acts):
            images = next(iter(acts.values())).shape[0]
            new.append(
                {
                    size: state.recentred(_group_means(layout, acts, size), images * size[0] * size[1])
                    for size, state in sums.items()
                }
            )
        sides = ((new[0], self.s_sums), (new[1], self.c_sums))
        if all(shifts[k] is sums[k].shift for shifts, sums in sides for k in sums):
            return False
        self._reshift(*new)
        return True

    def _reshift(self, s_shift: Mapping[Size, torch.Tensor], c_shift: Mapping[Size, torch.Tensor]) -> None:
        """Re-express every sum around new per-channel shifts (float64 per channel; the sums of products by one
        rank-3 float32 update per block)."""
        ds = {a: self.s_sums[a].reshift(s_shift[a]) for a in self.s_sums}
        dc = {b: self.c_sums[b].reshift(c_shift[b]) for b in self.c_sums}
        for (a, b), pair in self.pairs.items():
            pair.reshift(ds[a], dc[b], self._pair_blocks(a, b))

    @torch.no_grad()
    @full_float32()
    def all_reduce(self, sum_fn: SumFn) -> None:
        """Sums across processes. ``sum_fn(t)`` returns t summed over ranks (e.g. through the Lightning
        strategy). Two collectives: a tiny one agrees on a common shift (count-weighted mean of the
        ranks' shifts) and the batch count, then one packed buffer per dtype carries every sum. Every rank
        must call it."""
        if not self.has_layout:
            raise RuntimeError("all_reduce before any update: every rank needs at least one batch")
        self._usable("all_reduce")
        self._zero_crosses_if_empty()
        sides = [*self.s_sums.values(), *self.c_sums.values()]
        small = torch.cat([torch.cat([s.shift.double() * s.n, s.n.view(1)]) for s in sides])
        small = sum_fn(torch.cat([small, small.new_tensor([float(self.batches)])]))
        shifts, start = [], 0
        for s in sides:
            ch = s.shift.numel()
            shifts.append((small[start : start + ch] / small[start + ch].clamp_min(1.0)).to(s.shift.dtype))
            start += ch + 1
        self.batches = int(small[-1].item())
        n_s = len(self.s_sums)
        self._reshift(dict(zip(self.s_sums, shifts[:n_s])), dict(zip(self.c_sums, shifts[n_s:])))
        tensors = [getattr(state, name) for state in self._states() for name in _sum_fields(state)]
        for dtype in (torch.float64, torch.float32):  # one packed buffer per dtype: no sum is widened or narrowed
            group = [t for t in tensors if t.dtype == dtype]
            if not group:
                continue
            flat = sum_fn(torch.cat([t.reshape(-1) for t in group]))
            start = 0
            for t in group:
                t.copy_(flat[start : start + t.numel()].view_as(t))
                start += t.numel()

    # ---- results ------------------------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per-channel statistics in layer order: ``{"standalone"|"clip": {"mean", "std", "valid": [n]}}``."""
        self._usable("stats")
        out = {}
        for layout, sums, label in (
            (self.standalone_layout, self.s_sums, "standalone"),
            (self.clip_layout, self.c_sums, "clip"),
        ):
            device = next(iter(sums.values())).total.device
            mean = torch.empty(layout.total, dtype=torch.float64, device=device)
            std = torch.empty_like(mean)
            for size, state in sums.items():
                _, mu, sd = state.moments()
                idx = layout.index[size].to(device)
                mean[idx], std[idx] = mu, sd
            out[label] = {"mean": mean, "std": std, "valid": ~near_constant(mean, std)}
        return out

    @torch.no_grad()
    def scores(self) -> torch.Tensor:
        """``Z`` [n_standalone_channels, n_clip_channels] float32, rows/columns in layer then channel order.
        Rows and columns of near-constant channels are 0. The sums are unchanged."""
        self._usable("scores", needs_data=True)
        return self._scores(consume=False)

    @torch.no_grad()
    def take_scores(self) -> torch.Tensor:
        """``scores()`` computed inside the cross sums' buffers, each freed once written to ``Z``: peak memory
        the sums plus little, not the sums plus ``Z``. Afterwards ``consumed`` is True and ``update``,
        ``scores`` and ``merge`` raise until ``reset()``."""
        self._usable("take_scores", needs_data=True)
        z = self._scores(consume=True)
        self.consumed = True
        return z

    @full_float32()
    def _scores(self, consume: bool) -> torch.Tensor:
        s_stats = {a: s.moments() for a, s in self.s_sums.items()}
        c_stats = {b: s.moments() for b, s in self.c_sums.items()}
        device = next(iter(self.crosses.values())).cross.device
        # empty, not zeros: every entry is written below, and untouched pages cost no memory until then
        z = torch.empty(self.standalone_layout.total, self.clip_layout.total, dtype=torch.float32, device=device)
        for a in self.standalone_layout.sizes:
            norms = {b: self.pairs[(a, b)].normalizers(self.score, s_stats[a], c_stats[b]) for b in c_stats}
            for rows in self._row_blocks(a):
                self._write_rows(z, a, rows, norms, consume)
                if consume:  # hands the block's memory back before the next block's rows of Z are written
                    self.crosses[(a, rows[0])].cross = self.crosses[(a, rows[0])].cross.new_empty(0)
        return z

    def _write_rows(self, z: torch.Tensor, a: Size, rows: tuple[int, int], norms: dict, consume: bool) -> None:
        """Normalizes one stored block of size group ``a`` (its rows of every pair: diag(row) (cross + U V^T)
        diag(column)) and writes it to its places in ``z``; in the block's own memory when ``consume``."""
        r0, r1 = rows
        block = self.crosses[(a, r0)].cross
        block = block if consume else block.clone()
        for b, (u, v, row, col) in norms.items():  # float32: the centring terms are small next to the sums
            part = block[:, self._columns(b)]
            part.addmm_(u[r0:r1].float(), v.T.float()).mul_(row[r0:r1, None].float()).mul_(col.float())
        for g0, g1, local in self.standalone_layout.ranges[a]:  # the block's rows, layer by layer
            lo, hi = max(r0, local), min(r1, local + g1 - g0)
            if lo >= hi:
                continue
            for b in norms:
                for c0, c1, j in self.clip_layout.ranges[b]:
                    col0 = self._columns(b).start + j
                    z[g0 + lo - local : g0 + hi - local, c0:c1] = block[lo - r0 : hi - r0, col0 : col0 + c1 - c0]

    # ---- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if not self.has_layout:
            return {"score": self.score, "layers": None}
        self._usable("state_dict")
        self._zero_crosses_if_empty()
        return {
            "score": self.score,
            "layers": {
                "standalone": [(x.name, x.channels, x.size) for x in self.standalone_layout.layers],
                "clip": [(x.name, x.channels, x.size) for x in self.clip_layout.layers],
            },
            "batches": self.batches,
            "sums": [{k: None if t is None else t.cpu() for k, t in vars(s).items()} for s in self._states()],
        }

    def load_state_dict(self, sd: dict) -> None:
        self._clear(sd["score"])
        if sd["layers"] is None:
            return
        meta = [{n: torch.empty(1, c, *size) for n, c, size in sd["layers"][side]} for side in ("standalone", "clip")]
        self._set_layout(MapLayout(meta[0]), MapLayout(meta[1]), torch.device("cpu"))
        for state, saved in zip(self._states(), sd["sums"], strict=True):
            for name, value in saved.items():  # in this version's dtypes (older checkpoints: float64 cross sums)
                if value is not None:
                    fresh = getattr(state, name)
                    value = value.to(value.dtype if fresh is None else fresh.dtype, copy=True)
                setattr(state, name, value)
        self.batches = int(sd["batches"])


def _group_means(layout: MapLayout, acts: Mapping[str, torch.Tensor], size: Size) -> torch.Tensor:
    """The batch's per-channel means of one size group, float32, in the group's channel order."""
    return torch.cat([acts[spec.name].detach().float().mean(dim=(0, 2, 3)) for spec in layout.by_size[size]])


def _values(state: ChannelSums | PairSums | CrossSums) -> list[torch.Tensor | None]:
    return [getattr(state, f.name) for f in fields(state)]


def matching_scores(standalone_batches, clip_batches, score: str = "reference") -> torch.Tensor:
    """``Z`` from aligned iterables of activation dicts ``{layer: Tensor[B, C, H, W]}`` in one pass.

    Args:
        standalone_batches: batches of the standalone model's maps (same layers in every batch).
        clip_batches: CLIP's maps of the same images, batch for batch.
        score: ``reference`` (the paper's formula with exact statistics) or ``pearson``.

    Returns:
        Tensor [n_s, n_c] float32, rows/columns in layer order, then channel order.
    """
    moments = CrossMoments(score)
    n_batches = 0
    for s_acts, c_acts in zip(standalone_batches, clip_batches, strict=True):
        moments.update(s_acts, c_acts)
        n_batches += 1
    if n_batches == 0:
        raise ValueError("matching_scores got no batches")
    return moments.take_scores()
