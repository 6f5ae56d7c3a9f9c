"""CrossMoments / matching_scores against the float64 definition, across batchings and processes."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.helpers.reference import reference_z
from tests.helpers.trainers import free_port
from xai_lightning.surgery import CrossMoments, matching_scores


def _activations(n: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Mixed map sizes (7/14/28/56 and a non-integer 10x12), a mean-100/std-0.01 channel, constants."""
    g = torch.Generator().manual_seed(seed)
    s = {
        "s7": torch.randn(n, 3, 7, 7, generator=g),
        "s14": torch.randn(n, 4, 14, 14, generator=g) * 2 + 1,
        "s28": torch.randn(n, 2, 28, 28, generator=g),
        "s56": torch.randn(n, 2, 56, 56, generator=g),
    }
    c = {
        "c14": torch.randn(n, 3, 14, 14, generator=g),
        "c7": torch.randn(n, 5, 7, 7, generator=g).relu(),
        "c10x12": torch.randn(n, 2, 10, 12, generator=g),
        "c28": torch.randn(n, 2, 28, 28, generator=g),
    }
    # real correlations so that Z is not all noise
    c["c14"][:, 0] = 0.5 * F.interpolate(s["s7"][:, :1], size=(14, 14), mode="bilinear")[:, 0] + 0.1 * c["c14"][:, 0]
    c["c28"][:, 1] = s["s28"][:, 1] - 3.0
    s["s14"][:, 1] = 100.0 + 0.01 * s["s14"][:, 1]  # |mean| >> std
    c["c7"][:, 2] = 3.0  # constant channel
    s["s28"][:, 0] = -7.0
    return s, c


def _batches(s, c, cuts):
    bounds = [0, *cuts, next(iter(s.values())).shape[0]]
    return (
        [{k: v[a:b] for k, v in s.items()} for a, b in zip(bounds[:-1], bounds[1:])],
        [{k: v[a:b] for k, v in c.items()} for a, b in zip(bounds[:-1], bounds[1:])],
    )


@pytest.mark.parametrize("score", ["reference", "pearson"])
def test_matches_float64_definition(score):
    s, c = _activations(12)
    sb, cb = _batches(s, c, [3, 4, 9])
    z = matching_scores(sb, cb, score=score)
    ref = reference_z(sb, cb, score=score)
    assert z.shape == (11, 12)
    assert torch.allclose(z.double(), ref, atol=1e-5, rtol=0)
    assert ref.abs().max() > 0.3  # the correlations planted above are visible
    # constant / near-constant channels: zero rows and columns
    assert (z[3 + 4, :] == 0).all() and (z[:, 3 + 2] == 0).all()  # s28 channel 0, c7 channel 2


