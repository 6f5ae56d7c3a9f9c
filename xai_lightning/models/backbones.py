"""torchvision backbones by name, normalization constants and the grayscale pre-processor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # CLIP's constants; the paper fine-tuned its ImageNet ResNet-50 with these (reference spec 1.5).
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
INPUT_TRANSFORMS = ("none", "grayscale")


def build_backbone(name: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """A torchvision classifier with a fresh ``num_classes`` head.

    Args:
        name: one of ``BACKBONES``.
        weights: torchvision weight enum name (``IMAGENET1K_V2``, ``DEFAULT``) or ``None`` for random init.
    """
    import torchvision

    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; allowed: {', '.join(BACKBONES)}")
    if weights is not None:
        enum = torchvision.models.get_model_weights(name)
        allowed = ["DEFAULT", *enum.__members__]
        if weights not in allowed:
            raise ValueError(f"unknown weights {weights!r} for {name}; allowed: {', '.join(allowed)}")
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as err:  # urllib errors are OSErrors
        raise RuntimeError(
            f"could not load {name} weights {weights!r} ({type(err).__name__}: {err}). They download from "
            f"download.pytorch.org into $TORCH_HOME (default ~/.cache/torch/hub/checkpoints). Offline: copy the "
            f"file there from a machine with internet, or train from scratch with `--model.weights null`."
        ) from err
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def resolve_normalization(spec: str | Sequence[Sequence[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as [1, 3, 1, 1] tensors from a name in ``NORMALIZATIONS`` or ``[[mean], [std]]``."""
    if isinstance(spec, str):
        if spec not in NORMALIZATIONS:
            raise ValueError(
                f"unknown normalization {spec!r}; allowed: {', '.join(NORMALIZATIONS)} or [[m, m, m], [s, s, s]]"
            )
        mean, std = NORMALIZATIONS[spec]
    else:
        mean, std = spec
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    if (std_t <= 0).any():
        raise ValueError(f"normalization std must be positive, got {list(std)}")
    return mean_t, std_t


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """The debiasing pre-processor: the digit's intensity (channel max) in all 3 channels. [B, 3, H, W]."""
    return x.amax(dim=1, keepdim=True).expand(-1, 3, -1, -1)
