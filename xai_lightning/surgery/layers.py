"""Layer discovery (presets, names, globs) and forward hooks that are always removed."""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

PRESETS = ("convs", "all_convs", "blocks", "stages")
# residual / inverted-residual blocks of torchvision's CNN families (ResNet, MobileNet, EfficientNet,
# ConvNeXt, RegNet, ShuffleNet, DenseNet) and open_clip's ModifiedResNet
_BLOCK_CLASSES = (
    "ResidualAttentionBlock",  # open_clip's transformer blocks (ViT towers)
    "EncoderBlock",  # torchvision's VisionTransformer
    "BasicBlock",
    "Bottleneck",
    "InvertedResidual",
    "MBConv",
    "FusedMBConv",
    "CNBlock",
    "ResBottleneckBlock",
    "_DenseLayer",
)


def _preset(model: nn.Module, preset: str) -> list[str]:
    named = list(model.named_modules())
    if preset == "all_convs":
        return [n for n, m in named if isinstance(m, nn.Conv2d)]
    if preset == "convs":
        # The paper's selection: every Conv2d except residual shortcut projections (`downsample`), i.e. the
        # 49 convs of a torchvision ResNet-50 (docs/paper.md). `all_convs` keeps the shortcuts too.
        return [n for n, m in named if isinstance(m, nn.Conv2d) and "downsample" not in n.split(".")]
    if preset == "blocks":
        return [n for n, m in named if type(m).__name__ in _BLOCK_CLASSES]
    # stages: the residual stages' outputs (`layer1..4`, also `visual.layer1..4` of an open_clip ResNet), four
    # evenly spaced transformer blocks of a ViT (the last one included), else the children of a `features`
    # Sequential (torchvision's MobileNet, EfficientNet, ConvNeXt, VGG, ...)
    vit = [n for n, m in named if type(m).__name__ in _BLOCK_CLASSES[:2]]
    if hasattr(model, "visual"):  # a CLIP: the image tower's blocks, never the text tower's
        vit = [n for n in vit if n.startswith("visual.")]
    if len(vit) >= 2:  # the last block's patch tokens reach no class token: four evenly spaced before it
        before = vit[:-1]
        return sorted({before[min(len(before) - 1, round(len(before) * (k + 1) / 4) - 1)] for k in range(4)})
    stages = [
        n
        for n, m in named
        if n.split(".")[-1] in ("layer1", "layer2", "layer3", "layer4") and isinstance(m, nn.Sequential)
    ]
    if stages:
        return stages
    return [
        f"{n}.{child}"
        for n, m in named
        if n.split(".")[-1] == "features" and isinstance(m, nn.Sequential)
        for child, _ in m.named_children()
    ]


def is_token_block(model: nn.Module, name: str) -> bool:
    """Whether the named module is a transformer block (its output: tokens, not maps)."""
    return type(model.get_submodule(name)).__name__ in _BLOCK_CLASSES[:2]


def _unknown(spec: str, names: list[str]) -> ValueError:
    close = difflib.get_close_matches(spec, names, n=5, cutoff=0.5)
    shown = ", ".join(names[:40]) + (f", ... ({len(names) - 40} more)" if len(names) > 40 else "")
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ValueError(f"unknown layer {spec!r};{hint} presets: {', '.join(PRESETS)}; available: {shown}")


def resolve_layers(model: nn.Module, spec: str | Sequence[str]) -> list[str]:
    """Module names selected by a preset (``convs``, ``all_convs``, ``blocks``, ``stages``), a name, a glob
    (``layer4.*.conv3``) or a list of those, in the model's module order, without duplicates.

    Raises:
        ValueError: a name or glob that matches nothing (the message lists the available names), or a
            selection that is empty.
    """
    all_names = [n for n, _ in model.named_modules() if n]
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise ValueError("no layers given; use a preset (" + ", ".join(PRESETS) + ") or module names")
    chosen: set[str] = set()
    for s in specs:
        if s in PRESETS:
            found = _preset(model, s)
            if not found:
                raise ValueError(
                    f"layer preset {s!r} selects nothing in {type(model).__name__}; "
                    f"give module names instead (e.g. {', '.join(all_names[:5])}, ...)"
                )
        elif any(ch in s for ch in "*?["):
            found = fnmatch.filter(all_names, s)
        else:
            found = [s] if s in all_names else []
        if not found:
            raise _unknown(s, all_names)
        chosen.update(found)
    return [n for n in all_names if n in chosen]


