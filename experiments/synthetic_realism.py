"""Are the synthetic digits recognizable to a classifier trained on real MNIST, and vice versa?

    python experiments/synthetic_realism.py --mnist mnist_t10k.npz

Trains a small CNN (two conv layers, 3 epochs, Adam) on 8,000 real MNIST t10k digits and tests it on the
2,000 held-out real digits and on 2,000 synthetic digits (all ten classes, seed 777); then trains the
same CNN on 8,000 synthetic digits and tests it on both. Prints one JSON line per (train, test) pair.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.data.sources import load_npz
from xai_lightning.data.synthetic import generate_digits


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().div(255.0).unsqueeze(1)


def train(x: torch.Tensor, y: torch.Tensor, seed: int = 0, epochs: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((torch.cat([model(b).argmax(1) for b in x.split(500)]) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", required=True, help=".npz with real MNIST digits (images, labels)")
    args = ap.parse_args()
    t0 = time.time()
    images, labels = load_npz(args.mnist)
    perm = np.random.default_rng(0).permutation(len(images))
    real_train, real_test = perm[:8000], perm[8000:10000]
    real = {
        "train": (to_tensor(images[real_train]), torch.from_numpy(labels[real_train])),
        "test": (to_tensor(images[real_test]), torch.from_numpy(labels[real_test])),
    }
    syn_train, syn_train_y = generate_digits(list(range(10)), 800, seed=776)
    syn_test, syn_test_y = generate_digits(list(range(10)), 200, seed=777)
    synthetic = {
        "train": (to_tensor(syn_train), torch.from_numpy(syn_train_y)),
        "test": (to_tensor(syn_test), torch.from_numpy(syn_test_y)),
    }
    for train_name, train_set in (("real MNIST", real), ("synthetic", synthetic)):
        model = train(*train_set["train"])
        for test_name, test_set in (("real MNIST", real), ("synthetic", synthetic)):
            print(
                json.dumps(
                    {
                        "train": f"{train_name} (8000)",
                        "test": f"{test_name} (2000)",
                        "accuracy": round(accuracy(model, *test_set["test"]), 4),
                    }
                )
            )
    print(json.dumps({"seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
