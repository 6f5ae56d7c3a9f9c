"""Tiny models and data for CPU tests (seconds, no network)."""

from __future__ import annotations

import torch
from torch import nn

from xai_lightning.clip import ProbeCLIP, build_open_clip

TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_clip(seed: int = 0) -> ProbeCLIP:
    """A random open_clip CLIP with a ModifiedResNet tower (visual.layer1..4 at 8/4/2/1 px for 32 px input)."""
    torch.manual_seed(seed)
    return ProbeCLIP(build_open_clip(TINY_CLIP_CFG), 32, context_length=16, name="tiny")


class TinyCNN(nn.Module):
    """Three conv stages (16, 8, 4 px at 32 px input) and a linear head."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(12, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


def random_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


# Toy sizes for end-to-end CLI runs of the shipped configs (seconds on a CPU).
TOY_CLI_ARGS = [
    "--data.init_args.train_per_class",
    "10",
    "--data.init_args.test_per_class",
    "4",
    "--data.init_args.real_world_per_class",
    "4",
    "--data.init_args.probe_per_class",
    "20",
    "--model.init_args.backbone",
    "resnet18",
]


def toy_fit_args(config: str, tmp_path) -> list[str]:
    """``fit`` of a shipped config for one toy epoch of one batch, logging CSV only under ``tmp_path``."""
    return [
        "fit",
        "--config",
        config,
        "--data.init_args.data_dir",
        str(tmp_path / "data"),
        *TOY_CLI_ARGS,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "1",
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(tmp_path / "runs"),
    ]