@pytest.mark.parametrize("score", ["reference", "pearson"])
def test_folding_a_few_channels_at_a_time_gives_the_same_z(monkeypatch, score):
    """The standalone channels are folded in chunks bounded by CHUNK_BYTES (1 and 3 channels per chunk
    here, which cut through layers and through the shared-GEMM run)."""
    import xai_lightning.surgery.moments as moments

    s, c = _activations(6, seed=8)
    sb, cb = _batches(s, c, [2])
    expected = reference_z(sb, cb, score=score)
    for rows, block in ((1, 1024), (3, 1024), (1, 2), (3, 2)):
        monkeypatch.setattr(moments, "CHUNK_BYTES", rows * 2 * 14 * 14 * 4)  # rows of the 14x14 group, 2 images
        monkeypatch.setattr(moments, "BLOCK_ROWS", block)  # the cross sums stored 2 channels per block
        assert torch.allclose(matching_scores(sb, cb, score=score).double(), expected, atol=1e-5, rtol=0)
        m = CrossMoments(score)
        m.update(sb[0], cb[0])
        other = CrossMoments(score)
        other.update(sb[1], cb[1])  # other shifts: reducing re-shifts every stored block
        reduce_two(m, other)
        assert torch.allclose(m.scores().double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("score", ["reference", "pearson"])
def test_interleaved_layers_and_small_tiles_give_the_reference_z(monkeypatch, score):
    """Layers of one map size that are not adjacent in layer order (on both sides): Z's rows and columns come
    in runs per layer, and blocks of 1 and 3 stored rows cut through the layers."""
    import xai_lightning.surgery.moments as moments

    g = torch.Generator().manual_seed(11)
    sizes_s = {"a7": (3, 7), "b14": (4, 14), "c7": (2, 7), "d14": (3, 14)}
    sizes_c = {"x14": (3, 14), "y7": (2, 7), "z14": (2, 14), "w7": (3, 7)}
    s = {k: torch.randn(5, ch, n, n, generator=g) + i for i, (k, (ch, n)) in enumerate(sizes_s.items())}
    c = {k: torch.randn(5, ch, n, n, generator=g) - i for i, (k, (ch, n)) in enumerate(sizes_c.items())}
    c["z14"][:, 0] = F.interpolate(s["c7"][:, 1:2], size=(14, 14), mode="bilinear")[:, 0]  # a planted match
    sb, cb = _batches(s, c, [2])
    expected = reference_z(sb, cb, score=score)
    assert (
        expected[3 + 4 + 1].abs().argmax() == 3 + 2
    )  # c7 channel 1 with z14 channel 0, rows and columns in layer order
    for block in (1, 3):
        monkeypatch.setattr(moments, "BLOCK_ROWS", block)
        m = CrossMoments(score)
        for sa, ca in zip(sb, cb, strict=True):
            m.update(sa, ca)
        assert torch.allclose(m.scores().double(), expected, atol=1e-5, rtol=0)
        assert torch.allclose(m.take_scores().double(), expected, atol=1e-5, rtol=0)


def test_batching_does_not_change_z():
    s, c = _activations(10, seed=1)
    z1 = matching_scores(*_batches(s, c, []))
    z2 = matching_scores(*_batches(s, c, [1, 2, 3, 7]))
    assert torch.allclose(z1, z2, atol=1e-6, rtol=0)


def reduce_two(a: CrossMoments, b: CrossMoments) -> None:
    """``all_reduce`` of two sets of sums as two DDP ranks would run it: each in its own thread, every collective
    a sum over both (barriers pair the calls)."""
    import threading

    slots, barrier, errors = [None, None], threading.Barrier(2), []

    def rank(i: int, m: CrossMoments) -> None:
        def sum_fn(t: torch.Tensor) -> torch.Tensor:
            slots[i] = t.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total

        try:
            m.all_reduce(sum_fn)
        except Exception as err:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(i, m)) for i, m in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_two_reduced_ranks_equal_a_single_pass_and_stats_are_population_moments():
    s, c = _activations(9, seed=2)
    sb, cb = _batches(s, c, [2, 5])
    a, b = CrossMoments(), CrossMoments()
    a.update(sb[0], cb[0])
    a.update(sb[1], cb[1])
    b.update(sb[2], cb[2])
    reduce_two(a, b)
    merged = a
    assert merged.count == 9 and b.count == 9
    assert torch.allclose(merged.scores().double(), reference_z(sb, cb), atol=1e-5, rtol=0)
    stats = merged.stats()["standalone"]
    mean = torch.cat([v.double().mean(dim=(0, 2, 3)) for v in s.values()])
    std = torch.cat([v.double().std(dim=(0, 2, 3), unbiased=False) for v in s.values()])
    assert torch.allclose(stats["mean"], mean, atol=1e-7, rtol=1e-7)  # shifting happens in float32
    assert torch.allclose(stats["std"], std, atol=1e-7, rtol=1e-6)


def test_reset_reuses_buffers_and_refits_from_scratch():
    s, c = _activations(8, seed=5)
    s2, c2 = _activations(8, seed=6)
    m = CrossMoments()
    m.update(s, c)
    size = next(iter(m.crosses))
    cross = m.crosses[size].cross
    m.reset()
    m.update(s2, c2)
    assert m.crosses[size].cross.data_ptr() == cross.data_ptr()
    expected = reference_z([s2], [c2])
    assert torch.allclose(m.scores().double(), expected, atol=1e-5, rtol=0)
    assert torch.allclose(m.scores().double(), expected, atol=1e-5, rtol=0)  # scores() left the sums as they were


def test_take_scores_consumes_explicitly_and_reset_recreates():
    s, c = _activations(8, seed=5)
    m = CrossMoments()
    m.update(s, c)
    expected = reference_z([s], [c])
    assert torch.allclose(m.take_scores().double(), expected, atol=1e-5, rtol=0)
    assert m.consumed
    for call in (m.scores, lambda: m.update(s, c), lambda: m.all_reduce(lambda t: t)):
        with pytest.raises(RuntimeError, match="consumed"):
            call()
    m.reset()
    m.update(s, c)
    assert not m.consumed and torch.allclose(m.scores().double(), expected, atol=1e-5, rtol=0)


def test_a_rank_without_data_joins_the_reduction_and_gets_the_sums():
    s, c = _activations(6, seed=7)
    sb, cb = _batches(s, c, [2])
    a, empty = CrossMoments(), CrossMoments()
    a.update(sb[0], cb[0])
    empty.init_layout(({k: v[:0] for k, v in s.items()}, {k: v[:0] for k, v in c.items()}))
    reduce_two(empty, a)
    assert a.count == empty.count == 2 and a.batches == empty.batches == 1
    assert torch.allclose(empty.scores().double(), reference_z(sb[:1], cb[:1]), atol=1e-5, rtol=0)
    a.update(sb[1], cb[1])
    assert torch.allclose(a.scores().double(), reference_z(sb, cb), atol=1e-5, rtol=0)


