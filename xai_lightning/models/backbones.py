"""Backbones by name (any torchvision classification model, or a small plain CNN), normalization constants
and the grayscale pre-processor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # CLIP's constants; the paper fine-tuned its ImageNet ResNet-50 with these.
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
INPUT_TRANSFORMS = ("none", "grayscale")
OWN_BACKBONES = ("simple_cnn",)
# torchvision models whose training-mode output is not a logits tensor (auxiliary heads)
UNSUPPORTED = ("googlenet", "inception_v3")


class SimpleCNN(nn.Module):
    """A plain CNN (no residuals): four conv-BN-ReLU stages with stride 2 (16, 8, 4, 2 px at 32 px input),
    global average pooling and a linear head. Stages are ``features.0`` .. ``features.3``."""

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        stages, c_in = [], 3
        for c_out in widths:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                )
            )
            c_in = c_out
        self.features = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))  # [B, num_classes]


def available_backbones() -> list[str]:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return [*OWN_BACKBONES, *(n for n in names if n not in UNSUPPORTED)]


def head_name(model: nn.Module) -> str:
    """The model's last classification layer: its last ``nn.Linear`` (or, without one, its last conv, as in
    squeezenet)."""
    for kind in (nn.Linear, nn.Conv2d):
        names = [n for n, m in model.named_modules() if isinstance(m, kind)]
        if names:
            return names[-1]
    raise ValueError(f"{type(model).__name__} has no Linear or Conv2d layer to use as its head")


def replace_head(model: nn.Module, num_classes: int) -> str:
    """Replaces the model's head (``head_name``) with a fresh layer for ``num_classes``; returns its name."""
    name = head_name(model)
    old = model.get_submodule(name)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
    return name


def build_backbone(name: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """A classifier with a fresh ``num_classes`` head.

    Args:
        name: ``simple_cnn`` or any torchvision classification model (``resnet50``, ``resnet18``,
            ``mobilenet_v3_small``, ``efficientnet_b0``, ``convnext_tiny``, ...).
        weights: torchvision weight enum name (``IMAGENET1K_V2``, ``DEFAULT``) or ``None`` for random init.
    """
    if name in OWN_BACKBONES:
        if weights is not None:
            raise ValueError(f"backbone {name!r} has no pretrained weights; use weights: null")
        return SimpleCNN(num_classes)
    import torchvision

    allowed = available_backbones()
    if name not in allowed:
        why = " (its training output has auxiliary heads)" if name in UNSUPPORTED else ""
        raise ValueError(f"unknown backbone {name!r}{why}; allowed: {', '.join(allowed)}")
    if weights is not None:
        enum = torchvision.models.get_model_weights(name)
        choices = ["DEFAULT", *enum.__members__]
        if weights not in choices:
            raise ValueError(f"unknown weights {weights!r} for {name}; allowed: {', '.join(choices)}")
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as err:  # urllib errors are OSErrors
        raise RuntimeError(
            f"could not load {name} weights {weights!r} ({type(err).__name__}: {err}). They download from "
            f"download.pytorch.org into $TORCH_HOME (default ~/.cache/torch/hub/checkpoints). Offline: copy the "
            f"file there from a machine with internet, or train from scratch with `--model.weights null`."
        ) from err
    replace_head(model, num_classes)
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
