"""The paired comparison with reference networks: coverage of untrained-model nulls by simulation."""

from __future__ import annotations

import numpy as np

from xai_lightning.verdict import paired_effect


def test_interval_covers_a_model_that_is_one_more_draw_of_the_references():
    """Networks differ by a per-network offset (sd 0.1) and images add noise (sd 0.3). A model that is just
    another network is at the reference mean in expectation: the 95% interval must contain 0 about 95% of
    the time with 4 references; an image-only interval would not."""
    rng = np.random.default_rng(0)
    n, r, reps = 300, 4, 400
    covered, covered_images_only = 0, 0
    for _ in range(reps):
        image = rng.normal(0, 1, n)  # shared per-image difficulty
        nets = rng.normal(0, 0.1, r + 1)[:, None] + image[None] + rng.normal(0, 0.3, (r + 1, n))
        model, refs = nets[0], nets[1:]
        d = model - refs.mean(0)
        e = paired_effect(n, d.sum(), (d * d).sum(), refs.mean(1))
        covered += e.lo <= 0 <= e.hi
        half = 1.96 * d.std(ddof=1) / np.sqrt(n)
        covered_images_only += abs(d.mean()) <= half
    assert 0.92 <= covered / reps <= 0.995
    assert covered_images_only / reps < 0.6


def test_one_reference_says_the_network_spread_is_not_covered():
    e = paired_effect(10, 1.0, 2.0, np.array([0.5]))
    assert "not estimated" in e.covers and e.lo < e.point < e.hi