def test_state_dict_roundtrip():
    s, c = _activations(4, seed=3)
    m = CrossMoments("pearson")
    m.update(s, c)
    m2 = CrossMoments()
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m.scores(), m2.scores())


@pytest.mark.parametrize("score", ["reference", "pearson"])
def test_an_unrepresentative_first_batch_is_recentred_and_z_stays_exact(score):
    """The first batch (one image) sets the shifts; its channels sit 300 stds away from the 199 images after it.
    Folded around those shifts, the later products would be ~1e5 times the covariance, and their float32
    rounding would swamp it (max |dZ| 9e-4 measured without re-centring): the shifts must move before they are
    folded in."""
    s, c = _activations(200, seed=9)
    for maps in (s, c):
        for x in maps.values():
            x[:1] += 300.0 * x[1:].std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1)
    sb, cb = _batches(s, c, [1, *range(11, 200, 10)])
    m = CrossMoments(score)
    m.update(sb[0], cb[0])
    first = {a: state.shift.clone() for a, state in m.s_sums.items()}
    for sa, ca in zip(sb[1:], cb[1:], strict=True):
        m.update(sa, ca)
    assert torch.allclose(m.scores().double(), reference_z(sb, cb, score=score), atol=1e-5, rtol=0)
    assert all(not torch.allclose(m.s_sums[a].shift, k) for a, k in first.items())  # the shifts moved


def test_a_checkpoint_with_float64_sums_of_products_loads_as_float32_and_continues():
    s, c = _activations(6, seed=10)
    sb, cb = _batches(s, c, [3])
    m = CrossMoments()
    m.update(sb[0], cb[0])
    state = m.state_dict()
    for saved in state["sums"]:
        if set(saved) == {"cross"}:
            saved["cross"] = saved["cross"].double()  # as an earlier version saved them
    m2 = CrossMoments()
    m2.load_state_dict(state)
    assert all(x.cross.dtype == torch.float32 for x in m2.crosses.values())
    m2.update(sb[1], cb[1])
    assert torch.allclose(m2.scores().double(), reference_z(sb, cb), atol=1e-5, rtol=0)


def test_reduced_precision_matmul_settings_do_not_reach_the_sums():
    """torch.set_float32_matmul_precision('medium') lets float32 GEMMs run in bfloat16 (on this CPU too): Z
    would be off by ~1e-4 here. The sums run at full float32 and leave the caller's setting as it was."""
    s, c = _activations(12)
    sb, cb = _batches(s, c, [3, 4, 9])
    expected = reference_z(sb, cb)
    try:
        torch.set_float32_matmul_precision("medium")
        m = CrossMoments()
        for sa, ca in zip(sb, cb, strict=True):
            m.update(sa, ca)
        z = m.take_scores()
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision("highest")
    assert torch.allclose(z.double(), expected, atol=1e-5, rtol=0)


def test_layout_change_is_an_error():
    s, c = _activations(4)
    m = CrossMoments()
    m.update(s, c)
    s2 = dict(s)
    s2["s7"] = s2["s7"][:, :2]
    with pytest.raises(ValueError, match="changed layout"):
        m.update(s2, c)
    with pytest.raises(ValueError, match="unknown score"):
        CrossMoments("cosine")


def _worker(rank: int, port: int, out: str, idle_rank: int | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        s, c = _activations(10, seed=4)
        sb, cb = _batches(s, c, [1, 3, 6, 8])  # rank 0: batches 0, 2, 4; rank 1: batches 1, 3
        m = CrossMoments()
        if rank == idle_rank:  # saw no data: joins with zero counts and the layout of empty maps
            m.init_layout(({k: v[:0] for k, v in s.items()}, {k: v[:0] for k, v in c.items()}))
        else:
            for i in range(len(sb)) if idle_rank is not None else range(rank, len(sb), 2):
                m.update(sb[i], cb[i])

        def sum_fn(t: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(t)
            return t

        m.all_reduce(sum_fn)
        torch.save(m.scores(), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.parametrize("idle_rank", [None, 1])
def test_two_gloo_processes_give_the_single_process_z(tmp_path, idle_rank):
    out = str(tmp_path / "z")
    mp.spawn(_worker, args=(free_port(), out, idle_rank), nprocs=2, join=True)
    s, c = _activations(10, seed=4)
    single = matching_scores(*_batches(s, c, [4]))
    for rank in range(2):
        assert torch.allclose(torch.load(f"{out}.{rank}"), single, atol=1e-6, rtol=0)
