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
  float32, so x - K is exact by Sterbenz' lemma); sums of shifted values accumulate in float64.
  Two sets of sums with different shifts merge exactly by re-shifting one of them, so batches and
  DDP ranks combine without loss (``merge``, ``all_reduce``).

Channels layers of equal map size are concatenated, so each (standalone size, CLIP size) pair is
one large GEMM.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

SCORES = ("reference", "pearson")
Size = tuple[int, int]
SumFn = Callable[[torch.Tensor], torch.Tensor]


def near_constant(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Channels that carry no signal: std <= 1e-6 * (1 + |mean|). They are never matched or swapped."""
    return std <= 1e-6 * (1.0 + mean.abs())


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


class _Side:
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

    def grouped(
        self, acts: Mapping[str, torch.Tensor], shift: dict[Size, torch.Tensor], sizes: list[Size] | None = None
    ) -> dict[Size, torch.Tensor]:
        """Shifted float32 maps concatenated per size, channel-first: {size: [C_size, B, h, w]}, written in
        one pass (no separate concatenation or transpose copies)."""
        out = {}
        for s in sizes or self.sizes:
            first = acts[self.by_size[s][0].name]
            total = sum(spec.channels for spec in self.by_size[s])
            x = torch.empty(total, first.shape[0], *s, dtype=torch.float32, device=first.device)
            start = 0
            for spec in self.by_size[s]:
                stop = start + spec.channels
                torch.sub(
                    acts[spec.name].float().transpose(0, 1), shift[s][start:stop].view(-1, 1, 1, 1), out=x[start:stop]
                )
                start = stop
            out[s] = x
        return out


def _pair_terms(
    x: torch.Tensor, own: Size, other: Size, need_sq: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """For shifted maps x [C, B, h, w] (channel-first) paired with maps of size ``other``:

    Returns:
        gemm operand [C, B * m] at m = min size (dims where x is larger go through the adjoint of the
        other side's upsampling); the sum [C] over images and P of the upsampled maps, or None when x
        is not upsampled (then it is x's plain sum); for pearson, the sum of squares [C] of the upsampled
        maps (quadratic form with U^T U), None likewise.
    Per-batch sums are float32 on shifted (near-centred) data; the caller accumulates them in float64.
    """
    dev = x.device
    y = x
    weighted, sq_form = x, x
    upsampled = False

    def along(t: torch.Tensor, dim: int, mat: torch.Tensor) -> torch.Tensor:  # apply mat [n, n'] along h or w
        return torch.matmul(mat.T, t) if dim == 2 else torch.matmul(t, mat)  # stays contiguous

    adj = [
        _upsample_1d(n_other, n_own).to(dev, torch.float32) if n_own > n_other else None  # [n_own, n_other]
        for n_own, n_other in ((own[0], other[0]), (own[1], other[1]))
    ]
    if adj[0] is not None and adj[1] is not None and own[0] * own[1] * other[0] * other[1] <= 10_000:
        # small maps: both dimensions in one GEMM with the Kronecker product (measured fastest on CPU)
        y = (y.reshape(-1, own[0] * own[1]) @ torch.kron(adj[0], adj[1])).view(y.shape[0], y.shape[1], *other)
    else:
        for dim, a in ((3, adj[1]), (2, adj[0])):
            if a is not None:  # the other side is upsampled to our size: project x through its adjoint
                y = along(y, dim, a)
    for dim, (n_own, n_other) in ((2, (own[0], other[0])), (3, (own[1], other[1]))):
        if n_own < n_other:  # x itself is upsampled: column sums weight its native positions
            upsampled = True
            up = _upsample_1d(n_own, n_other)
            shape = [1, 1, 1, 1]
            shape[dim] = n_own
            weighted = weighted * up.sum(0).to(dev, torch.float32).view(shape)
            if need_sq:
                sq_form = along(sq_form, dim, (up.T @ up).to(dev, torch.float32))  # U^T U, symmetric
    gemm = y.reshape(y.shape[0], -1)
    if not upsampled:
        return gemm, None, None
    wsum = weighted.sum(dim=(1, 2, 3)).double()
    sq = (x * sq_form).sum(dim=(1, 2, 3)).double() if need_sq else None
    return gemm, wsum, sq


class CrossMoments:
    """Running sums from which ``Z`` and the per-channel statistics follow exactly.

    Feed aligned batches with ``update(standalone_acts, clip_acts)`` (dicts ``{layer: [B, C, H, W]}``,
    the same images in both); combine with ``merge`` (another process's or shard's sums) or
    ``all_reduce(sum_fn)`` (DDP: ``sum_fn`` sums a tensor over ranks); read ``scores()`` and ``stats()``.
    """

    def __init__(self, score: str = "reference") -> None:
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; allowed: {', '.join(SCORES)}")
        self.score = score
        self.s: _Side | None = None
        self.c: _Side | None = None
        self.state: dict[str, torch.Tensor] = {}
        self._fresh = True

    # ---- state layout -------------------------------------------------------------------------
    def _keys(self) -> list[str]:
        assert self.s is not None and self.c is not None
        keys = []
        for tag, side in (("s", self.s), ("c", self.c)):
            for size in side.sizes:
                keys += [f"{tag}{size}.shift", f"{tag}{size}.n", f"{tag}{size}.sum", f"{tag}{size}.sumsq"]
        for a in self.s.sizes:
            for b in self.c.sizes:
                keys += [f"{a}x{b}.n", f"{a}x{b}.sum_s", f"{a}x{b}.sum_c", f"{a}x{b}.cross"]
                if self.score == "pearson":
                    keys += [f"{a}x{b}.sq_s", f"{a}x{b}.sq_c"]
        return keys

    def _init(self, s_acts: Mapping[str, torch.Tensor], c_acts: Mapping[str, torch.Tensor]) -> None:
        self.s, self.c = _Side(s_acts), _Side(c_acts)
        dev = next(iter(s_acts.values())).device
        f64 = dict(device=dev, dtype=torch.float64)
        st: dict[str, torch.Tensor] = {}
        for tag, side in (("s", self.s), ("c", self.c)):
            for size in side.sizes:
                ch = sum(spec.channels for spec in side.by_size[size])
                st[f"{tag}{size}.shift"] = torch.zeros(ch, device=dev)
                st[f"{tag}{size}.n"] = torch.zeros((), **f64)
                st[f"{tag}{size}.sum"] = torch.zeros(ch, **f64)
                st[f"{tag}{size}.sumsq"] = torch.zeros(ch, **f64)
        for a in self.s.sizes:
            cs = len(self.s.index[a])
            for b in self.c.sizes:
                cc = len(self.c.index[b])
                st[f"{a}x{b}.n"] = torch.zeros((), **f64)
                st[f"{a}x{b}.sum_s"] = torch.zeros(cs, **f64)
                st[f"{a}x{b}.sum_c"] = torch.zeros(cc, **f64)
                st[f"{a}x{b}.cross"] = torch.zeros(cs, cc, **f64)
                if self.score == "pearson":
                    st[f"{a}x{b}.sq_s"] = torch.zeros(cs, **f64)
                    st[f"{a}x{b}.sq_c"] = torch.zeros(cc, **f64)
        self.state = st
        self._fresh = True

    def init_layout(self, acts: tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]) -> None:
        """Zero sums with the layout of these (possibly empty) activations, e.g. for a DDP rank that saw no
        data but must join ``all_reduce``."""
        if self.s is None:
            self._init(*acts)

    def _set_shifts(self, s_acts: Mapping[str, torch.Tensor], c_acts: Mapping[str, torch.Tensor]) -> None:
        """Shift K = the batch mean per channel, float32 (so x - K is exact for x near K)."""
        for tag, side, acts in (("s", self.s, s_acts), ("c", self.c, c_acts)):
            for size in side.sizes:
                self.state[f"{tag}{size}.shift"] = torch.cat(
                    [acts[spec.name].detach().float().mean(dim=(0, 2, 3)) for spec in side.by_size[size]]
                )
        self._fresh = False

    def reset(self) -> None:
        """Zero every sum but keep the layout and the buffers (no re-allocation between epochs); the next
        batch sets fresh shifts."""
        for value in self.state.values():
            value.zero_()
        for a in self.s.sizes if self.s is not None else []:
            for b in self.c.sizes:
                cross = self.state[f"{a}x{b}.cross"]
                if cross.numel() == 0:  # consumed by scores(inplace=True)
                    shape = (len(self.s.index[a]), len(self.c.index[b]))
                    self.state[f"{a}x{b}.cross"] = torch.zeros(shape, dtype=torch.float64, device=cross.device)
        self._fresh = True

    @property
    def count(self) -> float:
        """Number of images folded in so far."""
        if not self.state:
            return 0.0
        size = self.s.sizes[0]
        return float(self.state[f"s{size}.n"]) / (size[0] * size[1])

    # ---- accumulation -------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, standalone: Mapping[str, torch.Tensor], clip: Mapping[str, torch.Tensor]) -> None:
        """Fold one batch in. Both dicts hold [B, C, H, W] maps of the same B images."""
        if not standalone or not clip:
            raise ValueError("update needs at least one standalone and one CLIP layer")
        batch = {int(t.shape[0]) for t in (*standalone.values(), *clip.values())}
        if len(batch) != 1:
            raise ValueError(f"standalone and CLIP activations disagree on the batch size: {sorted(batch)}")
        if self.s is None:
            self._init(standalone, clip)
        self.s.check(standalone, "standalone")
        self.c.check(clip, "CLIP")
        st = self.state
        if self._fresh:  # the first batch after _init or reset() sets the shifts
            self._set_shifts(standalone, clip)
        c_groups = self.c.grouped(clip, {b: st[f"c{b}.shift"] for b in self.c.sizes})  # CLIP maps are few
        native: dict[str, torch.Tensor] = {}
        for b, xc in c_groups.items():
            native[f"c{b}"] = self._fold_native(f"c{b}", xc, b)
        pearson = self.score == "pearson"
        for a in self.s.sizes:  # one standalone size group at a time: its copy is freed before the next
            xs = self.s.grouped(standalone, {a: st[f"s{a}.shift"]}, sizes=[a])[a]
            native[f"s{a}"] = self._fold_native(f"s{a}", xs, a)
            for b, xc in c_groups.items():
                ys, ws, sqs = _pair_terms(xs, a, b, pearson)
                yc, wc, sqc = _pair_terms(xc, b, a, pearson)
                key = f"{a}x{b}"
                st[f"{key}.n"] += xs.shape[1] * max(a[0], b[0]) * max(a[1], b[1])
                st[f"{key}.sum_s"] += native[f"s{a}"][0] if ws is None else ws
                st[f"{key}.sum_c"] += native[f"c{b}"][0] if wc is None else wc
                # the GEMM at the smaller resolution: [C_s, B*m] @ [B*m, C_c], accumulated in float64
                st[f"{key}.cross"].add_(ys @ yc.T)
                if pearson:
                    st[f"{key}.sq_s"] += native[f"s{a}"][1] if sqs is None else sqs
                    st[f"{key}.sq_c"] += native[f"c{b}"][1] if sqc is None else sqc
            del xs

    def _fold_native(self, key: str, x: torch.Tensor, size: Size) -> tuple[torch.Tensor, torch.Tensor]:
        """Adds a group's per-channel sums at its own resolution; returns (sum, sum of squares) of the batch."""
        total = x.sum(dim=(1, 2, 3)).double()  # float32 per batch on shifted data, float64 across batches
        squares = (x * x).sum(dim=(1, 2, 3)).double()
        self.state[f"{key}.n"] += x.shape[1] * size[0] * size[1]
        self.state[f"{key}.sum"] += total
        self.state[f"{key}.sumsq"] += squares
        return total, squares

    def _reshift(self, new_shift: Mapping[str, torch.Tensor]) -> None:
        """Re-express every sum around new per-channel shifts (exact, float64)."""
        st = self.state
        d: dict[str, torch.Tensor] = {}
        for tag, side in (("s", self.s), ("c", self.c)):
            for size in side.sizes:
                k = f"{tag}{size}"
                delta = st[f"{k}.shift"].double() - new_shift[k].double()  # y_new = y_old + delta
                n = st[f"{k}.n"]
                st[f"{k}.sumsq"] += 2 * delta * st[f"{k}.sum"] + n * delta * delta
                st[f"{k}.sum"] += n * delta
                st[f"{k}.shift"] = new_shift[k].to(st[f"{k}.shift"].dtype)
                d[k] = delta
        for a in self.s.sizes:
            for b in self.c.sizes:
                key, ds, dc = f"{a}x{b}", d[f"s{a}"], d[f"c{b}"]
                n = st[f"{key}.n"]
                cross = st[f"{key}.cross"]
                cross.add_(torch.outer(ds, st[f"{key}.sum_c"]))
                cross.add_(torch.outer(st[f"{key}.sum_s"], dc))
                cross.add_(torch.outer(ds, dc), alpha=float(n))
                if self.score == "pearson":
                    st[f"{key}.sq_s"] += 2 * ds * st[f"{key}.sum_s"] + n * ds * ds
                    st[f"{key}.sq_c"] += 2 * dc * st[f"{key}.sum_c"] + n * dc * dc
                st[f"{key}.sum_s"] += n * ds
                st[f"{key}.sum_c"] += n * dc

    def _shift_keys(self) -> list[str]:
        return [f"{tag}{size}" for tag, side in (("s", self.s), ("c", self.c)) for size in side.sizes]

    def merge(self, other: CrossMoments) -> CrossMoments:
        """Adds ``other``'s sums (same layers) into this one. Returns self."""
        if other.s is None:
            return self
        if self.s is None:
            self.s, self.c, self.score = other.s, other.c, other.score
            self.state = {k: v.clone() for k, v in other.state.items()}
            self._fresh = other._fresh
            return self
        if [x.layers for x in (self.s, self.c)] != [x.layers for x in (other.s, other.c)] or self.score != other.score:
            raise ValueError("cannot merge CrossMoments of different layers or scores")
        other = other.clone()
        other._reshift({k: self.state[f"{k}.shift"] for k in self._shift_keys()})
        for key in self._keys():
            if not key.endswith(".shift"):
                self.state[key] += other.state[key].to(self.state[key].device)
        self._fresh = False  # the shifts now carry data
        return self

    def clone(self) -> CrossMoments:
        out = CrossMoments(self.score)
        out.s, out.c, out._fresh = self.s, self.c, self._fresh
        out.state = {k: v.clone() for k, v in self.state.items()}
        return out

    @torch.no_grad()
    def all_reduce(self, sum_fn: SumFn) -> None:
        """Sums across processes. ``sum_fn(t)`` returns t summed over ranks (e.g. through the Lightning
        strategy). Two collectives: a tiny one agrees on a common shift (count-weighted mean of the
        ranks' shifts), then one packed float64 buffer carries every sum. Every rank must call it."""
        if self.s is None:
            raise RuntimeError("all_reduce before any update: every rank needs at least one batch")
        keys = self._shift_keys()
        small = torch.cat(
            [
                torch.cat([self.state[f"{k}.shift"].double() * self.state[f"{k}.n"], self.state[f"{k}.n"].view(1)])
                for k in keys
            ]
        )
        small = sum_fn(small)
        common, start = {}, 0
        for k in keys:
            ch = self.state[f"{k}.shift"].numel()
            weighted, n = small[start : start + ch], small[start + ch]
            common[k] = (weighted / n.clamp_min(1.0)).to(self.state[f"{k}.shift"].dtype)
            start += ch + 1
        self._reshift(common)
        sum_keys = [k for k in self._keys() if not k.endswith(".shift")]
        flat = sum_fn(torch.cat([self.state[k].reshape(-1) for k in sum_keys]))
        start = 0
        for k in sum_keys:
            n = self.state[k].numel()
            self.state[k] = flat[start : start + n].view_as(self.state[k]).clone()
            start += n

    # ---- results ------------------------------------------------------------------------------
    def _side_stats(self, tag: str, side: _Side) -> dict[Size, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """{size: (mean - shift, mean, std)} per channel, float64, exact population moments."""
        out = {}
        for size in side.sizes:
            k = f"{tag}{size}"
            n = self.state[f"{k}.n"]
            m_shifted = self.state[f"{k}.sum"] / n
            var = (self.state[f"{k}.sumsq"] / n - m_shifted * m_shifted).clamp_min(0.0)
            out[size] = (m_shifted, m_shifted + self.state[f"{k}.shift"].double(), var.sqrt())
        return out

    def stats(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per-layer channel statistics: ``{"standalone"|"clip": {layer: mean/std/valid tensors}}``
        flattened as ``{side: {"mean": [n], "std": [n], "valid": [n]}}`` in layer order."""
        if self.s is None:
            raise RuntimeError("no data folded in yet")
        out = {}
        for tag, side, label in (("s", self.s, "standalone"), ("c", self.c, "clip")):
            mean = torch.empty(side.total, dtype=torch.float64, device=self.state[f"{tag}{side.sizes[0]}.sum"].device)
            std = torch.empty_like(mean)
            for size, (_, mu, sd) in self._side_stats(tag, side).items():
                idx = side.index[size].to(mean.device)
                mean[idx], std[idx] = mu, sd
            out[label] = {"mean": mean, "std": std, "valid": ~near_constant(mean, std)}
        return out

    @torch.no_grad()
    def scores(self, inplace: bool = False) -> torch.Tensor:
        """``Z`` [n_standalone_channels, n_clip_channels] float32, rows/columns in layer then channel order.
        Rows and columns of near-constant channels are 0. ``inplace=True`` computes in the cross-moment
        buffers (saves memory; the sums are consumed: call ``reset()`` before folding in more data)."""
        if self.s is None:
            raise RuntimeError("no data folded in yet")
        s_stats, c_stats = self._side_stats("s", self.s), self._side_stats("c", self.c)
        dev = self.state[f"s{self.s.sizes[0]}.sum"].device
        z = torch.zeros(self.s.total, self.c.total, dtype=torch.float32, device=dev)
        for a in self.s.sizes:
            ms_native, mu_s, sd_s = s_stats[a]
            for b in self.c.sizes:
                mc_native, mu_c, sd_c = c_stats[b]
                key = f"{a}x{b}"
                n = self.state[f"{key}.n"]
                sum_s, sum_c = self.state[f"{key}.sum_s"], self.state[f"{key}.sum_c"]
                block = self.state[f"{key}.cross"] if inplace else self.state[f"{key}.cross"].clone()
                block.addr_(sum_s, sum_c, alpha=-1.0 / float(n))  # centred about the P-grid means
                if self.score == "reference":
                    # (U s - mu) = (U s - mean_P) + (mean_P - mu); both means relative to the same shift
                    block.addr_(sum_s / n - ms_native, sum_c / n - mc_native, alpha=float(n))
                    scale_s, scale_c = sd_s, sd_c
                    valid_s, valid_c = ~near_constant(mu_s, sd_s), ~near_constant(mu_c, sd_c)
                else:
                    scale_s = (self.state[f"{key}.sq_s"] / n - (sum_s / n) ** 2).clamp_min(0.0).sqrt()
                    scale_c = (self.state[f"{key}.sq_c"] / n - (sum_c / n) ** 2).clamp_min(0.0).sqrt()
                    valid_s = ~near_constant(mu_s, sd_s) & ~near_constant(sum_s / n, scale_s)
                    valid_c = ~near_constant(mu_c, sd_c) & ~near_constant(sum_c / n, scale_c)
                inv_s = torch.where(valid_s, 1.0 / (n * scale_s).clamp_min(1e-300), 0.0)
                inv_c = torch.where(valid_c, 1.0 / scale_c.clamp_min(1e-300), 0.0)
                block.mul_(inv_s.view(-1, 1)).mul_(inv_c.view(1, -1))  # invalid rows/columns become 0
                for r0, r1, i in self.s.ranges[a]:  # layer by layer: slices, no index tensors
                    for c0, c1, j in self.c.ranges[b]:
                        z[r0:r1, c0:c1] = block[i : i + r1 - r0, j : j + c1 - c0]
                if inplace:
                    self.state[f"{key}.cross"] = torch.empty(0, dtype=block.dtype, device=dev)  # consumed
                    del block
        return z

    # ---- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        layers = (
            None
            if self.s is None
            else {
                "standalone": [(x.name, x.channels, x.size) for x in self.s.layers],
                "clip": [(x.name, x.channels, x.size) for x in self.c.layers],
            }
        )
        return {
            "score": self.score,
            "layers": layers,
            "fresh": self._fresh,
            "state": {k: v.cpu() for k, v in self.state.items()},
        }

    def load_state_dict(self, sd: dict) -> None:
        self.score = sd["score"]
        if sd["layers"] is None:
            self.s = self.c = None
            self.state = {}
            return
        meta = {}
        for label in ("standalone", "clip"):
            meta[label] = {n: torch.empty(1, c, *size) for n, c, size in sd["layers"][label]}
        self.s, self.c = _Side(meta["standalone"]), _Side(meta["clip"])
        self.state = {k: v.clone() for k, v in sd["state"].items()}
        self._fresh = sd.get("fresh", False)


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
    return moments.scores(inplace=True)
