"""Synthetic digits: deterministic, MNIST-like statistics, and classes a simple classifier can tell apart."""

from __future__ import annotations

import numpy as np
import torch

from xai_lightning.data.synthetic import generate_digits


def test_deterministic_per_sample_and_mnist_like():
    a, la = generate_digits([5, 8], 6, seed=3)
    b, lb = generate_digits([8, 5, 1], 6, seed=3)  # other classes / order: the same samples per (seed, digit, i)
    assert a.dtype == np.uint8 and a.shape == (12, 28, 28)
    assert np.array_equal(a[la == 5], b[lb == 5]) and np.array_equal(a[la == 8], b[lb == 8])
    c, _ = generate_digits([5, 8], 6, seed=4)
    assert not np.array_equal(a, c)
    imgs, _ = generate_digits(list(range(10)), 20, seed=0)
    assert 20 < imgs.mean() < 50  # MNIST: 33.3
    assert (imgs[:, :2].max() == 0) or imgs[:, :2].mean() < 1  # mostly empty border, like MNIST
    w = imgs.astype(float)
    cy = (w.sum(2) * np.arange(28)).sum(1) / w.sum((1, 2))
    assert abs(cy.mean() - 14.0) < 0.5  # centred by mass like MNIST


def test_classes_are_learnable_by_a_linear_model():
    x, y = generate_digits(list(range(10)), 120, seed=1)
    xt, yt = generate_digits(list(range(10)), 30, seed=2)
    x, xt = torch.tensor(x).float().flatten(1) / 255, torch.tensor(xt).float().flatten(1) / 255
    y, yt = torch.tensor(y), torch.tensor(yt)
    torch.manual_seed(0)
    lin = torch.nn.Linear(784, 10)
    opt = torch.optim.Adam(lin.parameters(), lr=0.01)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(x), y).backward()
        opt.step()
    acc = (lin(xt).argmax(1) == yt).float().mean()
    assert acc > 0.85  # ten distinct, consistent digit shapes (a linear model gets ~0.92 on real MNIST)