def get_modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise _unknown(missing[0], [n for n in modules if n])
    return {n: modules[n] for n in names}


@contextmanager
def forward_hooks(model: nn.Module, hooks: dict[str, Callable]) -> Iterator[None]:
    """Registers ``{module name: hook(module, inputs, output)}`` and removes every handle on exit,
    exceptions included."""
    handles = []
    try:
        for name, module in get_modules(model, list(hooks)).items():
            handles.append(module.register_forward_hook(hooks[name]))
        yield
    finally:
        for h in handles:
            h.remove()


def patch_grid(tokens: int) -> int:
    """Side g of the patch grid of a token sequence: the largest square in it (leading class/register tokens
    are the rest; 0 when it has no square part)."""
    g = int(math.isqrt(tokens))
    return g if g > 0 and tokens - g * g < g else 0


def as_maps(name: str, output: object) -> torch.Tensor:
    """A layer's output as feature maps [B, C, H, W]: conv maps as they are; a ViT block's tokens [B, L, D]
    (batch first) as its patch tokens on their grid, [B, D, g, g] (its channels are the token dimensions)."""
    if isinstance(output, torch.Tensor) and output.dim() == 4:
        return output
    if isinstance(output, torch.Tensor) and output.dim() == 3 and patch_grid(output.shape[1]):
        g = patch_grid(output.shape[1])
        return output[:, -g * g :].transpose(1, 2).reshape(output.shape[0], output.shape[2], g, g)
    raise TypeError(
        f"layer {name!r} returned {type(output).__name__} {tuple(getattr(output, 'shape', ()))}; surgery needs "
        "[B, C, H, W] feature maps or a ViT block's [B, tokens, D] (a square grid of patch tokens)"
    )


def into_tokens(output: torch.Tensor, channels: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """``output`` (conv maps, or a ViT block's tokens) with ``channels`` replaced by ``maps`` [B, n, H, W];
    never edits ``output`` in place."""
    out = output.clone()
    if out.dim() == 4:
        out[:, channels] = maps.to(out.dtype)
        return out
    g = maps.shape[-1]
    patches = out[:, -g * g :]  # a view: writing into it writes the patch tokens
    patches[:, :, channels] = maps.flatten(2).transpose(1, 2).to(out.dtype)
    return out


@contextmanager
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Records the output of each named module on every forward as maps (``as_maps``): ``{name: Tensor [B, C,
    H, W]}``. The dict holds the latest forward's outputs only (nothing accumulates across batches)."""
    store: dict[str, torch.Tensor] = {}

    def make(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            store[name] = as_maps(name, output)

        return hook

    with forward_hooks(model, {n: make(n) for n in names}):
        yield store


def count_forward_hooks(model: nn.Module) -> int:
    """Number of forward hooks registered on any submodule (tests assert it returns to its old value)."""
    return sum(len(m._forward_hooks) for m in model.modules())


class FirstForward:
    """Records the named layers' maps and the model's own output of the *first* forward after ``arm()``.

    A callback that hooks a model during validation must see exactly the validation forward, even when
    other callbacks run the model again on edited images before it reads the maps. Use as a context
    manager (hooks are removed on exit, exceptions included)::

        with FirstForward(model, names) as rec:
            rec.arm(); model(x); model(edited)     # rec.maps / rec.output are those of model(x)
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.model, self.names = model, list(names)
        self.maps: dict[str, torch.Tensor] = {}
        self.output: object = None
        self._armed = False
        self._handles: list = []

    def arm(self) -> None:
        """Forget the last batch; the next forward of ``model`` is recorded."""
        self.maps, self.output, self._armed = {}, None, True

    @property
    def recorded(self) -> bool:
        return not self._armed and self.output is not None

    def _layer_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if self._armed:
                self.maps[name] = as_maps(name, output)

        return hook

    def _root_hook(self, module: nn.Module, inputs: tuple, output: object) -> None:
        if self._armed:
            self.output, self._armed = output, False

    def __enter__(self) -> FirstForward:
        try:
            for name, module in get_modules(self.model, self.names).items():
                self._handles.append(module.register_forward_hook(self._layer_hook(name)))
            self._handles.append(self.model.register_forward_hook(self._root_hook))
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._armed = False

    def __exit__(self, *exc) -> None:
        self.close()
