"""Decision reliance against a brute-force loop over image pairs; exact sums across batches and shards."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from xai_lightning.verdict import DecisionTable, RelianceEffects, reliance


def _pairs_loop(pred, values, concept):
    """P(pred differs | other concepts equal, this differs) - P(pred differs | all concepts equal), over
    unordered pairs of distinct images with every concept known."""
    known = [i for i in range(len(pred)) if all(v[i] >= 0 for v in values)]
    diff, diff_n, same, same_n = 0, 0, 0, 0
    for i, j in itertools.combinations(known, 2):
        if any(values[o][i] != values[o][j] for o in range(len(values)) if o != concept):
            continue
        if values[concept][i] != values[concept][j]:
            diff_n += 1
            diff += pred[i] != pred[j]
        else:
            same_n += 1
            same += pred[i] != pred[j]
    return diff / diff_n - same / same_n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reliance_equals_the_pair_loop_and_adds_across_batches(seed):
    g = torch.Generator().manual_seed(seed)
    n, cards, classes = 90, [3, 2], 3
    values = torch.stack([torch.randint(-1, c, (n,), generator=g) for c in cards])
    noise = torch.randint(0, classes, (n,), generator=g)
    pred = torch.where(torch.rand(n, generator=g) < 0.6, values[1].clamp_min(0), noise)
    table = DecisionTable(cards, classes)
    for part in torch.arange(n).split(25):
        table.update(pred[part], values[:, part])
    assert table.images == n
    got = reliance(table.known(), 2)
    for c in range(2):
        assert got[c] == pytest.approx(_pairs_loop(pred.tolist(), values.tolist(), c), abs=1e-12)


def test_a_model_that_follows_colour_has_colour_reliance_one_and_shape_zero():
    digit = torch.tensor([0, 1] * 50)
    colour = torch.tensor([0] * 50 + [1] * 50)
    table = DecisionTable([2, 2], 2)
    table.update(colour.clone(), torch.stack([digit, colour]))  # prediction = colour
    eff = RelianceEffects(table, ["shape", "color"], draws=300)
    assert eff.effect("color").point == 1.0 and eff.effect("shape").point == 0.0
    assert eff.margin("color", "shape").lo > 0.9
    constant = DecisionTable([2, 2], 2)
    constant.update(torch.zeros(100, dtype=torch.long), torch.stack([digit, colour]))  # predicts one class
    e = RelianceEffects(constant, ["shape", "color"], draws=300)
    assert (e.effect("shape").point, e.effect("shape").hi, e.effect("color").point) == (0.0, 0.0, 0.0)


def test_sharded_tables_sum_to_the_whole():
    g = torch.Generator().manual_seed(5)
    values = torch.stack([torch.randint(0, 4, (60,), generator=g), torch.randint(-1, 3, (60,), generator=g)])
    pred = torch.randint(0, 4, (60,), generator=g)
    whole, a, b = DecisionTable([4, 3], 4), DecisionTable([4, 3], 4), DecisionTable([4, 3], 4)
    whole.update(pred, values)
    a.update(pred[::2], values[:, ::2])
    b.update(pred[1::2], values[:, 1::2])
    a.all_reduce(lambda t: t + b.counts)
    assert torch.equal(a.counts, whole.counts)


def test_bootstrap_interval_covers_the_truth_at_about_the_nominal_rate():
    """Simulated models whose prediction follows colour with probability 0.3 (else a coin): the true colour
    reliance is 0.3 * 1 ... computed from the data-generating process by a large sample; the 95% interval
    from 400 images must cover it in roughly 95% of 120 repetitions."""
    rng = np.random.default_rng(0)

    def sample(n):
        digit, colour = rng.integers(0, 2, n), rng.integers(0, 2, n)
        pred = np.where(rng.random(n) < 0.3, colour, rng.integers(0, 2, n))
        t = DecisionTable([2, 2], 2)
        t.update(torch.from_numpy(pred), torch.from_numpy(np.stack([digit, colour])))
        return t

    truth = reliance(sample(200_000).known(), 2)[1]
    covered = 0
    for rep in range(120):
        e = RelianceEffects(sample(400), ["shape", "color"], draws=400, seed=rep).effect("color")
        covered += e.lo <= truth <= e.hi
    assert 0.88 <= covered / 120 <= 0.99
